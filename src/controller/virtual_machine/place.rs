//! Finding or choosing the VM's host, and connecting to it.

use super::*;
use crate::api::HostPool;
use crate::api::condition::{ConditionStatus, set_condition};
use crate::api::ha_policy::{FAILOVER_ANNOTATION, Failover, HostVerdict};
use crate::api::virtual_machine::Recovery;
use crate::api::{VirtualMachine, VirtualMachineStatus, VmPhase};
use crate::controller::Context;
use crate::controller::context::{HaVerdicts, PoolHost};
use crate::controller::power::HOST_STANDBY;
use crate::controller::scheduling::{self, NotPlaced};
use crate::error::Result;
use crate::plan::sighting::{self as sighting_plan, Verdict};
use crate::plan::validate::ValidSpec;
use crate::plan::{pool_check, uri_policy, volume_access};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use std::time::Duration;

/// Find or choose the VM's host and connect to it.
pub(super) async fn place(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    record: &mut Record<'_>,
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
    // Nothing is placed or connected for a pool ferry refuses, nor for boot files outside the
    // directories the pool allows for them.
    let waiting = st
        .phase
        .filter(|_| st.host.is_some())
        .unwrap_or(VmPhase::Pending);
    if let Err(problems) = pool_check::check_pool(&pool.spec, ctx.hosts.uri_limits()) {
        return Err(Blocked::new(
            waiting,
            "HostPoolRefused",
            format!(
                "HostPool {pool_name} is refused until a platform admin fixes it: {}",
                uri_policy::summary(&problems).1
            ),
            Retry::After(Duration::from_secs(60)),
        ));
    }
    pool_check::check_boot(&vm.spec, pool_name, &pool.spec).map_err(|m| {
        Blocked::new(
            waiting,
            "BootFileNotAllowed",
            format!("fix the spec: {m}"),
            Retry::After(RECHECK),
        )
    })?;
    super::disks::check_access(vm, &pool, &ctx.caches, &ctx.foreign_volumes).map_err(|m| {
        Blocked::new(
            waiting,
            volume_access::DISK_NOT_ALLOWED,
            format!("fix the spec: {m}"),
            Retry::After(RECHECK),
        )
    })?;
    // The HA controller proved the VM's host off: place it anew, once per incident, never on
    // that host (its pool status may not show it down yet). First look whether it runs anywhere.
    let failover = failover_request(vm, st, &ctx.ha);
    if let Some(f) = &failover
        && let Some(m) =
            volume_access::failover_blocked(&vm.spec, &pool.spec.storage, pool_name, &f.host)
    {
        // Handled: the VM stays on its host, and starts there again once the host is back.
        st.last_recovery = Some(recovery(f));
        return Err(failover_refused(&f.host, &f.incident, &m));
    }
    // Said so for as long as the host is down in that incident.
    if let Some(r) = &st.last_recovery
        && r.to_host.is_none()
        && st.host.as_deref() == Some(r.from_host.as_str())
        && let Some(m) =
            volume_access::failover_blocked(&vm.spec, &pool.spec.storage, pool_name, &r.from_host)
        && ctx
            .ha
            .worst(&PoolHost::of(&pool, &r.from_host))
            .is_some_and(HostVerdict::in_incident)
    {
        return Err(failover_refused(&r.from_host, &r.incident, &m));
    }
    let mut exclude = None;
    if let Some(f) = &failover
        && !look_before_start(vm, ctx, &pool, record, st, f, now).await?
    {
        tracing::info!(vm = %vm.name_any(), host = %f.host, incident = %f.incident, "host proven off; placing the VM anew");
        st.host = None;
        st.phase = Some(VmPhase::Pending);
        st.last_recovery = Some(recovery(f));
        ctx.vm_runtime
            .forget_provisioned(vm.metadata.uid.as_deref().unwrap_or_default());
        exclude = Some(f.host.clone());
    }
    let host = match st.host.clone() {
        Some(h) => h,
        None if super::adopt::pending(vm, st) => {
            super::adopt::take_over(vm, &pool, record, ctx, st, now).await?
        }
        None => {
            let host = scheduling::choose(
                vm,
                valid.need(),
                &pool,
                &ctx.caches,
                &ctx.ha,
                &ctx.placement,
                &ctx.load,
                exclude.as_deref(),
            )
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
            // never lead to a second copy somewhere else. The write is conditional on the version
            // of the VM this choice was made on: if another reconcile (another process, or one
            // working from a stale cache) placed it meanwhile, this one fails and creates nothing.
            st.host = Some(host.clone());
            if st.adopted_domain.is_none() {
                // An adopted domain keeps its UUID wherever it runs next.
                st.domain_uuid = vm.metadata.uid.clone();
            }
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
            let uid = vm.metadata.uid.as_deref().unwrap_or_default();
            match record.write(st).await {
                Ok(_) => {}
                Err(WriteError::Stale) => {
                    ctx.placement.forget(uid);
                    tracing::info!(vm = %vm.name_any(), %host, "not placed: the VM changed since this reconcile read it (placed by another reconcile?)");
                    return Err(stale());
                }
                Err(WriteError::Failed(e)) => {
                    ctx.placement.forget(uid);
                    return Err(Blocked::new(
                        VmPhase::Pending,
                        "StatusWriteFailed",
                        format!("could not record the placement: {e}"),
                        Retry::Backoff,
                    ));
                }
            }
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
    // A host the pool's power management keeps off, or is powering on: nothing is tried on it
    // and nothing of it is started elsewhere. A VM that should run waits for it, which has
    // power management power it on.
    if let Some(p) = pool
        .status
        .as_ref()
        .and_then(|s| s.hosts.iter().find(|h| h.name == host))
        .map(|h| h.power())
        .filter(|p| p.kept_off())
    {
        return Err(if wants_to_run(vm, st) {
            Blocked::new(
                VmPhase::Pending,
                HOST_STANDBY,
                format!("host {host} is {p} (power management): waiting for it to be powered on"),
                Retry::After(Duration::from_secs(10)),
            )
        } else {
            Blocked::new(
                st.phase.unwrap_or(VmPhase::Stopped),
                HOST_STANDBY,
                format!("host {host} is {p} (power management); the VM stays assigned to it"),
                Retry::After(Duration::from_secs(300)),
            )
        });
    }
    let node = ctx.caches.node(&host).ok_or_else(|| {
        Blocked::new(
            VmPhase::Unknown,
            "HostGone",
            format!("host {host} no longer exists as a Node; the VM stays assigned to it until it returns"),
            Retry::After(Duration::from_secs(60)),
        )
    })?;
    let uri = ctx.hosts.uri(&pool, &node).map_err(|m| {
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
        pool,
        hv,
    })
}

/// Whether the VM should run whatever its domain's state: `Always`, `Manual` with
/// `ferry.dev/power=on`, or a restart asked for and not done yet.
fn wants_to_run(vm: &VirtualMachine, st: &VirtualMachineStatus) -> bool {
    use crate::api::virtual_machine::{POWER_ANNOTATION, RESTART_ANNOTATION};
    use crate::plan::lifecycle::Power;
    let restart = vm.annotations().get(RESTART_ANNOTATION);
    let restart_pending = restart.is_some() && restart != st.last_restart_request.as_ref();
    restart_pending
        || match vm.run_strategy() {
            crate::api::RunStrategy::Always => true,
            crate::api::RunStrategy::Manual => {
                vm.annotations()
                    .get(POWER_ANNOTATION)
                    .and_then(|v| Power::parse(v))
                    == Some(Power::On)
            }
            _ => false,
        }
}

/// Reason of a VM that is not restarted elsewhere after its host failed, because its disks
/// cannot follow it.
pub(super) const FAILOVER_REFUSED: &str = "FailoverRefused";

fn failover_refused(host: &str, incident: &str, why: &str) -> Blocked {
    Blocked::new(
        VmPhase::Unknown,
        FAILOVER_REFUSED,
        format!("host {host} failed (incident {incident}); {why}"),
        Retry::After(Duration::from_secs(30)),
    )
}

/// The recovery record of a failover, before the VM has a new host.
fn recovery(f: &Failover) -> Recovery {
    Recovery {
        incident: f.incident.clone(),
        from_host: f.host.clone(),
        evidence: f.evidence.clone(),
        detected: Some(f.detected.clone()),
        proven_off: Some(f.proven.clone()),
        ..Recovery::default()
    }
}

/// Look before you start: before a failover places the VM anew, make sure the VM is not already
/// running somewhere. The VM is read afresh (a stale cache stops here), then its domain is looked
/// up on every host of the pool, the failed one included. Returns whether it was found running
/// and adopted there (status names that host, recorded, with an Event); if not, it may be placed
/// anew.
async fn look_before_start(
    vm: &VirtualMachine,
    ctx: &Context,
    pool: &HostPool,
    record: &mut Record<'_>,
    st: &mut VirtualMachineStatus,
    f: &Failover,
    now: Timestamp,
) -> Result<bool, Blocked> {
    match record.is_current().await {
        Ok(true) => {}
        Ok(false) => return Err(stale()),
        Err(e) => {
            return Err(Blocked::new(
                VmPhase::Unknown,
                "StatusReadFailed",
                format!("could not read the VM before restarting it elsewhere: {e}"),
                Retry::Backoff,
            ));
        }
    }
    let uid = crate::plan::naming::vm_domain_uuid(vm);
    // The failed host is asked too, unless the HA controller holds it fenced: a release does not
    // always come with a fence (the evidence may be libvirt's word that the domains shut off),
    // and a host wrongly judged off still shows the VM running.
    let seen = sighting::look(ctx, pool, &uid, &[]).await;
    match sighting_plan::decide(&seen) {
        Verdict::Free => Ok(false),
        Verdict::Adopt(host) => {
            st.last_recovery = Some(Recovery {
                to_host: Some(host.clone()),
                replaced: Some(Time(now)),
                ..recovery(f)
            });
            sighting::adopt(
                vm,
                ctx,
                st,
                &host,
                format!("found running on host {host} after host {} failed", f.host),
                now,
            );
            record_first(
                record,
                st,
                VmPhase::Unknown,
                &format!("that the VM runs on host {host}"),
            )
            .await?;
            ctx.event(
                vm,
                EventType::Warning,
                sighting::ADOPTED,
                "Failover",
                if host == f.host {
                    format!(
                        "A restart elsewhere was asked for (host {host} failed, incident {}), but the VM still runs on host {host}: kept there, not started again",
                        f.incident
                    )
                } else {
                    format!(
                        "Host {} failed, but the VM already runs on host {host} (a migration there finished without being recorded): adopted there, not started again",
                        f.host
                    )
                },
            )
            .await;
            Ok(true)
        }
        Verdict::RunningTwice(hosts) => Err(sighting::running_twice(&hosts)),
        Verdict::Wait(unknown) => Err(sighting::unconfirmed(
            format!(
                "host {} failed, but the VM is not started elsewhere",
                f.host
            ),
            pool,
            &unknown,
        )),
    }
}

/// The failover the HA controller asks for through the `ferry.dev/failover` annotation: only
/// while the VM is still placed on the failed host, that incident was not handled yet, and the
/// HA controller released this VM for it (`ha`). A namespace editor may write the annotation
/// too; one the HA controller did not release the VM for is ignored, so it can never get a VM
/// started on a second host while it runs on the first.
pub fn failover_request(
    vm: &VirtualMachine,
    st: &VirtualMachineStatus,
    ha: &HaVerdicts,
) -> Option<Failover> {
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
    if st.host.as_deref() != Some(f.host.as_str()) || handled {
        return None;
    }
    let host = PoolHost::new(
        &vm.namespace().unwrap_or_default(),
        &vm.spec.host_pool,
        &f.host,
    );
    let uid = vm.metadata.uid.as_deref().unwrap_or_default();
    if !ha.released(uid, &host, &f.incident) {
        tracing::warn!(vm = %vm.name_any(), host = %f.host, incident = %f.incident, "ignoring a {FAILOVER_ANNOTATION} annotation the HA controller did not write for this VM");
        return None;
    }
    Some(f)
}
