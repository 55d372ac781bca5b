//! A VM's cloud-init seed on its host: resolve the spec (reading Secrets), build the image, keep
//! one volume per seed content, and remove seeds no domain uses any more.
//!
//! Secret values only pass through memory into the image: they are never logged, put in
//! messages or copied into status.

use crate::api::VirtualMachine;
use crate::api::virtual_machine::{DiskStatus, SecretKeyRef, VirtualMachineStatus};
use crate::cloud_init::{Seed, SeedData, build_seed};
use crate::hypervisor::{DomainInfo, HvResult, Hypervisor, VolumeInfo};
use crate::plan::definition::SEED_DISK;
use crate::plan::naming;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

/// Why the seed could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedProblem {
    /// A referenced Secret or key does not exist (it may still be created).
    SecretMissing(String),
    /// The data cannot make a seed (too large, conflicting keys, bad meta-data).
    Invalid(String),
    /// The API server could not be asked.
    Api(String),
}

/// The VM's seed, or `None` when it has no `cloudInit`.
pub async fn resolve(vm: &VirtualMachine, client: &Client) -> Result<Option<Seed>, SeedProblem> {
    let Some(ci) = &vm.spec.cloud_init else {
        return Ok(None);
    };
    let ns = vm.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pick = async |inline: &Option<String>,
                      secret: &Option<SecretKeyRef>,
                      field: &str,
                      default_key: &str|
           -> Result<Option<Vec<u8>>, SeedProblem> {
        if let Some(v) = inline {
            return Ok(Some(v.clone().into_bytes()));
        }
        let Some(r) = secret else {
            return Ok(None);
        };
        let key = r.key.as_deref().unwrap_or(default_key);
        let found = secrets
            .get_opt(&r.name)
            .await
            .map_err(|e| SeedProblem::Api(format!("reading Secret {ns}/{} failed: {e}", r.name)))?;
        let Some(secret) = found else {
            return Err(SeedProblem::SecretMissing(format!(
                "Secret {:?} (spec.cloudInit.{field}) does not exist in namespace {ns}: create it or fix the spec",
                r.name
            )));
        };
        match secret.data.as_ref().and_then(|d| d.get(key)) {
            Some(v) => Ok(Some(v.0.clone())),
            None => Err(SeedProblem::SecretMissing(format!(
                "Secret {:?} (spec.cloudInit.{field}) has no key {key:?}: add it or set {field}.key",
                r.name
            ))),
        }
    };
    let data = SeedData {
        instance_id: vm.metadata.uid.clone().unwrap_or_default(),
        user_data: pick(
            &ci.user_data,
            &ci.user_data_secret_ref,
            "userDataSecretRef",
            "userdata",
        )
        .await?,
        network_data: pick(
            &ci.network_data,
            &ci.network_data_secret_ref,
            "networkDataSecretRef",
            "networkdata",
        )
        .await?,
        meta_data: pick(
            &ci.meta_data,
            &ci.meta_data_secret_ref,
            "metaDataSecretRef",
            "metadata",
        )
        .await?,
        hostname: ci.hostname.clone(),
        ssh_authorized_keys: ci.ssh_authorized_keys.clone(),
    };
    build_seed(&data)
        .map(Some)
        .map_err(|e| SeedProblem::Invalid(e.to_string()))
}

/// Whether the spec's cloud-init data comes (partly) from Secrets, which ferry does not watch.
pub fn uses_secrets(vm: &VirtualMachine) -> bool {
    vm.spec.cloud_init.as_ref().is_some_and(|c| {
        c.user_data_secret_ref.is_some()
            || c.network_data_secret_ref.is_some()
            || c.meta_data_secret_ref.is_some()
    })
}

/// The seed volume's name for this VM and seed.
pub fn volume_name(vm: &VirtualMachine, seed: &Seed) -> String {
    naming::seed_volume_name(
        &vm.namespace().unwrap_or_default(),
        &vm.name_any(),
        vm.metadata.uid.as_deref().unwrap_or_default(),
        &seed.digest,
    )
}

/// The seed volume in `pool`, uploaded first when it is not there yet.
pub async fn ensure_volume(
    hv: &dyn Hypervisor,
    pool: &str,
    name: &str,
    seed: &Seed,
) -> HvResult<(VolumeInfo, bool)> {
    if let Some(v) = hv.lookup_volume(pool, name).await? {
        return Ok((v, false));
    }
    let image = seed.image.clone();
    let vol = hv
        .upload_volume(
            pool,
            name,
            image.len() as u64,
            Box::new(std::iter::once(Ok(image))),
        )
        .await?;
    Ok((vol, true))
}

/// Status name of a seed that is no longer the current one.
fn retired(volume: &str) -> String {
    format!("{SEED_DISK}:{volume}")
}

