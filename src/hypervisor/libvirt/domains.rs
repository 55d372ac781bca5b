//! Domains: reading their state and ferry's metadata, defining, starting, stopping and removing
//! them, and what their guest agents report. Everything here runs on the connection's thread.

use std::os::raw::c_int;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::errors::{
    CallResult, Fail, VIR_ERR_ARGUMENT_UNSUPPORTED, VIR_ERR_INVALID_ARG, VIR_ERR_NO_SUPPORT, found,
    is_code, is_connection_error, lookup_dom, not_found_domain,
};
use crate::hypervisor::domain_xml;
use crate::hypervisor::error_code;
use crate::hypervisor::xml::XmlFacts;
use crate::plan::domain::{
    Backing, DescribedDomain, DomainInfo, DomainState, GuestInfo, GuestInterface, ShutOffReason,
};
use crate::plan::load::DomainCounters;

/// `virDomainGetState`, called directly: `virt`'s `Domain::state` drops the error and reports a
/// failed call as an unknown state.
fn raw_state(dom: &Domain) -> CallResult<(u32, u32)> {
    let (mut state, mut reason): (c_int, c_int) = (0, 0);
    // SAFETY: valid domain pointer and out-parameters.
    let ret = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if ret < 0 {
        return Err(Fail::Virt(virt::error::Error::last_error()));
    }
    Ok((state.max(0) as u32, reason.max(0) as u32))
}

fn map_state(state: u32, reason: u32) -> DomainState {
    match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => DomainState::Running,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff(match reason {
            sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN => ShutOffReason::Shutdown,
            sys::VIR_DOMAIN_SHUTOFF_DESTROYED => ShutOffReason::Destroyed,
            // DAEMON: libvirtd killed it while reconnecting after a restart — not the guest's
            // choice, so it counts as a crash.
            sys::VIR_DOMAIN_SHUTOFF_CRASHED | sys::VIR_DOMAIN_SHUTOFF_DAEMON => {
                ShutOffReason::Crashed
            }
            sys::VIR_DOMAIN_SHUTOFF_MIGRATED => ShutOffReason::Migrated,
            sys::VIR_DOMAIN_SHUTOFF_SAVED => ShutOffReason::Saved,
            sys::VIR_DOMAIN_SHUTOFF_FAILED => ShutOffReason::Failed,
            _ => ShutOffReason::Other,
        }),
        sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => DomainState::PmSuspended,
        _ => DomainState::Unknown,
    }
}

fn domain_info(dom: &Domain) -> CallResult<DomainInfo> {
    let name = dom.name()?;
    let uuid = dom.uuid_string()?.to_ascii_lowercase();
    let (state, reason) = raw_state(dom)?;
    let state = map_state(state, reason);
    let persistent = dom.is_persistent()?;
    let info = dom.info()?;
    let live = if state.is_active() {
        domain_xml::parse_metadata(&dom.xml_desc(0)?)
    } else {
        None
    };
    let config = if persistent {
        domain_xml::parse_metadata(&dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?)
    } else {
        None
    };
    Ok(DomainInfo {
        name,
        uuid,
        state,
        persistent,
        vcpus: info.nr_virt_cpu,
        memory_kib: info.max_mem,
        live,
        config,
    })
}

/// Every domain on the host.
pub(super) fn list(conn: &Connect) -> CallResult<Vec<DomainInfo>> {
    let mut out = Vec::new();
    for dom in conn.list_all_domains(0)? {
        match domain_info(&dom) {
            Ok(info) => out.push(info),
            // Gone between the listing and the look (a transient domain stopped).
            Err(f) if is_code(&f, error_code::NO_DOMAIN) => {}
            Err(f) => return Err(f),
        }
    }
    Ok(out)
}

/// CPU time and resident memory of every running domain. A domain that stops between the
/// listing and the look is left out; one whose QEMU reports no resident set counts 0 bytes.
pub(super) fn counters(conn: &Connect) -> CallResult<Vec<DomainCounters>> {
    let mut out = Vec::new();
    for dom in conn.list_all_domains(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)? {
        let read = dom.uuid_string().and_then(|uuid| {
            let cpu_time_ns = dom.info()?.cpu_time;
            let rss_kib = dom
                .memory_stats(0)?
                .iter()
                .find(|m| m.tag == sys::VIR_DOMAIN_MEMORY_STAT_RSS)
                .map_or(0, |m| m.val);
            Ok(DomainCounters {
                uuid: uuid.to_ascii_lowercase(),
                cpu_time_ns,
                rss_bytes: rss_kib.saturating_mul(1024),
            })
        });
        match read {
            Ok(c) => out.push(c),
            Err(e) if e.code().to_raw() as i32 == error_code::NO_DOMAIN => {}
            Err(e) if e.code().to_raw() as i32 == error_code::OPERATION_INVALID => {}
            Err(e) => return Err(Fail::Virt(e)),
        }
    }
    Ok(out)
}

