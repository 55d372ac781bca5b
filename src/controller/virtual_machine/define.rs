//! The domain on the host: its definition built from the validated spec and the resolved disks,
//! defined when it differs from what the host has, and the changes that wait for a restart.

use super::*;
use crate::controller::context::host_reads::HostNow;
use crate::plan::adoption;
use crate::plan::domain::{FerryMetadata, describe_changes, pending_restart};

/// Whether a VM in this phase had its domain defined on its host.
fn had_domain(phase: Option<VmPhase>) -> bool {
    matches!(
        phase,
        Some(
            VmPhase::Starting
                | VmPhase::Running
                | VmPhase::Stopping
                | VmPhase::Stopped
                | VmPhase::Migrating
                | VmPhase::Unknown
        )
    )
}

/// Look before you start: the domain of a VM that had one is gone from the host its status
/// names. Before it is defined (and started) there anew, its domain is looked up on the pool's
/// other hosts: a migration that finished without being recorded leaves it running on the
/// target. Found running elsewhere, it is adopted there (the reconcile ends, the next one goes on
/// on that host); a host that cannot be asked and is not proven off blocks.
async fn look_elsewhere(
    vm: &VirtualMachine,
    ctx: &Context,
    placed: &Placed,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<(), Blocked> {
    use crate::plan::sighting::{Verdict, decide};
    let uid = crate::plan::naming::vm_domain_uuid(vm);
    let seen = super::sighting::look(ctx, &placed.pool, &uid, &[placed.name.as_str()]).await;
    match decide(&seen) {
        Verdict::Free => Ok(()),
        Verdict::Adopt(host) => {
            super::sighting::adopt(
                vm,
                ctx,
                st,
                &host,
                format!(
                    "found running on host {host}; its domain was gone from host {}",
                    placed.name
                ),
                now,
            );
            Err(Blocked::new(
                VmPhase::Running,
                super::sighting::ADOPTED,
                format!(
                    "the domain was gone from host {} but runs on host {host} (a migration there finished without being recorded): adopted there, not started again",
                    placed.name
                ),
                Retry::After(Duration::from_millis(200)),
            ))
        }
        Verdict::RunningTwice(hosts) => Err(super::sighting::running_twice(&hosts)),
        Verdict::Wait(unknown) => Err(super::sighting::unconfirmed(
            format!(
                "the domain is gone from host {}, and it is not defined there anew",
                placed.name
            ),
            &placed.pool,
            &unknown,
        )),
    }
}

/// KVM when the host has it, plain QEMU emulation otherwise.
pub(super) async fn virt_type(
    hosts: &HostAccess,
    placed: &Placed,
    prior_phase: Option<VmPhase>,
) -> Result<VirtType, Blocked> {
    let facts = hosts
        .info(placed.hv.as_ref())
        .await
        .map_err(|e| host_blocked(&placed.name, e, "reading host facts", prior_phase))?;
    Ok(if facts.kvm {
        VirtType::Kvm
    } else {
        VirtType::Qemu
    })
}

/// Define the domain when the host's definition differs from the spec (by hash), remove seeds
/// no running domain reads any more, and report `RestartRequired`. Returns the domain as the
/// host now lists it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn domain(
    vm: &VirtualMachine,
    valid: &ValidSpec,
    disks: &[ResolvedDisk],
    virt_type: VirtType,
    placed: &Placed,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<DomainInfo, Blocked> {
    let generation = vm.metadata.generation;
    let hv = placed.hv.as_ref();
    let pool = &placed.pool;
    let uid = crate::plan::naming::vm_domain_uuid(vm);
    let prior_phase = st.phase;
    let host_error = placed.blocked(prior_phase);
    let interfaces = definition::macs(vm);
    st.interfaces = interfaces.clone();
    let mut def = definition::build(vm, valid, disks, &interfaces, virt_type, pool.console_dir());
    if let Some(seed) = disks.iter().find(|d| d.name == definition::SEED_DISK) {
        definition::attach_seed(&mut def, &seed.path);
    }
    let hash = domain_xml::definition_hash(&def);
    let desired_shape = domain_xml::shape(&def);

    // The host's last reading answers while it stands (a safety resync of a steady VM asks the
    // host nothing); otherwise the host is asked.
    let standing = ctx.host_reads.standing_domain(
        &crate::controller::context::PoolHost::of(pool, &placed.name),
        &HostNow::of(
            &ctx.hosts.connections,
            hv.uri(),
            pool.metadata.generation,
            ctx.safety_resync.period(),
        ),
        &uid,
    );
    let mut dom = match standing {
        Some(d) => Some(d),
        None => hv
            .lookup_domain(&uid)
            .await
            .map_err(|e| host_error(e, "looking up the domain"))?,
    };
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
    if dom.is_none() && had_domain(prior_phase) {
        look_elsewhere(vm, ctx, placed, st, now).await?;
    }
    let configured = dom
        .as_ref()
        .and_then(|d| d.config.as_ref())
        .map(|m| m.definition_hash.as_str());
    if configured == Some(adoption::TAKEN_OVER_HASH) {
        // Taken over: the domain stays as it is defined and runs; its metadata now says it is
        // the VM's definition (the claim found the spec describing it).
        let meta = FerryMetadata {
            owner: def.owner.clone(),
            definition_hash: hash.clone(),
            shape: desired_shape.clone(),
        };
        hv.set_metadata(&uid, Some(&meta))
            .await
            .map_err(|e| host_error(e, "recording the VM's definition in the domain's metadata"))?;
        dom = hv
            .lookup_domain(&uid)
            .await
            .map_err(|e| host_error(e, "looking up the domain"))?;
    } else if configured != Some(hash.as_str()) {
        hv.define_domain(&def).await.map_err(|e| match e {
            HypervisorError::InvalidDefinition { message } => Blocked::new(
                VmPhase::Failed,
                "InvalidSpec",
                format!("cannot build the domain: {message}"),
                Retry::OnChange,
            ),
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
        (true, Some(live)) => describe_changes(
            &pending_restart(live, &hash, &desired_shape),
            vm.spec.class_name.as_deref(),
        ),
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
            up_to_date(dom.state.is_active())
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

    Ok(dom)
}

/// RestartRequired's message when nothing needs a restart.
fn up_to_date(active: bool) -> String {
    if active {
        "the running domain matches the spec".to_string()
    } else {
        "the domain is not running; its next start uses the current spec".to_string()
    }
}

/// Say in an `UpToDate` RestartRequired condition whether the domain now runs (it was started
/// or stopped after the condition was set): the same status write carries it, not another one.
pub(super) fn restate_up_to_date(
    st: &mut VirtualMachineStatus,
    active: bool,
    generation: Option<i64>,
    now: Timestamp,
) {
    if crate::api::condition::find(&st.conditions, "RestartRequired")
        .is_some_and(|c| c.reason == "UpToDate")
    {
        set_condition(
            &mut st.conditions,
            "RestartRequired",
            ConditionStatus::False,
            "UpToDate",
            up_to_date(active),
            generation,
            now,
        );
    }
}
