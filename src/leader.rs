//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): only the holder runs
//! the controllers; a standby takes over within one lease period after the holder dies.
//!
//! kube-lease-manager reports a lost lease only when it can read the Lease and sees another
//! holder: a leader whose renewals fail or hang (cut off from the API server) keeps believing it
//! leads while a standby takes over. [`keep_deadline`] therefore keeps ferry's own deadline on
//! the [`ActionGate`]: the last renewal this replica sees stored on the API server, plus the lease
//! duration, minus a margin. Past it, every host and BMC action is withheld until a later renewal
//! lands; once another replica holds the lease the gate is closed for good.

use crate::gate::ActionGate;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::time::{Duration, Instant};

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace: u64,
    /// How long before the lease expires this replica stops acting (see [`keep_deadline`]): it
    /// covers a call already under way at the deadline and clock differences between replicas.
    /// Must be shorter than `grace`, or the gate would close before each renewal.
    pub margin: Duration,
}

impl LeaseSettings {
    /// The margin for a grace period: `requested`, or [`LeaseSettings::default_margin`]; at most
    /// a quarter second short of the grace period, or the gate would close before each renewal.
    pub fn margin(grace: u64, requested: Option<Duration>) -> Duration {
        requested
            .unwrap_or_else(|| Self::default_margin(grace))
            .min(longest_margin(grace))
    }

    /// The default margin for a grace period: half of it, at least one second (and never the
    /// whole grace period).
    pub fn default_margin(grace: u64) -> Duration {
        Duration::from_millis(grace * 500)
            .max(Duration::from_secs(1))
            .min(longest_margin(grace))
    }
}

/// The longest margin for a grace period of `grace` seconds.
fn longest_margin(grace: u64) -> Duration {
    Duration::from_millis((grace * 1000).saturating_sub(250))
}

/// Wait until this process holds the lease. Returns the manager's state channel (it turns `false`
/// if leadership is lost) and the background task keeping the lease renewed.
pub async fn acquire(
    client: Client,
    s: &LeaseSettings,
) -> Result<
    (
        tokio::sync::watch::Receiver<bool>,
        tokio::task::JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    ),
    kube_lease_manager::LeaseManagerError,
> {
    let manager = LeaseManagerBuilder::new(client, &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration)
        .with_grace(s.grace)
        .build()
        .await?;
    let (mut rx, task) = manager.watch().await;
    loop {
        if *rx.borrow_and_update() {
            tracing::info!(lease = %s.name, identity = %s.identity, "acquired leadership");
            return Ok((rx, task));
        }
        if rx.changed().await.is_err() {
            // The manager task ended; surface its error.
            return match task.await {
                Ok(Ok(_)) => Err(kube_lease_manager::LeaseManagerError::InconsistentState(
                    "lease manager stopped".into(),
                )),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(kube_lease_manager::LeaseManagerError::InconsistentState(
                    e.to_string(),
                )),
            };
        }
    }
}

/// Resolves when leadership is lost (the channel turns `false` or closes).
pub async fn lost(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        if !*rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(0)).await;
    }
}

/// How often the Lease is read while a renewal is due.
const RENEWAL_POLL: Duration = Duration::from_millis(500);

/// Longest wait for one read of the Lease (a read that hangs must not delay the next).
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What one read of the Lease says about this replica.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// This replica holds it, renewed at `renewed` (its own clock) for `duration`.
    Held {
        renewed: Timestamp,
        duration: Duration,
    },
    /// Another replica holds it, or nobody does.
    NotHeld(String),
}

/// What a Lease object says about `identity`.
pub fn seen(lease: &Lease, identity: &str) -> Seen {
    let spec = lease.spec.clone().unwrap_or_default();
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => match (spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(d)) if d > 0 => Seen::Held {
                renewed: renewed.0,
                duration: Duration::from_secs(d as u64),
            },
            _ => Seen::NotHeld("the lease names this replica without a renewal time".into()),
        },
        Some(other) => Seen::NotHeld(format!("the lease is held by {other}")),
        None => Seen::NotHeld("the lease was released".into()),
    }
}

/// The monotonic instant until which a replica may act after a renewal stored at wall-clock
/// time `renewed` for `duration`, given the wall clock `now_wall` read at monotonic `now`.
pub fn deadline(
    renewed: Timestamp,
    duration: Duration,
    margin: Duration,
    now_wall: Timestamp,
    now: Instant,
) -> Instant {
    let end_ms = renewed.as_millisecond() + duration.as_millis() as i64 - margin.as_millis() as i64;
    let left_ms = end_ms - now_wall.as_millisecond();
    now + Duration::from_millis(left_ms.max(0) as u64)
}

