//! libvirt's callbacks, which have no safe wrapper in `virt`: the close callback (the
//! connection died) and domain lifecycle events (a domain stopped, crashed, paused, resumed or
//! disappeared).

use std::ffi::c_void;
use std::os::raw::c_int;
use std::sync::Arc;

use virt::connect::Connect;
use virt::sys;

use super::connection::Shared;

/// libvirt's close callback (`virConnectRegisterCloseCallback`), which has no safe wrapper in
/// `virt`: it marks the handle lost the moment libvirt sees the connection die (keepalive timeout,
/// daemon gone), without waiting for a call to fail.
pub(super) struct CloseCallback;

impl CloseCallback {
    /// Registers the callback for remote connections. In-process drivers (`test:///`) never call
    /// it and never free its data, so nothing is registered for them.
    pub(super) fn register(conn: &Connect, shared: &Arc<Shared>) -> Option<CloseCallback> {
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

    pub(super) fn unregister(self, conn: &Connect) {
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
/// resync. Starts and definitions are left out there (ferry makes those itself); every event,
/// those included, tells the observer that the host's domains changed
/// ([`CallObserver::host_changed`](crate::hypervisor::CallObserver::host_changed)).
pub(super) struct LifecycleEvents(c_int);

/// The C type of a lifecycle event callback (`virConnectDomainEventCallback`).
type LifecycleFn =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
/// The C type `virConnectDomainEventRegisterAny` takes for every event ID.
type GenericFn = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

impl LifecycleEvents {
    pub(super) fn register(conn: &Connect, shared: &Arc<Shared>) -> Option<LifecycleEvents> {
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

    pub(super) fn deregister(self, conn: &Connect) {
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
    // SAFETY: `opaque` is the `Arc<Shared>` given at registration, alive until `free_shared`.
    let shared = unsafe { &*(opaque as *const Shared) };
    // Every event, starts and definitions included, says the host's domains changed.
    if let Some(o) = &shared.observer {
        o.host_changed(&shared.uri);
    }
    if matches!(
        event as u32,
        sys::VIR_DOMAIN_EVENT_DEFINED | sys::VIR_DOMAIN_EVENT_STARTED
    ) {
        return 0;
    }
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
