//! Live migration: starting it peer to peer, reading its statistics, steering and aborting it.
//! Everything here runs on the connection's thread.

use std::os::raw::c_int;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

use super::errors::{CallResult, Fail, lookup_dom, not_found_domain};
use crate::hypervisor::error_code;
use crate::hypervisor::migration::{JobProgress, MigrationRequest, StorageMode};

/// Migrate a running domain (blocks until the migration ends).
pub(super) fn migrate(conn: &Connect, uuid: &str, req: &MigrationRequest) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    let (params, flags) = migration_parameters(req);
    dom.migrate_to_uri3(Some(&req.destination_uri), params, flags)?;
    Ok(())
}

/// Statistics of the running job (`flags` 0) or the last completed one (`COMPLETED`).
pub(super) fn job(conn: &Connect, uuid: &str, flags: u32) -> CallResult<Option<JobProgress>> {
    let Some(dom) = lookup_dom(conn, uuid)? else {
        return Ok(None);
    };
    job_stats(&dom, flags)
}

/// Abort the running job; success when there is none.
pub(super) fn abort_job(conn: &Connect, uuid: &str) -> CallResult<()> {
    let Some(dom) = lookup_dom(conn, uuid)? else {
        return Ok(());
    };
    // SAFETY: `dom` is a valid domain handle for the duration of the call.
    let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        let e = virt::error::Error::last_error();
        // No job to abort (it ended meanwhile) is success.
        if e.code().to_raw() as i32 == error_code::OPERATION_INVALID {
            return Ok(());
        }
        return Err(Fail::Virt(e));
    }
    Ok(())
}

/// Set the longest pause the running migration may cause.
pub(super) fn set_max_downtime(conn: &Connect, uuid: &str, ms: u64) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    dom.migrate_set_max_downtime(ms, 0)?;
    Ok(())
}

/// Switch the running migration to post-copy.
pub(super) fn start_post_copy(conn: &Connect, uuid: &str) -> CallResult<()> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    // SAFETY: `dom` is a valid domain handle for the duration of the call.
    let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
    if rc < 0 {
        return Err(Fail::Virt(virt::error::Error::last_error()));
    }
    Ok(())
}

/// libvirt parameters and flags for a migration request: live, peer to peer, persistent on the
/// destination, undefined on the source, aborted on I/O errors, and no configuration changes
/// while it runs.
fn migration_parameters(req: &MigrationRequest) -> (virt::domain::MigrateParameters, u32) {
    let mut flags = sys::VIR_MIGRATE_LIVE
        | sys::VIR_MIGRATE_PEER2PEER
        | sys::VIR_MIGRATE_PERSIST_DEST
        | sys::VIR_MIGRATE_UNDEFINE_SOURCE
        | sys::VIR_MIGRATE_ABORT_ON_ERROR
        | sys::VIR_MIGRATE_CHANGE_PROTECTION;
    let mut params = virt::domain::MigrateParameters {
        bandwidth: req.bandwidth_mib,
        ..Default::default()
    };
    match req.storage {
        // libvirt 9 cannot tell that a plain directory is shared and refuses without UNSAFE.
        StorageMode::Shared => flags |= sys::VIR_MIGRATE_UNSAFE,
        StorageMode::CopyIncremental => {
            flags |= sys::VIR_MIGRATE_NON_SHARED_INC;
            params.migrate_disks = req.copy_disks.clone();
        }
        StorageMode::CopyFull => {
            flags |= sys::VIR_MIGRATE_NON_SHARED_DISK;
            params.migrate_disks = req.copy_disks.clone();
        }
    }
    if req.auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if req.post_copy {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    (params, flags)
}

/// A domain's job statistics (`flags` 0: the running job; COMPLETED: the last finished one).
fn job_stats(dom: &Domain, flags: u32) -> CallResult<Option<JobProgress>> {
    // Not `Domain::job_stats`: virt 0.5 builds a Vec from libvirt's NULL array when the domain
    // has no job, which aborts the process.
    let mut job_type: c_int = 0;
    let mut nparams: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    // SAFETY: `dom` is a valid handle; libvirt fills the out-pointers.
    let rc = unsafe {
        sys::virDomainGetJobStats(
            dom.as_ptr(),
            &mut job_type,
            &mut params,
            &mut nparams,
            flags,
        )
    };
    if rc < 0 {
        let e = virt::error::Error::last_error();
        if e.code().to_raw() as i32 == error_code::NO_DOMAIN {
            return Ok(None);
        }
        return Err(Fail::Virt(e));
    }
    let list = if params.is_null() || nparams <= 0 {
        Vec::new()
    } else {
        // SAFETY: libvirt allocated `nparams` parameters at `params` with malloc, which is the
        // allocator Rust uses here; the Vec takes ownership as virt itself does.
        unsafe { Vec::from_raw_parts(params, nparams as usize, nparams as usize) }
    };
    let stats: virt::domain::JobStats = (job_type, list).into();
    if stats.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
        return Ok(None);
    }
    Ok(Some(JobProgress {
        elapsed_ms: stats.time_elapsed.unwrap_or(0),
        data_total: stats.data_total.unwrap_or(0),
        data_processed: stats.data_processed.unwrap_or(0),
        data_remaining: stats.data_remaining.unwrap_or(0),
        memory_dirty_rate: stats.mem_dirty_rate.unwrap_or(0),
        memory_iteration: stats.mem_iteration.unwrap_or(0),
        downtime_ms: stats.downtime,
        success: stats.success,
        error: stats.error_message,
    }))
}
