//! [`Hypervisor`] over the `virt` crate.
//!
//! libvirt calls block and report errors through a per-thread slot, so each connection is owned
//! by one OS thread. [`LibvirtHost`] sends that thread closures over a channel and awaits each
//! answer on a oneshot (the tokio-rusqlite pattern); the thread hands them to up to
//! [`ConnectOptions::parallel_calls`] workers sharing the connection (five to a connection, what
//! libvirtd serves at once per client; further workers open another connection to the host): a
//! call and the read of its error always run on the same thread, and no tokio worker ever blocks
//! on libvirt.
//!
//! Time bounds: opening waits at most [`ConnectOptions::connect_timeout`] (libvirt has no connect
//! timeout; the opening thread is left to finish and close what it opened), and every call at
//! most [`ConnectOptions::call_timeout`], after which the connection counts as lost. libvirt's
//! event loop runs on one process-wide thread so that keepalive probes and the close callback
//! work: a host that dies or is cut off marks its handle lost without waiting for a call to fail.
//!
//! This module holds the handle and the async side of every call; the blocking work is in its
//! submodules: `connection` (the thread and libvirt's event loop), `events` (close callback and
//! domain lifecycle events), `errors` (classifying libvirt's errors), `host` (host facts),
//! `domains`, `storage` and `migration`.

mod connection;
mod console;
mod domains;
mod errors;
mod events;
mod host;
mod migration;
mod storage;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::oneshot;
use virt::connect::Connect;
use virt::sys;

use self::connection::{Job, Msg, Shared, connection_thread, init_libvirt, thread_name};
use self::errors::{CallResult, Fail, classify};
use super::console::{CONSOLE_QUEUE, ConsoleKind, ConsoleStream};
use super::domain_xml;
use super::migration::{JobProgress, MigrationRequest};
use super::{
    ConnectOptions, DomainInfo, GuestInfo, HostInfo, HvResult, Hypervisor, HypervisorError,
    UploadSource, VolumeInfo,
};
use crate::plan::domain::{DescribedDomain, DomainDefinition, DomainState, FerryMetadata};
use crate::plan::load::DomainCounters;

/// How long [`LibvirtHost::close`] waits for the connection thread to confirm.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// One open libvirt connection, owned by its own thread. Cheap to share behind an `Arc`; calls
/// from many tasks run side by side on its workers, up to [`ConnectOptions::parallel_calls`].
pub struct LibvirtHost {
    uri: String,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    shared: Arc<Shared>,
    opts: ConnectOptions,
}

impl std::fmt::Debug for LibvirtHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibvirtHost")
            .field("uri", &self.uri)
            .field("lost", &self.shared.lost.load(Ordering::SeqCst))
            .finish()
    }
}

impl LibvirtHost {
    /// Opens a connection to `uri` on a new thread, waiting at most `opts.connect_timeout`.
    ///
    /// Fails with [`HypervisorError::ConnectTimeout`] when the host does not answer in time (the
    /// thread is left to finish the attempt and closes whatever it opened), and with
    /// [`HypervisorError::ConnectionLost`] when libvirt refuses (daemon down, no route, TLS or
    /// authentication failure: nothing ferry can use).
    pub async fn connect(uri: &str, opts: ConnectOptions) -> HvResult<Arc<LibvirtHost>> {
        let started = Instant::now();
        let result = Self::open(uri, &opts).await;
        if let Some(o) = &opts.observer {
            o.observe("connect", started.elapsed().as_secs_f64(), result.is_ok());
        }
        result
    }

