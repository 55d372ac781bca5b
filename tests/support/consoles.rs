//! Console users for tests: ServiceAccounts bound to the built-in `view` and `edit` roles (which
//! aggregate ferry's roles), their tokens, and WebSocket clients of the console proxy that speak
//! enough of the serial console and of RFB (VNC) to check what comes back.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::cluster::Cluster;
use super::openssl::openssl;
use std::path::PathBuf;

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

/// Waits until `token`'s holder may (or may not) `verb resource` in the test namespace, as the
/// API server's authorizer sees it (the role aggregation controller may take a moment). The
/// question is a SelfSubjectAccessReview sent with only that token: the test kubeconfig's own
/// credentials (an admin client certificate) would answer for the admin instead.
/// `resource` is `plural.group[/subresource]`.
pub async fn wait_can(c: &Cluster, token: &str, verb: &str, resource: &str, expect: bool) {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let (resource_group, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let (plural, group) = resource_group
        .split_once('.')
        .unwrap_or((resource_group, ""));
    let mut config = kube::Config::infer().await.expect("the test kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(secrecy::SecretString::from(token.to_string())),
        ..Default::default()
    };
    let user = kube::Client::try_from(config).expect("a client with only the token");
    let reviews: kube::Api<SelfSubjectAccessReview> = kube::Api::all(user);
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(c.namespace.clone()),
                verb: Some(verb.to_string()),
                group: Some(group.to_string()),
                resource: Some(plural.to_string()),
                subresource,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = reviews
            .create(&Default::default(), &review)
            .await
            .map(|r| r.status.is_some_and(|s| s.allowed));
        if answer.as_ref().ok() == Some(&expect) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "may {verb} {resource}: still {answer:?}, expected {expect}"
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

/// A user `name` who authenticates with a client certificate the cluster signed (a
/// CertificateSigningRequest for `kubernetes.io/kube-apiserver-client`, approved by the test),
/// bound to ClusterRole `role` in the test namespace; their kubeconfig, written in `dir`.
pub async fn cert_user(c: &Cluster, dir: &std::path::Path, name: &str, role: &str) -> PathBuf {
    let ns = &c.namespace;
    let csr_name = format!("{ns}-{name}");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    let csr = std::fs::read(dir.join(format!("{name}.csr"))).expect("read CSR");
    let manifest = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": csr_name},
        "spec": {
            "request": base64(&csr),
            "signerName": "kubernetes.io/kube-apiserver-client",
            "expirationSeconds": 3600,
            "usages": ["client auth"],
        }
    });
    kubectl(c, &["apply", "-f", "-"], Some(&manifest.to_string())).expect("create the CSR");
    kubectl(c, &["certificate", "approve", &csr_name], None).expect("approve the CSR");
    let deadline = Instant::now() + Duration::from_secs(60);
    let cert = loop {
        let out = kubectl(
            c,
            &[
                "get",
                "csr",
                &csr_name,
                "-o",
                "jsonpath={.status.certificate}",
            ],
            None,
        )
        .unwrap_or_default();
        if !out.trim().is_empty() {
            break out.trim().to_string();
        }
        assert!(Instant::now() < deadline, "CSR {csr_name} was not signed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = kubectl(c, &["delete", "csr", &csr_name], None);
    kubectl(
        c,
        &[
            "-n",
            ns,
            "create",
            "rolebinding",
            &format!("{name}-{role}"),
            &format!("--clusterrole={role}"),
            &format!("--user={name}"),
        ],
        None,
    )
    .expect("role binding");
    let key = std::fs::read(dir.join(format!("{name}.key"))).expect("read key");
    let server = kubectl(
        c,
        &[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
        None,
    )
    .expect("server");
    let ca = kubectl(
        c,
        &[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ],
        None,
    )
    .expect("CA");
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": name, "user": {"client-certificate-data": cert, "client-key-data": base64(&key)}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name, "namespace": ns}}],
        "current-context": name
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("write kubeconfig");
    path
}

fn base64(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run base64");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write to base64");
    let out = child.wait_with_output().expect("base64 output");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// ferry's aggregated API registered with the test's API server: a serving certificate for the
/// Service's name, a Service without selector whose Endpoints point at the controller's TLS
/// port (the API server routes to Endpoints with --enable-aggregator-routing), and the
/// APIService `v1alpha1.subresources.ferry.dev`. Endpoints may not name a loopback address, so
/// the controller listens on a /32 address of a veth pair the test creates (local traffic only,
/// no route anywhere). The APIService and the pair are removed on drop.
pub struct AggregatedApi {
    /// PEM files of the serving certificate and key, for the controller.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The address the controller must serve the aggregated API on.
    pub addr: std::net::SocketAddr,
    /// A second address with the same port, for a second (standby) controller: the API server
    /// picks one of the Endpoints' addresses at random for each request.
    pub standby_addr: std::net::SocketAddr,
    interface: String,
    kubeconfig: PathBuf,
}

impl AggregatedApi {
    /// Certificates in `dir`, a free port; nothing registered yet.
    pub fn prepare(c: &Cluster, dir: &std::path::Path) -> Self {
        let dns = format!("ferry-api.{}.svc", c.namespace);
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
                "-keyout",
                "api.key",
                "-out",
                "api.crt",
                "-subj",
                &format!("/CN={dns}"),
                "-addext",
                &format!("subjectAltName=DNS:{dns}"),
            ],
        );
        // 198.18.0.0/15 is for benchmarks and tests (RFC 2544): never routed to anyone.
        let pid = std::process::id();
        let interface = format!("fapi{}", pid % 100_000);
        let ip = std::net::Ipv4Addr::new(198, 18, (pid >> 8) as u8, (pid & 0xff) as u8);
        let ip2 = std::net::Ipv4Addr::new(198, 19, (pid >> 8) as u8, (pid & 0xff) as u8);
        let ip_cmd = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip_cmd(&[
            "link",
            "add",
            &interface,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{interface}p"),
        ]);
        let mut api = AggregatedApi {
            cert: dir.join("api.crt"),
            key: dir.join("api.key"),
            addr: std::net::SocketAddr::from((ip, 0)),
            standby_addr: std::net::SocketAddr::from((ip2, 0)),
            interface,
            kubeconfig: c.kubeconfig.clone(),
        };
        ip_cmd(&["addr", "add", &format!("{ip}/32"), "dev", &api.interface]);
        ip_cmd(&["link", "set", &api.interface, "up"]);
        ip_cmd(&[
            "addr",
            "add",
            &format!("{ip2}/32"),
            "dev",
            &format!("{}p", api.interface),
        ]);
        ip_cmd(&["link", "set", &format!("{}p", api.interface), "up"]);
        // Nothing else listens on these test addresses: a port free on one is free on both.
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        api.addr = std::net::SocketAddr::from((ip, port));
        api.standby_addr = std::net::SocketAddr::from((ip2, port));
        api
    }

    /// Register it and wait until the API server calls it Available.
    pub async fn register(&self, c: &Cluster) {
        let ns = &c.namespace;
        let ca = base64(&std::fs::read(&self.cert).expect("read the serving certificate"));
        let objects = serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "ferry-api", "namespace": ns},
                 "spec": {"ports": [{"name": "https", "port": 443, "targetPort": self.addr.port()}]}},
                {"apiVersion": "v1", "kind": "Endpoints",
                 "metadata": {"name": "ferry-api", "namespace": ns},
                 "subsets": [{"addresses": [{"ip": self.addr.ip().to_string()}, {"ip": self.standby_addr.ip().to_string()}],
                              "ports": [{"name": "https", "port": self.addr.port()}]}]},
                {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                 "metadata": {"name": "v1alpha1.subresources.ferry.dev"},
                 "spec": {"group": "subresources.ferry.dev", "version": "v1alpha1",
                          "service": {"namespace": ns, "name": "ferry-api", "port": 443},
                          "caBundle": ca, "groupPriorityMinimum": 1000, "versionPriority": 15}}
            ]
        });
        kubectl(c, &["apply", "-f", "-"], Some(&objects.to_string()))
            .expect("register the aggregated API");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status = kubectl(
                c,
                &["get", "apiservice", "v1alpha1.subresources.ferry.dev", "-o",
                  "jsonpath={.status.conditions[?(@.type==\"Available\")].status} {.status.conditions[?(@.type==\"Available\")].message}"],
                None,
            )
            .unwrap_or_default();
            if status.starts_with("True") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the APIService is not Available: {status}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for AggregatedApi {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .args([
                "delete",
                "apiservice",
                "v1alpha1.subresources.ferry.dev",
                "--ignore-not-found",
                "--wait=false",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env(
                "PATH",
                format!(
                    "/opt/ferry-tools/bin:{}",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.interface])
            .output();
    }
}

/// A kubeconfig for the test cluster that authenticates with `token`, written in `dir`.
pub fn token_kubeconfig(c: &Cluster, dir: &std::path::Path, name: &str, token: &str) -> PathBuf {
    let view = |path: &str| {
        kubectl(
            c,
            &[
                "config",
                "view",
                "--minify",
                "--raw",
                "-o",
                &format!("jsonpath={path}"),
            ],
            None,
        )
        .expect("kubectl config view")
    };
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": view("{.clusters[0].cluster.server}"),
            "certificate-authority-data": view("{.clusters[0].cluster.certificate-authority-data}")}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name, "namespace": c.namespace}}],
        "current-context": name
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("write kubeconfig");
    path
}

