//! Per host, a count of what may have changed its domains (events, ferry's own calls, new
//! connections), shared by the connection registry and the gated hypervisor handles.

use std::collections::HashMap;
use std::sync::Mutex;

/// Per host URI, how often something may have changed its domains and how many connections
/// were opened to it (see [`super::HostConnections::changes`]).
#[derive(Default)]
pub(super) struct ChangeCounts(Mutex<HashMap<String, (u64, u64)>>);

impl ChangeCounts {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u64)>> {
        match self.0.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Something may have changed the domains of the host at `uri`.
    pub(super) fn bump(&self, uri: &str) {
        let mut counts = self.counts();
        let n = counts.entry(uri.to_string()).or_default();
        n.0 = n.0.wrapping_add(1);
    }

    /// A connection to `uri` was opened: a change too.
    pub(super) fn opened(&self, uri: &str) {
        let mut counts = self.counts();
        let n = counts.entry(uri.to_string()).or_default();
        n.0 = n.0.wrapping_add(1);
        n.1 = n.1.wrapping_add(1);
    }

    pub(super) fn get(&self, uri: &str) -> (u64, u64) {
        self.counts().get(uri).copied().unwrap_or_default()
    }
}