/// Keep `gate`'s deadline from the Lease as the API server stores it, for as long as this
/// replica holds it: read the Lease when a renewal is due (and every [`RENEWAL_POLL`] until it
/// is seen), and move the deadline to `renewTime + duration − margin` for each renewal by this
/// replica. Returns (with the gate revoked) once another replica holds the lease or it was
/// released.
pub async fn keep_deadline(client: Client, s: LeaseSettings, gate: ActionGate) {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    let mut last: Option<Timestamp> = None;
    let mut acting = false;
    loop {
        match tokio::time::timeout(READ_TIMEOUT, api.get(&s.name)).await {
            Ok(Ok(lease)) => match seen(&lease, &s.identity) {
                Seen::Held { renewed, duration } => {
                    if last.is_none_or(|l| l < renewed) {
                        last = Some(renewed);
                        gate.renewed_until(deadline(
                            renewed,
                            duration,
                            s.margin,
                            Timestamp::now(),
                            Instant::now(),
                        ));
                        tracing::debug!(%renewed, "leader lease renewal seen");
                    }
                }
                Seen::NotHeld(why) => {
                    tracing::error!(lease = %s.name, %why, "leader lease lost: host and BMC actions stop for good");
                    gate.revoke(why);
                    return;
                }
            },
            Ok(Err(e)) => tracing::debug!(error = %e, "could not read the leader lease"),
            Err(_) => tracing::debug!("reading the leader lease timed out"),
        }
        let open = gate.is_open();
        if open != acting {
            if open {
                tracing::info!(lease = %s.name, "leader lease renewed: host and BMC actions allowed");
            } else {
                tracing::warn!(lease = %s.name, "leader lease not renewed in time: host and BMC actions withheld until a renewal lands");
            }
            acting = open;
        }
        // Sleep until a renewal is due (the manager renews `grace` before expiry, which is
        // `grace − margin` before the deadline), then look every RENEWAL_POLL until it is seen.
        let grace = Duration::from_secs(s.grace);
        let wait = gate
            .remaining()
            .and_then(|r| r.checked_sub(grace))
            .unwrap_or_default()
            .max(RENEWAL_POLL);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    fn lease(holder: Option<&str>, renewed: Option<Timestamp>, duration: Option<i32>) -> Lease {
        let mut l: Lease =
            serde_json::from_value(json!({"metadata": {"name": "ferry"}})).expect("lease");
        l.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: renewed.map(MicroTime),
            lease_duration_seconds: duration,
            ..Default::default()
        });
        l
    }

    #[test]
    fn only_a_renewal_by_this_replica_counts() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        assert_eq!(
            seen(&lease(Some("a"), Some(t), Some(15)), "a"),
            Seen::Held {
                renewed: t,
                duration: Duration::from_secs(15)
            }
        );
        assert!(matches!(
            seen(&lease(Some("b"), Some(t), Some(15)), "a"),
            Seen::NotHeld(w) if w.contains("held by b")
        ));
        assert!(matches!(
            seen(&lease(None, None, None), "a"),
            Seen::NotHeld(_)
        ));
        assert!(matches!(
            seen(&lease(Some("a"), None, Some(15)), "a"),
            Seen::NotHeld(_)
        ));
    }

    #[test]
    fn the_deadline_is_the_renewal_plus_the_duration_minus_the_margin() {
        let renewed: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let now = Instant::now();
        // Read 4 s after the renewal: 15 − 3 − 4 = 8 s left.
        let wall = renewed + std::time::Duration::from_secs(4);
        let d = deadline(
            renewed,
            Duration::from_secs(15),
            Duration::from_secs(3),
            wall,
            now,
        );
        assert_eq!(d.duration_since(now), Duration::from_secs(8));
        // Read after the deadline: already passed.
        let late = renewed + std::time::Duration::from_secs(20);
        let d = deadline(
            renewed,
            Duration::from_secs(15),
            Duration::from_secs(3),
            late,
            now,
        );
        assert_eq!(d, now);
    }

    #[test]
    fn the_margin_is_shorter_than_the_grace_period() {
        assert_eq!(
            LeaseSettings::default_margin(5),
            Duration::from_millis(2500)
        );
        assert_eq!(LeaseSettings::default_margin(2), Duration::from_secs(1));
        assert_eq!(LeaseSettings::default_margin(1), Duration::from_millis(750));
    }
}