/// What `read` finds of the domain with this UUID, if the host has it (a domain gone between
/// the lookup and the read is absent).
fn read_domain<T>(
    conn: &Connect,
    uuid: &str,
    read: impl FnOnce(&Domain) -> CallResult<T>,
) -> CallResult<Option<T>> {
    match lookup_dom(conn, uuid)? {
        None => Ok(None),
        Some(dom) => match read(&dom) {
            Ok(v) => Ok(Some(v)),
            Err(f) if is_code(&f, error_code::NO_DOMAIN) => Ok(None),
            Err(f) => Err(f),
        },
    }
}

/// The state of the domain with this UUID, if the host has it (two calls: the lookup and
/// `virDomainGetState`).
pub(super) fn state(conn: &Connect, uuid: &str) -> CallResult<Option<DomainState>> {
    read_domain(conn, uuid, |dom| {
        raw_state(dom).map(|(state, reason)| map_state(state, reason))
    })
}

/// The domain with this UUID, if the host has it.
pub(super) fn lookup(conn: &Connect, uuid: &str) -> CallResult<Option<DomainInfo>> {
    read_domain(conn, uuid, domain_info)
}

/// The domain called `name` as its XML describes it (the running instance and the persistent
/// definition), with its state; `None` when the host has no domain of that name. Reads only.
pub(super) fn describe(
    conn: &Connect,
    name: &str,
) -> CallResult<Option<(DescribedDomain, DomainState)>> {
    let Some(dom) = found(conn.lookup_domain_by_name(name), error_code::NO_DOMAIN)? else {
        return Ok(None);
    };
    let (state, reason) = raw_state(&dom)?;
    let read = |xml: String| {
        domain_xml::describe(&xml)
            .map_err(|e| Fail::Other(format!("the XML of domain {name}: {e}")))
    };
    let mut current = read(dom.xml_desc(0)?)?;
    let persistent = if dom.is_persistent()? {
        Some(read(dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?)?)
    } else {
        None
    };
    // A domain that does not run shows no backing chains: a storage pool may know them.
    for disk in &mut current.disks {
        if disk.backing == Backing::Unknown
            && disk.kind == "file"
            && let Some(path) = &disk.source
        {
            disk.backing = volume_backing(conn, path)?;
        }
    }
    Ok(Some((
        DescribedDomain {
            current,
            persistent,
        },
        map_state(state, reason),
    )))
}

/// The backing file of the volume at `path`, as the storage pool holding it says;
/// [`Backing::Unknown`] when no pool on the host holds it. A file made behind libvirt's back is
/// seen after its pool (the one whose directory holds it) is refreshed.
fn volume_backing(conn: &Connect, path: &str) -> CallResult<Backing> {
    let lookup = || {
        found(
            conn.lookup_storage_vol_by_path(path),
            error_code::NO_STORAGE_VOL,
        )
    };
    let vol = match lookup()? {
        Some(v) => v,
        None => {
            let Some(dir) = std::path::Path::new(path).parent().and_then(|d| d.to_str()) else {
                return Ok(Backing::Unknown);
            };
            let Some(pool) = found(
                conn.lookup_storage_pool_by_target_path(dir),
                error_code::NO_STORAGE_POOL,
            )?
            else {
                return Ok(Backing::Unknown);
            };
            super::storage::refresh(&pool)?;
            match lookup()? {
                Some(v) => v,
                None => return Ok(Backing::Unknown),
            }
        }
    };
    let facts = XmlFacts::parse(&vol.xml_desc(0)?)
        .ok_or_else(|| Fail::Other(format!("the host returned unreadable XML for {path}")))?;
    Ok(Backing::Known(
        facts
            .text("volume/backingStore/path")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
    ))
}

