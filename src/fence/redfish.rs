//! Redfish fencing: `POST {system}/Actions/ComputerSystem.Reset {"ResetType":"ForceOff"}`, then
//! `GET {system}` until `PowerState` is `Off`. HTTPS with a CA from the credentials Secret (or the
//! system roots when none is given), basic auth, and the system path always named explicitly
//! (never "the first/last system").

use super::{Credentials, FenceError, Fencer, Power, bounded};
use async_trait::async_trait;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::sync::Arc;
use std::time::Duration;

/// One Redfish ComputerSystem.
pub struct Redfish {
    client: reqwest::Client,
    /// `https://bmc:port`.
    base: String,
    /// `/redfish/v1/Systems/<id>`.
    system: String,
    creds: Credentials,
    timeout: Duration,
}

impl Redfish {
    /// A client for the system at `base` + `system_path`; every request is bounded by `timeout`.
    pub fn new(
        base: &str,
        system_path: &str,
        creds: Credentials,
        timeout: Duration,
    ) -> Result<Redfish, FenceError> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(FenceError::Config(format!(
                "Redfish address {base:?} must start with https:// (or http://)"
            )));
        }
        if !system_path.starts_with('/') {
            return Err(FenceError::Config(format!(
                "Redfish system path {system_path:?} must start with /"
            )));
        }
        let tls = tls_config(creds.ca_pem.as_deref())?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| FenceError::Config(format!("building the HTTPS client: {e}")))?;
        Ok(Redfish {
            client,
            base,
            system: system_path.trim_end_matches('/').to_string(),
            creds,
            timeout,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}{}{}", self.base, self.system, tail)
    }

    fn error(&self, what: &'static str, e: reqwest::Error) -> FenceError {
        if e.is_timeout() {
            FenceError::Timeout {
                bmc: self.describe(),
                what,
                seconds: self.timeout.as_secs().max(1),
            }
        } else {
            FenceError::Failed {
                bmc: self.describe(),
                what,
                detail: error_chain(&e),
            }
        }
    }

    async fn check(
        &self,
        what: &'static str,
        resp: reqwest::Response,
    ) -> Result<reqwest::Response, FenceError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let detail = format!(
            "HTTP {status}: {}",
            body.chars().take(200).collect::<String>()
        );
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            Err(FenceError::Auth {
                bmc: self.describe(),
                detail,
            })
        } else {
            Err(FenceError::Failed {
                bmc: self.describe(),
                what,
                detail,
            })
        }
    }
}

/// rustls with the ring provider; roots from `ca_pem`, or the platform's when unset.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, FenceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| FenceError::Config(format!("TLS: {e}")))?;
    let config = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| FenceError::Config(format!("ca.crt is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(FenceError::Config(
                    "ca.crt holds no certificate".to_string(),
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| FenceError::Config(format!("ca.crt: {e}")))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            let native = rustls_native_roots();
            for c in native {
                let _ = roots.add(c);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// The system's CA bundle, read from the usual Debian/RHEL locations (empty when none).
fn rustls_native_roots() -> Vec<CertificateDer<'static>> {
    for path in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read(path) {
            return CertificateDer::pem_slice_iter(&pem)
                .filter_map(Result::ok)
                .collect();
        }
    }
    Vec::new()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[async_trait]
impl Fencer for Redfish {
    fn describe(&self) -> String {
        format!("{}{}", self.base, self.system)
    }

    async fn power_state(&self) -> Result<Power, FenceError> {
        let bmc = self.describe();
        bounded(&bmc, "reading PowerState", self.timeout, async {
            let resp = self
                .client
                .get(self.url(""))
                .basic_auth(&self.creds.username, Some(&self.creds.password))
                .send()
                .await
                .map_err(|e| self.error("reading PowerState", e))?;
            let resp = self.check("reading PowerState", resp).await?;
            let body: serde_json::Value = resp
                .json()
                .await
                .map_err(|e| self.error("reading PowerState", e))?;
            Ok(match body.get("PowerState").and_then(|v| v.as_str()) {
                Some("Off") => Power::Off,
                Some("On") => Power::On,
                _ => Power::Other,
            })
        })
        .await
    }

    async fn power_off(&self) -> Result<(), FenceError> {
        let bmc = self.describe();
        bounded(&bmc, "ComputerSystem.Reset ForceOff", self.timeout, async {
            let resp = self
                .client
                .post(self.url("/Actions/ComputerSystem.Reset"))
                .basic_auth(&self.creds.username, Some(&self.creds.password))
                .json(&serde_json::json!({"ResetType": "ForceOff"}))
                .send()
                .await
                .map_err(|e| self.error("ComputerSystem.Reset ForceOff", e))?;
            self.check("ComputerSystem.Reset ForceOff", resp).await?;
            Ok(())
        })
        .await
    }
}
