//! The reflector caches every controller reads, and the questions asked of them.

use super::ha::{HaKey, LiveHa, PolicyPool, PoolHost};
use crate::api::{
    HAPolicy, HostPool, VirtualMachine, VirtualMachineClass, VirtualMachineMigration,
};
use crate::controller::hosts::pool_nodes;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store, store};
use std::sync::Arc;

/// The reflector stores.
pub struct Caches {
    /// HostPools.
    pub pools: Store<HostPool>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// VirtualMachines, from the VM controller's reflector.
    pub vms: Store<VirtualMachine>,
    /// VirtualMachineMigrations, from the migration controller's reflector (empty until
    /// [`super::Context::with_migrations`] sets it).
    pub migrations: Store<VirtualMachineMigration>,
    /// HAPolicies, from the HA controller's reflector (empty until
    /// [`super::Context::with_policies`] sets it).
    pub policies: Store<HAPolicy>,
    /// Events about ferry's objects, for the dashboard (empty until
    /// [`super::Context::with_events`] sets it).
    pub events: Store<Event>,
    /// VirtualMachineClasses (empty until [`super::Context::with_classes`] sets it).
    pub classes: Store<VirtualMachineClass>,
}

impl Caches {
    /// Caches over these stores, with empty migration and policy stores.
    pub fn new(pools: Store<HostPool>, nodes: Store<Node>, vms: Store<VirtualMachine>) -> Self {
        Caches {
            pools,
            nodes,
            vms,
            migrations: store().0,
            policies: store().0,
            events: store().0,
            classes: store().0,
        }
    }

    /// The VirtualMachineClass called `name` as the class cache holds it: `Some(found)` once the
    /// cache holds its first complete list, `None` while it does not (still listing, or no
    /// cache set): ask the API server then.
    pub fn class(&self, name: &str) -> Option<Option<Arc<VirtualMachineClass>>> {
        matches!(self.classes.wait_until_ready().now_or_never(), Some(Ok(())))
            .then(|| self.classes.get(&ObjectRef::new(name)))
    }

    /// Whether the HostPool, Node and VirtualMachine caches hold their first complete list. Until
    /// then a decision would rest on partial facts: right after a restart or a leader change every
    /// VM would find its HostPool "missing" and flip to not Ready, and placement would not see all
    /// placed VMs. A cache whose writer is gone will not fill any more and counts as ready.
    pub fn ready(&self) -> bool {
        // Resolves at once (Ok when listed, Err when the writer is gone) unless still listing.
        self.pools.wait_until_ready().now_or_never().is_some()
            && self.nodes.wait_until_ready().now_or_never().is_some()
            && self.vms.wait_until_ready().now_or_never().is_some()
    }

    /// [`Caches::ready`], and the VirtualMachineMigration and HAPolicy caches too.
    pub fn all_ready(&self) -> bool {
        self.ready()
            && self.migrations.wait_until_ready().now_or_never().is_some()
            && self.policies.wait_until_ready().now_or_never().is_some()
    }

    /// The Events about the object of kind `kind` named `name` in `ns`, once the Events cache
    /// holds its first complete list (`None` before, or when it has no watch behind it).
    pub fn events_about(&self, kind: &str, ns: &str, name: &str) -> Option<Vec<Arc<Event>>> {
        if !matches!(self.events.wait_until_ready().now_or_never(), Some(Ok(()))) {
            return None;
        }
        Some(
            self.events
                .state()
                .into_iter()
                .filter(|e| {
                    e.metadata.namespace.as_deref() == Some(ns)
                        && e.involved_object.kind.as_deref() == Some(kind)
                        && e.involved_object.name.as_deref() == Some(name)
                })
                .collect(),
        )
    }

    /// The HostPool `vm` names.
    pub fn pool_of(&self, vm: &VirtualMachine) -> Option<Arc<HostPool>> {
        let ns = vm.namespace().unwrap_or_default();
        self.pools
            .get(&ObjectRef::new(&vm.spec.host_pool).within(&ns))
    }

