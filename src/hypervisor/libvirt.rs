//! [`Hypervisor`](super::Hypervisor) over the `virt` crate.
//!
//! libvirt calls block and report errors through a per-thread slot, so each connection is owned
//! by one OS thread. [`LibvirtHost`] sends that thread closures over a channel and awaits each
//! answer on a oneshot (the tokio-rusqlite pattern): a call and the read of its error always run on
//! the same thread, and no tokio worker ever blocks on libvirt.
//!
//! Time bounds: opening waits at most [`ConnectOptions::connect_timeout`] (libvirt has no connect
//! timeout; the opening thread is left to finish and close what it opened), and every call at
//! most [`ConnectOptions::call_timeout`], after which the connection counts as lost. libvirt's
//! event loop runs on one process-wide thread so that keepalive probes and the close callback
//! work: a host that dies or is cut off marks its handle lost without waiting for a call to fail.

use std::ffi::c_void;
use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use tokio::sync::oneshot;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use super::domain_xml::{self, empty_elem, end, start, text_elem};
use super::migration::{JobProgress, MigrationRequest, StorageMode};
use super::{
    ConnectOptions, DomainInfo, DomainState, GuestInfo, GuestInterface, HostInfo, HvResult,
    Hypervisor, HypervisorError, ShutOffReason, UploadSource, VolumeInfo, error_code,
};

// libvirt error numbers and domains (virterror.h) used to classify failures.
const VIR_ERR_INTERNAL_ERROR: i32 = 1;
const VIR_ERR_NO_SUPPORT: i32 = 3;
const VIR_ERR_NO_CONNECT: i32 = 5;
const VIR_ERR_INVALID_CONN: i32 = 6;
const VIR_ERR_INVALID_ARG: i32 = 8;
const VIR_ERR_SYSTEM_ERROR: i32 = 38;
const VIR_ERR_GNUTLS_ERROR: i32 = 40;
const VIR_ERR_AUTH_FAILED: i32 = 45;
const VIR_ERR_ARGUMENT_UNSUPPORTED: i32 = 74;
const VIR_ERR_SSH: i32 = 85;
const VIR_ERR_LIBSSH: i32 = 98;
const VIR_FROM_RPC: i32 = 7;
const VIR_FROM_REMOTE: i32 = 13;

/// How long [`LibvirtHost::close`] waits for the connection thread to confirm.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A libvirt error, or a failure of ferry's own inside a call (unparsable XML from the host).
enum Fail {
    Virt(virt::error::Error),
    /// Reported by ferry with a libvirt error code (a lookup found nothing).
    Code(i32, String),
    Other(String),
}

impl From<virt::error::Error> for Fail {
    fn from(e: virt::error::Error) -> Self {
        Fail::Virt(e)
    }
}

impl Fail {
    fn code(&self) -> i32 {
        match self {
            Fail::Virt(e) => e.code().to_raw() as i32,
            Fail::Code(code, _) => *code,
            Fail::Other(_) => 0,
        }
    }
}

type CallResult<T> = Result<T, Fail>;
type Job = Box<dyn FnOnce(&Connect) + Send>;

enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
}

/// State shared by the handle, its thread and libvirt's close callback.
struct Shared {
    uri: String,
    lost: AtomicBool,
    /// Set when ferry closed the connection itself: not a loss to report.
    closed_by_ferry: AtomicBool,
    reason: Mutex<String>,
    /// Told when the host side ends the connection.
    observer: Option<Arc<dyn super::CallObserver>>,
}

impl Shared {
    /// The connection is gone because of the host or the network (keepalive, EOF, a failed or
    /// timed-out call): remember why and tell the observer, once.
    fn mark_lost(&self, reason: impl Into<String>) {
        if !self.lost.swap(true, Ordering::SeqCst) {
            let reason = reason.into();
            if let Some(o) = &self.observer {
                o.connection_lost(&self.uri, &reason);
            }
            if let Ok(mut r) = self.reason.lock() {
                *r = reason;
            }
        }
    }

    /// ferry closes the connection: later calls fail, nothing is reported.
    fn mark_closed(&self) {
        if !self.lost.load(Ordering::SeqCst) {
            self.closed_by_ferry.store(true, Ordering::SeqCst);
        }
        if !self.lost.swap(true, Ordering::SeqCst)
            && let Ok(mut r) = self.reason.lock()
        {
            *r = "connection closed by ferry".into();
        }
    }

    fn lost_error(&self) -> HypervisorError {
        let message = self
            .reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|_| "connection lost".into());
        HypervisorError::ConnectionLost {
            uri: self.uri.clone(),
            message,
        }
    }
}

/// One open libvirt connection, owned by its own thread. Cheap to share behind an `Arc`; calls
/// from many tasks are queued and run one at a time on that thread.
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
        std::thread::Builder::new()
            .name(thread_name(uri))
            .spawn(move || connection_thread(thread_shared, keepalive, ready_tx, rx))
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

impl Drop for LibvirtHost {
    /// Dropping the channel makes the thread close the connection once its current call returns.
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

fn thread_name(uri: &str) -> String {
    let short: String = uri.chars().take(40).collect();
    format!("libvirt {short}")
}

// ------------------------------------------------------------------------------------------------
// Process-wide libvirt set-up
// ------------------------------------------------------------------------------------------------

static LIBVIRT_INIT: OnceLock<Result<(), String>> = OnceLock::new();

/// Once per process: silence libvirt's default error printer, register its default event loop
/// implementation (needed for keepalive and the close callback of remote connections; it must be
/// registered before the first connection opens) and run it on a dedicated thread.
fn init_libvirt() -> Result<(), String> {
    LIBVIRT_INIT
        .get_or_init(|| {
            virt::error::clear_error_callback();
            virt::event::event_register_default_impl()
                .map_err(|e| format!("cannot register libvirt's event loop: {e}"))?;
            // virEventRunDefaultImpl blocks until something happens; a periodic timer makes sure
            // the loop turns at least once a second.
            // SAFETY: the callback ignores its arguments and no opaque data is passed.
            let timer =
                unsafe { sys::virEventAddTimeout(1000, Some(tick), std::ptr::null_mut(), None) };
            if timer < 0 {
                return Err("cannot add libvirt's event loop timer".into());
            }
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        if virt::event::event_run_default_impl().is_err() {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
                .map_err(|e| format!("cannot start libvirt's event loop thread: {e}"))?;
            Ok(())
        })
        .clone()
}

unsafe extern "C" fn tick(_timer: c_int, _opaque: *mut c_void) {}

// ------------------------------------------------------------------------------------------------
// The connection thread
// ------------------------------------------------------------------------------------------------

fn connection_thread(
    shared: Arc<Shared>,
    keepalive: Option<(i32, u32)>,
    ready: oneshot::Sender<HvResult<()>>,
    rx: mpsc::Receiver<Msg>,
) {
    let conn = match Connect::open(Some(&shared.uri)) {
        Ok(c) => c,
        Err(e) => {
            let message = e.message().to_string();
            let code = e.code().to_raw() as i32;
            let error = match credentials_problem(code, &message) {
                Some(hint) => HypervisorError::Rejected {
                    uri: shared.uri.clone(),
                    message: format!("{hint} (libvirt: {message})"),
                },
                None => HypervisorError::ConnectionLost {
                    uri: shared.uri.clone(),
                    message: e.to_string(),
                },
            };
            let _ = ready.send(Err(error));
            return;
        }
    };
    if let Some((interval, count)) = keepalive
        && let Err(e) = conn.set_keep_alive(interval, count)
        && e.code().to_raw() as i32 != VIR_ERR_NO_SUPPORT
    {
        tracing::warn!(uri = %shared.uri, error = %e, "cannot enable libvirt keepalive");
    }
    let callback = CloseCallback::register(&conn, &shared);
    let events = LifecycleEvents::register(&conn, &shared);
    let close = move |conn: Connect, shared: &Shared| {
        if let Some(events) = events {
            events.deregister(&conn);
        }
        close_connection(conn, callback, &shared.uri);
    };
    if ready.send(Ok(())).is_err() {
        // The caller gave up waiting (connect timeout): nobody will use this connection.
        close(conn, &shared);
        return;
    }
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Job(job) => {
                if catch_unwind(AssertUnwindSafe(|| job(&conn))).is_err() {
                    tracing::error!(uri = %shared.uri, "a libvirt call panicked");
                }
            }
            Msg::Close(ack) => {
                close(conn, &shared);
                let _ = ack.send(());
                return;
            }
        }
    }
    close(conn, &shared);
}

