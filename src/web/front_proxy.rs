//! Requests the API server forwards to ferry's aggregated API: the API server authenticates the
//! user (any credential it takes: client certificate, token, OIDC, exec plugin), lets RBAC
//! authorize the request, and forwards it over TLS with its front-proxy client certificate,
//! naming the user in request headers (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-*`).
//!
//! Those headers are believed only on a connection whose client certificate the requestheader
//! CA signed and whose common name the API server allows, both as published in the ConfigMap
//! `kube-system/extension-apiserver-authentication` (readable through the built-in Role
//! `extension-apiserver-authentication-reader`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

use crate::access::Identity;

/// Namespace and name of the ConfigMap the API server publishes its requestheader settings in.
pub const CONFIGMAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

/// How the API server names the user of a forwarded request, and who may forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeaders {
    /// PEM: the CA that signs the front proxy's client certificate.
    pub client_ca: String,
    /// Common names a front proxy's certificate may have; empty: any the CA signed.
    pub allowed_names: Vec<String>,
    /// Headers naming the user (the first one present counts).
    pub username_headers: Vec<String>,
    /// Headers naming the user's groups (every value of each).
    pub group_headers: Vec<String>,
    /// Prefixes of headers carrying extra attributes (`X-Remote-Extra-<key>`).
    pub extra_prefixes: Vec<String>,
}

impl RequestHeaders {
    /// Read from the API server's ConfigMap.
    pub async fn load(client: &Client) -> Result<Self, String> {
        let (ns, name) = CONFIGMAP;
        let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map_err(|e| format!("reading ConfigMap {ns}/{name}: {e}"))?;
        Self::from_configmap(&cm).map_err(|e| format!("ConfigMap {ns}/{name}: {e}"))
    }

    /// The settings in `cm`'s data (`requestheader-*` keys; the lists are JSON arrays).
    pub fn from_configmap(cm: &ConfigMap) -> Result<Self, String> {
        let data = cm.data.clone().unwrap_or_default();
        let client_ca = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .ok_or("no requestheader-client-ca-file: the API server runs without a front proxy (--requestheader-client-ca-file)")?;
        let list = |key: &str| -> Result<Vec<String>, String> {
            match data.get(key) {
                None => Ok(Vec::new()),
                Some(s) if s.trim().is_empty() => Ok(Vec::new()),
                Some(s) => serde_json::from_str(s).map_err(|e| format!("{key}: {e}")),
            }
        };
        let headers = RequestHeaders {
            client_ca,
            allowed_names: list("requestheader-allowed-names")?,
            username_headers: list("requestheader-username-headers")?,
            group_headers: list("requestheader-group-headers")?,
            extra_prefixes: list("requestheader-extra-headers-prefix")?,
        };
        if headers.username_headers.is_empty() {
            return Err("no requestheader-username-headers".into());
        }
        Ok(headers)
    }

    /// The user a forwarded request names, if it names one.
    pub fn identity(&self, headers: &HeaderMap) -> Option<Identity> {
        let username = self
            .username_headers
            .iter()
            .filter_map(|h| headers.get(h.as_str())?.to_str().ok())
            .map(str::trim)
            .find(|u| !u.is_empty())?
            .to_string();
        let groups = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .map(|g| g.trim().to_string())
            .filter(|g| !g.is_empty())
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.as_str();
            let Some(key) = self.extra_prefixes.iter().find_map(|p| {
                let p = p.to_ascii_lowercase();
                name.strip_prefix(p.as_str())
            }) else {
                continue;
            };
            if let (Some(key), Ok(value)) = (percent_decode(key), value.to_str()) {
                extra.entry(key).or_default().push(value.to_string());
            }
        }
        Some(Identity {
            username,
            uid: None,
            groups,
            extra,
        })
    }

    /// TLS for the aggregated API: `cert_pem` and `key_pem` serve it; clients must present a
    /// certificate the requestheader CA signed with an allowed common name.
    pub fn server_config(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.client_ca.as_bytes()) {
            let cert = cert.map_err(|e| format!("requestheader client CA: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("requestheader client CA: {e}"))?;
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("requestheader client CA: {e}"))?;
        let verifier = Arc::new(AllowedNames {
            inner,
            names: self.allowed_names.clone(),
        });
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("serving certificate: {e}"))?;
        if certs.is_empty() {
            return Err("serving certificate: no certificate in the file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| format!("serving certificate's key: {e}"))?;
        ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| format!("serving certificate: {e}"))
    }
}

