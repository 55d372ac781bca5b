//! Wiring: reflectors, the two controllers, and their shared context.

use super::{Context, ha, host_pool, virtual_machine};
use crate::api::{HAPolicy, HostPool, VirtualMachine};
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Which namespaces the controllers watch.
#[derive(Clone, Debug)]
pub enum Scope {
    All,
    Namespace(String),
}

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// The parts of a Node that matter to ferry; heartbeats that change nothing else are ignored.
fn node_fingerprint(n: &Node) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.labels().hash(&mut h);
    super::virtual_machine::node_ready(n).hash(&mut h);
    super::virtual_machine::cordoned(n).hash(&mut h);
    if let Some(addrs) = n.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for a in addrs {
            (&a.type_, &a.address).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// Run both controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    scope: Scope,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    ready: impl FnOnce() + Send,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (node_store, node_writer) = reflector::store::<Node>();
    let nodes = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(node_writer)
    .applied_objects()
    .predicate_filter(node_fingerprint, Default::default());
    let (pool_store, pool_writer) = reflector::store::<HostPool>();
    let pools = watcher(
        api::<HostPool>(&client, &scope),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .reflect(pool_writer)
    .applied_objects()
    .predicate_filter(
        |p: &HostPool| {
            // Spec changes and host-state changes matter to VMs; nothing else.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.metadata.generation.hash(&mut h);
            if let Some(s) = &p.status {
                for host in &s.hosts {
                    (&host.name, format!("{:?}", host.state)).hash(&mut h);
                    // Capacity that appears (or frees up) lets Pending VMs be placed.
                    (&host.allocatable, &host.allocated, &host.foreign_allocated).hash(&mut h);
                }
            }
            Some(h.finish())
        },
        Default::default(),
    );

    let vm_controller = Controller::new(
        api::<VirtualMachine>(&client, &scope),
        watcher::Config::default().any_semantic(),
    );
    let vm_store = vm_controller.store();
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        metrics.clone(),
        pool_store.clone(),
        node_store.clone(),
        vm_store.clone(),
    ));
    // ferry_virtual_machines and ferry_hosts are computed from these caches at each scrape, once
    // both hold a complete list (before that they would show zeros that are not true).
    let gauges = {
        let (vms, pools, metrics) = (vm_store.clone(), pool_store.clone(), metrics.clone());
        tokio::spawn(async move {
            if vms.wait_until_ready().await.is_ok() && pools.wait_until_ready().await.is_ok() {
                metrics.set_inventory_source(Some(Box::new(move || {
                    crate::metrics::inventory(
                        vms.state().iter().map(|v| v.as_ref()),
                        pools.state().iter().map(|p| p.as_ref()),
                    )
                })));
            }
        })
    };
    let vms = vm_controller
        .watches_stream(pools, move |pool: HostPool| {
            let ns = pool.namespace();
            let name = pool.name_any();
            vm_store
                .state()
                .into_iter()
                .filter(|vm| vm.spec.host_pool == name && vm.namespace() == ns)
                .map(|vm| ObjectRef::from_obj(vm.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(Box::pin(shutdown_signal()))
        .run(
            virtual_machine::reconcile,
            virtual_machine::error_policy,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "virtualmachine controller event");
            }
        });

    let pool_controller = Controller::new(
        api::<HostPool>(&client, &scope),
        watcher::Config::default().any_semantic(),
    );
    let pool_store_for_nodes = pool_store.clone();
    let hostpools = pool_controller
        .watches_stream(nodes, move |node: Node| {
            pool_store_for_nodes
                .state()
                .into_iter()
                .filter(|p| host_pool::selects(p, &node) || selected_before(p, &node))
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(Box::pin(shutdown_signal()))
        .run(host_pool::reconcile, host_pool::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "hostpool controller event");
            }
        });

    // HA: every HAPolicy is reconciled once a second (it judges its pools' hosts).
    let hacontext = Arc::new(ha::HaContext::new(ctx.clone()));
    let hapolicies = Controller::new(
        api::<HAPolicy>(&client, &scope),
        watcher::Config::default().any_semantic(),
    )
    .graceful_shutdown_on(Box::pin(shutdown_signal()))
    .run(ha::reconcile, ha::error_policy, hacontext)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "hapolicy controller event");
        }
    });

    ready();
    tokio::select! {
        _ = futures::future::join3(vms, hostpools, hapolicies) => {},
        _ = shutdown => {},
    }
    gauges.abort();
    let _ = gauges.await;
    metrics.set_inventory_source(None);
    ctx.hosts.close_all().await;
}

fn selected_before(pool: &HostPool, node: &Node) -> bool {
    let name = node.name_any();
    pool.status
        .as_ref()
        .is_some_and(|s| s.hosts.iter().any(|h| h.name == name))
}

/// A future that resolves on SIGTERM or Ctrl-C (each controller gets its own).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
