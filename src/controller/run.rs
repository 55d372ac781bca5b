//! Wiring: reflectors, the two controllers, and their shared context.

use super::{Context, class_watch, ha, host_pool, hosts, migration, virtual_machine};
use crate::api::{
    HAPolicy, HostPool, VirtualMachine, VirtualMachineClass, VirtualMachineMigration,
};
use crate::gate::ActionGate;
use crate::metrics::Metrics;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::HashMap;
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
    hosts::node_ready(n).hash(&mut h);
    hosts::cordoned(n).hash(&mut h);
    n.annotations()
        .get(hosts::MAINTENANCE_ANNOTATION)
        .hash(&mut h);
    if let Some(addrs) = n.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for a in addrs {
            (&a.type_, &a.address).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// Wait until `store` holds its first complete list (false: its writer is gone). Asked again every
/// second: a store's readiness wakes only the task that polled it last (kube-runtime keeps one
/// waker per store), and other tasks poll the same stores, so a single long wait can miss it.
async fn listed<K: kube::Resource + Clone>(store: &reflector::Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(r) =
            tokio::time::timeout(std::time::Duration::from_secs(1), store.wait_until_ready()).await
        {
            return r.is_ok();
        }
    }
}

/// How the controllers run (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which namespaces they watch.
    pub scope: Scope,
    /// VirtualMachine reconciles at once, at most.
    pub vm_concurrency: u16,
    /// What HostPools' libvirt URIs may say.
    pub uri_limits: crate::plan::uri_policy::Limits,
    /// Image imports: at most so many at once, the cluster's networks.
    pub imports: crate::controller::image_import::Imports,
    /// How often a VM in a steady state is looked at when nothing wakes it (jittered).
    pub safety_resync: std::time::Duration,
}