/// The CA's verdict, then the common name against the allowed ones.
#[derive(Debug)]
struct AllowedNames {
    inner: Arc<dyn ClientCertVerifier>,
    names: Vec<String>,
}

impl ClientCertVerifier for AllowedNames {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.names.is_empty() {
            return Ok(verified);
        }
        let names = common_names(end_entity.as_ref()).unwrap_or_default();
        if names.iter().any(|n| self.names.contains(n)) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(format!(
                "client certificate common name {names:?} is not an allowed front proxy ({:?})",
                self.names
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// One DER element: its tag, its contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject's common names (OID 2.5.4.3) of a DER X.509 certificate.
fn common_names(cert: &[u8]) -> Option<Vec<String>> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const VERSION: u8 = 0xa0;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = der_element(cert)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = der_element(cert)? else {
        return None;
    };
    // version (optional), serialNumber, signature, issuer, validity, then subject.
    if tbs.first() == Some(&VERSION) {
        tbs = der_element(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = der_element(tbs)?.2;
    }
    let (SEQUENCE, mut subject, _) = der_element(tbs)? else {
        return None;
    };
    let mut names = Vec::new();
    while !subject.is_empty() {
        let (tag, mut set, rest) = der_element(subject)?;
        subject = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, pair, rest) = der_element(set)?;
            set = rest;
            let (tag, oid, value) = der_element(pair)?;
            if tag == OID && oid == CN {
                let (_, text, _) = der_element(value)?;
                names.push(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    Some(names)
}

/// `%XX` escapes decoded, as the API server escapes extra keys.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn settings() -> RequestHeaders {
        let mut data = std::collections::BTreeMap::new();
        data.insert(
            "requestheader-client-ca-file".to_string(),
            "-----BEGIN CERTIFICATE-----\n...".to_string(),
        );
        data.insert(
            "requestheader-allowed-names".into(),
            r#"["front-proxy-client"]"#.into(),
        );
        data.insert(
            "requestheader-username-headers".into(),
            r#"["X-Remote-User"]"#.into(),
        );
        data.insert(
            "requestheader-group-headers".into(),
            r#"["X-Remote-Group"]"#.into(),
        );
        data.insert(
            "requestheader-extra-headers-prefix".into(),
            r#"["X-Remote-Extra-"]"#.into(),
        );
        RequestHeaders::from_configmap(&ConfigMap {
            data: Some(data),
            ..Default::default()
        })
        .expect("settings")
    }

    #[test]
    fn the_configmap_says_how_users_are_named() {
        let s = settings();
        assert_eq!(s.allowed_names, ["front-proxy-client"]);
        assert_eq!(s.username_headers, ["X-Remote-User"]);
        let err = RequestHeaders::from_configmap(&ConfigMap::default()).unwrap_err();
        assert!(err.contains("requestheader-client-ca-file"), "{err}");
    }

    #[test]
    fn a_forwarded_request_names_its_user_groups_and_extras() {
        let s = settings();
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", HeaderValue::from_static("alice"));
        h.append("x-remote-group", HeaderValue::from_static("team-a"));
        h.append(
            "x-remote-group",
            HeaderValue::from_static("system:authenticated"),
        );
        h.append(
            "x-remote-extra-scopes%2fview",
            HeaderValue::from_static("yes"),
        );
        let who = s.identity(&h).expect("a user");
        assert_eq!(who.username, "alice");
        assert_eq!(who.groups, ["team-a", "system:authenticated"]);
        assert_eq!(
            who.extra.get("scopes/view").map(Vec::as_slice),
            Some(&["yes".to_string()][..])
        );
        assert_eq!(s.identity(&HeaderMap::new()), None);
    }

    /// Made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj
    /// "/O=system:masters/CN=front-proxy-client"`.
    const FRONT_PROXY_CERT: &str = include_str!("testdata/front-proxy-client.pem");

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        let der = CertificateDer::from_pem_slice(FRONT_PROXY_CERT.as_bytes()).expect("PEM");
        assert_eq!(
            common_names(der.as_ref()),
            Some(vec!["front-proxy-client".to_string()])
        );
        assert_eq!(common_names(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(common_names(b""), None);
    }
}