/// Closes explicitly instead of dropping: `virt` panics in `Drop` when `virConnectClose` fails.
fn close_connection(conn: Connect, callback: Option<CloseCallback>, uri: &str) {
    if let Some(cb) = callback {
        cb.unregister(&conn);
    }
    // SAFETY: the pointer is valid (owned by `conn`), and `conn` is forgotten so that it is
    // released exactly once, here.
    let ret = unsafe {
        let ptr = conn.as_ptr();
        std::mem::forget(conn);
        sys::virConnectClose(ptr)
    };
    if ret < 0 {
        tracing::warn!(uri, error = %virt::error::Error::last_error(), "closing the libvirt connection failed");
    }
}

/// libvirt's close callback (`virConnectRegisterCloseCallback`), which has no safe wrapper in
/// `virt`: it marks the handle lost the moment libvirt sees the connection die (keepalive timeout,
/// daemon gone), without waiting for a call to fail.
struct CloseCallback;

impl CloseCallback {
    /// Registers the callback for remote connections. In-process drivers (`test:///`) never call
    /// it and never free its data, so nothing is registered for them.
    fn register(conn: &Connect, shared: &Arc<Shared>) -> Option<CloseCallback> {
        if shared.uri.starts_with("test:") {
            return None;
        }
        let opaque = Arc::into_raw(shared.clone()) as *mut c_void;
        // SAFETY: `opaque` is a leaked `Arc<Shared>` that `free_shared` releases; libvirt calls
        // `free_shared` exactly once (after the callback ran, or when it is unregistered).
        let ret = unsafe {
            sys::virConnectRegisterCloseCallback(
                conn.as_ptr(),
                Some(on_close),
                opaque,
                Some(free_shared),
            )
        };
        if ret < 0 {
            // SAFETY: libvirt did not take the reference; release it here.
            unsafe { drop(Arc::from_raw(opaque as *const Shared)) };
            tracing::warn!(uri = %shared.uri, error = %virt::error::Error::last_error(), "cannot register libvirt's close callback");
            return None;
        }
        Some(CloseCallback)
    }

    fn unregister(self, conn: &Connect) {
        // Fails harmlessly when the callback already fired (libvirt then freed its data).
        // SAFETY: valid connection pointer; `on_close` is the registered function.
        let _ = unsafe { sys::virConnectUnregisterCloseCallback(conn.as_ptr(), Some(on_close)) };
        // SAFETY: resets this thread's error slot (a failed unregister leaves an error there).
        unsafe { sys::virResetLastError() };
    }
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: `opaque` is the `Arc<Shared>` given at registration, alive until `free_shared`.
    let shared = unsafe { &*(opaque as *const Shared) };
    let why = match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_ERROR => "error on the socket",
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "closed by the host",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "keepalive timeout",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by the client",
        _ => "unknown reason",
    };
    shared.mark_lost(format!("libvirt closed the connection: {why}"));
}

/// libvirt's domain lifecycle events (`virConnectDomainEventRegisterAny`, which has no safe
/// wrapper in `virt`): a domain that stops, crashes, pauses, resumes or disappears on the host is
/// named to the observer at once, so that its VM is looked at without waiting for the periodic
/// resync. Starts and definitions are left out: ferry makes those itself.
struct LifecycleEvents(c_int);

/// The C type of a lifecycle event callback (`virConnectDomainEventCallback`).
type LifecycleFn =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
/// The C type `virConnectDomainEventRegisterAny` takes for every event ID.
type GenericFn = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

impl LifecycleEvents {
    fn register(conn: &Connect, shared: &Arc<Shared>) -> Option<LifecycleEvents> {
        shared.observer.as_ref()?;
        let opaque = Arc::into_raw(shared.clone()) as *mut c_void;
        // SAFETY: libvirt calls a lifecycle callback with the lifecycle signature; the API takes
        // it cast to the generic type (what the C macro VIR_DOMAIN_EVENT_CALLBACK does).
        let callback = unsafe { std::mem::transmute::<LifecycleFn, GenericFn>(on_lifecycle) };
        // SAFETY: valid connection; `opaque` is a leaked `Arc<Shared>` that libvirt releases
        // with `free_shared` when the callback is deregistered (or the connection closes).
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                Some(callback),
                opaque,
                Some(free_shared),
            )
        };
        if id < 0 {
            // SAFETY: libvirt did not take the reference; release it here.
            unsafe { drop(Arc::from_raw(opaque as *const Shared)) };
            tracing::warn!(uri = %shared.uri, error = %virt::error::Error::last_error(), "cannot subscribe to libvirt's domain events; stopped guests are noticed at the next resync");
            return None;
        }
        Some(LifecycleEvents(id))
    }

    fn deregister(self, conn: &Connect) {
        // SAFETY: valid connection and the ID libvirt returned; a failure (connection already
        // dead) is harmless.
        let _ = unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), self.0) };
        // SAFETY: resets this thread's error slot.
        unsafe { sys::virResetLastError() };
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    if opaque.is_null() || dom.is_null() {
        return 0;
    }
    if matches!(
        event as u32,
        sys::VIR_DOMAIN_EVENT_DEFINED | sys::VIR_DOMAIN_EVENT_STARTED
    ) {
        return 0;
    }
    // SAFETY: `opaque` is the `Arc<Shared>` given at registration, alive until `free_shared`.
    let shared = unsafe { &*(opaque as *const Shared) };
    let mut buf = [0 as std::os::raw::c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `dom` is valid for the callback's duration; the buffer has the size libvirt needs.
    if unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0
        && let Some(o) = &shared.observer
    {
        // SAFETY: libvirt wrote a NUL-terminated string into `buf`.
        let uuid = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
        o.domain_changed(&shared.uri, &uuid);
    }
    0
}

unsafe extern "C" fn free_shared(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the reference leaked in `CloseCallback::register` or
        // `LifecycleEvents::register`, released once.
        unsafe { drop(Arc::from_raw(opaque as *const Shared)) };
    }
}

// ------------------------------------------------------------------------------------------------
// Error classification
// ------------------------------------------------------------------------------------------------

