//! Redfish fencing: `POST {system}/Actions/ComputerSystem.Reset {"ResetType":"ForceOff"}`, then
//! `GET {system}` until `PowerState` is `Off`; power-on is the same action with `"On"`. HTTPS with a CA from the credentials Secret (or the
//! system roots when none is given), basic auth, and the system path always named explicitly
//! (never "the first/last system").

use super::{Credentials, FenceError, Fencer, Power, allowed, bounded};
use crate::gate::ActionGate;
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
    /// The host's firmware UUID, which the system's `UUID` must be (when set).
    system_uuid: Option<String>,
    gate: ActionGate,
}

impl Redfish {
    /// A client for the system at `base` + `system_path`; every request is bounded by `timeout`,
    /// every power-off asks `gate` first.
    pub fn new(
        base: &str,
        system_path: &str,
        creds: Credentials,
        timeout: Duration,
        gate: ActionGate,
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
            system_uuid: None,
            gate,
        })
    }

    /// Count this system's power state only while its `UUID` is `uuid` (the host's firmware
    /// UUID, as kubelet reports it in the Node's `systemUUID`): another machine's system is
    /// [`FenceError::WrongSystem`], never read as this host's and never powered off.
    pub fn for_system_uuid(mut self, uuid: &str) -> Self {
        self.system_uuid = Some(uuid.to_string());
        self
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

/// Whether a Redfish system's `UUID` is the firmware UUID kubelet reports: equal ignoring case
/// and hyphens, or equal once the first three fields are byte-swapped (SMBIOS before 2.6 stored
/// them big-endian, later ones little-endian, and firmware and kernels disagree on which).
fn same_system(expected: &str, found: &str) -> bool {
    let hex = |s: &str| -> Option<Vec<u8>> {
        let h: String = s.chars().filter(|c| *c != '-').collect();
        if h.len() != 32 {
            return None;
        }
        (0..16)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
            .collect()
    };
    let (Some(a), Some(b)) = (hex(expected), hex(found)) else {
        return false;
    };
    if a.iter().all(|x| *x == 0) || a.iter().all(|x| *x == 0xff) {
        // A placeholder UUID names no machine.
        return false;
    }
    let mut swapped = b.clone();
    swapped[0..4].reverse();
    swapped[4..6].reverse();
    swapped[6..8].reverse();
    a == b || a == swapped
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
            if let Some(expected) = &self.system_uuid {
                let found = body
                    .get("UUID")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default();
                if !same_system(expected, found) {
                    return Err(FenceError::WrongSystem {
                        bmc: self.describe(),
                        expected: expected.clone(),
                        found: if found.is_empty() {
                            "without a UUID".to_string()
                        } else {
                            found.to_string()
                        },
                    });
                }
            }
            Ok(match body.get("PowerState").and_then(|v| v.as_str()) {
                Some("Off") => Power::Off,
                Some("On") => Power::On,
                _ => Power::Other,
            })
        })
        .await
    }

    async fn power_off(&self) -> Result<(), FenceError> {
        self.reset(
            "ForceOff",
            "ComputerSystem.Reset ForceOff",
            "fence power_off",
        )
        .await
    }

    async fn power_on(&self) -> Result<(), FenceError> {
        self.reset("On", "ComputerSystem.Reset On", "power_on")
            .await
    }
}

impl Redfish {
    /// `POST ComputerSystem.Reset` with `reset_type`, once the gate allows it.
    async fn reset(
        &self,
        reset_type: &'static str,
        what: &'static str,
        gate_op: &'static str,
    ) -> Result<(), FenceError> {
        let bmc = self.describe();
        allowed(&self.gate, &bmc, gate_op)?;
        bounded(&bmc, what, self.timeout, async {
            let resp = self
                .client
                .post(self.url("/Actions/ComputerSystem.Reset"))
                .basic_auth(&self.creds.username, Some(&self.creds.password))
                .json(&serde_json::json!({ "ResetType": reset_type }))
                .send()
                .await
                .map_err(|e| self.error(what, e))?;
            self.check(what, resp).await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_is_the_hosts_by_its_uuid() {
        let host = "4c4c4544-0042-3510-8052-b4c04f395231";
        // (what, the system's UUID, same machine)
        let cases = [
            ("identical", host, true),
            ("upper case", "4C4C4544-0042-3510-8052-B4C04F395231", true),
            (
                "SMBIOS byte order of the first three fields",
                "44454c4c-4200-1035-8052-b4c04f395231",
                true,
            ),
            (
                "another machine",
                "4c4c4544-0042-3510-8052-b4c04f395232",
                false,
            ),
            ("no UUID", "", false),
            ("not a UUID", "h1", false),
        ];
        for (what, found, want) in cases {
            assert_eq!(same_system(host, found), want, "{what}");
        }
        // A placeholder UUID on the Node names no machine: nothing matches it.
        let zero = "00000000-0000-0000-0000-000000000000";
        assert!(!same_system(zero, zero));
    }
}
