//! What a live migration asks of libvirt and what libvirt reports about it, in ferry's own types.
//! Policy (limits, timeouts, when to abort) is decided in `plan::migration`.

use std::time::Duration;

/// How the guest's disks reach the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// Both hosts see the same storage: only memory and device state move.
    Shared,
    /// Storage is local to each host: the top layer of every listed disk is copied; its backing
    /// image must already exist on the destination, and ferry pre-creates the overlay there.
    CopyIncremental,
    /// Storage is local: every listed disk is copied in full.
    CopyFull,
}

/// One live migration, as handed to the source host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationRequest {
    /// libvirt URI of the destination as the *source host* reaches it (peer-to-peer migration:
    /// the source's libvirtd connects to the destination's).
    pub destination_uri: String,
    /// Bandwidth limit in MiB/s; `None` is unlimited.
    pub bandwidth_mib: Option<u64>,
    /// Let QEMU throttle the guest's vCPUs when memory is dirtied faster than it is sent.
    pub auto_converge: bool,
    /// Allow switching to post-copy (the caller decides when, with `start_post_copy`).
    pub post_copy: bool,
    /// How disks move.
    pub storage: StorageMode,
    /// Target device names (`vda`, ...) of the disks to copy when storage is not shared.
    pub copy_disks: Vec<String>,
    /// Give up waiting for the source host after this long (the job itself is aborted by the
    /// caller before that, from its own progress checks).
    pub timeout: Duration,
}

/// Statistics of a domain's current or last completed job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobProgress {
    /// Milliseconds since the job started.
    pub elapsed_ms: u64,
    /// Bytes to transfer in total (memory and disks), as libvirt estimates it.
    pub data_total: u64,
    /// Bytes transferred so far.
    pub data_processed: u64,
    /// Bytes still to transfer.
    pub data_remaining: u64,
    /// Memory pages dirtied per second.
    pub memory_dirty_rate: u64,
    /// Pre-copy iterations over guest memory.
    pub memory_iteration: u64,
    /// Guest downtime at switch-over in milliseconds (completed jobs).
    pub downtime_ms: Option<u64>,
    /// Whether libvirt reported the completed job as successful (completed jobs only).
    pub success: Option<bool>,
    /// libvirt's error message for a failed job, when it gives one.
    pub error: Option<String>,
}