/// Sorts a libvirt error into "the connection is gone" (reconnect) or "the host refused this
/// operation", after libvirt's `virterror.h` and KubeVirt's `cli/libvirt.go`:
/// - no connection / invalid connection (5, 6);
/// - any internal or system error raised by the RPC or remote layer (domain 7 or 13, codes 1 and
///   38: end of file, broken pipe, "client socket is closed", keepalive timeout);
/// - TLS and SSH transport errors (40, 85, 98).
///
/// A system error from another layer (say, the storage driver failing to unlink a file, code 38
/// domain 18) is an operation failure, not a lost connection.
fn classify(uri: &str, op: &'static str, fail: Fail) -> HypervisorError {
    let e = match fail {
        Fail::Virt(e) => e,
        Fail::Code(code, message) => {
            return HypervisorError::OperationFailed {
                operation: op,
                code,
                message,
            };
        }
        Fail::Other(message) => {
            return HypervisorError::OperationFailed {
                operation: op,
                code: 0,
                message,
            };
        }
    };
    let code = e.code().to_raw() as i32;
    let domain = e.domain().to_raw() as i32;
    if is_connection_error(code, domain) {
        HypervisorError::ConnectionLost {
            uri: uri.into(),
            message: format!("{op}: {}", e.message()),
        }
    } else {
        HypervisorError::OperationFailed {
            operation: op,
            code,
            message: e.message().to_string(),
        }
    }
}

/// When a failed connection attempt is about credentials rather than reachability, what to fix.
/// libvirt reports these with generic codes, so its (untranslated) messages decide:
/// - the host closes the connection right after the TLS handshake ("Unable to read TLS
///   confirmation") when it rejects the client certificate;
/// - "Failed to verify peer's certificate": the host's certificate is not trusted;
/// - "failed validation against": the client certificate does not match `cacert.pem`;
/// - "Cannot read ...": a file of `pkipath` (or the SSH key) is missing;
/// - SSH: the key refused, or the host key unknown or changed.
fn credentials_problem(code: i32, message: &str) -> Option<&'static str> {
    let has = |s: &str| message.contains(s);
    if has("TLS confirmation") {
        Some(
            "the host rejected ferry's TLS client certificate (it closed the connection right after \
             the handshake): clientcert.pem must be signed by a CA the host trusts (its ca_file) \
             and be allowed by its tls_allowed_dn_list",
        )
    } else if has("peer's certificate") || has("server certificate") {
        Some(
            "the host's TLS certificate was rejected: it is not signed by the CA in cacert.pem, \
             has expired, or does not name the host as the URI does",
        )
    } else if has("failed validation against") {
        Some(
            "the TLS client certificate was rejected: clientcert.pem is not signed by the CA in cacert.pem (or has expired)",
        )
    } else if has("Cannot read CA certificate")
        || has("Cannot read certificate")
        || has("Cannot read private key")
        || has("reading private key")
        || has("Identity file")
    {
        Some("a credentials file is missing or unreadable")
    } else if has("Host key verification failed") || has("host key") || has("known_hosts") {
        Some("the host's SSH host key is not in known_hosts, or has changed")
    } else if has("Permission denied") || has("publickey") {
        Some("the host refused the SSH key")
    } else if code == VIR_ERR_AUTH_FAILED {
        Some("the host refused ferry's credentials")
    } else {
        None
    }
}

fn is_connection_error(code: i32, domain: i32) -> bool {
    match code {
        VIR_ERR_NO_CONNECT | VIR_ERR_INVALID_CONN => true,
        VIR_ERR_GNUTLS_ERROR | VIR_ERR_SSH | VIR_ERR_LIBSSH => true,
        VIR_ERR_INTERNAL_ERROR | VIR_ERR_SYSTEM_ERROR => {
            domain == VIR_FROM_RPC || domain == VIR_FROM_REMOTE
        }
        _ => false,
    }
}

fn is_code(fail: &Fail, code: i32) -> bool {
    fail.code() == code
}

// ------------------------------------------------------------------------------------------------
// Calls (run on the connection thread)
// ------------------------------------------------------------------------------------------------

/// `Ok(None)` when libvirt says the object does not exist.
fn found<T>(r: Result<T, virt::error::Error>, not_found: i32) -> CallResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code().to_raw() as i32 == not_found => Ok(None),
        Err(e) => Err(Fail::Virt(e)),
    }
}

fn lookup_dom(conn: &Connect, uuid: &str) -> CallResult<Option<Domain>> {
    found(
        conn.lookup_domain_by_uuid_string(uuid),
        error_code::NO_DOMAIN,
    )
}

/// `virDomainGetState`, called directly: `virt`'s `Domain::state` drops the error and reports a
/// failed call as an unknown state.
fn raw_state(dom: &Domain) -> CallResult<(u32, u32)> {
    let (mut state, mut reason): (c_int, c_int) = (0, 0);
    // SAFETY: valid domain pointer and out-parameters.
    let ret = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if ret < 0 {
        return Err(Fail::Virt(virt::error::Error::last_error()));
    }
    Ok((state.max(0) as u32, reason.max(0) as u32))
}

fn map_state(state: u32, reason: u32) -> DomainState {
    match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED => DomainState::Running,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_SHUTDOWN => DomainState::ShuttingDown,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff(match reason {
            sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN => ShutOffReason::Shutdown,
            sys::VIR_DOMAIN_SHUTOFF_DESTROYED => ShutOffReason::Destroyed,
            // DAEMON: libvirtd killed it while reconnecting after a restart — not the guest's
            // choice, so it counts as a crash.
            sys::VIR_DOMAIN_SHUTOFF_CRASHED | sys::VIR_DOMAIN_SHUTOFF_DAEMON => {
                ShutOffReason::Crashed
            }
            sys::VIR_DOMAIN_SHUTOFF_MIGRATED => ShutOffReason::Migrated,
            sys::VIR_DOMAIN_SHUTOFF_SAVED => ShutOffReason::Saved,
            sys::VIR_DOMAIN_SHUTOFF_FAILED => ShutOffReason::Failed,
            _ => ShutOffReason::Other,
        }),
        sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => DomainState::PmSuspended,
        _ => DomainState::Unknown,
    }
}

