//! The aggregated API's TLS listener lets in only the API server's front proxy: a client
//! certificate signed by the requestheader CA with an allowed common name. A certificate of
//! that CA with another name, one of another CA, and no certificate at all are refused. Real
//! certificates (made with openssl), a real listener on loopback, real TLS clients (rustls).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ferry::web::front_proxy::RequestHeaders;
use ferry::web::tls_listener::TlsListener;
use k8s_openapi::api::core::v1::ConfigMap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/openssl.rs"]
mod openssl_cli;
use openssl_cli::openssl;

/// A CA `name` in `dir` (`name.crt`, `name.key`).
fn ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A certificate `name` for `subject` signed by CA `ca`, with the extensions in `ext`.
fn issue(dir: &Path, name: &str, subject: &str, ca: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write extensions");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).expect("read PEM")
}

/// The status line of `GET /` over TLS with client certificate `client` (none: `None`), or the
/// error that ended the exchange.
async fn get_as(dir: &Path, port: u16, client: Option<&str>) -> Result<String, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(dir, "server-ca.crt")) {
        roots.add(cert.expect("CA PEM")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match client {
        Some(name) => {
            let certs = CertificateDer::pem_slice_iter(&read(dir, &format!("{name}.crt")))
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_slice(&read(dir, &format!("{name}.key")))
                .expect("client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.lines()
            .next()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| "no answer".to_string())
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test]
async fn only_the_front_proxy_gets_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let client_ext = "extendedKeyUsage=clientAuth\n";
    ca(d, "front-proxy-ca");
    ca(d, "other-ca");
    ca(d, "server-ca");
    issue(
        d,
        "front-proxy",
        "/CN=front-proxy-client",
        "front-proxy-ca",
        client_ext,
    );
    issue(d, "intruder", "/CN=intruder", "front-proxy-ca", client_ext);
    issue(
        d,
        "foreign",
        "/CN=front-proxy-client",
        "other-ca",
        client_ext,
    );
    issue(
        d,
        "server",
        "/CN=localhost",
        "server-ca",
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );

    let mut data = std::collections::BTreeMap::new();
    data.insert(
        "requestheader-client-ca-file".to_string(),
        String::from_utf8_lossy(&read(d, "front-proxy-ca.crt")).into_owned(),
    );
    data.insert(
        "requestheader-allowed-names".into(),
        r#"["front-proxy-client"]"#.into(),
    );
    data.insert(
        "requestheader-username-headers".into(),
        r#"["X-Remote-User"]"#.into(),
    );
    let headers = RequestHeaders::from_configmap(&ConfigMap {
        data: Some(data),
        ..Default::default()
    })
    .expect("requestheader settings");
    let config = headers
        .server_config(&read(d, "server.crt"), &read(d, "server.key"))
        .expect("server config");
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = tcp.local_addr().expect("address").port();
    let listener = TlsListener::new(tcp, Arc::new(config)).expect("listener");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().route("/", get(|| async { "in" }))).await;
    });

    let allowed = get_as(d, port, Some("front-proxy")).await;
    assert_eq!(allowed.as_deref(), Ok("HTTP/1.1 200 OK"), "{allowed:?}");
    for client in [Some("intruder"), Some("foreign"), None] {
        let refused = get_as(d, port, client).await;
        eprintln!("{client:?}: {refused:?}");
        assert!(refused.is_err(), "{client:?} got in: {refused:?}");
    }
    // A refused handshake holds up no one: the front proxy still gets in.
    let again = get_as(d, port, Some("front-proxy")).await;
    assert_eq!(again.as_deref(), Ok("HTTP/1.1 200 OK"), "{again:?}");
    server.abort();
}
