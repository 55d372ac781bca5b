//! The thread that owns one libvirt connection, the state it shares with its handle, and
//! libvirt's process-wide event loop.

use std::ffi::c_void;
use std::os::raw::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The body of a connection's thread: open the connection (answering on `ready`), then run the
/// calls that arrive on `rx` one at a time until the handle closes it or goes away.
pub(super) fn connection_thread(
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
