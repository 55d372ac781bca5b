//! The state of every fake host behind one connector, and what each operation does to it. One
//! lock guards it all, so operations that touch two hosts (a migration, a disk lock) see one
//! consistent picture.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use super::connection::ConnShared;
use super::faults::{Call, DISK_LOCKED, Rule};
use crate::hypervisor::migration::JobProgress;
use crate::hypervisor::{HvResult, HypervisorError, error_code};
use crate::plan::domain::DescribedDomain;
use crate::plan::domain::{
    DomainDefinition, DomainInfo, DomainState, FerryMetadata, GuestInfo, HostInfo, ShutOffReason,
    VolumeInfo, definition_hash, shape,
};

/// libvirt's `VIR_ERR_OPERATION_FAILED`.
pub(super) const OPERATION_FAILED: i32 = 9;

/// A domain lifecycle event to deliver: host URI and domain UUID.
pub(super) type Event = (String, String);

/// Every fake host, by canonical URI, and the storage they see.
#[derive(Default)]
pub(super) struct World {
    pub(super) hosts: BTreeMap<String, HostState>,
    /// Other URIs that reach a host (the URI a source host uses for a peer), to canonical URIs.
    pub(super) aliases: BTreeMap<String, String>,
    /// Storage, shared by the hosts that hold the same index.
    pub(super) storage: Vec<Storage>,
}

/// One fake host.
pub(super) struct HostState {
    pub(super) info: HostInfo,
    pub(super) reachable: bool,
    pub(super) domains: BTreeMap<String, FakeDomain>,
    /// Index into [`World::storage`].
    pub(super) storage: usize,
    pub(super) faults: Vec<Rule>,
    pub(super) calls: Vec<Call>,
    pub(super) connections: Vec<Weak<ConnShared>>,
    /// How long a migration from this host takes.
    pub(super) migration_time: std::time::Duration,
    /// Migration jobs running from this host, by domain UUID.
    pub(super) jobs: BTreeMap<String, Arc<super::migration::MigrationJob>>,
    /// The last completed job per domain UUID.
    pub(super) completed: BTreeMap<String, JobProgress>,
    /// What `describe_domain` reports for a domain, by UUID, when a test set it.
    pub(super) descriptions: BTreeMap<String, DescribedDomain>,
    /// CPU time (ns) and resident memory (bytes) per domain UUID that `domain_counters`
    /// reports for running domains; `None` (the default): the call is unsupported, as on a
    /// hypervisor without statistics.
    pub(super) counters: Option<BTreeMap<String, (u64, u64)>>,
}

/// A domain of a fake host.
#[derive(Debug, Clone)]
pub(super) struct FakeDomain {
    pub(super) name: String,
    pub(super) uuid: String,
    /// The persistent definition, `None` for a transient domain.
    pub(super) config: Option<Definition>,
    /// The definition the running instance started with, `None` when it is shut off.
    pub(super) live: Option<Definition>,
    pub(super) state: DomainState,
    pub(super) guest: Option<GuestInfo>,
    /// The guest ignores shutdown requests.
    pub(super) ignores_shutdown: bool,
}

/// What a domain was defined from.
#[derive(Debug, Clone)]
pub(super) enum Definition {
    /// By ferry: the definition ferry handed over.
    Ferry(Box<DomainDefinition>),
    /// By someone else: no ferry metadata.
    Foreign { vcpus: u32, memory_kib: u64 },
    /// By ferry, its metadata removed since (a released domain).
    Released(Box<DomainDefinition>),
    /// By someone else, taken over by ferry since: its definition as it was, with ferry's
    /// metadata.
    TakenOver {
        vcpus: u32,
        memory_kib: u64,
        meta: Box<FerryMetadata>,
    },
}

impl Definition {
    fn metadata(&self) -> Option<FerryMetadata> {
        match self {
            Definition::Ferry(def) => Some(FerryMetadata {
                owner: def.owner.clone(),
                definition_hash: definition_hash(def),
                shape: shape(def),
            }),
            Definition::TakenOver { meta, .. } => Some(meta.as_ref().clone()),
            Definition::Foreign { .. } | Definition::Released(_) => None,
        }
    }

    fn size(&self) -> (u32, u64) {
        match self {
            Definition::Ferry(def) | Definition::Released(def) => (def.vcpus, def.memory_kib),
            Definition::Foreign { vcpus, memory_kib }
            | Definition::TakenOver {
                vcpus, memory_kib, ..
            } => (*vcpus, *memory_kib),
        }
    }

