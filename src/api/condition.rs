//! Helpers for `metav1.Condition` lists: set a condition, keeping `lastTransitionTime`
//! unless its status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// Insert or update the condition `type_` in `conditions`.
///
/// `lastTransitionTime` only moves when the status changes, so writing the same
/// verdict twice produces an identical list (and therefore no API write).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) {
    let message = message.into();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status.as_str() {
            c.last_transition_time = Time(now);
            c.status = status.as_str().to_string();
        }
        c.reason = reason.to_string();
        c.message = message;
        c.observed_generation = observed_generation;
    } else {
        conditions.push(Condition {
            type_: type_.to_string(),
            status: status.as_str().to_string(),
            reason: reason.to_string(),
            message,
            observed_generation,
            last_transition_time: Time(now),
        });
    }
}

/// The condition `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid timestamp")
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = Vec::new();
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "Starting",
            "m",
            Some(1),
            ts(10),
        );
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::False,
            "Booting",
            "m2",
            Some(2),
            ts(20),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Time(ts(10)));
        assert_eq!(c[0].reason, "Booting");
        assert_eq!(c[0].observed_generation, Some(2));
        set_condition(
            &mut c,
            "Ready",
            ConditionStatus::True,
            "Running",
            "ok",
            Some(2),
            ts(30),
        );
        assert_eq!(c[0].last_transition_time, Time(ts(30)));
        assert!(is_true(&c, "Ready"));
    }
}