fn domain_info(dom: &Domain) -> CallResult<DomainInfo> {
    let name = dom.name()?;
    let uuid = dom.uuid_string()?.to_ascii_lowercase();
    let (state, reason) = raw_state(dom)?;
    let state = map_state(state, reason);
    let persistent = dom.is_persistent()?;
    let info = dom.info()?;
    let live = if state.is_active() {
        domain_xml::parse_metadata(&dom.xml_desc(0)?)
    } else {
        None
    };
    let config = if persistent {
        domain_xml::parse_metadata(&dom.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?)
    } else {
        None
    };
    Ok(DomainInfo {
        name,
        uuid,
        state,
        persistent,
        vcpus: info.nr_virt_cpu,
        memory_kib: info.max_mem,
        live,
        config,
    })
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

fn host_info(conn: &Connect) -> CallResult<HostInfo> {
    let node = conn.node_info()?;
    Ok(HostInfo {
        hostname: conn.hostname()?,
        libvirt_version: version_string(conn.lib_version()?),
        hypervisor_version: version_string(conn.hyp_version()?),
        cpus: node.cpus,
        memory_kib: node.memory,
        kvm: capabilities_offer_kvm(&conn.capabilities()?),
    })
}

/// Whether KVM can run x86_64 guests on the host, from its capabilities XML: libvirt must offer
/// `<domain type='kvm'>` for an x86_64 guest (it does whenever `/dev/kvm` opens) *and* the host
/// CPU must list hardware virtualisation (`vmx` or `svm`). The second check matters: a `/dev/kvm`
/// without VT-x/AMD-V behind it (such as the `kvm_pvm` module on cloud VMs) is offered by libvirt
/// but cannot boot a stock kernel, and only TCG works there.
fn capabilities_offer_kvm(xml: &str) -> bool {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<Vec<u8>> = Vec::new();
    let mut x86_64 = false;
    let (mut kvm_domain, mut hw_virt) = (false, false);
    loop {
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(_) => return false,
        };
        let (e, empty) = match event {
            Event::Start(e) => (e, false),
            Event::Empty(e) => (e, true),
            Event::End(_) => {
                if path.pop().as_deref() == Some(b"arch".as_slice()) {
                    x86_64 = false;
                }
                continue;
            }
            Event::Eof => return kvm_domain && hw_virt,
            _ => continue,
        };
        let local = e.local_name().as_ref().to_vec();
        let under = |names: &[&[u8]]| {
            path.len() == names.len() && path.iter().zip(names).all(|(p, n)| p == n)
        };
        match local.as_slice() {
            b"arch" if under(&[b"capabilities", b"guest"]) => {
                x86_64 = attribute(&e, b"name").as_deref() == Some("x86_64");
            }
            b"domain"
                if x86_64
                    && under(&[b"capabilities", b"guest", b"arch"])
                    && attribute(&e, b"type").as_deref() == Some("kvm") =>
            {
                kvm_domain = true;
            }
            b"feature"
                if under(&[b"capabilities", b"host", b"cpu"])
                    && matches!(attribute(&e, b"name").as_deref(), Some("vmx" | "svm")) =>
            {
                hw_virt = true;
            }
            _ => {}
        }
        if !empty {
            path.push(local);
        }
    }
}

fn attribute(e: &quick_xml::events::BytesStart, key: &[u8]) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

/// Text and attributes at fixed element paths of a small XML document (pool and volume XML).
#[derive(Default)]
struct XmlFacts {
    texts: Vec<(String, String)>,
    attrs: Vec<(String, String, String)>,
}

impl XmlFacts {
    fn parse(xml: &str) -> Option<XmlFacts> {
        let mut reader = Reader::from_str(xml);
        let mut facts = XmlFacts::default();
        let mut path: Vec<String> = Vec::new();
        let mut text = String::new();
        loop {
            match reader.read_event().ok()? {
                Event::Start(e) => {
                    path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                    facts.push_attrs(&path, &e)?;
                    text.clear();
                }
                Event::Empty(e) => {
                    path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
                    facts.push_attrs(&path, &e)?;
                    path.pop();
                }
                Event::Text(t) => text.push_str(&t.xml10_content().ok()?),
                Event::GeneralRef(r) => match r.resolve_char_ref().ok()? {
                    Some(c) => text.push(c),
                    None => text.push_str(quick_xml::escape::resolve_predefined_entity(
                        &r.decode().ok()?,
                    )?),
                },
                Event::End(_) => {
                    facts
                        .texts
                        .push((path.join("/"), std::mem::take(&mut text)));
                    path.pop();
                }
                Event::Eof => return Some(facts),
                _ => {}
            }
        }
    }

    fn push_attrs(&mut self, path: &[String], e: &quick_xml::events::BytesStart) -> Option<()> {
        for a in e.attributes() {
            let a = a.ok()?;
            self.attrs.push((
                path.join("/"),
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                a.unescape_value().ok()?.into_owned(),
            ));
        }
        Some(())
    }

    fn text(&self, path: &str) -> Option<&str> {
        self.texts
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.trim())
    }

    fn attr(&self, path: &str, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(p, k, _)| p == path && k == key)
            .map(|(_, _, v)| v.as_str())
    }
}

fn volume_info(vol: &StorageVol) -> CallResult<VolumeInfo> {
    let xml = vol.xml_desc(0)?;
    let facts = XmlFacts::parse(&xml)
        .ok_or_else(|| Fail::Other("the host returned unreadable volume XML".into()))?;
    let capacity = facts
        .text("volume/capacity")
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| Fail::Other("volume XML has no capacity in bytes".into()))?;
    Ok(VolumeInfo {
        name: vol.name()?,
        path: vol.path()?,
        capacity,
        format: facts
            .attr("volume/target/format", "type")
            .unwrap_or("raw")
            .to_string(),
    })
}

fn pool_path(pool: &StoragePool) -> CallResult<String> {
    let xml = pool.xml_desc(0)?;
    XmlFacts::parse(&xml)
        .and_then(|f| f.text("pool/target/path").map(str::to_string))
        .ok_or_else(|| Fail::Other("the pool's XML has no target path".into()))
}

fn lookup_pool(conn: &Connect, name: &str) -> CallResult<Option<StoragePool>> {
    found(
        conn.lookup_storage_pool_by_name(name),
        error_code::NO_STORAGE_POOL,
    )
}

fn require_pool(conn: &Connect, name: &str) -> CallResult<StoragePool> {
    lookup_pool(conn, name)?.ok_or_else(|| {
        Fail::Code(
            error_code::NO_STORAGE_POOL,
            format!("storage pool '{name}' not found"),
        )
    })
}

/// Refreshes a pool so volumes created or removed behind libvirt's back are seen. A pool busy
/// with another job refuses; that is not worth failing the lookup for.
fn refresh(pool: &StoragePool) -> CallResult<()> {
    match pool.refresh(0) {
        Ok(_) => Ok(()),
        Err(e) if is_connection_error(e.code().to_raw() as i32, e.domain().to_raw() as i32) => {
            Err(Fail::Virt(e))
        }
        Err(_) => Ok(()),
    }
}

fn check_xml_value(what: &str, value: &str) -> CallResult<()> {
    if value.chars().all(domain_xml::is_xml_char) {
        Ok(())
    } else {
        Err(Fail::Other(format!(
            "{what} contains a character XML cannot carry"
        )))
    }
}

fn pool_xml(name: &str, path: &str) -> CallResult<String> {
    check_xml_value("pool name", name)?;
    check_xml_value("pool path", path)?;
    domain_xml::write_document(|w| {
        start(w, "pool", &[("type", "dir")])?;
        text_elem(w, "name", &[], name)?;
        start(w, "target", &[])?;
        text_elem(w, "path", &[], path)?;
        end(w, "target")?;
        end(w, "pool")
    })
    .map_err(|e| Fail::Other(e.to_string()))
}

fn overlay_xml(name: &str, backing: &VolumeInfo, capacity: u64) -> CallResult<String> {
    check_xml_value("volume name", name)?;
    check_xml_value("backing path", &backing.path)?;
    check_xml_value("backing format", &backing.format)?;
    let capacity = capacity.max(backing.capacity).to_string();
    domain_xml::write_document(|w| {
        start(w, "volume", &[])?;
        text_elem(w, "name", &[], name)?;
        text_elem(w, "capacity", &[("unit", "bytes")], &capacity)?;
        start(w, "target", &[])?;
        empty_elem(w, "format", &[("type", "qcow2")])?;
        end(w, "target")?;
        start(w, "backingStore", &[])?;
        text_elem(w, "path", &[], &backing.path)?;
        empty_elem(w, "format", &[("type", &backing.format)])?;
        end(w, "backingStore")?;
        end(w, "volume")
    })
    .map_err(|e| Fail::Other(e.to_string()))
}

