//! The HostPool controller: find the pool's Nodes, probe each host's libvirt, report per-host
//! state and pool conditions.

use super::virtual_machine::{cordoned, host_uri};
use super::{Context, credentials, status::apply_status};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::{HostPool, HostState, HostStatus};
use crate::error::{Error, Result};
use crate::hypervisor::HypervisorError;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "hostpool";
/// How often each host is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// Whether `pool` selects `node`. An empty selector selects nothing.
pub fn selects(pool: &HostPool, node: &Node) -> bool {
    let sel = &pool.spec.node_selector;
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return false;
    }
    match Selector::try_from(sel.clone()) {
        Ok(s) => s.matches(node.labels()),
        Err(_) => false,
    }
}

/// Reconcile one HostPool, in a `reconcile` span naming it (see the VirtualMachine controller).
#[tracing::instrument(name = "reconcile", skip_all, fields(
    object.kind = "HostPool",
    object.namespace = %pool.namespace().unwrap_or_default(),
    object.name = %pool.name_any(),
))]
pub async fn reconcile(pool: Arc<HostPool>, ctx: Arc<Context>) -> Result<Requeue> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = pool.namespace().unwrap_or_default();
    let api: Api<HostPool> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now();
    let previous = pool.status.clone().unwrap_or_default();
    let mut st = previous.clone();
    st.observed_generation = pool.metadata.generation;

    if let Err(e) = Selector::try_from(pool.spec.node_selector.clone()) {
        set_condition(
            &mut st.conditions,
            "Ready",
            ConditionStatus::False,
            "InvalidSelector",
            format!("spec.nodeSelector is not a valid label selector: {e}"),
            pool.metadata.generation,
            now,
        );
        apply_status(&api, pool.as_ref(), pool.status.as_ref(), &st).await?;
        return Ok(Requeue::await_change());
    }

    let mut nodes: Vec<Arc<Node>> = ctx
        .nodes
        .state()
        .into_iter()
        .filter(|n| selects(&pool, n))
        .collect();
    nodes.sort_by_key(|n| n.name_any());
    let probes = nodes.iter().map(|n| probe(&pool, n, &ctx));
    let mut hosts: Vec<HostStatus> = futures::future::join_all(probes).await;
    for h in &mut hosts {
        let before = previous.hosts.iter().find(|p| p.name == h.name);
        // Keep the previous contact time while the state holds, so a steady pool causes no writes.
        if let Some(b) = before.filter(|b| b.state == h.state) {
            h.last_contact = b.last_contact.clone();
        } else if h.state == HostState::Unreachable {
            h.last_contact = before.and_then(|b| b.last_contact.clone());
        }
        if before.map(|b| b.state) != Some(h.state) {
            let (type_, reason) = match h.state {
                HostState::Ready => (EventType::Normal, "HostReady"),
                HostState::Cordoned => (EventType::Normal, "HostCordoned"),
                HostState::Unreachable => (EventType::Warning, "HostUnreachable"),
                HostState::Misconfigured => (EventType::Warning, "HostMisconfigured"),
            };
            let note = match &h.message {
                Some(m) => format!("Host {}: {m}", h.name),
                None => format!("Host {} is {:?}", h.name, h.state),
            };
            ctx.event(pool.as_ref(), type_, reason, "Probe", note).await;
        }
    }
    st.selected_hosts = hosts.len() as i32;
    st.ready_hosts = hosts.iter().filter(|h| h.state == HostState::Ready).count() as i32;
    let troubled: Vec<String> = hosts
        .iter()
        .filter(|h| h.state != HostState::Ready)
        .map(|h| format!("{} {:?}", h.name, h.state))
        .collect();
    let (status, reason, message) = if hosts.is_empty() {
        (
            ConditionStatus::False,
            "NoHostsSelected",
            "spec.nodeSelector matches no Node: label the hypervisor Nodes or fix the selector"
                .to_string(),
        )
    } else if st.ready_hosts == 0 {
        (
            ConditionStatus::False,
            "NoHostReady",
            format!("no host can take VMs: {}", troubled.join(", ")),
        )
    } else if troubled.is_empty() {
        (
            ConditionStatus::True,
            "AllHostsReady",
            format!("{} host(s) ready", st.ready_hosts),
        )
    } else {
        (
            ConditionStatus::True,
            "SomeHostsNotReady",
            format!(
                "{} of {} host(s) ready; {}",
                st.ready_hosts,
                hosts.len(),
                troubled.join(", ")
            ),
        )
    };
    set_condition(
        &mut st.conditions,
        "Ready",
        status,
        reason,
        message,
        pool.metadata.generation,
        now,
    );
    st.hosts = hosts;
    apply_status(&api, pool.as_ref(), pool.status.as_ref(), &st).await?;
    Ok(Requeue::requeue(PROBE_INTERVAL))
}

/// Probe one host.
async fn probe(pool: &HostPool, node: &Node, ctx: &Context) -> HostStatus {
    let name = node.name_any();
    let mut h = HostStatus {
        name: name.clone(),
        uri: None,
        state: HostState::Misconfigured,
        message: None,
        libvirt_version: None,
        last_contact: None,
    };
    let uri = match host_uri(pool, node) {
        Ok(u) => u,
        Err(m) => {
            h.message = Some(m);
            return h;
        }
    };
    h.uri = Some(redact(&uri));
    let answer = match ctx.connect(&uri, pool).await {
        Ok(hv) => match hv.host_info().await {
            Ok(info) => Ok(info),
            Err(e) => {
                if e.is_connection_lost() {
                    ctx.hosts.invalidate(&uri).await;
                }
                Err(e)
            }
        },
        Err(e) => Err(e),
    };
    match answer {
        Ok(info) => {
            h.libvirt_version = Some(info.libvirt_version.clone());
            h.last_contact = Some(Time(Timestamp::now()));
            h.state = if cordoned(node) {
                HostState::Cordoned
            } else {
                HostState::Ready
            };
            ctx.remember_host_info(&uri, info);
        }
        Err(e) => {
            let credentials = matches!(&e, HypervisorError::OperationFailed { operation, .. } if *operation == credentials::OPERATION);
            h.state = if credentials {
                HostState::Misconfigured
            } else {
                HostState::Unreachable
            };
            h.message = Some(e.to_string());
        }
    }
    h
}

/// Drop user info and query parameters (they may name key files) from a URI shown in status.
fn redact(uri: &str) -> String {
    let no_query = uri.split('?').next().unwrap_or(uri);
    match no_query.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => no_query.to_string(),
        },
        None => no_query.to_string(),
    }
}

/// Failed reconciles back off.
pub fn error_policy(pool: Arc<HostPool>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failure(CONTROLLER, err.category());
    let key = pool.meta().uid.clone().unwrap_or_else(|| pool.name_any());
    Requeue::requeue(ctx.backoff(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_shown_without_secrets() {
        assert_eq!(
            redact("qemu+ssh://root@h1/system?keyfile=/k"),
            "qemu+ssh://h1/system"
        );
        assert_eq!(
            redact("qemu+tls://10.0.0.1/system"),
            "qemu+tls://10.0.0.1/system"
        );
    }
}
