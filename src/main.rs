//! The `ferry` binary: parse the command line and run the chosen command.

use clap::{Parser, Subcommand};
use ferry::controller::image_import::Imports;
use ferry::controller::run::{self, Scope};
use ferry::gate::ActionGate;
use ferry::http::{self, HttpState};
use ferry::leader::{self, LeaseSettings};
use ferry::metrics::Metrics;
use ferry::plan::{import_policy, uri_policy};
use ferry::telemetry::{self, LogFormat};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::Reporter;
use kube::{Client, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// ferry runs virtual machines on libvirt hosts, managed as Kubernetes resources.
#[derive(Parser)]
#[command(name = "ferry", version = ferry::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers (VirtualMachine, HostPool, VirtualMachineMigration, HAPolicy).
    Controller(Box<ControllerArgs>),
    /// Print every CustomResourceDefinition as multi-document YAML.
    Crds,
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account.
    #[arg(long, env = "FERRY_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace; default: all namespaces.
    #[arg(long, env = "FERRY_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, env = "FERRY_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "FERRY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Elect a leader through a Lease so that only one replica acts.
    #[arg(long, env = "FERRY_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "FERRY_LEASE_NAME", default_value = "ferry-controller")]
    lease_name: String,
    /// Namespace of the Lease; default: the client's default namespace (the pod's own in a cluster).
    #[arg(long, env = "FERRY_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Identity of this replica in the Lease; default: the pod name ($POD_NAME) or host name plus PID.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a lease stays valid without renewal (how fast a standby takes over).
    #[arg(long, env = "FERRY_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Seconds before expiry at which the leader renews.
    #[arg(long, env = "FERRY_LEASE_GRACE", default_value_t = 5)]
    lease_grace: u64,
    /// Milliseconds before its lease would expire at which a leader that saw no renewal land
    /// stops every host and BMC action (a call under way then, and clocks that differ between
    /// replicas, must fit in it); default: half the grace period, at least 1 s.
    #[arg(long, env = "FERRY_LEASE_MARGIN_MS")]
    lease_margin_ms: Option<u64>,
    /// Serve the console proxy and the web dashboard (/dashboard/) on the HTTP address (behind
    /// Kubernetes authentication: TokenReview and SubjectAccessReview).
    #[arg(long, env = "FERRY_WEB", default_value_t = true, action = clap::ArgAction::Set)]
    web: bool,
    /// Serve ferry's aggregated API (`subresources.ferry.dev`: the consoles through the
    /// Kubernetes API server, for an APIService to point at) over TLS on this address; needs
    /// --aggregated-api-cert and --aggregated-api-key, and --web.
    #[arg(long, env = "FERRY_AGGREGATED_API_ADDR", requires_all = ["aggregated_api_cert", "aggregated_api_key"])]
    aggregated_api_addr: Option<SocketAddr>,
    /// PEM file: the aggregated API's serving certificate (chain).
    #[arg(long, env = "FERRY_AGGREGATED_API_CERT")]
    aggregated_api_cert: Option<std::path::PathBuf>,
    /// PEM file: the aggregated API's private key.
    #[arg(long, env = "FERRY_AGGREGATED_API_KEY")]
    aggregated_api_key: Option<std::path::PathBuf>,
    /// VirtualMachine reconciles run at once, at most (each holds its working copy of the VM and
    /// its pool until done, so this bounds the memory of a full resync).
    #[arg(long, env = "FERRY_VM_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    vm_concurrency: u16,
    /// Allow `test://` libvirt URIs in HostPools: libvirt's in-process fake hosts, for tests and
    /// benchmarks only.
    #[arg(long, env = "FERRY_ALLOW_TEST_DRIVER")]
    allow_test_driver: bool,
    /// A directory whose sockets a HostPool's `qemu+unix` URI may name with `socket=` (on the
    /// controller's file system); repeat, or separate with commas. Default: /run/libvirt and
    /// /var/run/libvirt.
    #[arg(
        long = "libvirt-socket-dir",
        env = "FERRY_LIBVIRT_SOCKET_DIRS",
        value_delimiter = ','
    )]
    libvirt_socket_dirs: Vec<String>,
    /// A directory inside which a HostPool's URI may name `pkipath=`, `keyfile=` and
    /// `known_hosts=` (where the client credentials are mounted); repeat, or separate with
    /// commas. Default: /etc/ferry/pki and /etc/pki/libvirt.
    #[arg(
        long = "libvirt-credentials-dir",
        env = "FERRY_LIBVIRT_CREDENTIALS_DIRS",
        value_delimiter = ','
    )]
    libvirt_credentials_dirs: Vec<String>,
    /// A network of the cluster (Pod or Service CIDR, such as 10.96.0.0/12) that image imports
    /// may not reach unless a HostPool lists it in `spec.imports.allowedNetworks`; repeat, or
    /// separate with commas. Loopback, link-local and the Nodes' addresses are refused anyway.
    #[arg(
        long = "cluster-cidr",
        env = "FERRY_CLUSTER_CIDRS",
        value_delimiter = ','
    )]
    cluster_cidrs: Vec<String>,
    /// Seconds after which a VirtualMachine in a steady state (running or stopped as asked) is
    /// looked at again when nothing woke it earlier; each wait is jittered by ±15 %. Domain
    /// lifecycle events, watches and reconnections to a host are how changes are noticed; this
    /// only covers what they could miss.
    #[arg(long, env = "FERRY_SAFETY_RESYNC_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    safety_resync_seconds: u64,
    /// Image imports that run at once; more wait their turn.
    #[arg(long, env = "FERRY_MAX_CONCURRENT_IMPORTS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_concurrent_imports: u16,
}

