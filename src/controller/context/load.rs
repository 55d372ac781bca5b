//! Measured load: a rolling window of domain counters per host of each pool, filled by the
//! HostPool probe.

use super::ha::PoolHost;
use super::lock;
use crate::plan::load::{HostUse, Sample, Window};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How far back a host's measured load looks.
pub const LOAD_WINDOW: Duration = Duration::from_secs(120);

/// The load windows of every host probed.
#[derive(Default)]
pub struct LoadWindows {
    windows: Mutex<HashMap<PoolHost, Window>>,
}

impl LoadWindows {
    /// Add `sample` to `host`'s window and say what its domains use now.
    pub fn record(&self, host: &PoolHost, sample: Sample) -> HostUse {
        let mut windows = lock(&self.windows);
        let w = windows
            .entry(host.clone())
            .or_insert_with(|| Window::new(LOAD_WINDOW));
        w.push(sample);
        w.usage()
    }

    /// Forget `host`'s window (it did not answer: a gap would make the next figure wrong).
    pub fn forget(&self, host: &PoolHost) {
        lock(&self.windows).remove(host);
    }

    /// Keep only the windows of hosts `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&PoolHost) -> bool) {
        lock(&self.windows).retain(|h, _| keep(h));
    }
}
