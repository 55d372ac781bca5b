//! A domain's consoles over libvirt: the serial console as a non-blocking libvirt stream relayed
//! on the connection's own thread (woken by libvirt's stream events), the VNC display as the
//! socket `virDomainOpenGraphicsFD` returns.
//!
//! `virt` 0.5's `Stream` keeps a pointer to itself for its event callback and panics in `Drop`
//! when libvirt reports an error, so the stream is handled through `virt::sys` here.

use std::ffi::c_void;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int};
use std::sync::mpsc;

use virt::connect::Connect;
use virt::sys;

use super::errors::{CallResult, Fail, lookup_dom, not_found_domain};

/// What wakes the relay: libvirt's stream events and the other side's input.
pub(super) enum Wake {
    /// The stream has data (reading is paused until the relay drained it).
    Readable,
    /// The stream takes data again (after a send that would have blocked).
    Writable,
    /// The stream failed or the guest side hung up.
    Ended,
    /// Bytes to send to the guest.
    Input(Vec<u8>),
    /// The other side closed the session.
    Closed,
}

/// A libvirt stream, freed on drop.
pub(super) struct RawStream(sys::virStreamPtr);

// SAFETY: libvirt streams are internally locked objects usable from any thread; ferry uses each
// from one thread at a time (its relay), plus libvirt's event thread for the callback.
unsafe impl Send for RawStream {}

impl Drop for RawStream {
    fn drop(&mut self) {
        // SAFETY: the pointer is owned by this value; removing a callback that was never added,
        // or aborting a finished stream, only fails harmlessly.
        unsafe {
            sys::virStreamEventRemoveCallback(self.0);
            sys::virStreamAbort(self.0);
            sys::virStreamFree(self.0);
            sys::virResetLastError();
        }
    }
}

/// Opens the serial console of domain `uuid` as a non-blocking stream, taking it over from any
/// other session (`VIR_DOMAIN_CONSOLE_FORCE`: that one ends).
pub(super) fn open_serial(conn: &Connect, uuid: &str) -> CallResult<RawStream> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    // SAFETY: valid connection; a null result is an error reported in this thread's slot.
    let ptr = unsafe { sys::virStreamNew(conn.as_ptr(), sys::VIR_STREAM_NONBLOCK) };
    if ptr.is_null() {
        return Err(Fail::Virt(virt::error::Error::last_error()));
    }
    let stream = RawStream(ptr);
    // SAFETY: valid domain and stream; a null device name means the domain's first console.
    let ret = unsafe {
        sys::virDomainOpenConsole(
            dom.as_ptr(),
            std::ptr::null(),
            stream.0,
            sys::VIR_DOMAIN_CONSOLE_FORCE,
        )
    };
    if ret < 0 {
        return Err(Fail::Virt(virt::error::Error::last_error()));
    }
    Ok(stream)
}

/// A socket connected to the VNC server of domain `uuid` (its first graphics device), past VNC
/// authentication. libvirt can hand a socket over only on a connection that passes file
/// descriptors: a local unix socket, not TCP, TLS or SSH.
pub(super) fn open_graphics(conn: &Connect, uuid: &str) -> CallResult<OwnedFd> {
    let dom = lookup_dom(conn, uuid)?.ok_or_else(|| not_found_domain(uuid))?;
    let fd = dom.open_graphics_fd(0, sys::VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)?;
    // SAFETY: libvirt returned a new descriptor that the caller now owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as c_int) })
}

const EAGAIN: c_int = -2;
const READ_CHUNK: usize = 16 * 1024;