    async fn open(uri: &str, opts: &ConnectOptions) -> HvResult<Arc<LibvirtHost>> {
        init_libvirt().map_err(|message| HypervisorError::ConnectionLost {
            uri: uri.into(),
            message,
        })?;
        let shared = Arc::new(Shared {
            uri: uri.into(),
            lost: AtomicBool::new(false),
            closed_by_ferry: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
            observer: opts.observer.clone(),
        });
        let (tx, rx) = mpsc::channel::<Msg>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_shared = shared.clone();
        let keepalive = (opts.keepalive_interval > 0)
            .then_some((opts.keepalive_interval, opts.keepalive_count));
        let parallel = opts.parallel_calls;
        std::thread::Builder::new()
            .name(thread_name(uri))
            .spawn(move || connection_thread(thread_shared, keepalive, parallel, ready_tx, rx))
            .map_err(|e| HypervisorError::ConnectionLost {
                uri: uri.into(),
                message: format!("cannot start the connection thread: {e}"),
            })?;
        match tokio::time::timeout(opts.connect_timeout, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Arc::new(LibvirtHost {
                uri: uri.into(),
                tx: Mutex::new(Some(tx)),
                shared,
                opts: opts.clone(),
            })),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(HypervisorError::ConnectionLost {
                uri: uri.into(),
                message: "the connection thread ended without an answer".into(),
            }),
            // Dropping `ready_rx` (and `tx`) tells the thread to close what it opens.
            Err(_) => Err(HypervisorError::ConnectTimeout {
                uri: uri.into(),
                seconds: opts.connect_timeout.as_secs(),
            }),
        }
    }

    /// Runs `f` on the connection thread, bounded by the call timeout, and classifies its error.
    async fn call<T, F>(&self, op: &'static str, f: F) -> HvResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> CallResult<T> + Send + 'static,
    {
        self.call_for(op, self.opts.call_timeout, f).await
    }

    /// [`Self::call`] with its own time limit (for calls that legitimately take long).
    async fn call_for<T, F>(&self, op: &'static str, timeout: Duration, f: F) -> HvResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> CallResult<T> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.call_inner(op, timeout, f).await;
        if let Some(o) = &self.opts.observer {
            o.observe(op, started.elapsed().as_secs_f64(), result.is_ok());
        }
        result
    }

    async fn call_inner<T, F>(&self, op: &'static str, timeout: Duration, f: F) -> HvResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> CallResult<T> + Send + 'static,
    {
        if self.shared.lost.load(Ordering::SeqCst) {
            return Err(self.shared.lost_error());
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let sent = match self.tx.lock() {
            Ok(guard) => guard
                .as_ref()
                .is_some_and(|s| s.send(Msg::Job(job)).is_ok()),
            Err(_) => false,
        };
        if !sent {
            self.shared.mark_lost("connection closed");
            return Err(self.shared.lost_error());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(fail))) => {
                let err = classify(&self.uri, op, fail);
                if err.is_connection_lost() {
                    self.shared.mark_lost(err.to_string());
                }
                Err(err)
            }
            Ok(Err(_)) => {
                self.shared
                    .mark_lost(format!("{op}: the connection thread dropped the call"));
                Err(self.shared.lost_error())
            }
            Err(_) => {
                self.shared
                    .mark_lost(format!("{op} did not answer within {timeout:?}"));
                Err(self.shared.lost_error())
            }
        }
    }
}

impl LibvirtHost {
    /// Runs `job` on the connection thread without waiting for it (a console relay that lasts
    /// as long as its session). False when the connection is closed.
    fn detach(&self, job: Job) -> bool {
        match self.tx.lock() {
            Ok(guard) => guard
                .as_ref()
                .is_some_and(|s| s.send(Msg::Job(job)).is_ok()),
            Err(_) => false,
        }
    }

    /// The serial console, relayed on this connection's thread until either side ends.
    async fn open_serial(&self, uuid: &str) -> HvResult<ConsoleStream> {
        let uuid = uuid.to_string();
        let stream = self
            .call("open_console", move |c| console::open_serial(c, &uuid))
            .await?;
        let (out_tx, from_guest) = tokio::sync::mpsc::channel(CONSOLE_QUEUE);
        let (to_guest, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(CONSOLE_QUEUE);
        let (wake_tx, wake_rx) = mpsc::channel();
        let relay_wake = wake_tx.clone();
        if !self.detach(Box::new(move |_conn| {
            console::relay(stream, relay_wake, wake_rx, out_tx)
        })) {
            return Err(self.shared.lost_error());
        }
        tokio::spawn(async move {
            while let Some(bytes) = input.recv().await {
                if wake_tx.send(console::Wake::Input(bytes)).is_err() {
                    return;
                }
            }
            let _ = wake_tx.send(console::Wake::Closed);
        });
        Ok(ConsoleStream {
            from_guest,
            to_guest,
        })
    }

    /// The VNC display: the socket libvirt hands over, pumped by two tasks.
    async fn open_vnc(&self, uuid: &str) -> HvResult<ConsoleStream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let uuid = uuid.to_string();
        let fd = self
            .call("open_graphics", move |c| console::open_graphics(c, &uuid))
            .await?;
        let socket = std::os::unix::net::UnixStream::from(fd);
        let socket = socket
            .set_nonblocking(true)
            .and_then(|()| tokio::net::UnixStream::from_std(socket))
            .map_err(|e| HypervisorError::OperationFailed {
                operation: "open_graphics",
                code: 0,
                message: format!("the display's socket: {e}"),
            })?;
        let (mut reader, mut writer) = socket.into_split();
        let (out_tx, from_guest) = tokio::sync::mpsc::channel(CONSOLE_QUEUE);
        let (to_guest, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(CONSOLE_QUEUE);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out_tx.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Some(bytes) = input.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = writer.shutdown().await;
        });
        Ok(ConsoleStream {
            from_guest,
            to_guest,
        })
    }
}

