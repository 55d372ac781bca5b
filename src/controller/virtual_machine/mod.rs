//! The VirtualMachine controller: place the VM, create its disks and domain on the host, drive the
//! domain to the state the run strategy asks for, report status, and clean up on deletion.

mod adopt;
mod cleanup;
mod define;
mod disks;
mod migrations;
mod place;
mod power;
mod record;
mod release;
mod sighting;
mod spec;

use super::Context;
use super::cloud_init;
use super::context::HostAccess;
use crate::api::condition::{ConditionStatus, find, set_condition};
use crate::api::{FINALIZER, HostPool, VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::cloud_init::Seed;
use crate::error::{Error, Result};
use crate::hypervisor::domain_xml::{self, VirtType};
use crate::hypervisor::{DomainInfo, Hypervisor, HypervisorError};
use crate::plan::definition::{self, ResolvedDisk};
use crate::plan::validate::ValidSpec;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use record::{Record, WriteError};
use std::sync::Arc;
use std::time::Duration;

const CONTROLLER: &str = "virtualmachine";

/// How often a VM that waits for something outside its own spec and the caches' watches (a
/// duplicate MAC elsewhere, a refused image, a pool an admin must fix) is looked at again. A VM
/// in a steady state waits for the safety resync instead ([`Context::safety_resync`]): domain
/// events, watches and reconnections to its host wake it.
const RECHECK: Duration = Duration::from_secs(30);

/// How often a VM whose cloud-init data comes from Secrets is looked at again (Secrets are not
/// watched; new data gives a new seed and `RestartRequired`).
const SECRET_RECHECK: Duration = Duration::from_secs(60);

/// How often a running VM whose guest agent has not reported an address for each interface
/// yet is asked again during the first [`ADDRESS_FAST_WINDOW`] after it started running (most
/// guests' agents answer then).
const ADDRESS_POLL_FAST: Duration = Duration::from_secs(10);

/// See [`ADDRESS_POLL_FAST`].
const ADDRESS_FAST_WINDOW: Duration = Duration::from_secs(120);

/// How often the agent is asked after [`ADDRESS_FAST_WINDOW`], until [`ADDRESS_WINDOW`].
const ADDRESS_POLL: Duration = Duration::from_secs(30);

/// How long after a VM started running its guest agent is polled for missing addresses (a slow
/// guest under emulation can take many minutes to boot); a guest without an agent (or without
/// DHCP) is not polled for ever.
const ADDRESS_WINDOW: Duration = Duration::from_secs(1800);

/// How often the guest agent of a running VM whose addresses are all known (or no longer polled
/// for) is asked again: an address the guest changes without a restart shows within this. The
/// agent is also asked whenever the domain starts, resumes or was not running at the last look.
const GUEST_REFRESH: Duration = Duration::from_secs(1800);

/// How long a reconcile waits for the caches to fill after a (re)start.
const CACHE_WAIT: Duration = Duration::from_millis(500);

/// How often a VM in transition is looked at.
const TRANSITION: Duration = Duration::from_secs(2);

/// How soon a reconcile that worked from a stale copy of the VM looks again (the watch usually
/// brings the newer copy sooner).
const STALE_WAIT: Duration = Duration::from_millis(500);

/// The reason of a [`Blocked`] that is not reported: the reconcile worked from a stale copy of
/// the VM (its cache lags behind, or another process wrote since), so nothing it saw is written.
const STALE: &str = "StaleCopy";

/// Write `st` before going on (it records something the next steps rest on): a stale copy
/// stops the reconcile; a failed write is `StatusWriteFailed` in `phase`, saying that `what`
/// could not be recorded.
async fn record_first(
    record: &mut Record<'_>,
    st: &VirtualMachineStatus,
    phase: VmPhase,
    what: &str,
) -> Result<(), Blocked> {
    match record.write(st).await {
        Ok(_) => Ok(()),
        Err(WriteError::Stale) => Err(stale()),
        Err(WriteError::Failed(e)) => Err(Blocked::new(
            phase,
            "StatusWriteFailed",
            format!("could not record {what}: {e}"),
            Retry::Backoff,
        )),
    }
}

/// A reconcile that must stop because it worked from a stale copy of the VM.
fn stale() -> Blocked {
    Blocked::new(
        VmPhase::Unknown,
        STALE,
        "the VM changed since this reconcile read it",
        Retry::After(STALE_WAIT),
    )
}

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
    if !ctx.gate().is_open() {
        // This replica may not act now (its leader lease lapsed): no host action, no write.
        return Ok(Requeue::requeue(super::GATE_WAIT));
    }
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = vm.namespace().unwrap_or_default();
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, vm, |event| async {
        match event {
            Finalizer::Apply(vm) => apply(&vm, &api, &ctx).await,
            Finalizer::Cleanup(vm) => cleanup::cleanup(&vm, &api, &ctx).await,
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
    /// The pool as the cache holds it (shared, not copied: its status lists every host).
    pool: Arc<HostPool>,
    hv: Arc<dyn Hypervisor>,
}

impl Placed {
    /// How an error of this host shows (see [`host_blocked`]), given the VM's phase before this
    /// reconcile.
    fn blocked(&self, prior_phase: Option<VmPhase>) -> impl Fn(HypervisorError, &str) -> Blocked {
        move |e, what| host_blocked(&self.name, e, what, prior_phase)
    }
}

async fn apply(vm: &VirtualMachine, api: &Api<VirtualMachine>, ctx: &Context) -> Result<Requeue> {
    let mut st = vm.status.clone().unwrap_or_default();
    let now = Timestamp::now();
    let mut record = Record::new(api, vm);
    let outcome = drive(vm, &mut record, ctx, &mut st, now).await;
    if !ctx.gate().is_open() {
        // The gate closed during the reconcile (an action was withheld, or the leader lease
        // lapsed): a replica that may not act reports nothing either.
        return Ok(Requeue::requeue(super::GATE_WAIT));
    }
    if let Err(b) = &outcome
        && b.reason == STALE
    {
        tracing::debug!(vm = %vm.name_any(), "the VM changed since this reconcile read it; looking again");
        return Ok(Requeue::requeue(STALE_WAIT));
    }
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
                "HostPoolNotFound"
                    | "NoHostAvailable"
                    | "InvalidSpec"
                    | "DuplicateMAC"
                    | "HostPoolRefused"
                    | "BootFileNotAllowed"
                    | "DiskNotAllowed"
                    | adopt::BLOCKED
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
    match record.write(&st).await {
        Ok(_) => requeue,
        Err(WriteError::Stale) => {
            tracing::debug!(vm = %vm.name_any(), "the VM changed since this reconcile read it; its status is not written");
            Ok(Requeue::requeue(STALE_WAIT))
        }
        Err(WriteError::Failed(e)) => Err(e.into()),
    }
}

/// Drive the VM one step towards its spec; `st` is updated with what was observed and done.
async fn drive(
    vm: &VirtualMachine,
    record: &mut Record<'_>,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<Duration, Blocked> {
    let (valid, seed, class_gone) = spec::resolve(vm, &ctx.client, &ctx.caches, st).await?;
    if let Some(warning) = class_gone {
        ctx.event(vm, EventType::Warning, "ClassNotFound", "Resolve", warning)
            .await;
    }
    let placed = place::place(vm, &valid, record, ctx, st, now).await?;
    // Took its domain over just now: the rest of this reconcile works on that domain (its name
    // and UUID are in the status written, not yet in the copy it started from).
    let taken_over;
    let vm = if st.adopted_domain.is_some() && vm.adopted().is_none() {
        taken_over = VirtualMachine {
            status: Some(st.clone()),
            ..vm.clone()
        };
        &taken_over
    } else {
        vm
    };
    if let Some(after) = migrations::follow(vm, ctx, &placed, st, now).await? {
        return Ok(after);
    }
    let prior_phase = st.phase;
    let virt_type = define::virt_type(&ctx.hosts, &placed, prior_phase).await?;
    let disks = disks::ensure(vm, &valid, seed.as_ref(), &placed, ctx, st).await?;
    let dom = define::domain(vm, &valid, &disks, virt_type, &placed, ctx, st, now).await?;
    power::run_state(vm, ctx, &placed, &dom, st, prior_phase, now).await
}

fn host_blocked(host: &str, e: HypervisorError, what: &str, phase: Option<VmPhase>) -> Blocked {
    if e.is_withheld() {
        return Blocked::new(
            phase.unwrap_or(VmPhase::Pending),
            "ActionWithheld",
            format!("{what} on host {host}: {e}"),
            Retry::After(super::GATE_WAIT),
        );
    }
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