    /// Paths of the disks the guest may write.
    fn writable_disks(&self) -> Vec<&str> {
        match self {
            Definition::Ferry(def) | Definition::Released(def) => def
                .disks
                .iter()
                .filter(|d| !d.read_only)
                .map(|d| d.path.as_str())
                .collect(),
            Definition::Foreign { .. } | Definition::TakenOver { .. } => Vec::new(),
        }
    }
}

impl FakeDomain {
    /// The domain as [`Hypervisor::lookup_domain`](crate::hypervisor::Hypervisor) reports it.
    pub(super) fn info(&self) -> DomainInfo {
        let active = self.state.is_active();
        let (vcpus, memory_kib) = self
            .live
            .as_ref()
            .filter(|_| active)
            .or(self.config.as_ref())
            .map(Definition::size)
            .unwrap_or_default();
        DomainInfo {
            name: self.name.clone(),
            uuid: self.uuid.clone(),
            state: self.state,
            persistent: self.config.is_some(),
            vcpus,
            memory_kib,
            live: self
                .live
                .as_ref()
                .filter(|_| active)
                .and_then(Definition::metadata),
            config: self.config.as_ref().and_then(Definition::metadata),
        }
    }
}

/// One storage: pools by name.
#[derive(Debug, Default, Clone)]
pub(super) struct Storage {
    pub(super) pools: BTreeMap<String, Pool>,
}

/// A storage pool: its directory and volumes by name.
#[derive(Debug, Default, Clone)]
pub(super) struct Pool {
    pub(super) path: String,
    pub(super) volumes: BTreeMap<String, VolumeInfo>,
    /// The first bytes of volumes filled with content (uploads, [`FakeHost::set_volume_head`]);
    /// other volumes read as what ferry would have written: a qcow2 header without a backing
    /// file for qcow2, zeros for raw.
    ///
    /// [`FakeHost::set_volume_head`]: super::FakeHost::set_volume_head
    pub(super) heads: BTreeMap<String, Vec<u8>>,
}

/// How many leading bytes of a volume's content the fake keeps.
pub(super) const HEAD: usize = 512;

/// The head of a volume the fake keeps no content for.
pub(super) fn blank_head(vol: &VolumeInfo) -> Vec<u8> {
    let mut h = vec![0u8; HEAD];
    if vol.format == "qcow2" {
        h[..4].copy_from_slice(b"QFI\xfb");
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&vol.capacity.to_be_bytes());
        h[100..104].copy_from_slice(&104u32.to_be_bytes());
    }
    h
}

/// An operation failure in libvirt's words.
pub(super) fn failed(op: &'static str, code: i32, message: impl Into<String>) -> HypervisorError {
    HypervisorError::OperationFailed {
        operation: op,
        code,
        message: message.into(),
    }
}

fn no_domain(op: &'static str, uuid: &str) -> HypervisorError {
    failed(
        op,
        error_code::NO_DOMAIN,
        format!("no domain with UUID {uuid}"),
    )
}

impl World {
    /// The canonical URI of the host `uri` names, directly or by alias.
    pub(super) fn resolve(&self, uri: &str) -> Option<String> {
        if self.hosts.contains_key(uri) {
            return Some(uri.to_string());
        }
        self.aliases.get(uri).cloned()
    }

    pub(super) fn host(&mut self, uri: &str) -> &mut HostState {
        // Connections and handles are only made for hosts that exist, and hosts are never
        // removed; a fresh entry keeps this total.
        self.hosts
            .entry(uri.to_string())
            .or_insert_with(|| HostState::new(uri, 0))
    }

    /// The storage host `uri` sees.
    pub(super) fn storage_of(&mut self, uri: &str) -> &mut Storage {
        let i = self.host(uri).storage;
        if self.storage.len() <= i {
            self.storage.resize_with(i + 1, Storage::default);
        }
        &mut self.storage[i]
    }

