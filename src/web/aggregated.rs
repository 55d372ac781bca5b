//! ferry's aggregated API, `subresources.ferry.dev/v1alpha1`: a VM's consoles as subresources
//! the Kubernetes API server serves, so anyone with a kubeconfig reaches them, whatever its
//! credential (client certificate, token, OIDC, exec plugin), and RBAC grants them like any
//! other subresource.
//!
//! An APIService sends `/apis/subresources.ferry.dev/v1alpha1/...` to this listener (TLS; only
//! the API server's front proxy gets in, see [`super::front_proxy`]):
//!
//! - `GET /apis/subresources.ferry.dev/v1alpha1`: discovery (an `APIResourceList`);
//! - `GET .../namespaces/{ns}/virtualmachines/{name}/console` and `.../vnc`: the serial console
//!   and the VNC display as WebSockets, as on the controller's HTTP address
//!   ([`super::console`]), for the user the API server names.

use std::sync::Arc;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::Client;

use super::front_proxy::RequestHeaders;
use super::tls_listener::TlsListener;
use super::{Web, console, problem};
use crate::access::SUBRESOURCE_GROUP;
use crate::hypervisor::ConsoleKind;

/// The aggregated API's version.
pub const VERSION: &str = "v1alpha1";

#[derive(Clone)]
struct Aggregated {
    web: Arc<Web>,
    headers: Arc<RequestHeaders>,
}

/// The aggregated API's routes.
pub fn routes(web: Arc<Web>, headers: Arc<RequestHeaders>) -> Router {
    let base = format!("/apis/{SUBRESOURCE_GROUP}/{VERSION}");
    let kind = |k: ConsoleKind| move |state, path, headers, ws| open(state, path, headers, ws, k);
    Router::new()
        .route(&base, get(discovery))
        .route(
            &format!("{base}/namespaces/{{ns}}/virtualmachines/{{name}}/console"),
            get(kind(ConsoleKind::Serial)),
        )
        .route(
            &format!("{base}/namespaces/{{ns}}/virtualmachines/{{name}}/vnc"),
            get(kind(ConsoleKind::Vnc)),
        )
        .with_state(Aggregated { web, headers })
}

/// Serve the aggregated API on `tcp` until the process ends: reads the API server's
/// requestheader settings (retrying every 10 s until it can), then accepts TLS connections
/// with the serving certificate `cert_pem` and key `key_pem`.
pub async fn serve(
    web: Arc<Web>,
    client: Client,
    tcp: tokio::net::TcpListener,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
) -> Result<(), String> {
    let addr = tcp
        .local_addr()
        .map_err(|e| format!("aggregated API: {e}"))?;
    let headers = loop {
        match RequestHeaders::load(&client).await {
            Ok(h) => break h,
            Err(e) => {
                tracing::warn!(error = %e, "aggregated API: cannot read the API server's front-proxy settings; retrying in 10 s");
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        }
    };
    let config = headers.server_config(&cert_pem, &key_pem)?;
    let listener = TlsListener::new(tcp, Arc::new(config))
        .map_err(|e| format!("aggregated API on {addr}: {e}"))?;
    tracing::info!(%addr, "aggregated API {SUBRESOURCE_GROUP}/{VERSION} serving");
    axum::serve(listener, routes(web, Arc::new(headers)))
        .await
        .map_err(|e| format!("aggregated API on {addr}: {e}"))
}

async fn discovery() -> Response {
    let resource = |name: &str| {
        serde_json::json!({
            "name": format!("virtualmachines/{name}"),
            "singularName": "",
            "namespaced": true,
            "kind": "VirtualMachine",
            "verbs": ["get"],
        })
    };
    let body = serde_json::json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{SUBRESOURCE_GROUP}/{VERSION}"),
        "resources": [resource("console"), resource("vnc")],
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A forwarded request for `kind` console: the user the front proxy names, then
/// [`console::open`].
async fn open(
    State(a): State<Aggregated>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    kind: ConsoleKind,
) -> Response {
    let Some(who) = a.headers.identity(&headers) else {
        return problem(
            StatusCode::UNAUTHORIZED,
            "the forwarded request names no user",
        );
    };
    console::open(a.web, who, ns, name, kind, ws)
        .await
        .unwrap_or_else(|r| r)
}