impl Drop for LibvirtHost {
    /// Dropping the channel makes the thread close the connection once its current call returns.
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

impl LibvirtHost {
    /// Define (or redefine) a persistent domain from XML as it is, for domains ferry did not
    /// describe itself (tests, foreign domains). [`Hypervisor::define_domain`] writes the XML of a
    /// [`DomainDefinition`] and defines it this way; both report as `define_domain`.
    pub async fn define_xml(&self, xml: &str) -> HvResult<()> {
        let xml = xml.to_string();
        self.call("define_domain", move |c| domains::define(c, &xml))
            .await
    }
}

#[async_trait]
impl Hypervisor for LibvirtHost {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn is_connected(&self) -> bool {
        !self.shared.lost.load(Ordering::SeqCst)
    }

    fn lost(&self) -> Option<HypervisorError> {
        (self.shared.lost.load(Ordering::SeqCst)
            && !self.shared.closed_by_ferry.load(Ordering::SeqCst))
        .then(|| self.shared.lost_error())
    }

    async fn host_info(&self) -> HvResult<HostInfo> {
        self.call("host_info", host::host_info).await
    }

    async fn ping(&self) -> HvResult<()> {
        self.call("ping", |conn| {
            conn.lib_version().map(|_| ()).map_err(Fail::Virt)
        })
        .await
    }

    async fn list_domains(&self) -> HvResult<Vec<DomainInfo>> {
        self.call("list_domains", domains::list).await
    }

    async fn lookup_domain(&self, uuid: &str) -> HvResult<Option<DomainInfo>> {
        let uuid = uuid.to_string();
        self.call("lookup_domain", move |c| domains::lookup(c, &uuid))
            .await
    }

    async fn domain_state(&self, uuid: &str) -> HvResult<Option<DomainState>> {
        let uuid = uuid.to_string();
        self.call("domain_state", move |c| domains::state(c, &uuid))
            .await
    }

    async fn describe_domain(
        &self,
        name: &str,
    ) -> HvResult<Option<(DescribedDomain, DomainState)>> {
        let name = name.to_string();
        self.call("describe_domain", move |c| domains::describe(c, &name))
            .await
    }

    async fn set_metadata(&self, uuid: &str, meta: Option<&FerryMetadata>) -> HvResult<()> {
        let fragment = match meta {
            Some(m) => Some(domain_xml::metadata_fragment(m).map_err(|e| {
                HypervisorError::InvalidDefinition {
                    message: e.to_string(),
                }
            })?),
            None => None,
        };
        let uuid = uuid.to_string();
        self.call("set_metadata", move |c| {
            domains::set_metadata(c, &uuid, fragment.as_deref())
        })
        .await
    }

    async fn define_domain(&self, def: &DomainDefinition) -> HvResult<()> {
        let xml = domain_xml::to_xml(def).map_err(|e| HypervisorError::InvalidDefinition {
            message: e.to_string(),
        })?;
        self.define_xml(&xml).await
    }

    async fn start_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("start_domain", move |c| domains::start(c, &uuid))
            .await
    }