/// Relays between `stream` and the other side until either ends: bytes read go to `out`, `Input`
/// woken on `wake` is sent to the guest. Runs on the connection's thread; libvirt's event thread
/// wakes it through `wake_tx`. Blocks until the session ends.
pub(super) fn relay(
    stream: RawStream,
    wake_tx: mpsc::Sender<Wake>,
    wake: mpsc::Receiver<Wake>,
    out: tokio::sync::mpsc::Sender<Vec<u8>>,
) {
    let opaque = Box::into_raw(Box::new(wake_tx)) as *mut c_void;
    let base = (sys::VIR_STREAM_EVENT_ERROR | sys::VIR_STREAM_EVENT_HANGUP) as c_int;
    let readable = sys::VIR_STREAM_EVENT_READABLE as c_int;
    let writable = sys::VIR_STREAM_EVENT_WRITABLE as c_int;
    // SAFETY: valid stream; `opaque` is a leaked Box that libvirt frees with `free_sender` when
    // the callback is removed (in RawStream's drop).
    let added = unsafe {
        sys::virStreamEventAddCallback(
            stream.0,
            base | readable,
            Some(on_event),
            opaque,
            Some(free_sender),
        )
    };
    if added < 0 {
        // SAFETY: libvirt did not take the box; release it here.
        unsafe { drop(Box::from_raw(opaque as *mut mpsc::Sender<Wake>)) };
        tracing::warn!(error = %virt::error::Error::last_error(), "cannot watch the console stream");
        return;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_CHUNK];
    while let Ok(w) = wake.recv() {
        let mut want_write = false;
        match w {
            Wake::Readable => {
                if !drain(&stream, &mut buf, &out) {
                    return;
                }
            }
            Wake::Input(bytes) => pending.extend_from_slice(&bytes),
            Wake::Writable => {}
            Wake::Ended | Wake::Closed => return,
        }
        if !pending.is_empty() {
            match flush(&stream, &mut pending) {
                Some(done) => want_write = !done,
                None => return,
            }
        }
        let events = base | readable | if want_write { writable } else { 0 };
        // SAFETY: valid stream with a callback added above.
        unsafe { sys::virStreamEventUpdateCallback(stream.0, events) };
    }
}

/// Reads until the stream would block; false when the session is over (end of stream, an
/// error, or nobody reads `out` any more).
fn drain(stream: &RawStream, buf: &mut [u8], out: &tokio::sync::mpsc::Sender<Vec<u8>>) -> bool {
    loop {
        // SAFETY: valid stream; `buf` is writable for its length.
        let n = unsafe { sys::virStreamRecv(stream.0, buf.as_mut_ptr() as *mut c_char, buf.len()) };
        match n {
            EAGAIN => return true,
            0 => return false,
            n if n < 0 => {
                tracing::debug!(error = %virt::error::Error::last_error(), "console stream ended");
                return false;
            }
            n => {
                if out.blocking_send(buf[..n as usize].to_vec()).is_err() {
                    return false;
                }
            }
        }
    }
}

/// Sends what is pending: `Some(true)` when all went, `Some(false)` when the stream would block
/// (wait for `Writable`), `None` on an error.
fn flush(stream: &RawStream, pending: &mut Vec<u8>) -> Option<bool> {
    while !pending.is_empty() {
        // SAFETY: valid stream; `pending` is readable for its length.
        let n = unsafe {
            sys::virStreamSend(stream.0, pending.as_ptr() as *const c_char, pending.len())
        };
        match n {
            EAGAIN => return Some(false),
            n if n < 0 => {
                tracing::debug!(error = %virt::error::Error::last_error(), "console stream refused input");
                return None;
            }
            n => {
                pending.drain(..n as usize);
            }
        }
    }
    Some(true)
}

/// libvirt's stream event callback (on its event thread): pauses reading until the relay has
/// drained the stream, and wakes the relay.
unsafe extern "C" fn on_event(st: sys::virStreamPtr, events: c_int, opaque: *mut c_void) {
    if opaque.is_null() {
        return;
    }
    // SAFETY: `opaque` is the Box<Sender> given at registration, alive until `free_sender`.
    let tx = unsafe { &*(opaque as *const mpsc::Sender<Wake>) };
    let events = events as u32;
    if events & (sys::VIR_STREAM_EVENT_ERROR | sys::VIR_STREAM_EVENT_HANGUP) != 0 {
        let _ = tx.send(Wake::Ended);
    }
    if events & (sys::VIR_STREAM_EVENT_READABLE | sys::VIR_STREAM_EVENT_WRITABLE) != 0 {
        // Level-triggered: stop both until the relay has acted on them, or this fires in a loop.
        // SAFETY: `st` is valid for the callback's duration.
        unsafe {
            sys::virStreamEventUpdateCallback(
                st,
                (sys::VIR_STREAM_EVENT_ERROR | sys::VIR_STREAM_EVENT_HANGUP) as c_int,
            )
        };
        if events & sys::VIR_STREAM_EVENT_READABLE != 0 {
            let _ = tx.send(Wake::Readable);
        }
        if events & sys::VIR_STREAM_EVENT_WRITABLE != 0 {
            let _ = tx.send(Wake::Writable);
        }
    }
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: the box leaked in `relay`, released once.
        unsafe { drop(Box::from_raw(opaque as *mut mpsc::Sender<Wake>)) };
    }
}