    /// Write ferry's metadata into a domain or remove it. Removing turns a domain ferry defined
    /// into a released one; writing is modelled only where it changes nothing (a domain that
    /// has this very metadata).
    pub(super) fn set_metadata(
        &mut self,
        uri: &str,
        uuid: &str,
        meta: Option<&FerryMetadata>,
    ) -> HvResult<()> {
        const OP: &str = "set_metadata";
        let Some(dom) = self.host(uri).domains.get_mut(uuid) else {
            return Err(no_domain(OP, uuid));
        };
        let release = |d: &mut Option<Definition>| match d.take() {
            Some(Definition::Ferry(def)) => *d = Some(Definition::Released(def)),
            Some(Definition::TakenOver {
                vcpus, memory_kib, ..
            }) => *d = Some(Definition::Foreign { vcpus, memory_kib }),
            other => *d = other,
        };
        let take_over = |d: &mut Option<Definition>, m: &FerryMetadata| {
            let (vcpus, memory_kib) = match d.as_ref() {
                Some(
                    def @ (Definition::Foreign { .. }
                    | Definition::TakenOver { .. }
                    | Definition::Released(_)),
                ) => def.size(),
                _ => return false,
            };
            *d = Some(Definition::TakenOver {
                vcpus,
                memory_kib,
                meta: Box::new(m.clone()),
            });
            true
        };
        match meta {
            None => {
                release(&mut dom.config);
                release(&mut dom.live);
                Ok(())
            }
            Some(m) if dom.info().config.as_ref() == Some(m) => Ok(()),
            Some(m) if take_over(&mut dom.config, m) => {
                take_over(&mut dom.live, m);
                Ok(())
            }
            Some(_) => Err(failed(
                OP,
                error_code::OPERATION_INVALID,
                "the in-memory hypervisor does not model writing metadata into this domain",
            )),
        }
    }

    /// Define or redefine a domain from a definition ferry made.
    pub(super) fn define(&mut self, uri: &str, def: &DomainDefinition) -> HvResult<()> {
        const OP: &str = "define_domain";
        let host = self.host(uri);
        if let Some(other) = host
            .domains
            .values()
            .find(|d| d.name == def.name && d.uuid != def.uuid)
        {
            return Err(failed(
                OP,
                OPERATION_FAILED,
                format!(
                    "operation failed: domain '{}' already exists with uuid {}",
                    def.name, other.uuid
                ),
            ));
        }
        match host.domains.get_mut(&def.uuid) {
            Some(d) if d.name != def.name => Err(failed(
                OP,
                OPERATION_FAILED,
                format!(
                    "operation failed: domain '{}' is already defined with uuid {}",
                    d.name, d.uuid
                ),
            )),
            Some(d) => {
                d.config = Some(Definition::Ferry(Box::new(def.clone())));
                Ok(())
            }
            None => {
                host.domains.insert(
                    def.uuid.clone(),
                    FakeDomain {
                        name: def.name.clone(),
                        uuid: def.uuid.clone(),
                        config: Some(Definition::Ferry(Box::new(def.clone()))),
                        live: None,
                        state: DomainState::ShutOff(ShutOffReason::Other),
                        guest: None,
                        ignores_shutdown: false,
                    },
                );
                Ok(())
            }
        }
    }

    /// Start a defined domain, unless a disk it writes is in use by a running domain on a host
    /// that shares its storage.
    pub(super) fn start(&mut self, uri: &str, uuid: &str) -> HvResult<()> {
        const OP: &str = "start_domain";
        let host = self.host(uri);
        let Some(dom) = host.domains.get(uuid) else {
            return Err(no_domain(OP, uuid));
        };
        if dom.state.is_active() {
            return Ok(());
        }
        let Some(config) = dom.config.clone() else {
            return Err(no_domain(OP, uuid));
        };
        let storage = host.storage;
        let wanted = config.writable_disks();
        let locked = self
            .hosts
            .iter()
            .filter(|(_, h)| h.storage == storage)
            .any(|(u, h)| {
                h.domains.values().any(|d| {
                    (u != uri || d.uuid != uuid)
                        && d.state.is_active()
                        && d.live
                            .as_ref()
                            .is_some_and(|l| l.writable_disks().iter().any(|p| wanted.contains(p)))
                })
            });
        if locked {
            return Err(failed(OP, error_code::RESOURCE_BUSY, DISK_LOCKED));
        }
        if let Some(d) = self.host(uri).domains.get_mut(uuid) {
            d.state = DomainState::Running;
            d.live = Some(config);
        }
        Ok(())
    }

    /// Pause or resume an active domain. Returns whether its state changed; a domain that is
    /// not active cannot be paused or resumed (libvirt: operation invalid).
    pub(super) fn set_paused(&mut self, uri: &str, uuid: &str, paused: bool) -> HvResult<bool> {
        let op = if paused {
            "pause_domain"
        } else {
            "resume_domain"
        };
        let Some(d) = self.host(uri).domains.get_mut(uuid) else {
            return Err(no_domain(op, uuid));
        };
        let (from, to) = if paused {
            (DomainState::Running, DomainState::Paused)
        } else {
            (DomainState::Paused, DomainState::Running)
        };
        if d.state == to {
            return Ok(false);
        }
        if d.state != from {
            return Err(failed(
                op,
                error_code::OPERATION_INVALID,
                "domain is not running",
            ));
        }
        d.state = to;
        Ok(true)
    }