    /// The Node named `name`.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&ObjectRef::new(name))
    }

    /// The VMs of pool `pool` in `ns`.
    pub fn vms_in_pool(&self, ns: &str, pool: &str) -> Vec<Arc<VirtualMachine>> {
        self.vms
            .state()
            .into_iter()
            .filter(|v| v.namespace().as_deref() == Some(ns) && v.spec.host_pool == pool)
            .collect()
    }

    /// The HAPolicy covering `vm` (the first by name when several do).
    pub fn covering_policy(&self, vm: &VirtualMachine) -> Option<Arc<HAPolicy>> {
        self.covering_policies(vm).into_iter().next()
    }

    /// Every HAPolicy covering `vm`, by name.
    pub fn covering_policies(&self, vm: &VirtualMachine) -> Vec<Arc<HAPolicy>> {
        let ns = vm.namespace();
        let mut out: Vec<Arc<HAPolicy>> = self
            .policies
            .state()
            .into_iter()
            .filter(|p| p.namespace() == ns && p.covers(&vm.spec.host_pool, vm.labels()))
            .collect();
        out.sort_by_key(|p| p.name_any());
        out
    }

    /// What HA state may exist now: every HAPolicy's pools that exist, and the Nodes each of
    /// them selects (`None` until the caches hold their first complete list).
    pub fn live_ha(&self) -> Option<LiveHa> {
        if !self.all_ready() {
            return None;
        }
        let mut live = LiveHa::default();
        for policy in self.policies.state() {
            let ns = policy.namespace().unwrap_or_default();
            for pool_name in &policy.spec.host_pools {
                let Some(pool) = self.pools.get(&ObjectRef::new(pool_name).within(&ns)) else {
                    continue;
                };
                live.guard(PolicyPool::new(&ns, pool_name, &policy.name_any()));
                for node in pool_nodes(&self.nodes, &pool) {
                    live.host(HaKey::new(
                        &policy.name_any(),
                        PoolHost::new(&ns, pool_name, &node.name_any()),
                    ));
                }
            }
        }
        Some(live)
    }

    /// Every migration of VM `name` in `ns`, oldest first.
    pub fn migrations_of(&self, ns: &str, name: &str) -> Vec<Arc<VirtualMachineMigration>> {
        let mut out: Vec<_> = self
            .migrations
            .state()
            .into_iter()
            .filter(|m| m.namespace().as_deref() == Some(ns) && m.spec.vm_name == name)
            .collect();
        out.sort_by(|a, b| {
            (a.metadata.creation_timestamp.as_ref(), a.name_any())
                .cmp(&(b.metadata.creation_timestamp.as_ref(), b.name_any()))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;

    fn event(ns: &str, name: &str, kind: &str, about: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": kind, "name": about, "namespace": ns,
                               "apiVersion": "ferry.dev/v1alpha1"},
            "reason": "Started", "message": "started",
        }))
        .expect("valid Event")
    }

    #[test]
    fn a_vms_events_come_from_the_cache_once_it_listed() {
        let (pools, _) = store();
        let (nodes, _) = store();
        let (vms, _) = store();
        let mut caches = Caches::new(pools, nodes, vms);
        assert_eq!(
            caches.events_about("VirtualMachine", "team", "web"),
            None,
            "no watch behind the cache"
        );
        let (events, mut writer) = store::<Event>();
        caches.events = events;
        writer.apply_watcher_event(&watcher::Event::Init);
        assert_eq!(
            caches.events_about("VirtualMachine", "team", "web"),
            None,
            "still listing"
        );
        for e in [
            event("team", "e1", "VirtualMachine", "web"),
            event("team", "e2", "VirtualMachine", "db"),
            event("team", "e3", "HostPool", "web"),
            event("other", "e4", "VirtualMachine", "web"),
            event("team", "e5", "VirtualMachine", "web"),
        ] {
            writer.apply_watcher_event(&watcher::Event::InitApply(e));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let mut names: Vec<String> = caches
            .events_about("VirtualMachine", "team", "web")
            .expect("listed")
            .iter()
            .filter_map(|e| e.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["e1", "e5"]);
    }
}