/// Write `fragment` (from [`domain_xml::metadata_fragment`]) as ferry's metadata element of the
/// domain, or remove the element (`None`): in its persistent definition, and in its running
/// instance when it runs.
pub(super) fn set_metadata(conn: &Connect, uuid: &str, fragment: Option<&str>) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    let mut flags = 0;
    if dom.is_persistent()? {
        flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
    }
    if dom.is_active()? {
        flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
    }
    dom.set_metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        fragment,
        fragment.map(|_| domain_xml::METADATA_KEY),
        Some(domain_xml::METADATA_NS),
        flags,
    )?;
    Ok(())
}

/// Define (or redefine) a persistent domain from XML.
pub(super) fn define(conn: &Connect, xml: &str) -> CallResult<()> {
    conn.define_domain_xml(xml)?;
    Ok(())
}

/// Start a defined domain; success when it runs already.
pub(super) fn start(conn: &Connect, uuid: &str) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    if dom.is_active()? {
        return Ok(());
    }
    match dom.create() {
        Ok(_) => Ok(()),
        // Started by someone else meanwhile.
        Err(e)
            if e.code().to_raw() as i32 == error_code::OPERATION_INVALID
                && dom.is_active().unwrap_or(false) =>
        {
            Ok(())
        }
        Err(e) => Err(Fail::Virt(e)),
    }
}

/// Ask the guest to shut down; success when it is off already.
pub(super) fn shutdown(conn: &Connect, uuid: &str) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    if !dom.is_active()? {
        return Ok(());
    }
    // The guest agent when it answers (a clean shutdown from inside), else the ACPI power
    // button: libvirt tries them in that order.
    let flagged = dom.shutdown_flags(
        sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
    );
    // A driver that does not know these flags (libvirt's test driver) gets the plain
    // request, which is its default method.
    let result = match flagged {
        Err(e)
            if matches!(
                e.code().to_raw() as i32,
                VIR_ERR_INVALID_ARG | VIR_ERR_NO_SUPPORT | VIR_ERR_ARGUMENT_UNSUPPORTED
            ) =>
        {
            dom.shutdown().map(|_| ())
        }
        other => other.map(|_| ()),
    };
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if e.code().to_raw() as i32 == error_code::OPERATION_INVALID
                && !dom.is_active().unwrap_or(true) =>
        {
            Ok(())
        }
        Err(e) => Err(Fail::Virt(e)),
    }
}

/// Pause a running domain (virDomainSuspend); success when it is paused already.
pub(super) fn pause(conn: &Connect, uuid: &str) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    if raw_state(&dom)?.0 == sys::VIR_DOMAIN_PAUSED {
        return Ok(());
    }
    dom.suspend().map_err(Fail::Virt)
}

/// Resume a paused domain (virDomainResume); success when it runs already.
pub(super) fn resume(conn: &Connect, uuid: &str) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    if raw_state(&dom)?.0 != sys::VIR_DOMAIN_PAUSED {
        return Ok(());
    }
    dom.resume().map_err(Fail::Virt)
}

/// Force a domain off; success when it is off or gone already.
pub(super) fn destroy(conn: &Connect, uuid: &str) -> CallResult<()> {
    let Some(dom) = lookup_dom(conn, uuid)? else {
        return Ok(());
    };
    match dom.destroy() {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = e.code().to_raw() as i32;
            // Not running, or gone (a transient domain disappears when destroyed).
            if code == error_code::NO_DOMAIN
                || (code == error_code::OPERATION_INVALID && !dom.is_active().unwrap_or(true))
            {
                Ok(())
            } else {
                Err(Fail::Virt(e))
            }
        }
    }
}

/// Remove a domain's persistent definition; success when it is gone already.
pub(super) fn undefine(conn: &Connect, uuid: &str) -> CallResult<()> {
    let Some(dom) = lookup_dom(conn, uuid)? else {
        return Ok(());
    };
    match dom.is_persistent() {
        Ok(false) => return Ok(()),
        Ok(true) => {}
        Err(e) if e.code().to_raw() as i32 == error_code::NO_DOMAIN => return Ok(()),
        Err(e) => return Err(Fail::Virt(e)),
    }
    // Not every driver knows every flag (the test driver refuses NVRAM and
    // CHECKPOINTS_METADATA): fall back to fewer.
    let all = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
        | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
    let basic = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
    let mut last = None;
    for flags in [all, basic, 0] {
        match dom.undefine_flags(flags) {
            Ok(_) => return Ok(()),
            Err(e) => {
                let code = e.code().to_raw() as i32;
                if code == error_code::NO_DOMAIN {
                    return Ok(());
                }
                if !matches!(
                    code,
                    VIR_ERR_INVALID_ARG | VIR_ERR_NO_SUPPORT | VIR_ERR_ARGUMENT_UNSUPPORTED
                ) {
                    return Err(Fail::Virt(e));
                }
                last = Some(e);
            }
        }
    }
    Err(last
        .map(Fail::Virt)
        .unwrap_or_else(|| Fail::Other("undefine failed with every set of flags".into())))
}

