//! The VirtualMachine controller: place the VM, create its disks and domain on the host, drive the
//! domain to the state the run strategy asks for, report status, and clean up on deletion.

use super::cloud_init;
use super::hosts::{host_uri, selects};
use super::image_import;
use super::scheduling::{self, NotPlaced};
use super::{Context, status::apply_status};
use crate::api::VirtualMachineClass;
use crate::api::condition::{ConditionStatus, find, set_condition};
use crate::api::ha_policy::{FAILOVER_ANNOTATION, Failover};
use crate::api::virtual_machine::VmMigrationStatus;
use crate::api::virtual_machine::{
    ABANDON_ANNOTATION, DiskStatus, HttpImage, POWER_ANNOTATION, RESTART_ANNOTATION, Recovery,
};
use crate::api::{
    DiskClone, DiskSource, FINALIZER, HostPool, MigrationPhase, RunStrategy, VirtualMachine,
    VirtualMachineStatus, VmPhase,
};
use crate::error::{Error, Result};
use crate::hypervisor::domain_xml::{self, VirtType};
use crate::hypervisor::{
    DomainInfo, DomainState, Hypervisor, HypervisorError, ShutOffReason, VolumeInfo,
};
use crate::plan::class;
use crate::plan::definition::{self, ResolvedDisk};
use crate::plan::lifecycle::{self, Action, Power};
use crate::plan::validate::{ValidSpec, validate};
use crate::plan::{clone, mac, monitoring, naming};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONTROLLER: &str = "virtualmachine";
/// How often a VM in a steady state is looked at again (crash detection until host event
/// streams replace polling).
const RESYNC: Duration = Duration::from_secs(30);
/// How long a reconcile waits for the caches to fill after a (re)start.
const CACHE_WAIT: Duration = Duration::from_millis(500);
/// How often a VM in transition is looked at.
const TRANSITION: Duration = Duration::from_secs(2);