/// A child process's output, gathered by a thread as it comes.
fn gather(
    mut from: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = sink.lock() {
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    text
}

fn plugin(kubeconfig: &std::path::Path, ns: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-ferry"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl-ferry")
}

/// `kubectl ferry console VM` as the user of `kubeconfig`, typing `input`: (whether `expect`
/// came back, or with `expect` empty whether the plugin succeeded; its stdout; its stderr). The
/// plugin is stopped once `expect` is seen or after `limit`.
pub async fn plugin_console(
    kubeconfig: &std::path::Path,
    ns: &str,
    vm: &str,
    input: &str,
    expect: &str,
    limit: Duration,
) -> (bool, String, String) {
    let (kubeconfig, ns, vm) = (kubeconfig.to_path_buf(), ns.to_string(), vm.to_string());
    let (input, expect) = (input.to_string(), expect.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = plugin(&kubeconfig, &ns, &["console", &vm]);
        let mut stdin = child.stdin.take().expect("stdin");
        if !input.is_empty() {
            stdin
                .write_all(input.as_bytes())
                .expect("type into the plugin");
        }
        let out = gather(child.stdout.take().expect("stdout"));
        let err = gather(child.stderr.take().expect("stderr"));
        let text = |t: &std::sync::Arc<std::sync::Mutex<String>>| {
            t.lock().map(|t| t.clone()).unwrap_or_default()
        };
        let deadline = Instant::now() + limit;
        let ok = loop {
            if !expect.is_empty() && text(&out).contains(&expect) {
                break true;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                break expect.is_empty() && status.success();
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = child.kill();
        let _ = child.wait();
        drop(stdin);
        (ok, text(&out), text(&err))
    })
    .await
    .expect("plugin task")
}

/// `kubectl ferry vnc VM --once` as the user of `kubeconfig`: what a VNC viewer connecting to
/// the address it prints reads first (the RFB greeting), or the plugin's output when it fails.
pub async fn plugin_vnc_greeting(
    kubeconfig: &std::path::Path,
    ns: &str,
    vm: &str,
    limit: Duration,
) -> String {
    let (kubeconfig, ns, vm) = (kubeconfig.to_path_buf(), ns.to_string(), vm.to_string());
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut child = plugin(
            &kubeconfig,
            &ns,
            &["vnc", &vm, "--once", "--listen", "127.0.0.1:0"],
        );
        let out = gather(child.stdout.take().expect("stdout"));
        let err = gather(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + limit;
        let addr = loop {
            let text = out.lock().map(|t| t.clone()).unwrap_or_default();
            if let Some(addr) = text.strip_prefix("VNC display on ").and_then(|r| {
                r.split(':')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":")
                    .parse::<std::net::SocketAddr>()
                    .ok()
            }) {
                break Some(addr);
            }
            if matches!(child.try_wait(), Ok(Some(_))) || Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let greeting = match addr {
            Some(addr) => {
                let mut tcp = std::net::TcpStream::connect(addr).expect("connect to the plugin");
                tcp.set_read_timeout(Some(limit)).expect("timeout");
                let mut buf = [0u8; 12];
                match tcp.read_exact(&mut buf) {
                    Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
                    Err(e) => format!("reading the greeting: {e}"),
                }
            }
            None => String::new(),
        };
        let _ = child.kill();
        let _ = child.wait();
        if greeting.is_empty() {
            format!(
                "no address: {} {}",
                out.lock().map(|t| t.clone()).unwrap_or_default(),
                err.lock().map(|t| t.clone()).unwrap_or_default()
            )
        } else {
            greeting
        }
    })
    .await
    .expect("plugin task")
}

/// Round trips of `lines` lines typed into `virsh -c uri console domain --force` (under
/// `script`, which gives virsh the terminal it needs): from writing each line to reading the
/// guest's `FERRY-ECHO` answer.
pub fn virsh_console_round_trips(uri: &str, domain: &str, lines: usize) -> Vec<Duration> {
    use std::io::Write;
    let mut child = std::process::Command::new("script")
        .args([
            "-qfec",
            &format!("virsh -c '{uri}' console {domain} --force"),
            "/dev/null",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run script virsh console");
    let mut stdin = child.stdin.take().expect("stdin");
    let out = gather(child.stdout.take().expect("stdout"));
    let seen = |needle: &str| out.lock().map(|t| t.contains(needle)).unwrap_or(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen("Escape character") {
        assert!(Instant::now() < deadline, "virsh console did not attach");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut trips = Vec::new();
    for i in 0..lines {
        let needle = format!("FERRY-ECHO vrt{i}");
        let started = Instant::now();
        stdin
            .write_all(format!("vrt{i}\r").as_bytes())
            .expect("type into virsh");
        while !seen(&needle) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no {needle:?} from virsh console"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        trips.push(started.elapsed());
    }
    let _ = stdin.write_all(&[0x1d]);
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    trips
}
