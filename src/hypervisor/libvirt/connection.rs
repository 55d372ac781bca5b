//! The thread that owns one libvirt connection, the state it shares with its handle, and
//! libvirt's process-wide event loop.

use std::ffi::c_void;
use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;
use virt::connect::Connect;
use virt::sys;

use super::errors::{VIR_ERR_NO_SUPPORT, credentials_problem};
use super::events::{CloseCallback, LifecycleEvents};
use crate::hypervisor::{CallObserver, HvResult, HypervisorError};

/// A closure run on the connection thread.
pub(super) type Job = Box<dyn FnOnce(&Connect) + Send>;

/// What the handle sends its thread.
pub(super) enum Msg {
    Job(Job),
    Close(oneshot::Sender<()>),
}

/// State shared by the handle, its thread and libvirt's close callback.
pub(super) struct Shared {
    pub(super) uri: String,
    pub(super) lost: AtomicBool,
    /// Set when ferry closed the connection itself: not a loss to report.
    pub(super) closed_by_ferry: AtomicBool,
    pub(super) reason: Mutex<String>,
    /// Told when the host side ends the connection.
    pub(super) observer: Option<Arc<dyn CallObserver>>,
}

impl Shared {
    /// The connection is gone because of the host or the network (keepalive, EOF, a failed or
    /// timed-out call): remember why and tell the observer, once.
    pub(super) fn mark_lost(&self, reason: impl Into<String>) {
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
    pub(super) fn mark_closed(&self) {
        if !self.lost.load(Ordering::SeqCst) {
            self.closed_by_ferry.store(true, Ordering::SeqCst);
        }
        if !self.lost.swap(true, Ordering::SeqCst)
            && let Ok(mut r) = self.reason.lock()
        {
            *r = "connection closed by ferry".into();
        }
    }

    /// The error every call reports once the connection is gone.
    pub(super) fn lost_error(&self) -> HypervisorError {
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

/// The connection thread's name: `libvirt` and the start of the URI.
pub(super) fn thread_name(uri: &str) -> String {
    let short: String = uri.chars().take(40).collect();
    format!("libvirt {short}")
}

static LIBVIRT_INIT: OnceLock<Result<(), String>> = OnceLock::new();

/// Once per process: silence libvirt's default error printer, register its default event loop
/// implementation (needed for keepalive and the close callback of remote connections; it must be
/// registered before the first connection opens) and run it on a dedicated thread.
pub(super) fn init_libvirt() -> Result<(), String> {
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

/// The body of a connection's thread: open the connection (answering on `ready`), then hand the
/// calls that arrive on `rx` to at most `parallel` worker threads sharing the connection (libvirt
/// serves concurrent calls on one connection; each call and the read of its error stay on one
/// worker), until the handle closes it or goes away. Calls queued before the close still run.
pub(super) fn connection_thread(
    shared: Arc<Shared>,
    keepalive: Option<(i32, u32)>,
    parallel: usize,
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
    keep_alive(&conn, &shared.uri, keepalive);
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
    let lanes = Lanes::new(&conn, &shared.uri, keepalive, parallel.max(1));
    let ack = dispatch(&lanes, parallel.max(1), &rx);
    lanes.close();
    close(conn, &shared);
    if let Some(ack) = ack {
        let _ = ack.send(());
    }
}

/// Calls libvirtd serves at once for one client connection: its `max_client_requests`, 5 unless
/// the host's `libvirtd.conf` (or `virtqemud.conf`) says otherwise. Further calls on the same
/// connection wait in the daemon, so workers beyond this many use another connection.
const CALLS_PER_CONNECTION: usize = 5;

/// The connections a host's workers share: the first (which carries keepalive, the close
/// callback and the lifecycle events) for the first [`CALLS_PER_CONNECTION`] workers and, for
/// each further [`CALLS_PER_CONNECTION`], another connection to the same URI, opened by the
/// first worker that needs it (workers beyond the first five start only while that many calls
/// run at once, as in a failover's restarts; never in the steady state) and kept until the
/// handle closes. A lane that cannot be opened leaves its workers on the first connection; a
/// lane whose host goes away fails its call, which marks the whole handle lost.
struct Lanes<'c> {
    first: &'c Connect,
    uri: &'c str,
    keepalive: Option<(i32, u32)>,
    more: Vec<OnceLock<Option<Connect>>>,
}

impl<'c> Lanes<'c> {
    /// Lanes for `parallel` workers on `first`. libvirt's `test` driver keeps state per
    /// connection, so its URIs get no further lanes.
    fn new(
        first: &'c Connect,
        uri: &'c str,
        keepalive: Option<(i32, u32)>,
        parallel: usize,
    ) -> Self {
        Lanes {
            first,
            uri,
            keepalive,
            more: (0..further_lanes(uri, parallel))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The connection of worker `index` (counted from 0), opening its lane on first use.
    fn of_worker(&self, index: usize) -> &Connect {
        let lane = (index / CALLS_PER_CONNECTION)
            .checked_sub(1)
            .and_then(|i| self.more.get(i));
        match lane {
            None => self.first,
            Some(lane) => lane
                .get_or_init(|| open_lane(self.uri, self.keepalive))
                .as_ref()
                .unwrap_or(self.first),
        }
    }

    /// Closes the further lanes (the first connection is its owner's to close).
    fn close(self) {
        for lane in self.more {
            if let Some(Some(conn)) = lane.into_inner() {
                close_connection(conn, None, self.uri);
            }
        }
    }
}

/// How many connections besides the first `parallel` workers on `uri` use.
fn further_lanes(uri: &str, parallel: usize) -> usize {
    if uri.starts_with("test:") {
        0
    } else {
        parallel.div_ceil(CALLS_PER_CONNECTION).saturating_sub(1)
    }
}

/// Another connection to `uri`, with the same keepalive; `None` (logged) when it cannot be
/// opened.
fn open_lane(uri: &str, keepalive: Option<(i32, u32)>) -> Option<Connect> {
    let conn = match Connect::open(Some(uri)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(uri, error = %e, "cannot open another libvirt connection; calls share the first");
            return None;
        }
    };
    keep_alive(&conn, uri, keepalive);
    Some(conn)
}

/// Turn on libvirt's keepalive probes (`interval` seconds, `count` misses) on `conn`; a host
/// that does not support them is left without, others are logged.
fn keep_alive(conn: &Connect, uri: &str, keepalive: Option<(i32, u32)>) {
    if let Some((interval, count)) = keepalive
        && let Err(e) = conn.set_keep_alive(interval, count)
        && e.code().to_raw() as i32 != VIR_ERR_NO_SUPPORT
    {
        tracing::warn!(uri, error = %e, "cannot enable libvirt keepalive");
    }
}

/// Hand every call on `rx` to a worker, starting another (up to `parallel`) when every idle one
/// already has a call waiting for it; each worker uses its lane's connection.
/// Returns once the handle closes the connection (with its acknowledgement) or goes away, after
/// every worker has finished the calls it was given.
fn dispatch(
    lanes: &Lanes<'_>,
    parallel: usize,
    rx: &mpsc::Receiver<Msg>,
) -> Option<oneshot::Sender<()>> {
    let uri = lanes.uri;
    let (work_tx, work_rx) = mpsc::channel::<Job>();
    let work_rx = Mutex::new(work_rx);
    // Workers waiting for a call, and calls sent that no worker has taken yet.
    let (idle, waiting) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|scope| {
        let mut workers = 0;
        let ack = loop {
            match rx.recv() {
                Ok(Msg::Job(job)) => {
                    if waiting.load(Ordering::SeqCst) >= idle.load(Ordering::SeqCst)
                        && workers < parallel
                    {
                        // The worker opens its lane itself: the dispatcher never waits on one.
                        let (index, queue, idle, waiting) = (workers, &work_rx, &idle, &waiting);
                        let started = std::thread::Builder::new()
                            .name(thread_name(uri))
                            .spawn_scoped(scope, move || {
                                work(lanes.of_worker(index), uri, queue, idle, waiting)
                            });
                        match started {
                            Ok(_) => workers += 1,
                            // The workers already running take the call.
                            Err(e) if workers > 0 => {
                                tracing::warn!(uri, error = %e, "cannot start another libvirt worker")
                            }
                            Err(e) => {
                                tracing::error!(uri, error = %e, "cannot start a libvirt worker");
                                drop(job);
                                continue;
                            }
                        }
                    }
                    waiting.fetch_add(1, Ordering::SeqCst);
                    if work_tx.send(job).is_err() {
                        break None;
                    }
                }
                Ok(Msg::Close(ack)) => break Some(ack),
                Err(_) => break None,
            }
        };
        // The workers finish what they were given, see the queue closed and end; the scope
        // waits for them.
        drop(work_tx);
        ack
    })
}

/// One worker: run calls from the shared queue until it closes.
fn work(
    conn: &Connect,
    uri: &str,
    queue: &Mutex<mpsc::Receiver<Job>>,
    idle: &AtomicUsize,
    waiting: &AtomicUsize,
) {
    loop {
        idle.fetch_add(1, Ordering::SeqCst);
        let next = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => Err(mpsc::RecvError),
        };
        idle.fetch_sub(1, Ordering::SeqCst);
        let Ok(job) = next else {
            return;
        };
        waiting.fetch_sub(1, Ordering::SeqCst);
        if catch_unwind(AssertUnwindSafe(|| job(conn))).is_err() {
            tracing::error!(uri, "a libvirt call panicked");
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Runs `jobs` calls that each wait (at most 5 s) until `parallel` of them have run at once;
    /// returns the most that ran at once (every call answered).
    fn most_at_once(parallel: usize, jobs: usize) -> usize {
        let uri = "test:///default";
        let conn = Connect::open(Some(uri)).expect("libvirt's test driver");
        let (tx, rx) = mpsc::channel();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        for _ in 0..jobs {
            let (running, most, answered) = (running.clone(), most.clone(), answered.clone());
            let job: Job = Box::new(move |c: &Connect| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // A real call on the shared connection.
                if c.hostname().is_ok() {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                let until = Instant::now() + Duration::from_secs(5);
                while most.load(Ordering::SeqCst) < parallel && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                running.fetch_sub(1, Ordering::SeqCst);
            });
            tx.send(Msg::Job(job)).expect("queue");
        }
        drop(tx);
        let lanes = Lanes::new(&conn, uri, None, parallel);
        assert!(dispatch(&lanes, parallel, &rx).is_none());
        lanes.close();
        close_connection(conn, None, uri);
        assert_eq!(answered.load(Ordering::SeqCst), jobs);
        most.load(Ordering::SeqCst)
    }

    #[test]
    fn workers_beyond_what_libvirtd_serves_per_client_get_another_connection() {
        let uri = "qemu+tls://h1.example/system";
        assert_eq!(further_lanes(uri, 1), 0);
        assert_eq!(further_lanes(uri, CALLS_PER_CONNECTION), 0);
        assert_eq!(further_lanes(uri, CALLS_PER_CONNECTION + 1), 1);
        assert_eq!(further_lanes(uri, 8), 1);
        assert_eq!(further_lanes(uri, 3 * CALLS_PER_CONNECTION), 2);
        // The test driver's state is per connection: one connection only.
        assert_eq!(further_lanes("test:///default", 8), 0);
    }

    #[test]
    fn calls_run_side_by_side_up_to_the_limit() {
        assert_eq!(most_at_once(4, 7), 4);
        assert_eq!(most_at_once(1, 3), 1);
    }

    #[test]
    fn a_close_waits_for_the_calls_sent_before_it() {
        let uri = "test:///default";
        let conn = Connect::open(Some(uri)).expect("libvirt's test driver");
        let (tx, rx) = mpsc::channel();
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            let done = done.clone();
            let job: Job = Box::new(move |_: &Connect| {
                std::thread::sleep(Duration::from_millis(20));
                done.fetch_add(1, Ordering::SeqCst);
            });
            tx.send(Msg::Job(job)).expect("queue");
        }
        let (ack, _acked) = oneshot::channel();
        tx.send(Msg::Close(ack)).expect("queue");
        assert!(dispatch(&Lanes::new(&conn, uri, None, 3), 3, &rx).is_some());
        assert_eq!(done.load(Ordering::SeqCst), 5);
        close_connection(conn, None, uri);
    }
}