    /// Shut a domain off for `reason`; a transient one disappears. Returns whether it ran.
    pub(super) fn stop(&mut self, uri: &str, uuid: &str, reason: ShutOffReason) -> bool {
        let host = self.host(uri);
        let Some(d) = host.domains.get_mut(uuid) else {
            return false;
        };
        if !d.state.is_active() {
            return false;
        }
        d.state = DomainState::ShutOff(reason);
        d.live = None;
        if d.config.is_none() {
            host.domains.remove(uuid);
        }
        true
    }

    /// Remove a domain's persistent definition; a shut-off domain disappears. Returns whether
    /// there was one.
    pub(super) fn undefine(&mut self, uri: &str, uuid: &str) -> bool {
        let host = self.host(uri);
        let Some(d) = host.domains.get_mut(uuid) else {
            return false;
        };
        if d.config.take().is_none() {
            return false;
        }
        if !d.state.is_active() {
            host.domains.remove(uuid);
        }
        true
    }

    /// Make sure a pool exists; its directory.
    pub(super) fn ensure_pool(
        &mut self,
        uri: &str,
        name: &str,
        path: Option<&str>,
    ) -> HvResult<String> {
        let storage = self.storage_of(uri);
        if let Some(p) = storage.pools.get(name) {
            return Ok(p.path.clone());
        }
        let Some(path) = path else {
            return Err(failed(
                "ensure_pool",
                error_code::NO_STORAGE_POOL,
                format!("storage pool '{name}' not found and no path to create it"),
            ));
        };
        storage.pools.insert(
            name.to_string(),
            Pool {
                path: path.to_string(),
                ..Pool::default()
            },
        );
        Ok(path.to_string())
    }

    /// The pool, or libvirt's error for a missing one.
    pub(super) fn pool(&mut self, uri: &str, op: &'static str, name: &str) -> HvResult<&mut Pool> {
        self.storage_of(uri).pools.get_mut(name).ok_or_else(|| {
            failed(
                op,
                error_code::NO_STORAGE_POOL,
                format!("storage pool '{name}' not found"),
            )
        })
    }

    /// Add a volume to a pool unless the name is taken.
    pub(super) fn add_volume(
        &mut self,
        uri: &str,
        op: &'static str,
        pool: &str,
        name: &str,
        capacity: u64,
        format: &str,
    ) -> HvResult<VolumeInfo> {
        let p = self.pool(uri, op, pool)?;
        if p.volumes.contains_key(name) {
            return Err(failed(
                op,
                error_code::STORAGE_VOL_EXIST,
                format!("storage volume {name:?} exists already"),
            ));
        }
        let vol = VolumeInfo {
            name: name.to_string(),
            path: format!("{}/{name}", p.path.trim_end_matches('/')),
            capacity,
            format: format.to_string(),
        };
        p.volumes.insert(name.to_string(), vol.clone());
        Ok(vol)
    }

    /// Whether a volume at `path` exists in the storage host `uri` sees.
    pub(super) fn has_path(&mut self, uri: &str, path: &str) -> bool {
        self.storage_of(uri)
            .pools
            .values()
            .any(|p| p.volumes.values().any(|v| v.path == path))
    }

    /// Lifecycle events for every open connection to `uri` whose observer listens.
    pub(super) fn listeners(&mut self, uri: &str) -> Vec<Arc<ConnShared>> {
        let host = self.host(uri);
        host.connections.retain(|c| c.strong_count() > 0);
        host.connections
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|c| c.is_open())
            .collect()
    }
}

impl HostState {
    pub(super) fn new(uri: &str, storage: usize) -> HostState {
        HostState {
            info: HostInfo {
                hostname: hostname(uri),
                libvirt_version: "9.0.0".into(),
                hypervisor_version: "7.2.0".into(),
                cpus: 8,
                memory_kib: 16 * 1024 * 1024,
                kvm: false,
            },
            reachable: true,
            domains: BTreeMap::new(),
            storage,
            faults: Vec::new(),
            calls: Vec::new(),
            connections: Vec::new(),
            migration_time: std::time::Duration::ZERO,
            jobs: BTreeMap::new(),
            completed: BTreeMap::new(),
            descriptions: BTreeMap::new(),
            counters: None,
        }
    }
}

/// `qemu+tcp://h1/system` → `h1`; the URI itself when it names no host.
fn hostname(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let host = rest.split(['/', '?', ':']).next().unwrap_or_default();
    if host.is_empty() {
        uri.to_string()
    } else {
        host.to_string()
    }
}