/// Record `current` (or none) as the VM's seed; a seed it replaces stays recorded (under
/// another name) until [`collect`] removes it.
pub fn record(st: &mut VirtualMachineStatus, current: Option<(&str, &str)>) {
    if let Some(cur) = st.disks.iter_mut().find(|d| d.name == SEED_DISK)
        && current.is_none_or(|(_, v)| v != cur.volume)
    {
        cur.name = retired(&cur.volume);
    }
    if let Some((pool, volume)) = current {
        st.disks.retain(|d| d.name != retired(volume));
        if !st.disks.iter().any(|d| d.name == SEED_DISK) {
            st.disks.push(DiskStatus {
                name: SEED_DISK.to_string(),
                pool: pool.to_string(),
                volume: volume.to_string(),
            });
        }
    }
}

/// Retired seeds the domain does not run with.
pub fn unused(st: &VirtualMachineStatus, dom: &DomainInfo) -> Vec<DiskStatus> {
    let prefix = format!("{SEED_DISK}:");
    let live = dom
        .live
        .as_ref()
        .filter(|_| dom.state.is_active())
        .map(|m| m.shape.disks.as_slice())
        .unwrap_or(&[]);
    st.disks
        .iter()
        .filter(|d| d.name.starts_with(&prefix))
        .filter(|d| {
            let marker = format!("/{} (", d.volume);
            !live.iter().any(|s| s.contains(&marker))
        })
        .cloned()
        .collect()
}

/// Delete retired seeds the domain no longer runs with; returns the volumes removed.
pub async fn collect(
    hv: &dyn Hypervisor,
    st: &mut VirtualMachineStatus,
    dom: &DomainInfo,
) -> HvResult<Vec<String>> {
    let mut removed = Vec::new();
    for d in unused(st, dom) {
        hv.delete_volume(&d.pool, &d.volume).await?;
        st.disks.retain(|x| x.name != d.name);
        removed.push(d.volume);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::DomainState;
    use crate::hypervisor::domain_xml::{FerryMetadata, Owner, Shape};

    fn names(st: &VirtualMachineStatus) -> Vec<(String, String)> {
        st.disks
            .iter()
            .map(|d| (d.name.clone(), d.volume.clone()))
            .collect()
    }

    fn dom(active: bool, disks: &[&str]) -> DomainInfo {
        let meta = FerryMetadata {
            owner: Owner {
                namespace: "ns".into(),
                name: "vm".into(),
                uid: "u".into(),
            },
            definition_hash: "h".into(),
            shape: Shape {
                disks: disks.iter().map(|s| s.to_string()).collect(),
                ..Shape::default()
            },
        };
        DomainInfo {
            name: "ns_vm".into(),
            uuid: "u".into(),
            state: if active {
                DomainState::Running
            } else {
                DomainState::ShutOff(crate::hypervisor::ShutOffReason::Shutdown)
            },
            persistent: true,
            vcpus: 1,
            memory_kib: 1024,
            live: active.then(|| meta.clone()),
            config: Some(meta),
        }
    }

    #[test]
    fn a_replaced_seed_is_kept_while_the_running_domain_uses_it() {
        let mut st = VirtualMachineStatus::default();
        record(&mut st, Some(("p", "a.iso")));
        record(&mut st, Some(("p", "a.iso")));
        assert_eq!(names(&st), [(SEED_DISK.into(), "a.iso".into())]);
        record(&mut st, Some(("p", "b.iso")));
        assert_eq!(
            names(&st),
            [
                (format!("{SEED_DISK}:a.iso"), "a.iso".into()),
                (SEED_DISK.into(), "b.iso".into())
            ]
        );
        let running_a = dom(true, &["cloudinit_seed=/pool/a.iso (scsi, raw, read-only)"]);
        assert!(unused(&st, &running_a).is_empty());
        let stopped = dom(
            false,
            &["cloudinit_seed=/pool/a.iso (scsi, raw, read-only)"],
        );
        assert_eq!(unused(&st, &stopped)[0].volume, "a.iso");
        // Changed back before the restart: the retired entry becomes current again.
        record(&mut st, Some(("p", "a.iso")));
        assert_eq!(
            names(&st),
            [
                (format!("{SEED_DISK}:b.iso"), "b.iso".into()),
                (SEED_DISK.into(), "a.iso".into())
            ]
        );
    }

    #[test]
    fn removing_cloud_init_retires_the_seed() {
        let mut st = VirtualMachineStatus::default();
        record(&mut st, Some(("p", "a.iso")));
        record(&mut st, None);
        assert_eq!(names(&st), [(format!("{SEED_DISK}:a.iso"), "a.iso".into())]);
        assert_eq!(unused(&st, &dom(true, &[])).len(), 1);
    }
}