/// What the guest agent of a running domain reports, `None` without an agent answering.
pub(super) fn guest_info(conn: &Connect, uuid: &str) -> CallResult<Option<GuestInfo>> {
    let Some(dom) = lookup_dom(conn, uuid)? else {
        return Ok(None);
    };
    if !dom.is_active()? {
        return Ok(None);
    }
    let ifaces = match dom.interface_addresses(sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0) {
        Ok(i) => i,
        Err(e) if is_connection_error(e.code().to_raw() as i32, e.domain().to_raw() as i32) => {
            return Err(Fail::Virt(e));
        }
        // No agent, or not answering yet.
        Err(_) => return Ok(None),
    };
    let mut interfaces: Vec<GuestInterface> = ifaces
        .into_iter()
        .filter_map(|i| {
            let mac = i.hwaddr?.to_ascii_lowercase();
            if mac == "00:00:00:00:00:00" {
                return None;
            }
            let mut addrs: Vec<(i64, String)> =
                i.addrs.into_iter().map(|a| (a.typed, a.addr)).collect();
            // VIR_IP_ADDR_TYPE_IPV4 = 0 sorts first.
            addrs.sort();
            Some(GuestInterface {
                name: i.name,
                mac,
                addresses: addrs.into_iter().map(|(_, a)| a).collect(),
            })
        })
        .collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(GuestInfo {
        os: guest_os(&dom),
        interfaces,
    }))
}

/// The guest OS's pretty name from the agent (`virDomainGetGuestInfo`, which the virt crate does
/// not wrap), `None` when it does not say.
fn guest_os(dom: &Domain) -> Option<String> {
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: libvirt fills `params` with `n` typed parameters that we free below; the domain
    // pointer is valid for the life of `dom`.
    let rc = unsafe {
        sys::virDomainGetGuestInfo(
            dom.as_ptr(),
            sys::VIR_DOMAIN_GUEST_INFO_OS,
            &mut params,
            &mut n,
            0,
        )
    };
    if rc < 0 {
        return None;
    }
    let mut value: *const std::os::raw::c_char = std::ptr::null();
    // SAFETY: `params`/`n` come from libvirt; the returned string points into `params` and is
    // copied before they are freed.
    let os = unsafe {
        let found = sys::virTypedParamsGetString(
            params,
            n,
            sys::VIR_DOMAIN_GUEST_INFO_OS_PRETTY_NAME.as_ptr(),
            &mut value,
        );
        let os = (found == 1 && !value.is_null()).then(|| {
            std::ffi::CStr::from_ptr(value)
                .to_string_lossy()
                .into_owned()
        });
        sys::virTypedParamsFree(params, n);
        os
    };
    os.filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_reasons_map() {
        use DomainState::*;
        use ShutOffReason as R;
        // (virDomainState, reason, what ferry sees)
        let cases = [
            (1, 1, Running),
            (2, 0, Running),
            (3, 2, Paused),
            (4, 1, ShuttingDown),
            (5, 1, ShutOff(R::Shutdown)),
            (5, 2, ShutOff(R::Destroyed)),
            (5, 3, ShutOff(R::Crashed)),
            (5, 4, ShutOff(R::Migrated)),
            (5, 5, ShutOff(R::Saved)),
            (5, 6, ShutOff(R::Failed)),
            (5, 7, ShutOff(R::Other)),
            // DAEMON: killed by libvirtd at its restart, a crash for ferry.
            (5, 8, ShutOff(R::Crashed)),
            (5, 0, ShutOff(R::Other)),
            (6, 0, Crashed),
            (7, 0, PmSuspended),
            (0, 0, Unknown),
            (99, 0, Unknown),
        ];
        for (state, reason, want) in cases {
            assert_eq!(
                map_state(state, reason),
                want,
                "state {state} reason {reason}"
            );
        }
    }
}