/// Reconcile one VirtualMachine. Runs in a `reconcile` span naming the object (inside
/// kube-runtime's `reconciling object` span), so that logs and exported traces carry it.
#[tracing::instrument(name = "reconcile", skip_all, fields(
    object.kind = "VirtualMachine",
    object.namespace = %vm.namespace().unwrap_or_default(),
    object.name = %vm.name_any(),
))]
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Requeue> {
    if !ctx.caches.ready() {
        // Nothing is decided or written on partial caches; look again shortly.
        return Ok(Requeue::requeue(CACHE_WAIT));
    }
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = vm.namespace().unwrap_or_default();
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, vm, |event| async {
        match event {
            Finalizer::Apply(vm) => apply(&vm, &api, &ctx).await,
            Finalizer::Cleanup(vm) => cleanup(&vm, &api, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// What to do after a failed reconcile: invalid specs wait for a change, the rest back off.
pub fn error_policy(vm: Arc<VirtualMachine>, err: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failure(CONTROLLER, err.category());
    if err.is_permanent() {
        return Requeue::await_change();
    }
    let delay = ctx.backoff.next(&key(&vm));
    tracing::warn!(vm = %vm.name_any(), error = %err, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

fn key(vm: &VirtualMachine) -> String {
    vm.metadata
        .uid
        .clone()
        .unwrap_or_else(|| format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any()))
}

/// Why a reconcile could not finish, as it is shown to the user.
struct Blocked {
    phase: VmPhase,
    reason: &'static str,
    message: String,
    retry: Retry,
}

enum Retry {
    /// Nothing will change until the spec (or a watched object) does.
    OnChange,
    /// Look again after this long (a watched object will usually trigger earlier).
    After(Duration),
    /// Transient: back off.
    Backoff,
}

impl Blocked {
    fn new(phase: VmPhase, reason: &'static str, message: impl Into<String>, retry: Retry) -> Self {
        Blocked {
            phase,
            reason,
            message: message.into(),
            retry,
        }
    }
}

/// The host a VM is placed on, connected.
struct Placed {
    name: String,
    pool: HostPool,
    hv: Arc<dyn Hypervisor>,
}

async fn apply(vm: &VirtualMachine, api: &Api<VirtualMachine>, ctx: &Context) -> Result<Requeue> {
    let mut st = vm.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let outcome = drive(vm, api, ctx, &mut st, now).await;
    let requeue = match outcome {
        Ok(after) => {
            ctx.backoff.reset(&key(vm));
            Ok(Requeue::requeue(after))
        }
        Err(b) => {
            let previous =
                find(&st.conditions, "Ready").map(|c| (c.reason.clone(), c.message.clone()));
            // Progress of an import changes the message but is not news.
            let progress_only = b.reason == "ImportingImage"
                && previous
                    .as_ref()
                    .is_some_and(|(r, _)| r == "ImportingImage");
            if previous.as_ref() != Some(&(b.reason.to_string(), b.message.clone()))
                && !progress_only
            {
                ctx.event(
                    vm,
                    EventType::Warning,
                    b.reason,
                    "Reconcile",
                    b.message.clone(),
                )
                .await;
            }
            st.phase = Some(b.phase);
            set_condition(
                &mut st.conditions,
                "Ready",
                ConditionStatus::False,
                b.reason,
                b.message.clone(),
                vm.metadata.generation,
                now,
            );
            if matches!(
                b.reason,
                "HostPoolNotFound" | "NoHostAvailable" | "InvalidSpec" | "DuplicateMAC"
            ) && st.host.is_none()
            {
                set_condition(
                    &mut st.conditions,
                    "Scheduled",
                    ConditionStatus::False,
                    b.reason,
                    b.message.clone(),
                    vm.metadata.generation,
                    now,
                );
            }
            match b.retry {
                Retry::OnChange => Ok(Requeue::await_change()),
                Retry::After(d) => Ok(Requeue::requeue(d)),
                Retry::Backoff => Ok(Requeue::requeue(ctx.backoff.next(&key(vm)))),
            }
        }
    };
    st.observed_generation = vm.metadata.generation;
    apply_status(api, vm, vm.status.as_ref(), &st).await?;
    requeue
}

/// Drive the VM one step towards its spec; `st` is updated with what was observed and done.
async fn drive(
    vm: &VirtualMachine,
    api: &Api<VirtualMachine>,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<Duration, Blocked> {
    let generation = vm.metadata.generation;
    let resources = resolve_resources(vm, &ctx.client).await?;
    st.resources = Some(resources.status());
    let valid = validate(&vm.spec, &resources).map_err(|m| {
        Blocked::new(
            VmPhase::Failed,
            "InvalidSpec",
            format!("fix the spec: {m}"),
            // A class that changes is looked at again at the next resync.
            if resources.class_name.is_some() {
                Retry::After(RESYNC)
            } else {
                Retry::OnChange
            },
        )
    })?;
    mac::check_vm(vm, &ctx.caches.vms.state()).map_err(|m| {
        let phase = st.phase.filter(|_| st.host.is_some());
        Blocked::new(
            phase.unwrap_or(VmPhase::Pending),
            "DuplicateMAC",
            m,
            Retry::After(RESYNC),
        )
    })?;
    let seed = cloud_init::resolve(vm, &ctx.client)
        .await
        .map_err(seed_blocked(vm))?;
    let placed = place(vm, &valid, api, ctx, st, now).await?;
    if let Some(after) = follow_migrations(vm, ctx, &placed, st, now).await? {
        return Ok(after);
    }
    let hv = placed.hv.as_ref();
    let pool = &placed.pool;
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let prior_phase = st.phase;
    let host_error =
        |e: HypervisorError, what: &str| host_blocked(&placed.name, e, what, prior_phase);

    let facts = ctx
        .hosts
        .info(hv)
        .await
        .map_err(|e| host_error(e, "reading host facts"))?;
    let virt_type = if facts.kvm {
        VirtType::Kvm
    } else {
        VirtType::Qemu
    };
    let storage = &pool.spec.storage;
    // Disks are looked up and created once per spec generation and host; later reconciles reuse
    // the result (any failure further on forgets it, so a volume removed behind ferry's back is
    // noticed at the next attempt).
    let seed_volume = seed.as_ref().map(|s| cloud_init::volume_name(vm, s));
    let seed_path_matches = |disks: &[ResolvedDisk]| {
        let cached = disks.iter().find(|d| d.name == definition::SEED_DISK);
        match (&seed_volume, cached) {
            (None, None) => true,
            (Some(v), Some(d)) => d.path.ends_with(&format!("/{v}")),
            _ => false,
        }
    };
    let disks = match ctx
        .vm_runtime
        .provisioned(&uid, vm.metadata.generation, &placed.name)
    {
        Some(disks) if seed_path_matches(&disks) => disks,
        _ => {
            hv.ensure_pool(&storage.pool, storage.path.as_deref())
            .await
            .map_err(|e| match e {
                e if e.is_connection_lost() => host_error(e, "preparing storage"),
                e => Blocked::new(
                    VmPhase::Pending,
                    "StoragePoolUnavailable",
                    format!(
                        "storage pool {:?} is not usable on host {}: {e}; define it there or set spec.storage.path in HostPool {}",
                        storage.pool, placed.name, pool.name_any()
                    ),
                    Retry::Backoff,
                ),
            })?;

            // The seed first: it is complete or absent, and recorded in status at once, so a
            // later failure leaves nothing unowned.
            let seed_disk = match (&seed, &seed_volume) {
                (Some(seed), Some(name)) => {
                    let (vol, created) =
                        cloud_init::ensure_volume(hv, &storage.pool, name, seed)
                            .await
                            .map_err(|e| match e {
                                e if e.is_connection_lost() => {
                                    host_error(e, "uploading the cloud-init seed")
                                }
                                e => Blocked::new(
                                    VmPhase::Pending,
                                    "SeedUploadFailed",
                                    format!(
                                        "storing the cloud-init seed in pool {:?} on host {} failed: {e}",
                                        storage.pool, placed.name
                                    ),
                                    Retry::Backoff,
                                ),
                            })?;
                    cloud_init::record(st, Some((&storage.pool, &vol.name)));
                    if created {
                        ctx.event(
                            vm,
                            EventType::Normal,
                            "SeedCreated",
                            "Provision",
                            format!(
                                "Stored the cloud-init seed as {} in pool {} on host {}",
                                vol.name, storage.pool, placed.name
                            ),
                        )
                        .await;
                    }
                    Some(ResolvedDisk {
                        name: definition::SEED_DISK.to_string(),
                        path: vol.path,
                        format: "raw".to_string(),
                    })
                }
                _ => {
                    cloud_init::record(st, None);
                    None
                }
            };
            let mut disks =
                provision_disks(vm, &valid, hv, &storage.pool, &placed.name, st, ctx).await?;
            disks.extend(seed_disk);
            ctx.vm_runtime
                .remember_provisioned(&uid, vm.metadata.generation, &placed.name, &disks);
            disks
        }
    };
    // Record what exists also when the disks came from the cache: this reconcile may have
    // started from an object older than the status write that recorded them.
    record_disks(vm, st, &storage.pool, seed_volume.as_deref());
    let interfaces = definition::macs(vm);
    st.interfaces = interfaces.clone();
    let mut def = definition::build(
        vm,
        &valid,
        &disks,
        &interfaces,
        virt_type,
        pool.console_dir(),
    );
    if let Some(seed) = disks.iter().find(|d| d.name == definition::SEED_DISK) {
        definition::attach_seed(&mut def, &seed.path);
    }
    let hash = domain_xml::definition_hash(&def);
    let desired_shape = domain_xml::shape(&def);

    let mut dom = hv
        .lookup_domain(&uid)
        .await
        .map_err(|e| host_error(e, "looking up the domain"))?;
    if let Some(d) = &dom
        && d.config.is_none()
    {
        return Err(Blocked::new(
            VmPhase::Failed,
            "DomainConflict",
            format!(
                "host {} has a domain {:?} with this VM's UUID {uid} that ferry did not create; remove it or recreate the VirtualMachine",
                placed.name, d.name
            ),
            Retry::Backoff,
        ));
    }
    let configured = dom
        .as_ref()
        .and_then(|d| d.config.as_ref())
        .map(|m| m.definition_hash.as_str());
    if configured != Some(hash.as_str()) {
        let xml = domain_xml::to_xml(&def).map_err(|e| {
            Blocked::new(
                VmPhase::Failed,
                "InvalidSpec",
                format!("cannot build the domain: {e}"),
                Retry::OnChange,
            )
        })?;
        hv.define_domain(&xml).await.map_err(|e| match e {
            e if e.is_connection_lost() => host_error(e, "defining the domain"),
            e => Blocked::new(
                VmPhase::Failed,
                "DefineFailed",
                format!(
                    "libvirt on host {} refused the domain definition: {e}",
                    placed.name
                ),
                Retry::Backoff,
            ),
        })?;
        let verb = if dom.is_some() {
            "Updated the domain definition"
        } else {
            "Defined the domain"
        };
        ctx.event(
            vm,
            EventType::Normal,
            "Defined",
            "Define",
            format!("{verb} {} on host {}", def.name, placed.name),
        )
        .await;
        dom = hv
            .lookup_domain(&uid)
            .await
            .map_err(|e| host_error(e, "looking up the domain"))?;
    }
    let Some(dom) = dom else {
        return Err(Blocked::new(
            VmPhase::Provisioning,
            "DefineFailed",
            format!(
                "host {} accepted the domain definition but does not list it",
                placed.name
            ),
            Retry::Backoff,
        ));
    };

    // Seeds replaced by newer ones go once no running domain reads them.
    match cloud_init::collect(hv, st, &dom).await {
        Ok(removed) => {
            for v in removed {
                ctx.event(
                    vm,
                    EventType::Normal,
                    "SeedRemoved",
                    "Cleanup",
                    format!("Removed the replaced cloud-init seed {v}"),
                )
                .await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not remove a replaced cloud-init seed"),
    }

    // Changes that need a restart.
    let changes = match (dom.state.is_active(), dom.live.as_ref()) {
        (true, Some(live)) if live.definition_hash != hash => {
            let c = domain_xml::restart_changes(&live.shape, &desired_shape);
            let class_note = |c: String| match &vm.spec.class_name {
                Some(name)
                    if c.starts_with("vCPUs")
                        || c.starts_with("memory")
                        || c.starts_with("CPU model") =>
                {
                    format!("{c} (VirtualMachineClass {name})")
                }
                _ => c,
            };
            let c: Vec<String> = c.into_iter().map(class_note).collect();
            let seed_change = |verb: &str| format!("disk {} {verb}", definition::SEED_DISK);
            let c: Vec<String> = c
                .into_iter()
                .map(|c| {
                    if c == seed_change("changed") {
                        "cloud-init data changed (cloud-init reads it at boot)".to_string()
                    } else if c == seed_change("added") {
                        "cloud-init seed added".to_string()
                    } else if c == seed_change("removed") {
                        "cloud-init seed removed".to_string()
                    } else {
                        c
                    }
                })
                .collect();
            if c.is_empty() {
                vec!["domain definition changed".to_string()]
            } else {
                c
            }
        }
        _ => Vec::new(),
    };
    let restart_required = !changes.is_empty();
    let was_required = crate::api::condition::is_true(&st.conditions, "RestartRequired");
    set_condition(
        &mut st.conditions,
        "RestartRequired",
        restart_required.into(),
        if restart_required {
            "SpecChanged"
        } else {
            "UpToDate"
        },
        if restart_required {
            format!(
                "restart the VM to apply: {} (annotate ferry.dev/restart=<token>, or kubectl ferry restart)",
                changes.join("; ")
            )
        } else {
            if dom.state.is_active() {
                "the running domain matches the spec".to_string()
            } else {
                "the domain is not running; its next start uses the current spec".to_string()
            }
        },
        generation,
        now,
    );
    if restart_required && !was_required {
        ctx.event(
            vm,
            EventType::Normal,
            "RestartRequired",
            "Update",
            format!("Restart needed to apply: {}", changes.join("; ")),
        )
        .await;
    }

    // Run state.
    st.stopped_by_guest = lifecycle::stopped_by_guest(st.stopped_by_guest, st.phase, dom.state);
    if !dom.state.is_active() {
        ctx.vm_runtime.stopped(&uid);
    }
    let restart_token = vm.annotations().get(RESTART_ANNOTATION).cloned();
    let restart_pending = restart_token.is_some() && restart_token != st.last_restart_request;
    let inputs = lifecycle::Inputs {
        strategy: vm.run_strategy(),
        power: vm
            .annotations()
            .get(POWER_ANNOTATION)
            .and_then(|v| Power::parse(v)),
        restart_pending,
        state: dom.state,
        stopped_by_guest: st.stopped_by_guest,
        stopping_for: ctx.vm_runtime.stopping_for(&uid),
        grace: Duration::from_secs(vm.grace_seconds()),
    };
    let mut decision = lifecycle::decide(&inputs);
    let held = match hold_for_failover(vm, ctx, &placed.name, &mut decision) {
        Some(h) => Some(h),
        None => monitor_unplanned_stop(vm, ctx, st, prior_phase, &inputs, &mut decision, now).await,
    };
    act(vm, ctx, hv, &placed.name, &dom, decision.action).await?;
    if decision.restart_handled {
        st.last_restart_request = restart_token;
    }
    if decision.action == Action::Start {
        st.stopped_by_guest = false;
    }
    let state = if decision.action == Action::None {
        dom.state
    } else {
        hv.lookup_domain(&uid)
            .await
            .map_err(|e| host_error(e, "looking up the domain"))?
            .map(|d| d.state)
            .unwrap_or(dom.state)
    };
    let phase = lifecycle::phase(Some(state), decision.action);
    // What the guest agent says (addresses, OS); nothing when it does not run or has no agent.
    let report = if state == DomainState::Running {
        hv.guest_info(&uid).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "guest agent not asked");
            None
        })
    } else {
        None
    };
    definition::apply_guest_report(&mut st.interfaces, report.as_ref());
    st.guest_os = report.and_then(|r| r.os);
    if phase == VmPhase::Running && st.phase != Some(VmPhase::Running) {
        ctx.backoff.reset(&key(vm));
    }
    st.phase = Some(phase);
    if phase == VmPhase::Running
        && let Some(r) = st.last_recovery.as_mut()
        && r.running.is_none()
        && r.to_host.as_deref() == Some(placed.name.as_str())
    {
        r.running = Some(Time(now));
    }
    let (ready, reason, message) = match &held {
        Some(h) if !state.is_active() => (ConditionStatus::False, h.reason, h.message.clone()),
        _ => readiness(vm, phase, state, &placed.name, st.stopped_by_guest),
    };
    set_condition(
        &mut st.conditions,
        "Ready",
        ready,
        reason,
        message,
        generation,
        now,
    );
    if let Some(after) = held.and_then(|h| h.retry_after) {
        return Ok(after.min(RESYNC));
    }
    Ok(match phase {
        VmPhase::Starting | VmPhase::Stopping => match decision.action {
            Action::WaitForShutdown(d) => d.min(TRANSITION),
            _ => TRANSITION,
        },
        _ => RESYNC,
    })
}

/// Ready reason of a VM that VM monitoring leaves stopped.
const RESTART_LIMIT_REACHED: &str = "RestartLimitReached";

/// Ready reason of a VM whose host the HA controller is failing over.
const HOST_FAILING_OVER: &str = "HostFailingOver";

/// A VM left stopped: the Ready reason and message, and when to look again (for VM monitoring,
/// when the window frees a restart; `None` with a limit of 0).
struct Held {
    reason: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

/// A VM that an HAPolicy covers gets no start on a host the HA controller is failing over (its
/// domains being stopped, or the host fenced): the VM is about to restart elsewhere, and a start
/// here would fight that.
fn hold_for_failover(
    vm: &VirtualMachine,
    ctx: &Context,
    host: &str,
    decision: &mut lifecycle::Decision,
) -> Option<Held> {
    let verdict = ctx.ha.of_host(host).filter(|v| v.failing_over())?;
    if decision.action != Action::Start || ctx.caches.covering_policy(vm).is_none() {
        return None;
    }
    decision.action = Action::None;
    decision.restart_handled = false;
    Some(Held {
        reason: HOST_FAILING_OVER,
        message: format!(
            "host {host} is {verdict} for HA: the VM restarts on another host once this one is proven off"
        ),
        retry_after: Some(Duration::from_secs(2)),
    })
}

/// VM monitoring. When the decision is to start a domain that stopped without ferry asking
/// (crashed, killed, or shut down under `Always`) and an HAPolicy covers the VM, the restart is
/// counted against the policy's limits; over the limit the start is cancelled and the VM is
/// [`Held`]. Records each counted restart in `st` and as an Event.
async fn monitor_unplanned_stop(
    vm: &VirtualMachine,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    prior_phase: Option<VmPhase>,
    inputs: &lifecycle::Inputs,
    decision: &mut lifecycle::Decision,
    now: Timestamp,
) -> Option<Held> {
    let Some(covering) = ctx.caches.covering_policy(vm) else {
        st.unplanned_restarts.clear();
        return None;
    };
    let (policy, limits) = (covering.name_any(), monitoring::Limits::of(&covering));
    // The start after a failover is planned, not a crash restart.
    if st
        .last_recovery
        .as_ref()
        .is_some_and(|r| r.to_host.is_some() && r.running.is_none())
    {
        return None;
    }
    let window = limits.window;
    let history: Vec<Timestamp> = st.unplanned_restarts.iter().map(|t| t.0).collect();
    st.unplanned_restarts = monitoring::in_window(&history, now, window)
        .into_iter()
        .map(Time)
        .collect();
    let was_held = find(&st.conditions, "Ready").is_some_and(|c| c.reason == RESTART_LIMIT_REACHED);
    let unplanned = decision.action == Action::Start
        && monitoring::unplanned_stop(
            inputs.state.is_active(),
            prior_phase == Some(VmPhase::Running),
            was_held,
            inputs.restart_pending,
        );
    if !unplanned {
        return None;
    }
    let what = match inputs.state {
        DomainState::ShutOff(ShutOffReason::Crashed) | DomainState::Crashed => "crashed",
        DomainState::ShutOff(ShutOffReason::Shutdown) => "was shut down from inside the guest",
        _ => "stopped without ferry asking",
    };
    match monitoring::decide(&history, now, limits) {
        monitoring::Verdict::Restart { count } => {
            st.unplanned_restarts.push(Time(now));
            ctx.event(
                vm,
                EventType::Warning,
                "RestartedAfterCrash",
                "Start",
                format!(
                    "The domain {what}; starting it again (restart {count} of {} allowed per {}s by HAPolicy {policy})",
                    limits.max_restarts,
                    window.as_secs()
                ),
            )
            .await;
            None
        }
        monitoring::Verdict::Hold { count, until } => {
            decision.action = Action::None;
            let when = match until {
                Some(t) => format!("it is started again automatically after {t}"),
                None => "it is not started again automatically (maxRestarts 0)".to_string(),
            };
            let message = format!(
                "the domain {what} and was restarted {count} times in the last {}s, the limit of HAPolicy {policy}; {when}, or restart it now with the annotation ferry.dev/restart=<token>",
                window.as_secs()
            );
            if !was_held {
                ctx.event(
                    vm,
                    EventType::Warning,
                    RESTART_LIMIT_REACHED,
                    "Start",
                    message.clone(),
                )
                .await;
            }
            Some(Held {
                reason: RESTART_LIMIT_REACHED,
                message,
                retry_after: until.map(|t| {
                    Duration::try_from(t.duration_since(now)).unwrap_or_default()
                        + Duration::from_secs(1)
                }),
            })
        }
    }
}

/// Keep out of a live migration's way, and take a finished one over. Reports the VM's latest
/// migration and its `Migrating` condition. Returns `Some(delay)` when the reconcile must stop
/// here: a migration holds the VM, or the VM just moved (its new host is in `st`).
async fn follow_migrations(
    vm: &VirtualMachine,
    ctx: &Context,
    placed: &Placed,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<Option<Duration>, Blocked> {
    let ns = vm.namespace().unwrap_or_default();
    let migrations = ctx.caches.migrations_of(&ns, &vm.name_any());
    let generation = vm.metadata.generation;
    st.migration = migrations.last().map(|m| {
        let s = m.status.clone().unwrap_or_default();
        VmMigrationStatus {
            name: m.name_any(),
            phase: s.phase,
            source: s.source,
            target: s.target,
            start_time: s.start_time,
            end_time: s.end_time,
            downtime_ms: s.downtime_ms,
        }
    });
    if let Some(m) = migrations.iter().find(|m| {
        m.holds_vm()
            && m.status.as_ref().and_then(|s| s.source.as_deref()) == Some(placed.name.as_str())
    }) {
        let target = m
            .status
            .as_ref()
            .and_then(|s| s.target.clone())
            .unwrap_or_default();
        st.phase = Some(VmPhase::Migrating);
        set_condition(
            &mut st.conditions,
            "Migrating",
            ConditionStatus::True,
            "Migrating",
            format!(
                "moving from host {} to host {target} ({})",
                placed.name,
                m.name_any()
            ),
            generation,
            now,
        );
        return Ok(Some(TRANSITION));
    }
    // The latest migration that left this host and succeeded: if both hosts confirm it, the VM
    // now lives on the target.
    let landed = migrations.iter().rev().find(|m| {
        let s = m.status.clone().unwrap_or_default();
        s.phase == Some(MigrationPhase::Succeeded)
            && s.source.as_deref() == Some(placed.name.as_str())
            && s.target.as_deref().is_some_and(|t| t != placed.name)
    });
    let (reason, message) = match migrations.last().and_then(|m| m.status.clone()) {
        Some(s) if s.phase == Some(MigrationPhase::Failed) => (
            "MigrationFailed",
            format!(
                "the last migration failed: {}",
                s.message.unwrap_or_default()
            ),
        ),
        Some(s) if s.phase == Some(MigrationPhase::Succeeded) => (
            "Migrated",
            format!(
                "moved from host {} to host {}",
                s.source.unwrap_or_default(),
                s.target.unwrap_or_default()
            ),
        ),
        _ => ("NotMigrating", "no migration in progress".to_string()),
    };
    set_condition(
        &mut st.conditions,
        "Migrating",
        ConditionStatus::False,
        reason,
        message,
        generation,
        now,
    );
    let Some(landed) = landed else {
        return Ok(None);
    };
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let here = placed
        .hv
        .lookup_domain(&uid)
        .await
        .map_err(|e| host_blocked(&placed.name, e, "looking up the domain", st.phase))?;
    if here.as_ref().is_some_and(|d| d.state.is_active()) {
        // Still here: that migration is an old record.
        return Ok(None);
    }
    let target = landed
        .status
        .as_ref()
        .and_then(|s| s.target.clone())
        .unwrap_or_default();
    let confirm = Blocked::new(
        VmPhase::Unknown,
        "MigrationUnconfirmed",
        format!(
            "migration {} reported the VM on host {target}, but that host cannot confirm it yet; ferry starts nothing until it does",
            landed.name_any()
        ),
        Retry::Backoff,
    );
    let node = ctx
        .caches
        .nodes
        .get(&ObjectRef::new(&target))
        .ok_or_else(|| Blocked {
            message: format!("{} (Node {target} is gone)", confirm.message),
            ..Blocked::new(confirm.phase, confirm.reason, "", Retry::Backoff)
        })?;
    let there = match host_uri(&placed.pool, &node) {
        Ok(uri) => match ctx.hosts.connect(&uri, &placed.pool).await {
            Ok(hv) => hv.lookup_domain(&uid).await.ok().flatten(),
            Err(_) => return Err(confirm),
        },
        Err(_) => return Err(confirm),
    };
    if !there.as_ref().is_some_and(|d| d.state.is_active()) {
        // Neither host runs it: it stopped during or after the move; carry on here as usual.
        return Ok(None);
    }
    st.host = Some(target.clone());
    set_condition(
        &mut st.conditions,
        "Scheduled",
        ConditionStatus::True,
        "Migrated",
        format!("placed on host {target} by migration {}", landed.name_any()),
        generation,
        now,
    );
    ctx.event(
        vm,
        EventType::Normal,
        "Migrated",
        "Migrate",
        format!(
            "Now running on host {target} (moved from host {} by {})",
            placed.name,
            landed.name_any()
        ),
    )
    .await;
    Ok(Some(Duration::from_millis(200)))
}

/// The VM's size from its spec or its VirtualMachineClass (read at every reconcile, so a changed
/// class shows as `RestartRequired` within one resync).
async fn resolve_resources(
    vm: &VirtualMachine,
    client: &kube::Client,
) -> Result<class::Resources, Blocked> {
    let phase = if vm.status.as_ref().and_then(|s| s.host.as_ref()).is_some() {
        VmPhase::Failed
    } else {
        VmPhase::Pending
    };
    let found = match &vm.spec.class_name {
        Some(name) => Api::<VirtualMachineClass>::all(client.clone())
            .get_opt(name)
            .await
            .map_err(|e| {
                Blocked::new(
                    phase,
                    "ClassUnavailable",
                    format!("reading VirtualMachineClass {name} failed: {e}"),
                    Retry::Backoff,
                )
            })?,
        None => None,
    };
    class::resolve(&vm.spec, found.as_ref().map(|c| &c.spec)).map_err(|e| match e {
        class::ClassError::NotFound(_) => Blocked::new(
            phase,
            "ClassNotFound",
            e.to_string(),
            Retry::After(Duration::from_secs(30)),
        ),
        class::ClassError::Invalid(m) => Blocked::new(
            VmPhase::Failed,
            "InvalidSpec",
            format!("fix the spec: {m}"),
            Retry::OnChange,
        ),
    })
}

/// How a cloud-init problem shows: a missing Secret may appear, invalid data waits for a change
/// (of the spec, or of a Secret, looked at again every minute).
fn seed_blocked(vm: &VirtualMachine) -> impl Fn(cloud_init::SeedProblem) -> Blocked + '_ {
    move |p| {
        let phase = if vm.status.as_ref().and_then(|s| s.host.as_ref()).is_some() {
            VmPhase::Failed
        } else {
            VmPhase::Pending
        };
        match p {
            cloud_init::SeedProblem::SecretMissing(m) => Blocked::new(
                phase,
                "CloudInitSecretNotFound",
                m,
                Retry::After(Duration::from_secs(30)),
            ),
            cloud_init::SeedProblem::Invalid(m) => Blocked::new(
                phase,
                "CloudInitInvalid",
                format!("fix spec.cloudInit: {m}"),
                if cloud_init::uses_secrets(vm) {
                    Retry::After(Duration::from_secs(60))
                } else {
                    Retry::OnChange
                },
            ),
            cloud_init::SeedProblem::Api(m) => {
                Blocked::new(phase, "CloudInitUnavailable", m, Retry::Backoff)
            }
        }
    }
}

/// Find or choose the VM's host and connect to it.
async fn place(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    api: &Api<VirtualMachine>,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<Placed, Blocked> {
    let ns = vm.namespace().unwrap_or_default();
    let pool_name = &vm.spec.host_pool;
    let pool = ctx
        .caches.pools
        .get(&ObjectRef::new(pool_name).within(&ns))
        .ok_or_else(|| {
            Blocked::new(
                VmPhase::Pending,
                "HostPoolNotFound",
                format!("HostPool {pool_name:?} does not exist in namespace {ns:?}: create it or fix spec.hostPool"),
                Retry::After(Duration::from_secs(300)),
            )
        })?;
    // The HA controller proved the VM's host off: place it anew, once per incident, never on
    // that host (its pool status may not show it down yet).
    let exclude = failover_request(vm, st).map(|f| {
        tracing::info!(vm = %vm.name_any(), host = %f.host, incident = %f.incident, "host proven off; placing the VM anew");
        st.host = None;
        st.phase = Some(VmPhase::Pending);
        st.last_recovery = Some(Recovery {
            incident: f.incident.clone(),
            from_host: f.host.clone(),
            evidence: f.evidence.clone(),
            detected: Some(f.detected.clone()),
            proven_off: Some(f.proven.clone()),
            ..Recovery::default()
        });
        ctx.vm_runtime.forget_provisioned(vm.metadata.uid.as_deref().unwrap_or_default());
        f.host
    });
    let host = match st.host.clone() {
        Some(h) => h,
        None => {
            let host = scheduling::choose(vm, valid.need(), &pool, ctx, exclude.as_deref())
                .map_err(|e| match e {
                    NotPlaced::InvalidSpec(m) => {
                        Blocked::new(VmPhase::Pending, "InvalidSpec", m, Retry::OnChange)
                    }
                    NotPlaced::NoHost(m) => Blocked::new(
                        VmPhase::Pending,
                        "NoHostAvailable",
                        format!("waiting for a host in HostPool {pool_name}: {m}"),
                        Retry::After(Duration::from_secs(60)),
                    ),
                })?;
            // Record the choice before anything is created on the host, so that a crash here can
            // never lead to a second copy somewhere else.
            st.host = Some(host.clone());
            st.domain_uuid = vm.metadata.uid.clone();
            if let Some(r) = st.last_recovery.as_mut()
                && r.to_host.is_none()
            {
                r.to_host = Some(host.clone());
                r.replaced = Some(Time(now));
            }
            st.phase = Some(VmPhase::Provisioning);
            set_condition(
                &mut st.conditions,
                "Scheduled",
                ConditionStatus::True,
                "Placed",
                format!("placed on host {host}"),
                vm.metadata.generation,
                now,
            );
            apply_status(api, vm, vm.status.as_ref(), st)
                .await
                .map_err(|e| {
                    scheduling::forget(ctx, vm.metadata.uid.as_deref().unwrap_or_default());
                    Blocked::new(
                        VmPhase::Pending,
                        "StatusWriteFailed",
                        format!("could not record the placement: {e}"),
                        Retry::Backoff,
                    )
                })?;
            ctx.event(
                vm,
                EventType::Normal,
                "Scheduled",
                "Schedule",
                format!("Placed on host {host}"),
            )
            .await;
            host
        }
    };
    let node = ctx.caches.nodes.get(&ObjectRef::new(&host)).ok_or_else(|| {
        Blocked::new(
            VmPhase::Unknown,
            "HostGone",
            format!("host {host} no longer exists as a Node; the VM stays assigned to it until it returns"),
            Retry::After(Duration::from_secs(60)),
        )
    })?;
    let uri = host_uri(&pool, &node).map_err(|m| {
        Blocked::new(
            VmPhase::Pending,
            "HostMisconfigured",
            format!("cannot reach host {host}: {m}; fix spec.libvirt in HostPool {pool_name}"),
            Retry::After(Duration::from_secs(300)),
        )
    })?;
    let hv = ctx
        .hosts
        .connect(&uri, &pool)
        .await
        .map_err(|e| host_blocked(&host, e, "connecting", st.phase))?;
    Ok(Placed {
        name: host,
        pool: (*pool).clone(),
        hv,
    })
}

/// The failover the HA controller asks for through the `ferry.dev/failover` annotation: only
/// while the VM is still placed on the failed host and that incident was not handled yet.
pub fn failover_request(vm: &VirtualMachine, st: &VirtualMachineStatus) -> Option<Failover> {
    let raw = vm.annotations().get(FAILOVER_ANNOTATION)?;
    let f: Failover = match serde_json::from_str(raw) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(vm = %vm.name_any(), error = %e, "ignoring an unreadable {FAILOVER_ANNOTATION} annotation");
            return None;
        }
    };
    let handled = st
        .last_recovery
        .as_ref()
        .is_some_and(|r| r.incident == f.incident);
    (st.host.as_deref() == Some(f.host.as_str()) && !handled).then_some(f)
}

fn host_blocked(host: &str, e: HypervisorError, what: &str, phase: Option<VmPhase>) -> Blocked {
    if let HypervisorError::Rejected { .. } = &e {
        let phase = match phase {
            None | Some(VmPhase::Pending) => VmPhase::Pending,
            _ => VmPhase::Unknown,
        };
        Blocked::new(
            phase,
            "HostMisconfigured",
            format!("cannot reach host {host} ({what}): {e}; fix the HostPool's credentials"),
            Retry::Backoff,
        )
    } else if e.is_connection_lost() {
        let phase = match phase {
            None | Some(VmPhase::Pending) => VmPhase::Pending,
            _ => VmPhase::Unknown,
        };
        Blocked::new(
            phase,
            "HostUnreachable",
            format!(
                "libvirt on host {host} does not answer ({what}): {e}; ferry keeps retrying with backoff"
            ),
            Retry::Backoff,
        )
    } else {
        Blocked::new(
            VmPhase::Failed,
            "HostOperationFailed",
            format!("{what} on host {host} failed: {e}"),
            Retry::Backoff,
        )
    }
}

/// Make sure every disk has its volume on the host, creating overlays for image disks.
/// Every golden image and volume is checked before anything is created, and overlays created in
/// this call are removed again if a later one fails: a failure leaves the host as it was.
async fn provision_disks(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
    st: &mut VirtualMachineStatus,
    ctx: &Context,
) -> Result<Vec<ResolvedDisk>, Blocked> {
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up volumes", st.phase);
    enum Plan {
        Ready(VolumeInfo),
        Create {
            golden: VolumeInfo,
            name: String,
            capacity: u64,
        },
        Copy {
            from: VolumeInfo,
            name: String,
        },
    }
    let mut plans = Vec::new();
    for (i, d) in vm.spec.disks.iter().enumerate() {
        let plan = match d.source() {
            Some(DiskSource::Volume(v)) => match hv.lookup_volume(pool, v).await.map_err(lost)? {
                Some(vol) => Plan::Ready(vol),
                None => {
                    return Err(Blocked::new(
                        VmPhase::Pending,
                        "VolumeNotFound",
                        format!(
                            "volume {v:?} (spec.disks[{i}].volume) does not exist in storage pool {pool:?} on host {host}: create it or fix the spec"
                        ),
                        Retry::Backoff,
                    ));
                }
            },
            Some(source @ (DiskSource::Image(_) | DiskSource::Http(_))) => {
                let name = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
                match hv.lookup_volume(pool, &name).await.map_err(lost)? {
                    Some(vol) => Plan::Ready(vol),
                    None => {
                        let golden = match source {
                            DiskSource::Http(h) => imported_image(vm, ctx, hv, pool, host, i, h).await?,
                            DiskSource::Image(image) => hv.lookup_volume(pool, image).await.map_err(lost)?.ok_or_else(|| {
                                Blocked::new(
                                    VmPhase::Pending,
                                    "ImageNotFound",
                                    format!("golden image {image:?} (spec.disks[{i}].image) is not in storage pool {pool:?} on host {host}: upload it (virsh vol-upload) or fix the spec"),
                                    Retry::Backoff,
                                )
                            })?,
                            DiskSource::Volume(_) | DiskSource::Clone(_) => unreachable!("matched above"),
                        };
                        let image = golden.name.as_str();
                        let wanted = valid
                            .disk_sizes
                            .iter()
                            .find(|(n, _)| n == &d.name)
                            .map(|(_, s)| *s);
                        if let Some(w) = wanted
                            && w < golden.capacity
                        {
                            return Err(Blocked::new(
                                VmPhase::Failed,
                                "InvalidSpec",
                                format!(
                                    "fix the spec: spec.disks[{i}].size {} is smaller than image {image:?} ({} bytes)",
                                    d.size.as_deref().unwrap_or_default(),
                                    golden.capacity
                                ),
                                Retry::OnChange,
                            ));
                        }
                        let capacity = wanted.unwrap_or(golden.capacity);
                        Plan::Create {
                            golden,
                            name,
                            capacity,
                        }
                    }
                }
            }
            Some(DiskSource::Clone(c)) => {
                let name = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
                match hv.lookup_volume(pool, &name).await.map_err(lost)? {
                    Some(vol) => Plan::Ready(vol),
                    None => {
                        let from = clone_source(vm, ctx, hv, pool, host, i, c).await?;
                        Plan::Copy { from, name }
                    }
                }
            }
            None => {
                return Err(Blocked::new(
                    VmPhase::Failed,
                    "InvalidSpec",
                    format!(
                        "fix the spec: spec.disks[{i}] needs exactly one of image, volume, http or clone"
                    ),
                    Retry::OnChange,
                ));
            }
        };
        plans.push(plan);
    }
    let mut created: Vec<String> = Vec::new();
    let mut resolved = Vec::new();
    for (d, plan) in vm.spec.disks.iter().zip(plans) {
        let vol = match plan {
            Plan::Ready(v) => v,
            Plan::Create { .. } | Plan::Copy { .. } => {
                let (made, name, from) = match plan {
                    Plan::Create {
                        golden,
                        name,
                        capacity,
                    } => (
                        hv.create_overlay(pool, &name, &golden, capacity).await,
                        name,
                        format!("image {:?}", golden.name),
                    ),
                    Plan::Copy { from, name } => (
                        copy_volume(hv, pool, &name, &from).await,
                        name,
                        format!("a copy of volume {:?}", from.name),
                    ),
                    Plan::Ready(_) => unreachable!("matched above"),
                };
                match made {
                    Ok(v) => {
                        created.push(name.clone());
                        v
                    }
                    Err(e) => {
                        for c in &created {
                            if let Err(err) = hv.delete_volume(pool, c).await {
                                tracing::warn!(volume = %c, error = %err, "could not roll back overlay");
                            }
                        }
                        return Err(if e.is_connection_lost() {
                            host_blocked(host, e, "creating disks", st.phase)
                        } else {
                            Blocked::new(
                                VmPhase::Pending,
                                "DiskCreateFailed",
                                format!(
                                    "creating disk {} from {from} on host {host} failed: {e}",
                                    d.name
                                ),
                                Retry::Backoff,
                            )
                        });
                    }
                }
            }
        };
        resolved.push(ResolvedDisk {
            name: d.name.clone(),
            path: vol.path.clone(),
            format: vol.format.clone(),
        });
        if d.has_overlay()
            && !st
                .disks
                .iter()
                .any(|s| s.name == d.name && s.volume == vol.name)
        {
            st.disks.push(DiskStatus {
                name: d.name.clone(),
                pool: pool.to_string(),
                volume: vol.name.clone(),
            });
        }
    }
    for c in &created {
        ctx.event(
            vm,
            EventType::Normal,
            "DiskCreated",
            "Provision",
            format!("Created disk {c} in pool {pool} on host {host}"),
        )
        .await;
    }
    Ok(resolved)
}

/// The volume a clone disk copies, when the copy can be made now (see [`clone::decide`]).
async fn clone_source(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
    i: usize,
    c: &DiskClone,
) -> Result<VolumeInfo, Blocked> {
    let ns = vm.namespace().unwrap_or_default();
    let source = ctx
        .caches
        .vms
        .get(&ObjectRef::new(&c.virtual_machine).within(&ns));
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up the clone's source", None);
    // libvirt can say whether the source runs when it is on this host.
    let active = match source.as_deref() {
        Some(s) if s.status.as_ref().and_then(|st| st.host.as_deref()) == Some(host) => {
            let uid = s.metadata.uid.clone().unwrap_or_default();
            Some(
                hv.lookup_domain(&uid)
                    .await
                    .map_err(lost)?
                    .is_some_and(|d| d.state.is_active()),
            )
        }
        _ => None,
    };
    let wait = |reason: &'static str, message: String| {
        Blocked::new(
            VmPhase::Pending,
            reason,
            format!("spec.disks[{i}].clone: {message}"),
            Retry::After(Duration::from_secs(10)),
        )
    };
    match clone::decide(c, &vm.spec.host_pool, pool, source.as_deref(), active) {
        clone::CloneDecision::Copy { volume } => hv
            .lookup_volume(pool, &volume)
            .await
            .map_err(lost)?
            .ok_or_else(|| {
                wait(
                    clone::SOURCE_NOT_FOUND,
                    format!("volume {volume:?} of VirtualMachine {:?} is not in storage pool {pool:?} on host {host}", c.virtual_machine),
                )
            }),
        clone::CloneDecision::Wait { reason, message } => Err(wait(reason, message)),
    }
}

/// How long copying one disk may take.
const COPY_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Copy `from` into a new volume `name`, on a connection of its own: the copy takes as long as
/// the disk is large, and the shared connection must keep answering meanwhile.
async fn copy_volume(
    hv: &dyn Hypervisor,
    pool: &str,
    name: &str,
    from: &VolumeInfo,
) -> std::result::Result<VolumeInfo, HypervisorError> {
    let opts = crate::hypervisor::ConnectOptions {
        call_timeout: COPY_TIMEOUT,
        ..crate::hypervisor::ConnectOptions::default()
    };
    let own = crate::hypervisor::LibvirtHost::connect(hv.uri(), opts).await?;
    let copied = own.clone_volume(pool, name, from).await;
    own.close().await;
    copied
}

/// Make status list the VM's overlays and its current seed (entries are only ever added here).
fn record_disks(
    vm: &VirtualMachine,
    st: &mut VirtualMachineStatus,
    pool: &str,
    seed_volume: Option<&str>,
) {
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    for d in vm.spec.disks.iter().filter(|d| d.has_overlay()) {
        let volume = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
        if !st
            .disks
            .iter()
            .any(|s| s.name == d.name && s.volume == volume)
        {
            st.disks.push(DiskStatus {
                name: d.name.clone(),
                pool: pool.to_string(),
                volume,
            });
        }
    }
    cloud_init::record(st, seed_volume.map(|v| (pool, v)));
}

/// The golden image a disk downloads from a URL, if it is in the pool; otherwise the import is
/// started (or its progress or failure reported) and the VM waits.
async fn imported_image(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
    i: usize,
    h: &HttpImage,
) -> Result<VolumeInfo, Blocked> {
    let lost = |e: HypervisorError| host_blocked(host, e, "looking up images", None);
    if let Some(v) = image_import::lookup(hv, pool, &h.sha256)
        .await
        .map_err(lost)?
    {
        return Ok(v);
    }
    let key = image_import::ImportKey {
        uri: hv.uri().to_string(),
        pool: pool.to_string(),
        sha256: h.sha256.to_ascii_lowercase(),
    };
    let importing = |progress: String| {
        Blocked::new(
            VmPhase::Provisioning,
            "ImportingImage",
            format!(
                "importing {} (spec.disks[{i}].http) into pool {pool:?} on host {host}: {progress}",
                h.url
            ),
            Retry::After(Duration::from_secs(5)),
        )
    };
    match image_import::take_state(&key) {
        Some(image_import::ImportState::Running { bytes, total }) => {
            Err(importing(image_import::progress(bytes, total)))
        }
        Some(image_import::ImportState::Failed { message, checksum }) => {
            ctx.event(
                vm,
                EventType::Warning,
                if checksum {
                    "ChecksumMismatch"
                } else {
                    "ImportFailed"
                },
                "Import",
                message.clone(),
            )
            .await;
            Err(Blocked::new(
                VmPhase::Pending,
                if checksum {
                    "ChecksumMismatch"
                } else {
                    "ImportFailed"
                },
                format!(
                    "importing spec.disks[{i}].http into pool {pool:?} on host {host} failed, nothing was kept: {message}; fix the URL or checksum (ferry retries with backoff)"
                ),
                Retry::Backoff,
            ))
        }
        // Finished between the look at the pool and now: look again shortly.
        Some(image_import::ImportState::Done) => Err(importing("finished, verifying".into())),
        // Never started here, or finished and since removed from the pool: start.
        None => {
            image_import::start(
                key,
                h.url.clone(),
                crate::hypervisor::ConnectOptions::default(),
            );
            ctx.event(
                vm,
                EventType::Normal,
                "ImportStarted",
                "Import",
                format!("Importing {} into pool {pool} on host {host}", h.url),
            )
            .await;
            Err(importing("started".to_string()))
        }
    }
}

/// Carry out one lifecycle step.
async fn act(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    host: &str,
    dom: &DomainInfo,
    action: Action,
) -> Result<(), Blocked> {
    let uid = &dom.uuid;
    let fail = |e: HypervisorError, what: &'static str, reason: &'static str| {
        if e.is_connection_lost() {
            host_blocked(host, e, what, Some(VmPhase::Running))
        } else {
            Blocked::new(
                VmPhase::Failed,
                reason,
                format!("{what} on host {host} failed: {e}"),
                Retry::Backoff,
            )
        }
    };
    match action {
        Action::None | Action::WaitForShutdown(_) => {}
        Action::Start => {
            hv.start_domain(uid).await.map_err(|e| {
                if e.is_disk_locked() {
                    // The split-brain guard: another copy may still run somewhere.
                    Blocked::new(
                        VmPhase::Pending,
                        "DiskLocked",
                        format!(
                            "host {host} refused to start the domain because a disk is locked by a copy running elsewhere (QEMU's image locking or libvirt's lock manager): ferry never runs a VM twice and starts it once that copy is gone ({e})"
                        ),
                        Retry::Backoff,
                    )
                } else {
                    fail(e, "starting the domain", "StartFailed")
                }
            })?;
            ctx.vm_runtime.stopped(uid);
            ctx.event(
                vm,
                EventType::Normal,
                "Started",
                "Start",
                format!("Started on host {host}"),
            )
            .await;
        }
        Action::Shutdown => {
            hv.shutdown_domain(uid)
                .await
                .map_err(|e| fail(e, "shutting down the guest", "StopFailed"))?;
            ctx.vm_runtime.stop_requested(uid);
            ctx.event(
                vm,
                EventType::Normal,
                "ShuttingDown",
                "Stop",
                format!(
                    "Asked the guest to shut down; forced off after {}s",
                    vm.grace_seconds()
                ),
            )
            .await;
        }
        Action::Destroy => {
            hv.destroy_domain(uid)
                .await
                .map_err(|e| fail(e, "forcing the domain off", "StopFailed"))?;
            ctx.vm_runtime.stopped(uid);
            ctx.event(
                vm,
                EventType::Normal,
                "ForcedOff",
                "Stop",
                format!("Forced the domain off on host {host}"),
            )
            .await;
        }
    }
    Ok(())
}

/// The Ready condition for a phase.
fn readiness(
    vm: &VirtualMachine,
    phase: VmPhase,
    state: DomainState,
    host: &str,
    stopped_by_guest: bool,
) -> (ConditionStatus, &'static str, String) {
    use ConditionStatus::{False, True};
    match phase {
        VmPhase::Running if state == DomainState::Paused => (
            False,
            "Paused",
            format!("the domain is paused on host {host}"),
        ),
        VmPhase::Running => (True, "Running", format!("running on host {host}")),
        VmPhase::Starting => (False, "Starting", format!("starting on host {host}")),
        VmPhase::Stopping => (
            False,
            "Stopping",
            format!("the guest is shutting down on host {host}"),
        ),
        VmPhase::Stopped => {
            let why = match vm.run_strategy() {
                RunStrategy::Halted => "stopped as requested (runStrategy Halted)".to_string(),
                RunStrategy::Manual => "stopped (runStrategy Manual; set annotation ferry.dev/power=on to start)".to_string(),
                RunStrategy::RerunOnFailure if stopped_by_guest => {
                    "the guest shut itself down (runStrategy RerunOnFailure leaves it off; annotate ferry.dev/restart to start it)".to_string()
                }
                _ => "stopped".to_string(),
            };
            (False, "Stopped", why)
        }
        VmPhase::Provisioning => (
            False,
            "Provisioning",
            format!("creating disks and domain on host {host}"),
        ),
        other => (False, "NotRunning", format!("{other} on host {host}")),
    }
}

async fn cleanup(vm: &VirtualMachine, api: &Api<VirtualMachine>, ctx: &Context) -> Result<Requeue> {
    scheduling::forget(ctx, vm.metadata.uid.as_deref().unwrap_or_default());
    let Some(host) = vm.status.as_ref().and_then(|s| s.host.clone()) else {
        // Never placed: nothing was created anywhere.
        return Ok(Requeue::await_change());
    };
    let ns = vm.namespace().unwrap_or_default();
    let migrations = ctx.caches.migrations_of(&ns, &vm.name_any());
    if let Some(m) = migrations.iter().find(|m| m.holds_vm()) {
        // The migration controller aborts it because the VM is being deleted.
        return Err(Error::Missing(format!(
            "deletion waits for migration {} to end",
            m.name_any()
        )));
    }
    // A move that succeeded but is not recorded in status yet: the domain is on the target.
    let moved_to = migrations.iter().rev().find_map(|m| {
        let s = m.status.as_ref()?;
        (s.phase == Some(MigrationPhase::Succeeded) && s.source.as_deref() == Some(host.as_str()))
            .then(|| s.target.clone())
            .flatten()
    });
    if let Some(target) = moved_to {
        clean_host(vm, api, ctx, &target).await?;
    }
    clean_host(vm, api, ctx, &host).await
}

/// Remove the VM's domain and disks from `host`.
async fn clean_host(
    vm: &VirtualMachine,
    api: &Api<VirtualMachine>,
    ctx: &Context,
    host: &str,
) -> Result<Requeue> {
    let host = host.to_string();
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let domain = naming::domain_name(&ns, &vm.name_any());
    let pool = ctx
        .caches
        .pools
        .get(&ObjectRef::new(&vm.spec.host_pool).within(&ns));
    let mut volumes = owned_volumes(vm, pool.as_ref().map(|p| p.spec.storage.pool.as_str()));
    if let (Some(p), Ok(Some(seed))) = (&pool, cloud_init::resolve(vm, &ctx.client).await) {
        let v = (
            p.spec.storage.pool.clone(),
            cloud_init::volume_name(vm, &seed),
        );
        if !volumes.contains(&v) {
            volumes.push(v);
        }
    }
    let node = ctx.caches.nodes.get(&ObjectRef::new(&host));
    let abandon = vm
        .annotations()
        .get(ABANDON_ANNOTATION)
        .is_some_and(|v| v == "true");
    let gone_reason = match (&pool, &node) {
        (None, _) => Some(format!("HostPool {} is gone", vm.spec.host_pool)),
        (_, None) => Some(format!("Node {host} is gone")),
        (Some(p), Some(n)) if !selects(p, n) => Some(format!(
            "Node {host} has left HostPool {}",
            vm.spec.host_pool
        )),
        _ if abandon => Some(format!("annotation {ABANDON_ANNOTATION}=true")),
        _ => None,
    };
    let connected = match (&pool, &node) {
        (Some(p), Some(n)) => match host_uri(p, n) {
            Ok(uri) => ctx.hosts.connect(&uri, p).await.map_err(|e| e.to_string()),
            Err(m) => Err(m),
        },
        _ => Err("no HostPool or Node to reach it through".to_string()),
    };
    let hv = match connected {
        Ok(hv) => hv,
        Err(why) => {
            if let Some(gone) = gone_reason {
                let left: Vec<String> = volumes.iter().map(|(p, v)| format!("{p}/{v}")).collect();
                ctx.event(
                    vm,
                    EventType::Warning,
                    "LeftBehind",
                    "Delete",
                    format!(
                        "Deleted without cleaning host {host} ({gone}; {why}): domain {domain} (UUID {uid}) and volumes [{}] may remain there; remove them if the host returns",
                        left.join(", ")
                    ),
                )
                .await;
                return Ok(Requeue::await_change());
            }
            let mut st = vm.status.clone().unwrap_or_default();
            st.phase = Some(VmPhase::Terminating);
            set_condition(
                &mut st.conditions,
                "Ready",
                ConditionStatus::False,
                "HostUnreachable",
                format!(
                    "deletion waits for host {host} ({why}); to finish without cleaning it, annotate {ABANDON_ANNOTATION}=true"
                ),
                vm.metadata.generation,
                Timestamp::now(),
            );
            apply_status(api, vm, vm.status.as_ref(), &st).await?;
            return Err(Error::Missing(format!(
                "host {host} unreachable during deletion: {why}"
            )));
        }
    };
    stop_for_delete(vm, hv.as_ref(), &uid).await?;
    hv.undefine_domain(&uid).await?;
    for (pool, volume) in &volumes {
        hv.delete_volume(pool, volume).await?;
    }
    if let Some(p) = &pool {
        collect_images(vm, ctx, hv.as_ref(), &p.spec.storage.pool, &host).await?;
    }
    ctx.vm_runtime.stopped(&uid);
    ctx.vm_runtime.forget_provisioned(&uid);
    ctx.backoff.reset(&key(vm));
    ctx.event(
        vm,
        EventType::Normal,
        "Deleted",
        "Delete",
        format!(
            "Removed domain {domain} and {} disk(s) from host {host}",
            volumes.len()
        ),
    )
    .await;
    Ok(Requeue::await_change())
}

/// Remove the imported images this VM used that no other VM names any more (overlays on them
/// are gone by now: this VM's were deleted first, other VMs still name theirs).
async fn collect_images(
    vm: &VirtualMachine,
    ctx: &Context,
    hv: &dyn Hypervisor,
    pool: &str,
    host: &str,
) -> Result<()> {
    let others = ctx.caches.vms.state();
    for h in vm.spec.disks.iter().filter_map(|d| d.http.as_ref()) {
        let used = others.iter().any(|o| {
            o.metadata.uid != vm.metadata.uid
                && o.spec.disks.iter().any(|d| {
                    d.http
                        .as_ref()
                        .is_some_and(|x| x.sha256.eq_ignore_ascii_case(&h.sha256))
                })
        });
        if used {
            continue;
        }
        let image = naming::imported_image_name(&h.sha256);
        if hv.lookup_volume(pool, &image).await?.is_none() {
            continue;
        }
        hv.delete_volume(pool, &naming::imported_marker_name(&h.sha256))
            .await?;
        hv.delete_volume(pool, &image).await?;
        ctx.event(
            vm,
            EventType::Normal,
            "ImageRemoved",
            "Delete",
            format!(
                "Removed image {image} ({}) from pool {pool} on host {host}: no VirtualMachine uses it any more",
                h.url
            ),
        )
        .await;
    }
    Ok(())
}

/// Volumes ferry created for the VM: those recorded in status, plus the overlays its image disks
/// would have in the pool (in case it was interrupted between creating one and recording it).
fn owned_volumes(vm: &VirtualMachine, pool: Option<&str>) -> Vec<(String, String)> {
    let ns = vm.namespace().unwrap_or_default();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let mut out: std::collections::BTreeSet<(String, String)> = vm
        .status
        .as_ref()
        .map(|s| {
            s.disks
                .iter()
                .map(|d| (d.pool.clone(), d.volume.clone()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(pool) = pool {
        for d in vm.spec.disks.iter().filter(|d| d.has_overlay()) {
            let name = naming::overlay_volume_name(&ns, &vm.name_any(), &d.name, &uid);
            out.insert((pool.to_string(), name));
        }
    }
    out.into_iter().collect()
}

/// Shut the guest down gracefully for deletion, forcing it off after the grace period.
async fn stop_for_delete(vm: &VirtualMachine, hv: &dyn Hypervisor, uid: &str) -> Result<()> {
    let active = |d: &Option<DomainInfo>| d.as_ref().is_some_and(|d| d.state.is_active());
    if !active(&hv.lookup_domain(uid).await?) {
        return Ok(());
    }
    let grace = Duration::from_secs(vm.grace_seconds());
    if !grace.is_zero() {
        // A guest that ignores ACPI is forced off below.
        if hv.shutdown_domain(uid).await.is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if !active(&hv.lookup_domain(uid).await?) {
                    return Ok(());
                }
            }
        }
    }
    hv.destroy_domain(uid).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlays_are_recorded_once_and_only_for_image_disks() {
        let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "apps", "uid": "0b6f1b7e-1111-2222-3333-444455556666"},
            "spec": {"hostPool": "p", "cpu": {"cores": 1}, "memory": "256Mi",
                     "disks": [{"name": "root", "image": "tiny.qcow2"}, {"name": "data", "volume": "v1"}]}
        }))
        .expect("valid VM");
        let mut st = VirtualMachineStatus::default();
        record_disks(&vm, &mut st, "images", None);
        record_disks(&vm, &mut st, "images", None);
        assert_eq!(st.disks.len(), 1, "{:?}", st.disks);
        assert_eq!(st.disks[0].name, "root");
        assert_eq!(st.disks[0].pool, "images");
        assert_eq!(
            st.disks[0].volume,
            naming::overlay_volume_name(
                "apps",
                "web",
                "root",
                "0b6f1b7e-1111-2222-3333-444455556666"
            )
        );
    }
}