/// A standalone qcow2 volume of `capacity` bytes (the target of a copy).
fn copy_xml(name: &str, capacity: u64) -> CallResult<String> {
    check_xml_value("volume name", name)?;
    let capacity = capacity.to_string();
    domain_xml::write_document(|w| {
        start(w, "volume", &[])?;
        text_elem(w, "name", &[], name)?;
        text_elem(w, "capacity", &[("unit", "bytes")], &capacity)?;
        start(w, "target", &[])?;
        empty_elem(w, "format", &[("type", "qcow2")])?;
        end(w, "target")?;
        end(w, "volume")
    })
    .map_err(|e| Fail::Other(e.to_string()))
}

/// The guest OS's pretty name from the agent (`virDomainGetGuestInfo`, which the virt crate does
/// not wrap), `None` when it does not say.
fn guest_os(dom: &Domain) -> Option<String> {
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: libvirt fills `params` with `n` typed parameters that we free below; the domain
    // pointer is valid for the life of `dom`.
    let rc = unsafe {
        sys::virDomainGetGuestInfo(
            dom.as_ptr(),
            sys::VIR_DOMAIN_GUEST_INFO_OS,
            &mut params,
            &mut n,
            0,
        )
    };
    if rc < 0 {
        return None;
    }
    let mut value: *const std::os::raw::c_char = std::ptr::null();
    // SAFETY: `params`/`n` come from libvirt; the returned string points into `params` and is
    // copied before they are freed.
    let os = unsafe {
        let found = sys::virTypedParamsGetString(
            params,
            n,
            sys::VIR_DOMAIN_GUEST_INFO_OS_PRETTY_NAME.as_ptr(),
            &mut value,
        );
        let os = (found == 1 && !value.is_null()).then(|| {
            std::ffi::CStr::from_ptr(value)
                .to_string_lossy()
                .into_owned()
        });
        sys::virTypedParamsFree(params, n);
        os
    };
    os.filter(|s| !s.is_empty())
}

fn raw_volume_xml(name: &str, capacity: u64) -> CallResult<String> {
    check_xml_value("volume name", name)?;
    domain_xml::write_document(|w| {
        start(w, "volume", &[])?;
        text_elem(w, "name", &[], name)?;
        text_elem(w, "capacity", &[("unit", "bytes")], &capacity.to_string())?;
        text_elem(w, "allocation", &[("unit", "bytes")], "0")?;
        start(w, "target", &[])?;
        empty_elem(w, "format", &[("type", "raw")])?;
        end(w, "target")?;
        end(w, "volume")
    })
    .map_err(|e| Fail::Other(e.to_string()))
}

