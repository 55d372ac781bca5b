//! Retry delays per object after failed reconciles.

use super::lock;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// First retry delay.
const FIRST: Duration = Duration::from_secs(2);
/// Longest retry delay.
const LONGEST: Duration = Duration::from_secs(300);

/// Consecutive failures per object, as a backoff sequence each: 2 s doubling to 5 min.
#[derive(Default)]
pub struct Backoff {
    failing: Mutex<HashMap<String, ExponentialBackoff>>,
}

impl Backoff {
    /// Delay before retrying `key` after one more failure: 2 s doubling to 5 min.
    pub fn next(&self, key: &str) -> Duration {
        lock(&self.failing)
            .entry(key.to_string())
            .or_insert_with(|| {
                ExponentialBuilder::new()
                    .with_min_delay(FIRST)
                    .with_factor(2.0)
                    .with_max_delay(LONGEST)
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(LONGEST)
    }

    /// Forget `key`'s failures after a success.
    pub fn reset(&self, key: &str) {
        lock(&self.failing).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_seconds_doubling_to_five_minutes() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..11).map(|_| b.next("vm").as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Each object counts its own failures; a success starts over.
        assert_eq!(b.next("other").as_secs(), 2);
        b.reset("vm");
        assert_eq!(b.next("vm").as_secs(), 2);
    }
}
