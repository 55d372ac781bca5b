//! Writing the VM's status. Every write is conditional on the version of the object this
//! reconcile decided on (the one it read, then the one its own last write produced): a reconcile
//! working from a stale copy (an old cache, a second controller process, a replica whose lease
//! lapsed) can never write over a newer status. Recording a placement is therefore a fencing
//! token: of two reconciles placing one VM, the second write fails before anything is created on
//! a host.

use crate::api::{VirtualMachine, VirtualMachineStatus};
use crate::controller::status::{apply_status_at, is_conflict};
use kube::ResourceExt;
use kube::api::Api;

/// This reconcile's writes of the VM's status.
pub(super) struct Record<'a> {
    api: &'a Api<VirtualMachine>,
    vm: &'a VirtualMachine,
    /// The version writes are conditional on.
    version: Option<String>,
    /// The status the object holds at that version.
    written: Option<VirtualMachineStatus>,
}

/// Why a write was not made.
pub(super) enum WriteError {
    /// The VM changed since the version this reconcile decided on.
    Stale,
    /// The API server refused or could not be reached.
    Failed(kube::Error),
}

impl<'a> Record<'a> {
    /// Writes conditional on `vm` as this reconcile read it.
    pub(super) fn new(api: &'a Api<VirtualMachine>, vm: &'a VirtualMachine) -> Self {
        Record {
            api,
            vm,
            version: vm.metadata.resource_version.clone(),
            written: vm.status.clone(),
        }
    }

    /// Write `st` unless the object already holds it; returns whether a write was made.
    pub(super) async fn write(&mut self, st: &VirtualMachineStatus) -> Result<bool, WriteError> {
        if self.written.as_ref() == Some(st) {
            return Ok(false);
        }
        // An object without a version never came from an API server: its write is unconditional.
        match apply_status_at(self.api, self.vm, st, self.version.as_deref()).await {
            Ok(obj) => {
                self.version = obj.metadata.resource_version;
                self.written = Some(st.clone());
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Err(WriteError::Stale),
            Err(e) => Err(WriteError::Failed(e)),
        }
    }

    /// Read the VM afresh: whether the API server still holds the version this reconcile
    /// decides on (a cache can lag behind, or another process can have written since).
    pub(super) async fn is_current(&self) -> Result<bool, kube::Error> {
        let fresh = self.api.get(&self.vm.name_any()).await?;
        Ok(fresh.metadata.resource_version == self.version)
    }
}