/// Run the controllers until `shutdown` resolves; every host and BMC action asks `gate` first.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    gate: ActionGate,
    ready: impl FnOnce(Arc<Context>) + Send,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let Settings {
        scope,
        vm_concurrency,
        uri_limits,
        imports,
        safety_resync,
    } = settings;
    let (node_store, node_writer) = reflector::store::<Node>();
    let nodes = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|n: &mut Node| {
        slim(n);
        // Container image lists are the bulk of a real Node; ferry never reads them.
        if let Some(s) = n.status.as_mut() {
            s.images = None;
        }
    })
    .reflect(node_writer)
    .applied_objects()
    .predicate_filter(node_fingerprint, Default::default());
    let (pool_store, pool_writer) = reflector::store::<HostPool>();
    let pools = watcher(
        api::<HostPool>(&client, &scope),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(pool_writer)
    .applied_objects()
    .predicate_filter(
        |p: &HostPool| {
            // Spec changes and host-state changes matter to VMs; nothing else.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.metadata.generation.hash(&mut h);
            if let Some(s) = &p.status {
                for host in &s.hosts {
                    (&host.name, format!("{:?}", host.state), host.power()).hash(&mut h);
                    // Capacity that appears (or frees up) lets Pending VMs be placed.
                    (&host.allocatable, &host.allocated, &host.foreign_allocated).hash(&mut h);
                }
            }
            Some(h.finish())
        },
        Default::default(),
    );

    let (vm_store, vm_writer) = reflector::store::<VirtualMachine>();
    let vm_watch = watcher(
        api::<VirtualMachine>(&client, &scope),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(vm_writer)
    .applied_objects();
    let vm_controller = Controller::for_stream(vm_watch, vm_store.clone())
        .with_config(controller::Config::default().concurrency(vm_concurrency));
    let migration_controller = Controller::new(
        api::<VirtualMachineMigration>(&client, &scope),
        watcher::Config::default().any_semantic(),
    );
    let migration_store = migration_controller.store();
    let policy_controller = Controller::new(
        api::<HAPolicy>(&client, &scope),
        watcher::Config::default().any_semantic(),
    );
    let policy_store = policy_controller.store();
    let policy_store_for_metrics = policy_store.clone();
    let policy_store_for_waves = policy_store.clone();
    let policy_store_for_ha = policy_store.clone();
    // Events about ferry's objects (its group's kinds only), listed once and then watched: the
    // dashboard's VM pages read them here instead of listing a namespace's Events per view.
    let (event_store, event_writer) = reflector::store::<Event>();
    let events = watcher(
        api::<Event>(&client, &scope),
        watcher::Config::default()
            .any_semantic()
            .fields(&ferry_events_selector()),
    )
    .default_backoff()
    .modify(slim)
    .reflect(event_writer)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "event cache watch");
        }
    });
    let events = tokio::spawn(events);
    // A VirtualMachineClass that changes (a new generation) or is deleted wakes the VMs that
    // name it (their size, the RestartRequired condition or ClassNotFound follows it); the VM
    // controller reads classes from this cache.
    let (class_store, class_writer) = reflector::store::<VirtualMachineClass>();
    let classes = watcher(
        Api::<VirtualMachineClass>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(slim)
    .reflect(class_writer)
    .flat_map({
        let mut seen = class_watch::ClassChanges::default();
        move |event| futures::stream::iter(seen.changed(event))
    });
    let recorder = Recorder::new(client.clone(), reporter);
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            recorder,
            metrics.clone(),
            pool_store.clone(),
            node_store.clone(),
            vm_store.clone(),
        )
        .with_migrations(migration_store.clone())
        .with_policies(policy_store)
        .with_events(event_store)
        .with_uri_limits(uri_limits)
        .with_imports(imports)
        .with_safety_resync(safety_resync)
        .with_gate(gate)
        .with_classes(class_store),
    );
    // A migration changes what the VM controller may do with its VM.
    let migrations_for_vms = watcher(
        api::<VirtualMachineMigration>(&client, &scope),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .applied_objects();
    // The state gauges (ferry_virtual_machines, ferry_hosts, ferry_host_status, ...) are computed
    // from these caches at each scrape, once all hold a complete list (before that they would
    // show zeros that are not true).
    let gauges = {
        let (vms, pools, policies, metrics, load) = (
            vm_store.clone(),
            pool_store.clone(),
            policy_store_for_metrics,
            metrics.clone(),
            ctx.load.clone(),
        );
        tokio::spawn(async move {
            if listed(&vms).await && listed(&pools).await && listed(&policies).await {
                metrics.set_inventory_source(Some(Box::new(move || {
                    let vms = vms.state();
                    crate::metrics::inventory(
                        vms.iter().map(|v| v.as_ref()),
                        pools.state().iter().map(|p| p.as_ref()),
                        policies.state().iter().map(|p| p.as_ref()),
                    )
                    .with_vm_load(vms.iter().map(|v| v.as_ref()), &load.domains())
                })));
            }
        })
    };
    // A domain that stopped, crashed or paused on its host is looked at at once.
    let vm_store_for_events = vm_store.clone();
    let domain_events =
        broadcast_stream(ctx.hosts.connections.domain_events()).filter_map(move |uuid| {
            let vm = vm_store_for_events.find(|vm| crate::plan::naming::vm_domain_uuid(vm) == uuid);
            async move { vm.map(|vm| ObjectRef::from_obj(vm.as_ref())) }
        });
    // A host whose connection was re-established (after a loss, or after ferry closed it): the
    // domain events of the time between were not heard, so each VM placed there is looked at
    // once.
    let (pools_for_reconnects, vms_for_reconnects) = (pool_store.clone(), vm_store.clone());
    let reconnected = broadcast_stream(ctx.hosts.connections.reconnected()).flat_map(move |uri| {
        let woken = hosts::vms_on_host(
            &pools_for_reconnects.state(),
            &vms_for_reconnects.state(),
            &uri,
        );
        tracing::info!(
            uri = %hosts::redact(&uri),
            vms = woken.len(),
            "host connection re-established: looking at its VMs again"
        );
        futures::stream::iter(woken)
    });
    let vm_store_for_classes = vm_store.clone();
    let vms = vm_controller
        .reconcile_on(domain_events)
        .reconcile_on(reconnected)
        .watches_stream(classes, move |class: VirtualMachineClass| {
            let name = class.name_any();
            vm_store_for_classes
                .state()
                .into_iter()
                .filter(|vm| vm.spec.class_name.as_deref() == Some(name.as_str()))
                .map(|vm| ObjectRef::from_obj(vm.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(migrations_for_vms, |m: VirtualMachineMigration| {
            let ns = m.namespace().unwrap_or_default();
            Some(ObjectRef::<VirtualMachine>::new(&m.spec.vm_name).within(&ns))
        })
        .watches_stream(pools, {
            let shapes = std::sync::Mutex::new(HashMap::new());
            move |pool: HostPool| {
                let ns = pool.namespace();
                let name = pool.name_any();
                // Capacity moves with every VM placed; only VMs still waiting care about that.
                let shape = pool_shape(&pool);
                let reshaped = crate::controller::lock(&shapes)
                    .insert((ns.clone(), name.clone()), shape)
                    != Some(shape);
                vm_store
                    .state()
                    .into_iter()
                    .filter(|vm| vm.spec.host_pool == name && vm.namespace() == ns)
                    .filter(|vm| {
                        reshaped
                            || !vm.status.as_ref().is_some_and(|s| {
                                crate::api::condition::is_true(&s.conditions, "Ready")
                            })
                    })
                    .map(|vm| ObjectRef::from_obj(vm.as_ref()))
                    .collect::<Vec<_>>()
            }
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
    // VMs are not touched before every migration is known: one that ended while no controller
    // ran could otherwise look like a missing domain to start again.
    let vms = {
        let store = migration_store.clone();
        async move {
            if store.wait_until_ready().await.is_ok() {
                vms.await;
            }
        }
    };
    // A freed migration slot wakes the migrations waiting for one.
    let slot_freed = {
        let store = migration_store.clone();
        notifications(ctx.migrations.slot_freed.clone()).flat_map(move |()| {
            futures::stream::iter(
                store
                    .state()
                    .into_iter()
                    .filter(|m| migration::waits_for_slot(m))
                    .map(|m| ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>(),
            )
        })
    };
    let migrations = migration_controller
        .reconcile_on(slot_freed)
        .graceful_shutdown_on(Box::pin(shutdown_signal()))
        .run(migration::reconcile, migration::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "virtualmachinemigration controller event");
            }
        });

    let pool_controller = Controller::new(
        api::<HostPool>(&client, &scope),
        watcher::Config::default().any_semantic(),
    );
    let pool_store_for_nodes = pool_store.clone();
    // A connection that keepalive (or a failed call) found dead wakes the pools using that host
    // at once, instead of at their next periodic probe.
    let pool_store_for_lost = pool_store.clone();
    let lost = broadcast_stream(ctx.hosts.connections.lost_connections()).flat_map(move |uri| {
        futures::stream::iter(hosts::pools_reaching(&pool_store_for_lost.state(), &uri))
    });
    let hostpools = pool_controller
        .reconcile_on(lost)
        .watches_stream(nodes, move |node: Node| {
            pool_store_for_nodes
                .state()
                .into_iter()
                .filter(|p| hosts::selects(p, &node) || selected_before(p, &node))
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
    // What is remembered for deleted policies, pools and Nodes is dropped.
    let sweeper = tokio::spawn(ha::sweep(hacontext.clone()));
    // A released VM that runs on its new host lets the next restart wave start at once, and a
    // probe that finds a host's libvirt newly silent has the host judged at once: neither waits
    // for the next tick.
    let now_or_next_tick = {
        futures::stream::select(
            notifications(ctx.ha.restart_ran.clone()),
            notifications(hacontext.fell_silent.clone()),
        )
        .flat_map(move |()| {
            futures::stream::iter(
                policy_store_for_waves
                    .state()
                    .into_iter()
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>(),
            )
        })
    };
    // A host connection the host or the network ended (libvirt's close callback, keepalive, a
    // failed call) has the policies covering that host probe it at once.
    let host_lost = {
        let (pools, policies) = (pool_store.clone(), policy_store_for_ha);
        futures::stream::select(
            broadcast_stream(ctx.hosts.connections.lost_connections()),
            broadcast_stream(hacontext.lost_probes()),
        )
        .flat_map(move |uri| {
            let reached = hosts::pools_reaching(&pools.state(), &uri);
            futures::stream::iter(ha::policies_covering(&policies.state(), &reached))
        })
    };
    let hapolicies = policy_controller
        .reconcile_on(now_or_next_tick)
        .reconcile_on(host_lost)
        .graceful_shutdown_on(Box::pin(shutdown_signal()))
        .run(ha::reconcile, ha::error_policy, hacontext)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "hapolicy controller event");
            }
        });

    ready(ctx.clone());
    tokio::select! {
        _ = futures::future::join4(vms, hostpools, migrations, hapolicies) => {},
        _ = shutdown => {},
    }
    gauges.abort();
    let _ = gauges.await;
    sweeper.abort();
    let _ = sweeper.await;
    events.abort();
    let _ = events.await;
    metrics.set_inventory_source(None);
    ctx.hosts.connections.close_all().await;
}

/// Drop `managedFields` from a cached object: ferry never reads them, and with several field
/// managers they take more memory than the rest of a VirtualMachine.
/// Drops what ferry never reads from a cached object: field ownership, and the copy of the whole
/// object that `kubectl apply` keeps in an annotation (as large as the spec itself).
fn slim<K: kube::Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The field selector of the Events about ferry's objects (`involvedObject.apiVersion`).
fn ferry_events_selector() -> String {
    format!(
        "involvedObject.apiVersion={}",
        <VirtualMachine as kube::Resource>::api_version(&())
    )
}

/// What of a HostPool every one of its VMs depends on: its spec and its hosts' states and power
/// states (not their capacity, which matters only to VMs waiting to be placed or started).
fn pool_shape(pool: &HostPool) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pool.metadata.generation.hash(&mut h);
    if let Some(s) = &pool.status {
        for host in &s.hosts {
            (&host.name, format!("{:?}", host.state), host.power()).hash(&mut h);
        }
    }
    h.finish()
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

/// The messages of a broadcast channel as a stream; a receiver that fell behind skips ahead.
/// One item per wake-up of `notify` (wake-ups while none is awaited coalesce into one).
fn notifications(notify: Arc<tokio::sync::Notify>) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(notify, |n| async move {
        n.notified().await;
        Some(((), n))
    })
}

fn broadcast_stream<T: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(v) => return Some((v, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