/// Send every chunk of `source` into `vol` over a new stream; abort the stream on any failure.
fn upload(conn: &Connect, vol: &StorageVol, source: UploadSource) -> CallResult<()> {
    let stream = Stream::new(conn, 0)?;
    if let Err(e) = vol.upload(&stream, 0, 0, 0) {
        let _ = stream.abort();
        return Err(Fail::Virt(e));
    }
    for chunk in source {
        let sent = chunk.map_err(Fail::Other).and_then(|c| {
            let mut rest = c.as_slice();
            while !rest.is_empty() {
                let n = stream.send(rest)?;
                let n = usize::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Fail::Other("the upload stream accepted no data".into()))?;
                rest = &rest[n.min(rest.len())..];
            }
            Ok(())
        });
        if let Err(e) = sent {
            let _ = stream.abort();
            return Err(e);
        }
    }
    stream.finish()?;
    Ok(())
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
        self.call("host_info", host_info).await
    }

    async fn ping(&self) -> HvResult<()> {
        self.call("ping", |conn| {
            conn.lib_version().map(|_| ()).map_err(Fail::Virt)
        })
        .await
    }

    async fn list_domains(&self) -> HvResult<Vec<DomainInfo>> {
        self.call("list_domains", |conn| {
            let mut out = Vec::new();
            for dom in conn.list_all_domains(0)? {
                match domain_info(&dom) {
                    Ok(info) => out.push(info),
                    // Gone between the listing and the look (a transient domain stopped).
                    Err(f) if is_code(&f, error_code::NO_DOMAIN) => {}
                    Err(f) => return Err(f),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn lookup_domain(&self, uuid: &str) -> HvResult<Option<DomainInfo>> {
        let uuid = uuid.to_string();
        self.call("lookup_domain", move |conn| {
            match lookup_dom(conn, &uuid)? {
                None => Ok(None),
                Some(dom) => match domain_info(&dom) {
                    Ok(info) => Ok(Some(info)),
                    Err(f) if is_code(&f, error_code::NO_DOMAIN) => Ok(None),
                    Err(f) => Err(f),
                },
            }
        })
        .await
    }

    async fn define_domain(&self, xml: &str) -> HvResult<()> {
        let xml = xml.to_string();
        self.call("define_domain", move |conn| {
            conn.define_domain_xml(&xml)?;
            Ok(())
        })
        .await
    }

    async fn start_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("start_domain", move |conn| {
            let dom = lookup_dom(conn, &uuid)?.ok_or_else(|| not_found_domain(&uuid))?;
            if dom.is_active()? {
                return Ok(());
            }
            match dom.create() {
                Ok(_) => Ok(()),
                // Started by someone else meanwhile.
                Err(e)
                    if e.code().to_raw() as i32 == error_code::OPERATION_INVALID
                        && dom.is_active().unwrap_or(false) =>
                {
                    Ok(())
                }
                Err(e) => Err(Fail::Virt(e)),
            }
        })
        .await
    }

    async fn shutdown_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("shutdown_domain", move |conn| {
            let dom = lookup_dom(conn, &uuid)?.ok_or_else(|| not_found_domain(&uuid))?;
            if !dom.is_active()? {
                return Ok(());
            }
            // The guest agent when it answers (a clean shutdown from inside), else the ACPI power
            // button: libvirt tries them in that order.
            let flagged = dom.shutdown_flags(
                sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN,
            );
            // A driver that does not know these flags (libvirt's test driver) gets the plain
            // request, which is its default method.
            let result = match flagged {
                Err(e)
                    if matches!(
                        e.code().to_raw() as i32,
                        VIR_ERR_INVALID_ARG | VIR_ERR_NO_SUPPORT | VIR_ERR_ARGUMENT_UNSUPPORTED
                    ) =>
                {
                    dom.shutdown().map(|_| ())
                }
                other => other.map(|_| ()),
            };
            match result {
                Ok(_) => Ok(()),
                Err(e)
                    if e.code().to_raw() as i32 == error_code::OPERATION_INVALID
                        && !dom.is_active().unwrap_or(true) =>
                {
                    Ok(())
                }
                Err(e) => Err(Fail::Virt(e)),
            }
        })
        .await
    }

    async fn destroy_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("destroy_domain", move |conn| {
            let Some(dom) = lookup_dom(conn, &uuid)? else {
                return Ok(());
            };
            match dom.destroy() {
                Ok(_) => Ok(()),
                Err(e) => {
                    let code = e.code().to_raw() as i32;
                    // Not running, or gone (a transient domain disappears when destroyed).
                    if code == error_code::NO_DOMAIN
                        || (code == error_code::OPERATION_INVALID
                            && !dom.is_active().unwrap_or(true))
                    {
                        Ok(())
                    } else {
                        Err(Fail::Virt(e))
                    }
                }
            }
        })
        .await
    }

    async fn undefine_domain(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("undefine_domain", move |conn| {
            let Some(dom) = lookup_dom(conn, &uuid)? else {
                return Ok(());
            };
            match dom.is_persistent() {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(e) if e.code().to_raw() as i32 == error_code::NO_DOMAIN => return Ok(()),
                Err(e) => return Err(Fail::Virt(e)),
            }
            // Not every driver knows every flag (the test driver refuses NVRAM and
            // CHECKPOINTS_METADATA): fall back to fewer.
            let all = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
            let basic =
                sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
            let mut last = None;
            for flags in [all, basic, 0] {
                match dom.undefine_flags(flags) {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        let code = e.code().to_raw() as i32;
                        if code == error_code::NO_DOMAIN {
                            return Ok(());
                        }
                        if !matches!(
                            code,
                            VIR_ERR_INVALID_ARG | VIR_ERR_NO_SUPPORT | VIR_ERR_ARGUMENT_UNSUPPORTED
                        ) {
                            return Err(Fail::Virt(e));
                        }
                        last = Some(e);
                    }
                }
            }
            Err(last
                .map(Fail::Virt)
                .unwrap_or_else(|| Fail::Other("undefine failed with every set of flags".into())))
        })
        .await
    }

    async fn ensure_pool(&self, pool: &str, path: Option<&str>) -> HvResult<String> {
        let name = pool.to_string();
        let path = path.map(str::to_string);
        self.call("ensure_pool", move |conn| {
            let pool = match lookup_pool(conn, &name)? {
                Some(p) => p,
                None => {
                    let Some(path) = &path else {
                        return Err(Fail::Code(
                            error_code::NO_STORAGE_POOL,
                            format!("storage pool '{name}' not found and no path to create it"),
                        ));
                    };
                    let xml = pool_xml(&name, path)?;
                    match conn.define_storage_pool_xml(&xml, 0) {
                        Ok(p) => {
                            // Creates the directory if it is missing; harmless if it exists.
                            p.build(0)?;
                            p.set_autostart(true)?;
                            p
                        }
                        // Defined concurrently by another client.
                        Err(e) => match lookup_pool(conn, &name)? {
                            Some(p) => p,
                            None => return Err(Fail::Virt(e)),
                        },
                    }
                }
            };
            // Started concurrently by another client if create fails but the pool is active.
            if !pool.is_active()?
                && let Err(e) = pool.create(0)
                && !pool.is_active().unwrap_or(false)
            {
                return Err(Fail::Virt(e));
            }
            pool_path(&pool)
        })
        .await
    }

    async fn lookup_volume(&self, pool: &str, name: &str) -> HvResult<Option<VolumeInfo>> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("lookup_volume", move |conn| {
            let pool = require_pool(conn, &pool)?;
            refresh(&pool)?;
            match found(
                pool.lookup_storage_vol_by_name(&name),
                error_code::NO_STORAGE_VOL,
            )? {
                None => Ok(None),
                Some(vol) => volume_info(&vol).map(Some),
            }
        })
        .await
    }

    async fn create_overlay(
        &self,
        pool: &str,
        name: &str,
        backing: &VolumeInfo,
        capacity: u64,
    ) -> HvResult<VolumeInfo> {
        let (pool, name, backing) = (pool.to_string(), name.to_string(), backing.clone());
        self.call("create_overlay", move |conn| {
            let pool = require_pool(conn, &pool)?;
            let xml = overlay_xml(&name, &backing, capacity)?;
            let vol = StorageVol::create_xml(&pool, &xml, 0)?;
            volume_info(&vol)
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
        self.call("clone_volume", move |conn| {
            let pool = require_pool(conn, &pool)?;
            let from = pool.lookup_storage_vol_by_name(&source.name)?;
            // Checked first so that the clean-up below only ever removes what this call made.
            if found(
                pool.lookup_storage_vol_by_name(&name),
                error_code::NO_STORAGE_VOL,
            )?
            .is_some()
            {
                return Err(Fail::Code(
                    error_code::STORAGE_VOL_EXIST,
                    format!("storage volume {name:?} exists already"),
                ));
            }
            let xml = copy_xml(&name, source.capacity)?;
            match StorageVol::create_xml_from(&pool, &xml, &from, 0) {
                Ok(vol) => volume_info(&vol),
                Err(e) => {
                    // libvirt removes a failed copy itself; make sure.
                    if let Ok(Some(v)) = found(
                        pool.lookup_storage_vol_by_name(&name),
                        error_code::NO_STORAGE_VOL,
                    ) && let Err(err) = v.delete(0)
                    {
                        tracing::warn!(volume = %name, error = %err, "could not remove a failed copy");
                    }
                    Err(e.into())
                }
            }
        })
        .await
    }

    async fn guest_info(&self, uuid: &str) -> HvResult<Option<GuestInfo>> {
        let uuid = uuid.to_string();
        self.call("guest_info", move |conn| {
            let Some(dom) = lookup_dom(conn, &uuid)? else {
                return Ok(None);
            };
            if !dom.is_active()? {
                return Ok(None);
            }
            let ifaces =
                match dom.interface_addresses(sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT, 0) {
                    Ok(i) => i,
                    Err(e)
                        if is_connection_error(
                            e.code().to_raw() as i32,
                            e.domain().to_raw() as i32,
                        ) =>
                    {
                        return Err(Fail::Virt(e));
                    }
                    // No agent, or not answering yet.
                    Err(_) => return Ok(None),
                };
            let mut interfaces: Vec<GuestInterface> = ifaces
                .into_iter()
                .filter_map(|i| {
                    let mac = i.hwaddr?.to_ascii_lowercase();
                    if mac == "00:00:00:00:00:00" {
                        return None;
                    }
                    let mut addrs: Vec<(i64, String)> =
                        i.addrs.into_iter().map(|a| (a.typed, a.addr)).collect();
                    // VIR_IP_ADDR_TYPE_IPV4 = 0 sorts first.
                    addrs.sort();
                    Some(GuestInterface {
                        name: i.name,
                        mac,
                        addresses: addrs.into_iter().map(|(_, a)| a).collect(),
                    })
                })
                .collect();
            interfaces.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Some(GuestInfo {
                os: guest_os(&dom),
                interfaces,
            }))
        })
        .await
    }

    async fn upload_volume(
        &self,
        pool: &str,
        name: &str,
        capacity: u64,
        source: UploadSource,
    ) -> HvResult<VolumeInfo> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("upload_volume", move |conn| {
            let pool = require_pool(conn, &pool)?;
            let xml = raw_volume_xml(&name, capacity)?;
            let vol = StorageVol::create_xml(&pool, &xml, 0)?;
            let uploaded = upload(conn, &vol, source).and_then(|()| {
                refresh(&pool)?;
                let vol = pool.lookup_storage_vol_by_name(&name)?;
                volume_info(&vol)
            });
            if uploaded.is_err()
                && let Err(e) = vol.delete(0)
            {
                tracing::warn!(volume = %name, error = %e, "could not remove a failed upload");
            }
            uploaded
        })
        .await
    }

    async fn delete_volume(&self, pool: &str, name: &str) -> HvResult<()> {
        let (pool, name) = (pool.to_string(), name.to_string());
        self.call("delete_volume", move |conn| {
            let Some(pool) = lookup_pool(conn, &pool)? else {
                return Ok(());
            };
            refresh(&pool)?;
            let Some(vol) = found(
                pool.lookup_storage_vol_by_name(&name),
                error_code::NO_STORAGE_VOL,
            )?
            else {
                return Ok(());
            };
            match vol.delete(0) {
                Ok(_) => Ok(()),
                Err(e) if e.code().to_raw() as i32 == error_code::NO_STORAGE_VOL => Ok(()),
                Err(e) => Err(Fail::Virt(e)),
            }
        })
        .await
    }

    async fn migrate(&self, uuid: &str, req: &MigrationRequest) -> HvResult<()> {
        let uuid = uuid.to_string();
        let req = req.clone();
        let timeout = req.timeout;
        self.call_for("migrate", timeout, move |conn| {
            let dom = lookup_dom(conn, &uuid)?.ok_or_else(|| not_found_domain(&uuid))?;
            let (params, flags) = migration_parameters(&req);
            dom.migrate_to_uri3(Some(&req.destination_uri), params, flags)?;
            Ok(())
        })
        .await
    }

    async fn job_progress(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        let uuid = uuid.to_string();
        self.call("job_progress", move |conn| {
            let Some(dom) = lookup_dom(conn, &uuid)? else {
                return Ok(None);
            };
            job_stats(&dom, 0)
        })
        .await
    }

    async fn completed_job(&self, uuid: &str) -> HvResult<Option<JobProgress>> {
        let uuid = uuid.to_string();
        self.call("completed_job", move |conn| {
            let Some(dom) = lookup_dom(conn, &uuid)? else {
                return Ok(None);
            };
            job_stats(&dom, sys::VIR_DOMAIN_JOB_STATS_COMPLETED)
        })
        .await
    }

    async fn abort_job(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("abort_job", move |conn| {
            let Some(dom) = lookup_dom(conn, &uuid)? else {
                return Ok(());
            };
            // SAFETY: `dom` is a valid domain handle for the duration of the call.
            let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
            if rc < 0 {
                let e = virt::error::Error::last_error();
                // No job to abort (it ended meanwhile) is success.
                if e.code().to_raw() as i32 == error_code::OPERATION_INVALID {
                    return Ok(());
                }
                return Err(Fail::Virt(e));
            }
            Ok(())
        })
        .await
    }

    async fn set_migration_max_downtime(&self, uuid: &str, ms: u64) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("set_migration_max_downtime", move |conn| {
            let dom = lookup_dom(conn, &uuid)?.ok_or_else(|| not_found_domain(&uuid))?;
            dom.migrate_set_max_downtime(ms, 0)?;
            Ok(())
        })
        .await
    }

    async fn start_post_copy(&self, uuid: &str) -> HvResult<()> {
        let uuid = uuid.to_string();
        self.call("start_post_copy", move |conn| {
            let dom = lookup_dom(conn, &uuid)?.ok_or_else(|| not_found_domain(&uuid))?;
            // SAFETY: `dom` is a valid domain handle for the duration of the call.
            let rc = unsafe { sys::virDomainMigrateStartPostCopy(dom.as_ptr(), 0) };
            if rc < 0 {
                return Err(Fail::Virt(virt::error::Error::last_error()));
            }
            Ok(())
        })
        .await
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

/// libvirt parameters and flags for a migration request: live, peer to peer, persistent on the
/// destination, undefined on the source, aborted on I/O errors, and no configuration changes
/// while it runs.
fn migration_parameters(req: &MigrationRequest) -> (virt::domain::MigrateParameters, u32) {
    let mut flags = sys::VIR_MIGRATE_LIVE
        | sys::VIR_MIGRATE_PEER2PEER
        | sys::VIR_MIGRATE_PERSIST_DEST
        | sys::VIR_MIGRATE_UNDEFINE_SOURCE
        | sys::VIR_MIGRATE_ABORT_ON_ERROR
        | sys::VIR_MIGRATE_CHANGE_PROTECTION;
    let mut params = virt::domain::MigrateParameters {
        bandwidth: req.bandwidth_mib,
        ..Default::default()
    };
    match req.storage {
        // libvirt 9 cannot tell that a plain directory is shared and refuses without UNSAFE.
        StorageMode::Shared => flags |= sys::VIR_MIGRATE_UNSAFE,
        StorageMode::CopyIncremental => {
            flags |= sys::VIR_MIGRATE_NON_SHARED_INC;
            params.migrate_disks = req.copy_disks.clone();
        }
        StorageMode::CopyFull => {
            flags |= sys::VIR_MIGRATE_NON_SHARED_DISK;
            params.migrate_disks = req.copy_disks.clone();
        }
    }
    if req.auto_converge {
        flags |= sys::VIR_MIGRATE_AUTO_CONVERGE;
    }
    if req.post_copy {
        flags |= sys::VIR_MIGRATE_POSTCOPY;
    }
    (params, flags)
}

/// A domain's job statistics (`flags` 0: the running job; COMPLETED: the last finished one).
fn job_stats(dom: &Domain, flags: u32) -> CallResult<Option<JobProgress>> {
    // Not `Domain::job_stats`: virt 0.5 builds a Vec from libvirt's NULL array when the domain
    // has no job, which aborts the process.
    let mut job_type: c_int = 0;
    let mut nparams: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    // SAFETY: `dom` is a valid handle; libvirt fills the out-pointers.
    let rc = unsafe {
        sys::virDomainGetJobStats(
            dom.as_ptr(),
            &mut job_type,
            &mut params,
            &mut nparams,
            flags,
        )
    };
    if rc < 0 {
        let e = virt::error::Error::last_error();
        if e.code().to_raw() as i32 == error_code::NO_DOMAIN {
            return Ok(None);
        }
        return Err(Fail::Virt(e));
    }
    let list = if params.is_null() || nparams <= 0 {
        Vec::new()
    } else {
        // SAFETY: libvirt allocated `nparams` parameters at `params` with malloc, which is the
        // allocator Rust uses here; the Vec takes ownership as virt itself does.
        unsafe { Vec::from_raw_parts(params, nparams as usize, nparams as usize) }
    };
    let stats: virt::domain::JobStats = (job_type, list).into();
    if stats.r#type == sys::VIR_DOMAIN_JOB_NONE as i32 {
        return Ok(None);
    }
    Ok(Some(JobProgress {
        elapsed_ms: stats.time_elapsed.unwrap_or(0),
        data_total: stats.data_total.unwrap_or(0),
        data_processed: stats.data_processed.unwrap_or(0),
        data_remaining: stats.data_remaining.unwrap_or(0),
        memory_dirty_rate: stats.mem_dirty_rate.unwrap_or(0),
        memory_iteration: stats.mem_iteration.unwrap_or(0),
        downtime_ms: stats.downtime,
        success: stats.success,
        error: stats.error_message,
    }))
}