impl ControllerArgs {
    /// What HostPools' libvirt URIs may say, from the flags.
    fn uri_limits(&self) -> Result<uri_policy::Limits, String> {
        let defaults = uri_policy::Limits::default();
        let or_default = |given: &[String], default: Vec<String>| {
            if given.is_empty() {
                default
            } else {
                given.to_vec()
            }
        };
        let limits = uri_policy::Limits {
            allow_test_driver: self.allow_test_driver,
            socket_dirs: or_default(&self.libvirt_socket_dirs, defaults.socket_dirs),
            credential_dirs: or_default(&self.libvirt_credentials_dirs, defaults.credential_dirs),
            own_credentials_dir: None,
        };
        limits.validate()?;
        Ok(limits)
    }

    /// What image imports may do, from the flags.
    fn imports(&self) -> Result<Imports, String> {
        let cluster = import_policy::parse_networks("--cluster-cidr", &self.cluster_cidrs)?;
        Ok(Imports::new(
            usize::from(self.max_concurrent_imports),
            cluster,
        ))
    }
}

/// glibc gives threads that contend for malloc arenas of their own (up to eight per core) and
/// keeps what each arena once held. ferry runs one thread per libvirt connection, hundreds in a
/// large pool; two arenas keep that memory shared. `MALLOC_ARENA_MAX` in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before other threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match ferry::api::crds_yaml() {
            Ok(yaml) => write_stdout(&yaml),
            Err(e) => {
                eprintln!("ferry: cannot serialize CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Controller(args) => {
            limit_malloc_arenas();
            let telemetry = telemetry::init(args.log_format);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ferry: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = match rt.block_on(controller(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "ferry controller stopped");
                    ExitCode::FAILURE
                }
            };
            // Outside the runtime: flushing exported spans blocks.
            telemetry.shutdown();
            code
        }
    }
}

/// Write `text` to stdout. A reader that stops early (`ferry crds | head -1`) closes the pipe:
/// that ends the command quietly, as it does for other tools.
fn write_stdout(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn client_config(args: &ControllerArgs) -> Result<Config, String> {
    match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))
        }
        None => Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes configuration found: {e}")),
    }
}

