//! Evacuations, run by the HostPool controller: a host in maintenance (Node annotation
//! `ferry.dev/maintenance=true`), or cordoned in a pool that evacuates cordoned hosts, has its
//! running VMs live-migrated away through VirtualMachineMigrations; removing the annotation (or
//! uncordoning) withdraws the migrations that have not started. A host an HAPolicy evacuates
//! (verdict `Evacuating`: Node NotReady while libvirt answers) is evacuated the same way, so
//! both respect `evictionStrategy` and report what cannot move.

mod act;
mod fetch;

use super::Context;
use super::hosts::{cordoned, in_maintenance};
use crate::api::condition::ConditionStatus;
use crate::api::{HAPolicy, HostPool};
use crate::plan::evacuation::{self};
use k8s_openapi::api::core::v1::Node;
use std::sync::Arc;

/// Label on the migrations an evacuation creates.
pub const EVACUATION_LABEL: &str = "ferry.dev/evacuation";

/// Annotation on those migrations naming the host they evacuate.
pub const EVACUATES_ANNOTATION: &str = "ferry.dev/evacuates";

/// Whether `node` is being evacuated in `pool`.
pub fn draining(pool: &HostPool, node: &Node) -> bool {
    in_maintenance(node) || (cordoned(node) && pool.evacuates_cordoned())
}

/// The `Evacuating` condition of a pool.
pub struct Report {
    pub status: ConditionStatus,
    pub reason: &'static str,
    pub message: String,
}

/// Plan and act on the evacuation of the pool's draining `nodes`; returns the condition to show.
pub async fn reconcile(pool: &HostPool, nodes: &[Arc<Node>], ctx: &Context) -> Report {
    evacuate(pool, nodes, ctx, None).await
}

/// Evacuate `host` of `pool` (whose Nodes are `nodes`) now for `policy` (its verdict
/// `Evacuating` may not be in the policy's status yet): the VMs on it that the policy covers.
/// The pool's next pass reports it in its `Evacuating` condition.
pub async fn evacuate_for_ha(
    pool: &HostPool,
    nodes: &[Arc<Node>],
    ctx: &Context,
    host: &str,
    policy: Arc<HAPolicy>,
) {
    evacuate(pool, nodes, ctx, Some((host, policy))).await;
}

async fn evacuate(
    pool: &HostPool,
    nodes: &[Arc<Node>],
    ctx: &Context,
    ha: Option<(&str, Arc<HAPolicy>)>,
) -> Report {
    let facts = fetch::facts(pool, nodes, &ctx.caches, &ctx.ha, ha);
    let plan = evacuation::plan(&facts.draining, &facts.vms, &facts.migrations);
    act::act(ctx, pool, &facts.pool_vms, &plan).await;
    act::report(&facts.draining, &plan)
}
