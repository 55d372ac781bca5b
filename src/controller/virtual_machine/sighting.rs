//! Look before you start: ask every other host of the pool whether it has the VM's domain
//! (`plan::sighting` decides from the answers).

use super::{Blocked, Retry};
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::ha_policy::HostVerdict;
use crate::api::{HostPool, VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::controller::Context;
use crate::controller::context::PoolHost;
use crate::controller::hosts::pool_nodes;
use crate::plan::sighting::Seen;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::time::Duration;

/// How long one host may take to answer (connecting included).
const LOOK_TIMEOUT: Duration = Duration::from_secs(3);

/// What each host of `pool` (the Nodes it selects) but `skip` shows of domain `uuid`, asked all at
/// once. A host that an HAPolicy covering this pool holds fenced (the BMC confirmed it off, or a
/// person did) is proven off and not asked.
pub(super) async fn look(
    ctx: &Context,
    pool: &HostPool,
    uuid: &str,
    skip: &[&str],
) -> Vec<(String, Seen)> {
    let nodes = pool_nodes(&ctx.caches.nodes, pool);
    let asks = nodes
        .iter()
        .filter(|n| !skip.contains(&n.name_any().as_str()))
        .map(|node| async move {
            let name = node.name_any();
            let fenced = ctx
                .ha
                .of(&PoolHost::of(pool, &name))
                .iter()
                .any(|(_, v)| *v == HostVerdict::Fenced);
            if fenced {
                let seen = Seen::Unreachable {
                    proven_off: true,
                    why: "fenced".into(),
                };
                return (name, seen);
            }
            let unreachable = |why: String| Seen::Unreachable {
                proven_off: false,
                why,
            };
            let uri = match ctx.hosts.uri(pool, node) {
                Ok(u) => u,
                Err(e) => return (name, unreachable(e)),
            };
            let ask = async {
                let hv = ctx.hosts.connect(&uri, pool).await?;
                hv.lookup_domain(uuid).await
            };
            let seen = match tokio::time::timeout(LOOK_TIMEOUT, ask).await {
                Ok(Ok(Some(d))) if d.state.is_active() => Seen::Running,
                Ok(Ok(Some(_))) => Seen::Stopped,
                Ok(Ok(None)) => Seen::Absent,
                Ok(Err(e)) => unreachable(e.to_string()),
                Err(_) => unreachable(format!("no answer within {}s", LOOK_TIMEOUT.as_secs())),
            };
            (name, seen)
        });
    futures::future::join_all(asks).await
}

/// Reason of a VM taken over on the host it was found running on.
pub(super) const ADOPTED: &str = "Adopted";

/// Take the VM over on `host`, where it was found running: its status names that host, its
/// `Scheduled` condition says `why`, and what was provisioned for it elsewhere is forgotten.
pub(super) fn adopt(
    vm: &VirtualMachine,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    host: &str,
    why: String,
    now: Timestamp,
) {
    st.host = Some(host.to_string());
    set_condition(
        &mut st.conditions,
        "Scheduled",
        ConditionStatus::True,
        ADOPTED,
        why,
        vm.metadata.generation,
        now,
    );
    ctx.vm_runtime
        .forget_provisioned(vm.metadata.uid.as_deref().unwrap_or_default());
}

/// The VM runs on several hosts at once: nothing is started or changed.
pub(super) fn running_twice(hosts: &[String]) -> Blocked {
    Blocked::new(
        VmPhase::Unknown,
        "RunningTwice",
        format!(
            "the VM's domain runs on hosts {} at once: ferry starts nothing and changes nothing; stop all copies but one (virsh destroy), then ferry adopts the one left",
            hosts.join(" and ")
        ),
        Retry::After(Duration::from_secs(30)),
    )
}

/// Hosts of `pool` that could not be asked and are not proven off keep the VM from starting
/// (`what` says where it is not started).
pub(super) fn unconfirmed(what: String, pool: &HostPool, unknown: &[(String, String)]) -> Blocked {
    let hosts: Vec<String> = unknown
        .iter()
        .map(|(h, why)| format!("host {h} ({why})"))
        .collect();
    Blocked::new(
        VmPhase::Pending,
        "OtherHostUnreachable",
        format!(
            "{what} until every host of HostPool {} has said it does not run it: {} could not be asked and {} not proven off (fenced, or confirmed off); ferry keeps asking",
            pool.name_any(),
            hosts.join(", "),
            if hosts.len() == 1 { "is" } else { "are" }
        ),
        Retry::After(Duration::from_secs(5)),
    )
}
