//! Domains as planners and controllers reason about them, in ferry's own types: the definition
//! ferry asks a host to define, what a host reports about its domains, and the pure functions
//! over them (the definition's hash and shape, MAC addresses, disk names, what a restart would
//! change). Nothing here knows XML or libvirt: `hypervisor::domain_xml` writes these definitions
//! as domain XML and reads ferry's metadata back.

mod changes;
mod definition;
mod description;
mod identity;
mod observed;
mod shape;

pub use changes::{Change, Edit, describe_changes, pending_restart, restart_changes};
pub use definition::{
    Bus, CpuModel, DiskDef, DomainDefinition, Graphics, KernelBoot, NicDef, NicSource, Owner,
    SEED_DISK, VirtType,
};
pub use description::{Backing, DescribedDisk, DescribedDomain, DescribedNic, DomainDescription};
pub use identity::{definition_hash, derive_mac};
pub use observed::{
    DomainInfo, DomainState, FerryMetadata, GuestInfo, GuestInterface, HostInfo, ShutOffReason,
    VolumeInfo,
};
pub use shape::{SERIAL_CONSOLE, Shape, disk_targets, shape};
