//! Errors of the controllers, classified for retry policy, metrics and Events.

use crate::hypervisor::HypervisorError;

/// Result with ferry's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while reconciling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed (transient unless the request was invalid).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A host's libvirt failed or could not be reached.
    #[error("hypervisor: {0}")]
    Hypervisor(#[from] HypervisorError),
    /// The spec cannot work as written; nothing is retried until it changes.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A dependency (HostPool, image, volume, host) is missing; retried slowly and on change.
    #[error("{0}")]
    Missing(String),
    /// Serializing a status or object failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// Domain XML could not be written.
    #[error("domain XML: {0}")]
    Xml(String),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A short, stable category for metrics labels.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Hypervisor(e) if e.is_connection_lost() => "host_unreachable",
            Error::Hypervisor(_) => "hypervisor",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Missing(_) => "missing",
            Error::Serialization(_) => "serialization",
            Error::Xml(_) => "xml",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "finalizer",
            },
        }
    }

    /// Whether retrying without a change to the spec cannot help.
    pub fn is_permanent(&self) -> bool {
        self.category() == "invalid_spec"
    }
}