async fn controller(args: ControllerArgs) -> Result<(), String> {
    let uri_limits = args.uri_limits()?;
    let imports = args.imports()?;
    let config = client_config(&args).await?;
    let default_ns = config.default_namespace.clone();
    let user_config = config.clone();
    let client = Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let web = args.web.then(|| {
        Arc::new(ferry::web::Web::new(
            client.clone(),
            user_config,
            identity.clone(),
        ))
    });
    let http_state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
        web: web.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.http_addr))?;
    tracing::info!(addr = %args.http_addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move {
        // Console keystrokes and echoes are small writes: without TCP_NODELAY each waits for
        // the peer's delayed ACK (about 40 ms).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
        });
        if let Err(e) = axum::serve(listener, http::router(http_state)).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    if let (Some(addr), Some(cert), Some(key)) = (
        args.aggregated_api_addr,
        args.aggregated_api_cert.clone(),
        args.aggregated_api_key.clone(),
    ) {
        let web = web
            .clone()
            .ok_or("--aggregated-api-addr serves the consoles: it needs --web true")?;
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let (cert, key) = (read(&cert)?, read(&key)?);
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("aggregated API: cannot listen on {addr}: {e}"))?;
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = ferry::web::aggregated::serve(web, client, tcp, cert, key).await {
                tracing::error!(error = %e, "aggregated API stopped");
            }
        });
    }

    let scope = match &args.namespace {
        Some(ns) => Scope::Namespace(ns.clone()),
        None => Scope::All,
    };
    let reporter = Reporter {
        controller: "ferry".into(),
        instance: Some(identity.clone()),
    };

    let mut leadership = None;
    // Without leader election this replica acts alone; with it, only until its lease lapses.
    let mut gate = ActionGate::open();
    if args.leader_election {
        let grace = args
            .lease_grace
            .min(args.lease_duration.saturating_sub(1))
            .max(1);
        let margin = LeaseSettings::margin(
            grace,
            args.lease_margin_ms.map(std::time::Duration::from_millis),
        );
        let settings = LeaseSettings {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone().unwrap_or(default_ns),
            identity: identity.clone(),
            duration: args.lease_duration,
            grace,
            margin,
        };
        // A standby is healthy and ready: it can take over at any moment.
        ready.store(true, Ordering::Relaxed);
        tracing::info!(lease = %settings.name, namespace = %settings.namespace, %identity, "waiting for leadership");
        let acquired = tokio::select! {
            r = leader::acquire(client.clone(), &settings) => r.map_err(|e| format!("leader election: {e}"))?,
            _ = run::shutdown_signal() => return Ok(()),
        };
        let counted = metrics.clone();
        gate = ActionGate::leased_observed(move |action| counted.action_withheld(action));
        tokio::spawn(leader::keep_deadline(
            client.clone(),
            settings.clone(),
            gate.clone(),
        ));
        // The controllers start once the first renewal is seen (at once, normally): actions
        // before that would only be withheld.
        let seen = async {
            while !gate.is_open() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let within = std::time::Duration::from_secs(settings.duration);
        if tokio::time::timeout(within, seen).await.is_err() {
            tracing::warn!(
                "no renewal of the leader lease seen yet: host and BMC actions wait for one"
            );
        }
        leadership = Some(acquired);
    }

    let ready_flag = ready.clone();
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let leadership_lost = Arc::new(AtomicBool::new(false));
    let stop = async move {
        tokio::select! {
            _ = run::shutdown_signal() => {},
            _ = lost_rx => {},
        }
    };
    let mut lease = None;
    if let Some((rx, task)) = leadership {
        let flag = leadership_lost.clone();
        let revoked = gate.clone();
        let watcher = tokio::spawn(async move {
            leader::lost(rx).await;
            revoked.revoke("the leader election reported the lease lost");
            flag.store(true, Ordering::Relaxed);
            tracing::error!("leadership lost: stopping so that only one replica acts");
            let _ = lost_tx.send(());
        });
        lease = Some((watcher, task));
    }
    let settings = run::Settings {
        scope,
        vm_concurrency: args.vm_concurrency,
        uri_limits,
        imports,
        safety_resync: std::time::Duration::from_secs(args.safety_resync_seconds),
    };
    run::run(
        client,
        settings,
        metrics,
        reporter,
        gate.clone(),
        move |ctx| {
            if let Some(web) = &web {
                web.set_context(ctx);
            }
            ready_flag.store(true, Ordering::Relaxed);
        },
        stop,
    )
    .await;
    // Stopped: nothing more is done on hosts, whatever is still running.
    gate.revoke("the controller stopped");
    if let Some((watcher, task)) = lease {
        // Dropping the last receiver makes the lease manager release the lease, so a standby
        // takes over at once instead of after the lease expires.
        watcher.abort();
        let _ = watcher.await;
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the leader lease"),
            _ => tracing::warn!("the lease manager did not stop in time"),
        }
    }
    if leadership_lost.load(Ordering::Relaxed) {
        return Err("leadership lost".into());
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "ferry".into());
    format!("{host}-{}", std::process::id())
}
