//! Access to the hosts: the libvirt connections, the facts read from each host, and the
//! credentials they are opened with.

use super::lock;
use crate::api::HostPool;
use crate::controller::credentials;
use crate::controller::hosts::{allowed, host_uri, redact};
use crate::hypervisor::connections::{ConnectOptions, HostConnections};
use crate::hypervisor::{HostInfo, HvResult, Hypervisor, HypervisorError};
use crate::metrics::Metrics;
use crate::plan::uri_policy::{Limits, Role};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections to the hosts and what is known about them.
pub struct HostAccess {
    /// Open libvirt connections.
    pub connections: HostConnections,
    /// Reads credentials Secrets.
    client: Client,
    metrics: Arc<Metrics>,
    /// Last facts read from each host, by URI.
    facts: Mutex<HashMap<String, HostInfo>>,
    /// Where libvirt TLS client files from Secrets are written (`$FERRY_PKI_DIR`, default a
    /// `ferry-pki` directory in the temporary directory).
    pki_root: PathBuf,
    /// What the installation allows in libvirt URIs.
    limits: Limits,
}

impl HostAccess {
    /// Access through `connections`, reading credentials with `client`.
    pub fn new(client: Client, metrics: Arc<Metrics>, connections: HostConnections) -> Self {
        let pki_root = std::env::var_os("FERRY_PKI_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("ferry-pki"));
        HostAccess {
            connections,
            client,
            metrics,
            facts: Mutex::default(),
            limits: Limits {
                own_credentials_dir: Some(pki_root.display().to_string()),
                ..Limits::default()
            },
            pki_root,
        }
    }

    /// Allow in libvirt URIs what `limits` allow (never ferry's own credentials directory).
    pub fn set_uri_limits(&mut self, limits: Limits) {
        self.limits = Limits {
            own_credentials_dir: Some(self.pki_root.display().to_string()),
            ..limits
        };
    }

    /// What libvirt URIs may say.
    pub fn uri_limits(&self) -> &Limits {
        &self.limits
    }

    /// The libvirt URI of `node` in `pool`, if allowed (see [`host_uri`]).
    pub fn uri(&self, pool: &HostPool, node: &Node) -> Result<String, String> {
        host_uri(pool, node, &self.limits)
    }

    /// A connection to the host at `uri`, with the pool's timeouts and, when the pool names a
    /// credentials Secret, its TLS client files as the connection's `pkipath`.
    pub async fn connect(&self, uri: &str, pool: &HostPool) -> HvResult<Arc<dyn Hypervisor>> {
        self.connect_in(&self.connections, uri, pool).await
    }

    /// [`HostAccess::connect`] through another registry (see [`HostConnections::sibling`]).
    pub async fn connect_in(
        &self,
        registry: &HostConnections,
        uri: &str,
        pool: &HostPool,
    ) -> HvResult<Arc<dyn Hypervisor>> {
        let opts = pool_options(pool);
        // Every connection passes here: a URI the limits refuse is never opened.
        allowed(uri, Role::Controller, pool, &self.limits).map_err(|message| {
            HypervisorError::Rejected {
                uri: redact(uri),
                message,
            }
        })?;
        let uri = self.credentialed_uri(uri, pool).await?;
        registry.get(&uri, &opts).await.map_err(|e| match e {
            // Name the Secret the rejected credentials came from.
            HypervisorError::Rejected { uri, message } => HypervisorError::Rejected {
                message: match &pool.spec.libvirt.credentials_secret {
                    Some(s) => format!("{message}; credentials from Secret {s}"),
                    None => message,
                },
                uri: redact(&uri),
            },
            e => e,
        })
    }

    /// `uri` with the pool's credentials applied (see [`HostAccess::connect`]).
    pub async fn credentialed_uri(&self, uri: &str, pool: &HostPool) -> HvResult<String> {
        match &pool.spec.libvirt.credentials_secret {
            Some(secret) => {
                let ns = pool.metadata.namespace.as_deref().unwrap_or_default();
                credentials::apply(&self.client, &self.pki_root, ns, secret, uri).await
            }
            None => Ok(uri.to_string()),
        }
    }

    /// Options for a connection of its own (outside the registry), such as one that carries a
    /// long migration call, with `call_timeout` for its calls.
    pub fn dedicated_options(&self, pool: &HostPool, call_timeout: Duration) -> ConnectOptions {
        let observer = self.metrics.clone();
        ConnectOptions {
            call_timeout,
            observer: Some(Arc::new(move |op: &'static str, secs: f64, ok: bool| {
                observer.libvirt_call(op, secs, ok)
            })),
            ..pool_options(pool)
        }
    }

    /// Host facts, read once per connection and then cached.
    pub async fn info(&self, hv: &dyn Hypervisor) -> HvResult<HostInfo> {
        if let Some(info) = lock(&self.facts).get(hv.uri()) {
            return Ok(info.clone());
        }
        let info = hv.host_info().await?;
        lock(&self.facts).insert(hv.uri().to_string(), info.clone());
        Ok(info)
    }

    /// Remember fresh host facts (the HostPool controller reads them on every probe).
    pub fn remember_info(&self, uri: &str, info: HostInfo) {
        lock(&self.facts).insert(uri.to_string(), info);
    }
}

/// Connection options from a pool's libvirt settings.
fn pool_options(pool: &HostPool) -> ConnectOptions {
    let (interval, count) = pool.keepalive();
    ConnectOptions {
        connect_timeout: pool.connect_timeout(),
        keepalive_interval: interval,
        keepalive_count: count,
        ..ConnectOptions::default()
    }
}