fn not_found_domain(uuid: &str) -> Fail {
    Fail::Code(error_code::NO_DOMAIN, format!("no domain with UUID {uuid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_code_and_domain() {
        // Refused / no route / EOF / broken pipe / keepalive: all from the RPC layer.
        assert!(is_connection_error(VIR_ERR_SYSTEM_ERROR, VIR_FROM_RPC));
        assert!(is_connection_error(VIR_ERR_INTERNAL_ERROR, VIR_FROM_RPC));
        assert!(is_connection_error(VIR_ERR_SYSTEM_ERROR, VIR_FROM_REMOTE));
        assert!(is_connection_error(VIR_ERR_NO_CONNECT, 0));
        assert!(is_connection_error(VIR_ERR_INVALID_CONN, 0));
        assert!(is_connection_error(VIR_ERR_GNUTLS_ERROR, VIR_FROM_RPC));
        // A storage driver failing a syscall, a missing domain, a QEMU error: the host answered.
        assert!(!is_connection_error(VIR_ERR_SYSTEM_ERROR, 18));
        assert!(!is_connection_error(error_code::NO_DOMAIN, 10));
        assert!(!is_connection_error(VIR_ERR_INTERNAL_ERROR, 10));
        assert!(!is_connection_error(error_code::OPERATION_INVALID, 10));
    }

    #[test]
    fn credential_failures_say_what_to_fix() {
        let cases = [
            // The host rejected the client certificate (lab: a client cert from another CA).
            (
                38,
                "Unable to read TLS confirmation: Input/output error",
                Some("rejected ferry's TLS client certificate"),
            ),
            // The host's certificate is not signed by cacert.pem.
            (
                45,
                "authentication failed: Failed to verify peer's certificate",
                Some("host's TLS certificate was rejected"),
            ),
            (
                38,
                "Our own certificate /p/clientcert.pem failed validation against /p/cacert.pem: The certificate hasn't got a known issuer.",
                Some("clientcert.pem is not signed"),
            ),
            (
                38,
                "Cannot read CA certificate '/p/cacert.pem': No such file or directory",
                Some("missing or unreadable"),
            ),
            (
                38,
                "Cannot recv data: Warning: Identity file /k not accessible: No such file or directory.",
                Some("missing or unreadable"),
            ),
            (
                38,
                "Cannot recv data: Host key verification failed.: Connection reset by peer",
                Some("SSH host key"),
            ),
            (
                45,
                "authentication failed: error while reading private key '/k'",
                Some("missing or unreadable"),
            ),
            (
                45,
                "authentication failed: !!! SSH HOST KEY VERIFICATION FAILED !!!: Identity of host '10.0.0.1:22' differs from stored identity. Please verify the new host key",
                Some("SSH host key"),
            ),
            (
                85,
                "libssh transport error: SSH host key for '10.0.0.1' (77:01) was not accepted",
                Some("SSH host key"),
            ),
            (
                85,
                "libssh transport error: failed to authenticate: Access denied for 'publickey'. Authentication that can continue: publickey",
                Some("refused the SSH key"),
            ),
            (
                38,
                "Cannot recv data: root@10.0.0.1: Permission denied (publickey,password).: Connection reset by peer",
                Some("refused the SSH key"),
            ),
            (
                45,
                "authentication failed: no agent",
                Some("refused ferry's credentials"),
            ),
            // Reachability, not credentials.
            (
                38,
                "unable to connect to server at '10.0.0.1:16514': No route to host",
                None,
            ),
            (
                38,
                "unable to connect to server at '10.0.0.1:16514': Connection refused",
                None,
            ),
        ];
        for (code, message, want) in cases {
            let got = credentials_problem(code, message);
            match want {
                Some(w) => assert!(got.is_some_and(|g| g.contains(w)), "{message}: {got:?}"),
                None => assert_eq!(got, None, "{message}"),
            }
        }
    }

    #[test]
    fn states_and_reasons_map() {
        assert_eq!(map_state(1, 1), DomainState::Running);
        assert_eq!(map_state(2, 0), DomainState::Running);
        assert_eq!(map_state(3, 2), DomainState::Paused);
        assert_eq!(map_state(4, 1), DomainState::ShuttingDown);
        assert_eq!(
            map_state(5, 1),
            DomainState::ShutOff(ShutOffReason::Shutdown)
        );
        assert_eq!(
            map_state(5, 2),
            DomainState::ShutOff(ShutOffReason::Destroyed)
        );
        assert_eq!(
            map_state(5, 3),
            DomainState::ShutOff(ShutOffReason::Crashed)
        );
        assert_eq!(
            map_state(5, 4),
            DomainState::ShutOff(ShutOffReason::Migrated)
        );
        assert_eq!(map_state(5, 5), DomainState::ShutOff(ShutOffReason::Saved));
        assert_eq!(map_state(5, 6), DomainState::ShutOff(ShutOffReason::Failed));
        assert_eq!(map_state(5, 7), DomainState::ShutOff(ShutOffReason::Other));
        assert_eq!(
            map_state(5, 8),
            DomainState::ShutOff(ShutOffReason::Crashed)
        );
        assert_eq!(map_state(5, 0), DomainState::ShutOff(ShutOffReason::Other));
        assert_eq!(map_state(6, 0), DomainState::Crashed);
        assert_eq!(map_state(7, 0), DomainState::PmSuspended);
        assert_eq!(map_state(0, 0), DomainState::Unknown);
        assert_eq!(map_state(99, 0), DomainState::Unknown);
    }

    #[test]
    fn versions_format_as_major_minor_micro() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(7_002_022), "7.2.22");
    }

    #[test]
    fn kvm_needs_a_kvm_domain_and_hardware_virtualisation() {
        let caps = |host_features: &str, domains: &str, arch: &str| {
            format!(
                "<capabilities><host><cpu><arch>x86_64</arch><model>Broadwell</model>\
                 <feature name='vme'/>{host_features}</cpu></host>\
                 <guest><os_type>hvm</os_type><arch name='i686'><domain type='kvm'/></arch></guest>\
                 <guest><os_type>hvm</os_type><arch name='{arch}'><wordsize>64</wordsize>\
                 <domain type='qemu'/>{domains}</arch>\
                 <features><feature name='vmx'/></features></guest></capabilities>"
            )
        };
        let kvm = "<domain type='kvm'/>";
        let vmx = "<feature name='vmx'/>";
        let svm = "<feature name='svm'/>";
        assert!(capabilities_offer_kvm(&caps(vmx, kvm, "x86_64")));
        assert!(capabilities_offer_kvm(&caps(svm, kvm, "x86_64")));
        // /dev/kvm without VT-x/AMD-V (kvm_pvm), as on the lab machines: TCG only.
        assert!(!capabilities_offer_kvm(&caps("", kvm, "x86_64")));
        assert!(!capabilities_offer_kvm(&caps(vmx, "", "x86_64")));
        assert!(!capabilities_offer_kvm(&caps(vmx, kvm, "aarch64")));
        assert!(!capabilities_offer_kvm("<capabilities><guest>"));
        assert!(!capabilities_offer_kvm("not xml <"));
    }

    #[test]
    fn storage_xml_is_escaped() {
        let xml = pool_xml("p<&>'\"", "/srv/a b&c").unwrap_or_default();
        let facts = XmlFacts::parse(&xml).expect("well-formed");
        assert_eq!(facts.text("pool/name"), Some("p<&>'\""));
        assert_eq!(facts.text("pool/target/path"), Some("/srv/a b&c"));
        assert_eq!(facts.attr("pool", "type"), Some("dir"));

        let backing = VolumeInfo {
            name: "g".into(),
            path: "/srv/golden <1>.qcow2".into(),
            capacity: 1000,
            format: "qcow2".into(),
        };
        let xml = overlay_xml("vm&1.qcow2", &backing, 10).unwrap_or_default();
        let facts = XmlFacts::parse(&xml).expect("well-formed");
        assert_eq!(facts.text("volume/name"), Some("vm&1.qcow2"));
        assert_eq!(facts.text("volume/capacity"), Some("1000"));
        assert_eq!(facts.attr("volume/capacity", "unit"), Some("bytes"));
        assert_eq!(facts.attr("volume/target/format", "type"), Some("qcow2"));
        assert_eq!(
            facts.text("volume/backingStore/path"),
            Some("/srv/golden <1>.qcow2")
        );
        assert_eq!(
            facts.attr("volume/backingStore/format", "type"),
            Some("qcow2")
        );
        assert!(pool_xml("a\0b", "/x").is_err());
    }
}
