//! Taking over a domain ferry did not define (`spec.adopt`): the claim is checked against the
//! domain as the host describes it now (`plan::adoption::claim`), and only then is ferry's
//! ownership written into the domain's metadata (running instance and persistent definition;
//! no redefinition, no restart). From then on the VM's status names the domain (host, UUID,
//! name) and every other path works from there.

use super::*;
use crate::api::condition::set_condition;
use crate::controller::hosts::{adoption_facts, pool_nodes};
use crate::plan::adoption::{self, PoolView};
use crate::plan::domain::Owner;

/// Reason of a VM whose claim ferry refuses.
pub(super) const BLOCKED: &str = "AdoptionBlocked";

/// Reason (Scheduled) and Event of a VM that took its domain over.
const TAKEN_OVER: &str = "TookOver";

/// Claims are checked and written one at a time in this process (only the leader acts), so two
/// VMs naming the same domain cannot both see it unowned.
static CLAIMS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether `vm` names a domain to take over that its status does not record as taken yet.
pub(super) fn pending(vm: &VirtualMachine, st: &VirtualMachineStatus) -> bool {
    vm.spec.adopt.is_some() && st.adopted_domain.is_none()
}

fn blocked(message: String, retry: Duration) -> Blocked {
    Blocked::new(VmPhase::Pending, BLOCKED, message, Retry::After(retry))
}

/// Take the domain `spec.adopt` names over into `vm`, placed on `pool`: when the claim stands,
/// the domain's metadata names the VM and the status records host, UUID and name (written
/// before anything else is done); returns the host. When it does not, nothing on the host
/// changes and the VM reports every reason.
pub(super) async fn take_over(
    vm: &VirtualMachine,
    pool: &HostPool,
    record: &mut Record<'_>,
    ctx: &Context,
    st: &mut VirtualMachineStatus,
    now: Timestamp,
) -> Result<String, Blocked> {
    let Some(a) = vm.spec.adopt.as_ref() else {
        return Err(blocked("spec.adopt is not set".into(), RECHECK));
    };
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let patterns = pool
        .spec
        .adoption
        .as_ref()
        .map(|p| p.domains.as_slice())
        .unwrap_or_default();
    let refused = |reasons: Vec<String>| {
        blocked(
            format!(
                "ferry does not take domain {} on host {} over, and changes nothing there: {}",
                a.domain,
                a.host,
                reasons.join("; ")
            ),
            RECHECK,
        )
    };
    // Before any host is asked: only domains the pool names, only on the pool's hosts.
    if !adoption::allowed(patterns, &a.domain) {
        let none = PoolView {
            storage_dir: None,
            golden_images: &[],
            boot_dirs: &[],
        };
        let reasons = adoption::claim(
            patterns, &a.domain, &a.uuid, &uid, None, None, &none, &vm.spec,
        )
        .err()
        .unwrap_or_default();
        return Err(refused(reasons));
    }
    let Some(node) = pool_nodes(&ctx.caches.nodes, pool)
        .into_iter()
        .find(|n| n.name_any() == a.host)
    else {
        return Err(refused(vec![format!(
            "{} is not a host of HostPool {}",
            a.host,
            pool.name_any()
        )]));
    };
    let uri = ctx.hosts.uri(pool, &node).map_err(|m| {
        Blocked::new(
            VmPhase::Pending,
            "HostMisconfigured",
            format!("cannot reach host {}: {m}", a.host),
            Retry::After(Duration::from_secs(300)),
        )
    })?;
    let hv = ctx
        .hosts
        .connect(&uri, pool)
        .await
        .map_err(|e| host_blocked(&a.host, e, "connecting", None))?;
    let lost = |e: HypervisorError| host_blocked(&a.host, e, "reading the domain to adopt", None);
    let facts = adoption_facts(pool, hv.as_ref()).await;
    let guard = CLAIMS.lock().await;
    let info = hv.lookup_domain(&a.uuid).await.map_err(lost)?;
    let described = hv
        .describe_domain(&a.domain)
        .await
        .map_err(lost)?
        .filter(|(d, _)| d.current.uuid.eq_ignore_ascii_case(&a.uuid));
    let claim = adoption::claim(
        patterns,
        &a.domain,
        &a.uuid,
        &uid,
        info.as_ref(),
        described.as_ref().map(|(d, s)| (d, *s)),
        &facts.view(),
        &vm.spec,
    );
    if let Err(reasons) = claim {
        return Err(refused(reasons));
    }
    let owner = Owner {
        namespace: vm.namespace().unwrap_or_default(),
        name: vm.name_any(),
        uid: uid.clone(),
    };
    hv.set_metadata(&a.uuid, Some(&adoption::ownership(owner)))
        .await
        .map_err(|e| {
            host_blocked(
                &a.host,
                e,
                "recording ferry's ownership in the domain",
                None,
            )
        })?;
    drop(guard);
    let active = described.as_ref().is_some_and(|(_, s)| s.is_active());
    st.host = Some(a.host.clone());
    st.domain_uuid = Some(a.uuid.clone());
    st.adopted_domain = Some(a.domain.clone());
    st.phase = Some(if active {
        VmPhase::Running
    } else {
        VmPhase::Stopped
    });
    let message = format!(
        "took over domain {} (UUID {}) on host {}, {}: its metadata names this VM, nothing else of it changed",
        a.domain,
        a.uuid,
        a.host,
        if active { "running" } else { "shut off" }
    );
    set_condition(
        &mut st.conditions,
        "Scheduled",
        ConditionStatus::True,
        TAKEN_OVER,
        message.clone(),
        vm.metadata.generation,
        now,
    );
    // Written before anything else is done: a crash here leaves the metadata, which the next
    // claim finds naming this VM (and accepts).
    record_first(record, st, VmPhase::Pending, "the takeover").await?;
    tracing::info!(vm = %vm.name_any(), domain = %a.domain, host = %a.host, "took the domain over");
    ctx.event(vm, EventType::Normal, TAKEN_OVER, "Adopt", message)
        .await;
    Ok(a.host.clone())
}
