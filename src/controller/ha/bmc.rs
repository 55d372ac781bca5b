//! The BMC's power reading of a host for a tick, through its client
//! ([`crate::controller::bmc::client`]).

use super::{BMC_READ_WAIT, HaContext, HaKey};
use crate::api::HostPool;
use crate::api::host_pool::FencingSpec;
use crate::controller::lock;
use crate::fence;
use crate::plan::host_health::Power;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A BMC reading older than this does not count.
const READING_FRESH: Duration = Duration::from_secs(30);

/// The BMC's power state for this tick: a reading of the host's own BMC taken since `since`
/// (when libvirt stopped answering) and not older than 30 s. Unless a read is under way one is
/// started; it is awaited (for at most [`BMC_READ_WAIT`]) only while no such reading exists: a
/// tick with one goes on with it, and the new reading serves the next tick. A BMC slower than
/// that (or one that hangs) answers in the background: it holds up neither this host's tick nor
/// any other's, nor the restarts the ticks release during an incident.
pub(super) async fn power_for_tick(
    hc: &Arc<HaContext>,
    key: &HaKey,
    pool: &HostPool,
    node: &Node,
    since: Timestamp,
) -> Option<Power> {
    let cached = usable(hc, key, since);
    let started = {
        let mut hosts = lock(&hc.hosts);
        let m = hosts.get_mut(key)?;
        match m.bmc_read {
            Some(_) => None,
            None => {
                let at = Instant::now();
                m.bmc_read = Some(at);
                Some(at)
            }
        }
    };
    if let Some(at) = started {
        let (hc2, key2, pool, node) = (hc.clone(), key.clone(), pool.clone(), node.clone());
        let limit = read_deadline(&pool);
        let read = tokio::spawn(async move {
            let reading = tokio::time::timeout(limit, async {
                let f = crate::controller::bmc::client(&hc2.ctx, &pool, &node).await?;
                f.power_state().await.map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", limit.as_secs())));
            match &reading {
                Ok(p) => {
                    tracing::debug!(host = %key2.host.node, pool = %key2.host.pool, power = ?p, took = ?at.elapsed(), "BMC read")
                }
                Err(e) => {
                    tracing::debug!(host = %key2.host.node, pool = %key2.host.pool, error = %e, took = ?at.elapsed(), "BMC reading failed")
                }
            }
            let mut hosts = lock(&hc2.hosts);
            if let Some(m) = hosts.get_mut(&key2).filter(|m| m.bmc_read == Some(at)) {
                m.bmc_read = None;
                m.bmc = reading.ok().map(|p| (planner_power(p), Timestamp::now()));
            }
        });
        if cached.is_none() {
            let _ = tokio::time::timeout(BMC_READ_WAIT, read).await;
            return usable(hc, key, since);
        }
    }
    cached
}

/// The host's last BMC reading, when it was taken since `since` and is not older than
/// [`READING_FRESH`].
fn usable(hc: &HaContext, key: &HaKey, since: Timestamp) -> Option<Power> {
    let now = Timestamp::now();
    lock(&hc.hosts)
        .get(key)
        .and_then(|m| m.bmc)
        .filter(|(_, at)| {
            *at >= since
                && now.as_millisecond() - at.as_millisecond() <= READING_FRESH.as_millis() as i64
        })
        .map(|(p, _)| p)
}

/// The longest a BMC reading may take: the pool's request timeout, plus reading the Secret.
fn read_deadline(pool: &HostPool) -> Duration {
    let request = pool
        .spec
        .fencing
        .as_ref()
        .map(FencingSpec::request_timeout)
        .unwrap_or_default();
    request + Duration::from_secs(5)
}

/// The fencing client's power state as the planner's.
fn planner_power(p: fence::Power) -> Power {
    match p {
        fence::Power::On => Power::On,
        fence::Power::Off => Power::Off,
        fence::Power::Other => Power::Other,
    }
}
