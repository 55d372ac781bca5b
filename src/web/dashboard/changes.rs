//! Change notices for the dashboard's live updates: a task compares fingerprints of the
//! controller's caches (the watches' reflector stores) a few times a second and publishes which
//! kinds changed; each open page's event stream forwards them, and the page reloads the part it
//! shows.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kube::Resource;
use kube::runtime::reflector::Store;
use tokio::sync::watch;

use crate::controller::Context;

/// How often the caches are compared.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// A change notice: a counter that grows with every change, and the kinds that changed last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notice {
    pub seq: u64,
    pub kinds: Vec<&'static str>,
}

/// The kinds the dashboard shows, as named in notices.
pub const KINDS: [&str; 4] = ["pools", "vms", "migrations", "incidents"];

/// An order-free fingerprint of a store: its size and each object's UID and resourceVersion.
fn fingerprint<K>(store: &Store<K>) -> u64
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let objects = store.state();
    let mut sum = objects.len() as u64;
    for o in &objects {
        let mut h = DefaultHasher::new();
        o.meta().uid.hash(&mut h);
        o.meta().name.hash(&mut h);
        o.meta().resource_version.hash(&mut h);
        sum = sum.wrapping_add(h.finish());
    }
    sum
}

fn fingerprints(ctx: &Context) -> [u64; 4] {
    let c = &ctx.caches;
    [
        fingerprint(&c.pools),
        fingerprint(&c.vms),
        fingerprint(&c.migrations),
        fingerprint(&c.policies),
    ]
}

/// Publishes notices on `tx` until aborted (a new leader context replaces it, or the process
/// ends). With no page listening it fingerprints nothing (at 10,000 VMs a look hashes them
/// all); when pages listen again it takes fresh fingerprints and tells them every kind may have
/// changed, so what they show is never older than their stream.
pub async fn watch_caches(ctx: Arc<Context>, tx: watch::Sender<Notice>) {
    let mut last: Option<[u64; 4]> = None;
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.receiver_count() == 0 {
            last = None;
            continue;
        }
        let now = fingerprints(&ctx);
        let kinds: Vec<&'static str> = match last {
            None => KINDS.to_vec(),
            Some(last) => KINDS
                .iter()
                .zip(now.iter().zip(last.iter()))
                .filter(|(_, (a, b))| a != b)
                .map(|(k, _)| *k)
                .collect(),
        };
        last = Some(now);
        if !kinds.is_empty() {
            seq += 1;
            tx.send_replace(Notice { seq, kinds });
        }
    }
}
