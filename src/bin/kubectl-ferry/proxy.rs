//! `console` and `vnc` through the Kubernetes API server: ferry's aggregated API
//! (`subresources.ferry.dev`) serves a VM's consoles as WebSockets, so the kubeconfig's own
//! credentials (client certificate, token, OIDC, exec plugin) are all it takes, and RBAC decides
//! (`get` on `virtualmachines/console` or `virtualmachines/vnc` of `subresources.ferry.dev`).

use axum::http::{Request, StatusCode, header};
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use kube::Client;
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The byte that ends an interactive console session: Ctrl-] (as `virsh console` and telnet).
pub const ESCAPE: u8 = 0x1d;

/// The API path of a VM's console (`console` or `vnc`).
pub fn path(ns: &str, vm: &str, kind: &str) -> String {
    format!(
        "/apis/{}/v1alpha1/namespaces/{ns}/virtualmachines/{vm}/{kind}",
        ferry::access::SUBRESOURCE_GROUP
    )
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A WebSocket to `path` on the API server, with the client's credentials.
async fn open(client: &Client, path: &str) -> Result<Socket, String> {
    let key = generate_key();
    let req = Request::get(path)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .body(kube::client::Body::from(Vec::new()))
        .map_err(|e| format!("{path}: {e}"))?;
    let res = client.send(req).await.map_err(|e| format!("{path}: {e}"))?;
    let status = res.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = res.into_body().collect_bytes().await.unwrap_or_default();
        let why = refusal(&body);
        let hint = if status == StatusCode::NOT_FOUND && !why.contains("virtualmachine") {
            " (is ferry's aggregated API registered? the chart's aggregatedAPI.enabled)"
        } else {
            ""
        };
        return Err(format!("{path}: {status}: {why}{hint}"));
    }
    let accept = res.headers().get(header::SEC_WEBSOCKET_ACCEPT).cloned();
    if accept.as_ref().and_then(|a| a.to_str().ok())
        != Some(derive_accept_key(key.as_bytes()).as_str())
    {
        return Err(format!(
            "{path}: the WebSocket handshake's answer does not match"
        ));
    }
    let upgraded = hyper::upgrade::on(res)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

/// Why the API server or the proxy said no: a `Status`'s message, else the body as text.
fn refusal(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// The serial console, attached to this terminal (raw mode) until Ctrl-] or the guest side
/// ends; with stdin not a terminal, stdin is sent as it is.
pub async fn console(client: &Client, path: &str) -> Result<(), String> {
    let ws = open(client, path).await?;
    let raw = RawTerminal::enter();
    if raw.is_some() {
        eprint!("Connected; Ctrl-] leaves.\r\n");
    }
    let (mut tx, mut rx) = ws.split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 4096];
    let interactive = raw.is_some();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let chunk = &buf[..n];
                    if interactive && let Some(i) = chunk.iter().position(|b| *b == ESCAPE) {
                        if i > 0 {
                            let _ = tx.send(Message::Binary(chunk[..i].to_vec().into())).await;
                        }
                        break;
                    }
                    if tx.send(Message::Binary(chunk.to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if stdout.write_all(&b).await.is_err() { break; }
                    let _ = stdout.flush().await;
                }
                Some(Ok(Message::Text(t))) => {
                    if stdout.write_all(t.as_bytes()).await.is_err() { break; }
                    let _ = stdout.flush().await;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tx.send(Message::Close(None)).await;
    drop(raw);
    if interactive {
        eprintln!();
    }
    Ok(())
}

/// A local VNC listener at `listen`: each viewer that connects gets its own session to the
/// VM's display. Prints the address; with `once`, ends after the first viewer leaves.
pub async fn vnc(client: &Client, path: &str, listen: &str, once: bool) -> Result<(), String> {
    // Check access before a viewer connects, so a 403 is said now.
    drop(open(client, path).await?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "VNC display on {addr}: point a VNC viewer at it (e.g. `vncviewer {addr}`); Ctrl-C ends."
    );
    let _ = std::io::stdout().flush();
    loop {
        let (tcp, peer) = listener
            .accept()
            .await
            .map_err(|e| format!("accepting on {addr}: {e}"))?;
        let ws = match open(client, path).await {
            Ok(ws) => ws,
            Err(e) => {
                eprintln!("viewer {peer}: {e}");
                continue;
            }
        };
        let session = relay_tcp(tcp, ws);
        if once {
            session.await;
            return Ok(());
        }
        tokio::spawn(session);
    }
}

async fn relay_tcp(tcp: tokio::net::TcpStream, ws: Socket) {
    let (mut tcp_rx, mut tcp_tx) = tcp.into_split();
    let (mut tx, mut rx) = ws.split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tcp_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let down = async move {
        while let Some(Ok(msg)) = rx.next().await {
            match msg {
                Message::Binary(b) if tcp_tx.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tcp_tx.shutdown().await;
    };
    tokio::select! { _ = up => {}, _ = down => {} }
}

/// The terminal in raw mode while this lives (nothing when stdin is not a terminal).
struct RawTerminal(libc::termios);

impl RawTerminal {
    fn enter() -> Option<RawTerminal> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a properly sized termios.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(0, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            Some(RawTerminal(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consoles_are_subresources_of_the_aggregated_api() {
        assert_eq!(
            path("team", "web", "console"),
            "/apis/subresources.ferry.dev/v1alpha1/namespaces/team/virtualmachines/web/console"
        );
    }

    #[test]
    fn a_refusal_says_why() {
        let status = br#"{"kind":"Status","message":"virtualmachines.subresources.ferry.dev \"web\" is forbidden"}"#;
        assert!(refusal(status).contains("forbidden"), "{}", refusal(status));
        assert_eq!(refusal(b"no console\n"), "no console");
    }
}