    async fn shutdown_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("shutdown_domain", move |c| domains::shutdown(c, &uuid))
            .await
    }

    async fn destroy_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("destroy_domain", move |c| domains::destroy(c, &uuid))
            .await
    }

    async fn pause_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("pause_domain", move |c| domains::pause(c, &uuid))
            .await
    }

    async fn resume_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("resume_domain", move |c| domains::resume(c, &uuid))
            .await
    }

    async fn undefine_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("undefine_domain", move |c| domains::undefine(c, &uuid))
            .await
    }

    async fn ensure_pool(&self, pool: &str, path: Option<&str>) -> HvResult<String> {
        let (pool, path) = (pool.to_string(), path.map(str::to_string));
        self.call("ensure_pool", move |c| {
            storage::ensure_pool(c, &pool, path.as_deref())
        })
        .await
    }

    async fn lookup_volume(&self, pool: &str, name: &str) -> HvResult<Option<VolumeInfo>> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("lookup_volume", move |c| {
            storage::lookup_volume(c, &pool, &name)
        })
        .await
    }

    async fn create_overlay(
        &self,
        pool: &str,
        name: &str,
        backing: &VolumeInfo,
        backing_format: &str,
        capacity: u64,
    ) -> HvResult<VolumeInfo> {
        let (pool, name, backing) = (pool.to_string(), name.to_string(), backing.clone());
        let format = backing_format.to_string();
        self.call("create_overlay", move |c| {
            storage::create_overlay(c, &pool, &name, &backing, &format, capacity)
        })
        .await
    }

    async fn read_volume_head(&self, pool: &str, name: &str, len: usize) -> HvResult<Vec<u8>> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("read_volume_head", move |c| {
            storage::read_at(c, &pool, &name, 0, len)
        })
        .await
    }

    async fn read_volume(
        &self,
        pool: &str,
        name: &str,
        offset: u64,
        len: usize,
    ) -> HvResult<Vec<u8>> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("read_volume", move |c| {
            storage::read_at(c, &pool, &name, offset, len)
        })
        .await
    }

    async fn clone_volume(
        &self,
        pool: &str,
        name: &str,
        source: &VolumeInfo,
    ) -> HvResult<VolumeInfo> {
        let (pool, name, source) = (pool.to_string(), name.to_string(), source.clone());
        self.call("clone_volume", move |c| {
            storage::clone_volume(c, &pool, &name, &source)
        })
        .await
    }

    async fn guest_info(&self, uuid: &str) -> HvResult<Option<GuestInfo>> {
        let uuid = uuid.to_string();
        self.call("guest_info", move |c| domains::guest_info(c, &uuid))
            .await
    }

    async fn domain_counters(&self) -> HvResult<Vec<DomainCounters>> {
        self.call("domain_counters", domains::counters).await
    }

    async fn upload_volume(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        source: UploadSource,
    ) -> HvResult<VolumeInfo> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("upload_volume", move |c| {
            storage::upload_volume(c, &pool, &name, capacity, source)
        })
        .await
    }

    async fn delete_volume(&self, pool: &str, name: &str) -> HvResult<()> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("delete_volume", move |c| {
            storage::delete_volume(c, &pool, &name)
        })
        .await
    }

    async fn migrate(&self, uuid: &str, req: &MigrationRequest) -> HvResult<()> {
        let (uuid, req) = (uuid.to_string(), req.clone());
        self.call_for("migrate", req.timeout, move |c| {
            migration::migrate(c, &uuid, &req)
        })
        .await
    }

    async fn job_progress(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        let uuid = uuid.to_string();
        self.call("job_progress", move |c| migration::job(c, &uuid, 0))
            .await
    }

    async fn completed_job(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        let uuid = uuid.to_string();
        self.call("completed_job", move |c| {
            migration::job(c, &uuid, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
        })
        .await
    }

    async fn abort_job(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("abort_job", move |c| migration::abort_job(c, &uuid))
            .await
    }

    async fn set_migration_max_downtime(&self, uuid: &str, ms: u64) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("set_migration_max_downtime", move |c| {
            migration::set_max_downtime(c, &uuid, ms)
        })
        .await
    }

    async fn start_post_copy(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("start_post_copy", move |c| {
            migration::start_post_copy(c, &uuid)
        })
        .await
    }

    async fn open_console(&self, uuid: &str, kind: ConsoleKind) -> HvResult<ConsoleStream> {
        match kind {
            ConsoleKind::Serial => self.open_serial(uuid).await,
            ConsoleKind::Vnc => self.open_vnc(uuid).await,
        }
    }

    async fn close(&self) {
        self.shared.mark_closed();
        let tx = self.tx.lock().ok().and_then(|mut tx| tx.take());
        let Some(tx) = tx else { return };
        let (ack_tx, ack_rx) = oneshot::channel();
        if tx.send(Msg::Close(ack_tx)).is_ok() {
            // The thread may be stuck in a call; it closes when that returns.
            let _ = tokio::time::timeout(CLOSE_WAIT, ack_rx).await;
        }
    }
}
