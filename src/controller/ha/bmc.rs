//! The BMC client of a host, from the pool's fencing settings, its Node and the credentials
//! Secret: only ever the host's own BMC (`plan::bmc`).

use super::{BMC_READ_WAIT, HaContext, HaKey};
use crate::api::HostPool;
use crate::api::host_pool::{FenceDriver, FencingSpec};
use crate::controller::{Context, lock};
use crate::fence::{self, Credentials, Fencer};
use crate::plan::host_health::Power;
use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A BMC reading older than this does not count.
const READING_FRESH: Duration = Duration::from_secs(30);

/// The BMC's power state for this tick: a reading of the host's own BMC taken since `since`
/// (when libvirt stopped answering) and not older than 30 s. Unless a read is under way one is
/// started; it is awaited for at most [`BMC_READ_WAIT`], and a BMC slower than that (or one that
/// hangs) answers in the background, for a later tick: it holds up neither this host's tick
/// nor any other's.
pub(super) async fn power_for_tick(
    hc: &Arc<HaContext>,
    key: &HaKey,
    pool: &HostPool,
    node: &Node,
    since: Timestamp,
) -> Option<Power> {
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
                let f = fencer(&hc2.ctx, &pool, &node).await?;
                f.power_state().await.map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", limit.as_secs())));
            if let Err(e) = &reading {
                tracing::debug!(host = %key2.host.node, pool = %key2.host.pool, error = %e, "BMC reading failed");
            }
            let mut hosts = lock(&hc2.hosts);
            if let Some(m) = hosts.get_mut(&key2).filter(|m| m.bmc_read == Some(at)) {
                m.bmc_read = None;
                m.bmc = reading.ok().map(|p| (planner_power(p), Timestamp::now()));
            }
        });
        let _ = tokio::time::timeout(BMC_READ_WAIT, read).await;
    }
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

/// The host's BMC client, from the pool's fencing settings, the Node and the credentials Secret.
/// A Redfish client counts only the system whose UUID is the Node's `systemUUID`; an IPMI
/// address must be named for this Node alone (`plan::bmc::ipmi_address`).
pub(super) async fn fencer(
    ctx: &Context,
    pool: &HostPool,
    node: &Node,
) -> std::result::Result<Box<dyn Fencer>, String> {
    let f = pool
        .spec
        .fencing
        .as_ref()
        .ok_or_else(|| "no fencing configured".to_string())?;
    let address_type = pool.spec.libvirt.address_type.unwrap_or_default();
    let address = match f.driver {
        FenceDriver::Redfish => crate::plan::uri::render(&f.address_template, node, address_type)?,
        FenceDriver::Ipmi => {
            let nodes = ctx.caches.nodes.state();
            crate::plan::bmc::ipmi_address(
                &f.address_template,
                node,
                nodes.iter().map(|n| n.as_ref()),
                address_type,
            )?
        }
    };
    let ns = pool.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&f.credentials_secret)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", f.credentials_secret))?
        .ok_or_else(|| format!("Secret {ns}/{} does not exist", f.credentials_secret))?;
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
    };
    let text = |k: &str| {
        key(k)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("Secret {ns}/{} lacks key {k:?}", f.credentials_secret))
    };
    let creds = Credentials {
        username: text("username")?,
        password: text("password")?,
        ca_pem: key("ca.crt"),
    };
    let timeout = f.request_timeout();
    match f.driver {
        FenceDriver::Redfish => {
            let tmpl = f
                .system_path_template
                .as_deref()
                .ok_or_else(|| "Redfish fencing needs systemPathTemplate".to_string())?;
            let path = crate::plan::uri::render(&format!("x://{tmpl}"), node, address_type)?;
            let path = path.trim_start_matches("x://").to_string();
            let uuid = crate::plan::bmc::system_uuid(node).ok_or_else(|| {
                format!(
                    "Node {} reports no status.nodeInfo.systemUUID: no Redfish system can be matched to the host, so none is powered off or read as its own",
                    node.name_any()
                )
            })?;
            Ok(Box::new(
                fence::redfish::Redfish::new(&address, &path, creds, timeout, ctx.gate().clone())
                    .map_err(|e| e.to_string())?
                    .for_system_uuid(uuid),
            ))
        }
        FenceDriver::Ipmi => Ok(Box::new(
            fence::ipmi::Ipmi::new(&address, creds, timeout, ctx.gate().clone())
                .map_err(|e| e.to_string())?,
        )),
    }
}
