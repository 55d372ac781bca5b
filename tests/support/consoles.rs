//! Console users for tests: ServiceAccounts bound to the built-in `view` and `edit` roles (which
//! aggregate ferry's roles), their tokens, and WebSocket clients of the console proxy that speak
//! enough of the serial console and of RFB (VNC) to check what comes back.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::cluster::Cluster;

/// Run kubectl against the test cluster; its stdout, or the error text.
pub fn kubectl(c: &Cluster, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut cmd = std::process::Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", &c.kubeconfig)
        .env(
            "PATH",
            format!(
                "/opt/ferry-tools/bin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("kubectl: {e}"))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin.unwrap_or_default().as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The roles for people from the kustomize base (ferry-view, ferry-edit, ferry-console),
/// applied cluster-wide: the built-in view, edit and admin roles aggregate them.
pub fn apply_user_roles(c: &Cluster) {
    let roles = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/rbac/aggregate_roles.yaml"
    );
    kubectl(c, &["apply", "--server-side", "-f", roles], None).expect("apply ferry's user roles");
}

/// A ServiceAccount `name` in the test namespace bound to ClusterRole `role` there, and a token
/// for it (one hour).
pub fn user(c: &Cluster, name: &str, role: &str) -> String {
    let ns = &c.namespace;
    kubectl(c, &["-n", ns, "create", "serviceaccount", name], None).expect("service account");
    kubectl(
        c,
        &[
            "-n",
            ns,
            "create",
            "rolebinding",
            &format!("{name}-{role}"),
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={ns}:{name}"),
        ],
        None,
    )
    .expect("role binding");
    kubectl(
        c,
        &["-n", ns, "create", "token", name, "--duration=1h"],
        None,
    )
    .expect("token")
    .trim()
    .to_string()
}

/// Waits until `user`'s token may (or may not) `verb resource` in the test namespace, as the
/// API server's authorizer sees it (the role aggregation controller may take a moment).
pub async fn wait_can(c: &Cluster, token: &str, verb: &str, resource: &str, expect: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubectl(
            c,
            &[
                "-n",
                &c.namespace,
                "--token",
                token,
                "auth",
                "can-i",
                verb,
                resource,
            ],
            None,
        );
        let yes = out.as_deref().map(str::trim) == Ok("yes");
        if yes == expect {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "can-i {verb} {resource} is still {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A plain GET of `path` on the controller with an optional bearer token: (status, body).
pub async fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// A WebSocket to the console proxy.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `path` as a WebSocket with `token`.
pub async fn connect(port: u16, path: &str, token: &str) -> Result<Socket, String> {
    let mut req = format!("ws://127.0.0.1:{port}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().map_err(|_| "token")?,
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Reads text from a serial console socket until `needle` appears.
pub async fn read_until(ws: &mut Socket, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = String::new();
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Ok(Some(Ok(Message::Text(t)))) => seen.push_str(&t),
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("the console ended before {needle:?} ({other:?}); read {seen:?}"),
            Err(_) => panic!("no {needle:?} within {limit:?}; read {seen:?}"),
        }
    }
    seen
}

/// Bytes of an RFB conversation carried in binary WebSocket messages.
pub struct Rfb {
    ws: Socket,
    buf: Vec<u8>,
}

/// What a VNC session saw: the display size the server announced and the area its first
/// FramebufferUpdate covered.
#[derive(Debug)]
pub struct Framebuffer {
    pub width: u16,
    pub height: u16,
    pub name: String,
    /// Rectangles of the first update: (x, y, w, h).
    pub rects: Vec<(u16, u16, u16, u16)>,
}

impl Rfb {
    pub fn new(ws: Socket) -> Self {
        Rfb {
            ws,
            buf: Vec::new(),
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            match tokio::time::timeout(Duration::from_secs(30), self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => self.buf.extend_from_slice(&b),
                Ok(Some(Ok(_))) => {}
                other => panic!("VNC stream ended: {other:?}"),
            }
        }
        self.buf.drain(..n).collect()
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send RFB");
    }

    /// Handshake (RFB 3.8, security None), then one full FramebufferUpdate in Raw encoding.
    pub async fn first_update(mut self) -> Framebuffer {
        let version = self.take(12).await;
        assert!(version.starts_with(b"RFB 003."), "{version:?}");
        self.send(b"RFB 003.008\n".to_vec()).await;
        let n = self.take(1).await[0] as usize;
        assert!(n > 0, "the server offers no security type");
        let types = self.take(n).await;
        assert!(types.contains(&1), "no security type None in {types:?}");
        self.send(vec![1]).await;
        let result = self.take(4).await;
        assert_eq!(result, [0, 0, 0, 0], "security handshake failed");
        self.send(vec![1]).await; // ClientInit: shared
        let init = self.take(24).await;
        let width = u16::from_be_bytes([init[0], init[1]]);
        let height = u16::from_be_bytes([init[2], init[3]]);
        let bpp = init[4] as usize;
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        let name = String::from_utf8_lossy(&self.take(name_len).await).into_owned();
        // SetEncodings: Raw only.
        self.send(vec![2, 0, 0, 1, 0, 0, 0, 0]).await;
        // FramebufferUpdateRequest, not incremental, the whole screen.
        let mut req = vec![3, 0, 0, 0, 0, 0];
        req.extend_from_slice(&width.to_be_bytes());
        req.extend_from_slice(&height.to_be_bytes());
        self.send(req).await;
        loop {
            let kind = self.take(1).await[0];
            match kind {
                0 => {
                    let head = self.take(3).await;
                    let count = u16::from_be_bytes([head[1], head[2]]);
                    let mut rects = Vec::new();
                    for _ in 0..count {
                        let r = self.take(12).await;
                        let (x, y, w, h) = (
                            u16::from_be_bytes([r[0], r[1]]),
                            u16::from_be_bytes([r[2], r[3]]),
                            u16::from_be_bytes([r[4], r[5]]),
                            u16::from_be_bytes([r[6], r[7]]),
                        );
                        let encoding = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
                        assert_eq!(encoding, 0, "asked for Raw only");
                        self.take(w as usize * h as usize * bpp / 8).await;
                        rects.push((x, y, w, h));
                    }
                    return Framebuffer {
                        width,
                        height,
                        name,
                        rects,
                    };
                }
                2 => {} // Bell
                3 => {
                    let head = self.take(7).await;
                    let len = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
                    self.take(len).await;
                }
                other => panic!("unexpected server message {other}"),
            }
        }
    }
}
