//! `console` and `vnc` through ferry's console proxy: a WebSocket to the controller, with the
//! bearer token of the kubeconfig's user (or `--token`). The controller checks it with a
//! TokenReview and asks RBAC (`virtualmachines/console`, `virtualmachines/vnc`).

use futures::{SinkExt, StreamExt};
use std::io::Write;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The byte that ends an interactive console session: Ctrl-] (as `virsh console` and telnet).
pub const ESCAPE: u8 = 0x1d;

/// The bearer token of the kubeconfig's user: `token`, else the contents of `tokenFile`.
pub fn kubeconfig_token(config: &kube::Config) -> Option<String> {
    use secrecy::ExposeSecret;
    if let Some(t) = &config.auth_info.token {
        return Some(t.expose_secret().to_string());
    }
    let file = config.auth_info.token_file.as_ref()?;
    std::fs::read_to_string(file)
        .ok()
        .map(|t| t.trim().to_string())
}

/// The WebSocket URL of a VM's console at the controller's `base` URL (`http://…` or
/// `https://…`, as the dashboard is reached).
pub fn endpoint(base: &str, ns: &str, vm: &str, kind: &str) -> Result<String, String> {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        return Err(format!(
            "--url {base:?}: give the controller's address as http://HOST:PORT or https://HOST:PORT"
        ));
    };
    Ok(format!(
        "{ws}/api/v1/namespaces/{ns}/virtualmachines/{vm}/{kind}"
    ))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, token: &str) -> Result<Socket, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("{url}: {e}"))?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not a valid header value".to_string())?;
    req.headers_mut().insert("authorization", value);
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            Err(format!("{url}: {} {body}", resp.status()))
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// The serial console, attached to this terminal (raw mode) until Ctrl-] or the guest side
/// ends; with stdin not a terminal, stdin is sent as it is.
pub async fn console(url: &str, token: &str) -> Result<(), String> {
    let ws = open(url, token).await?;
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
pub async fn vnc(url: &str, token: &str, listen: &str, once: bool) -> Result<(), String> {
    // Check access before a viewer connects, so a 403 is said now.
    drop(open(url, token).await?);
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
        let ws = match open(url, token).await {
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
    fn endpoints_follow_the_controllers_scheme() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080/", "team", "web", "console").unwrap(),
            "ws://127.0.0.1:8080/api/v1/namespaces/team/virtualmachines/web/console"
        );
        assert_eq!(
            endpoint("https://ferry.example.com", "t", "w", "vnc").unwrap(),
            "wss://ferry.example.com/api/v1/namespaces/t/virtualmachines/w/vnc"
        );
        assert!(endpoint("ferry:8080", "t", "w", "vnc").is_err());
    }
}
