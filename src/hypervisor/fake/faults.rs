//! The fake's vocabulary for tests: the operations it logs, the faults a test can inject into
//! them, and the call log.

use std::time::Duration;

use crate::hypervisor::{HypervisorError, error_code};

/// One operation of a fake host: a connection attempt or a [`Hypervisor`](crate::hypervisor::Hypervisor)
/// call. [`Op::as_str`] is the name the libvirt implementation reports to a
/// [`CallObserver`](crate::hypervisor::CallObserver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Connect,
    HostInfo,
    Ping,
    ListDomains,
    LookupDomain,
    DescribeDomain,
    SetMetadata,
    DefineDomain,
    StartDomain,
    ShutdownDomain,
    DestroyDomain,
    PauseDomain,
    ResumeDomain,
    UndefineDomain,
    EnsurePool,
    LookupVolume,
    ReadVolumeHead,
    CreateOverlay,
    CloneVolume,
    UploadVolume,
    GuestInfo,
    DeleteVolume,
    Migrate,
    JobProgress,
    CompletedJob,
    AbortJob,
    SetMigrationMaxDowntime,
    StartPostCopy,
    DomainCounters,
}

impl Op {
    /// The operation's name, as metrics and the libvirt implementation name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Connect => "connect",
            Op::HostInfo => "host_info",
            Op::Ping => "ping",
            Op::ListDomains => "list_domains",
            Op::LookupDomain => "lookup_domain",
            Op::DescribeDomain => "describe_domain",
            Op::SetMetadata => "set_metadata",
            Op::DefineDomain => "define_domain",
            Op::StartDomain => "start_domain",
            Op::ShutdownDomain => "shutdown_domain",
            Op::DestroyDomain => "destroy_domain",
            Op::PauseDomain => "pause_domain",
            Op::ResumeDomain => "resume_domain",
            Op::UndefineDomain => "undefine_domain",
            Op::EnsurePool => "ensure_pool",
            Op::LookupVolume => "lookup_volume",
            Op::ReadVolumeHead => "read_volume_head",
            Op::CreateOverlay => "create_overlay",
            Op::CloneVolume => "clone_volume",
            Op::UploadVolume => "upload_volume",
            Op::GuestInfo => "guest_info",
            Op::DeleteVolume => "delete_volume",
            Op::Migrate => "migrate",
            Op::JobProgress => "job_progress",
            Op::CompletedJob => "completed_job",
            Op::AbortJob => "abort_job",
            Op::SetMigrationMaxDowntime => "set_migration_max_downtime",
            Op::StartPostCopy => "start_post_copy",
            Op::DomainCounters => "domain_counters",
        }
    }
}

/// What an injected fault does to the operation it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The connection breaks: this call fails with [`HypervisorError::ConnectionLost`], so does
    /// every later call on the same connection, and its observer is told (as libvirt's close
    /// callback would). On [`Op::Connect`]: the attempt fails with `ConnectionLost`.
    ConnectionLost,
    /// The host refuses: [`HypervisorError::OperationFailed`] with this libvirt error code
    /// (see [`error_code`]) and message; the connection stays usable.
    Failed { code: i32, message: String },
    /// The disk is locked by a domain elsewhere: an operation failure that
    /// [`HypervisorError::is_disk_locked`] recognises (QEMU's image lock message).
    DiskLocked,
    /// The call takes this long before it does its work. Longer than the connection's call
    /// timeout, it gives up after the timeout and the connection counts as lost, as with a real
    /// host; on [`Op::Connect`], longer than the connect timeout gives
    /// [`HypervisorError::ConnectTimeout`].
    Slow(Duration),
    /// On [`Op::Connect`]: the host refuses ferry's credentials ([`HypervisorError::Rejected`]).
    /// On any other operation it acts as [`Fault::Failed`] with code 45 (authentication failed).
    Rejected(String),
}

impl Fault {
    /// [`Fault::Failed`] with a libvirt error code and message.
    pub fn failed(code: i32, message: impl Into<String>) -> Fault {
        Fault::Failed {
            code,
            message: message.into(),
        }
    }

    /// The error this fault makes of `op` (not for [`Fault::Slow`], which delays instead, nor for
    /// [`Fault::ConnectionLost`], which the connection reports as its loss).
    pub(super) fn error(&self, op: Op, uri: &str) -> HypervisorError {
        match self {
            Fault::Failed { code, message } => HypervisorError::OperationFailed {
                operation: op.as_str(),
                code: *code,
                message: message.clone(),
            },
            Fault::DiskLocked => HypervisorError::OperationFailed {
                operation: op.as_str(),
                code: error_code::RESOURCE_BUSY,
                message: DISK_LOCKED.into(),
            },
            Fault::Rejected(message) if op == Op::Connect => HypervisorError::Rejected {
                uri: uri.into(),
                message: message.clone(),
            },
            Fault::Rejected(message) => HypervisorError::OperationFailed {
                operation: op.as_str(),
                code: 45,
                message: message.clone(),
            },
            Fault::ConnectionLost | Fault::Slow(_) => HypervisorError::ConnectionLost {
                uri: uri.into(),
                message: format!("{}: injected connection loss", op.as_str()),
            },
        }
    }
}

/// QEMU's message when an image is locked by another process.
pub(super) const DISK_LOCKED: &str =
    "internal error: process exited while connecting to monitor: Failed to get \"write\" lock";

/// How many times an injected fault strikes before it is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next matching call only.
    Once,
    /// The next `n` matching calls.
    N(u32),
    /// Every matching call until [`FakeHost::clear_faults`](super::FakeHost::clear_faults).
    Always,
}

/// An injected fault waiting for its operation.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) op: Op,
    pub(super) fault: Fault,
    pub(super) left: Times,
}

/// Takes the first fault injected for `op`, counting it used.
pub(super) fn take(rules: &mut Vec<Rule>, op: Op) -> Option<Fault> {
    let i = rules.iter().position(|r| r.op == op)?;
    let fault = rules[i].fault.clone();
    match rules[i].left {
        Times::Always => {}
        Times::Once | Times::N(0) | Times::N(1) => {
            rules.remove(i);
        }
        Times::N(n) => rules[i].left = Times::N(n - 1),
    }
    Some(fault)
}

/// One entry of a fake host's call log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which connection made it (every connection to the fake gets its own number, from 1; a
    /// failed connection attempt has 0).
    pub connection: u64,
    /// The operation.
    pub op: Op,
    /// What it was about: a domain UUID (a domain name for `describe_domain`), `pool/volume`, a
    /// pool name; empty for host-wide calls.
    pub target: String,
    /// Whether it succeeded.
    pub ok: bool,
}
