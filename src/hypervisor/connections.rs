//! Shared registry of open host connections, keyed by URI.
//!
//! [`HostConnections::get`] hands out the open connection to a host, or opens one. Attempts to
//! the same URI are single-flight (concurrent callers wait for the one attempt and share its
//! outcome), and after a failed attempt further callers get the last error at once until a backoff
//! delay has passed (1 s doubling to 30 s by default): an unreachable host costs one connect
//! timeout per backoff period, not one per reconcile, and never slows down other hosts.
//!
//! A handle whose connection the host or the network ended ([`Hypervisor::lost`]: a call failed
//! with `ConnectionLost`, libvirt's close callback fired on a keepalive timeout or EOF, or a call
//! timed out) is closed and counts as a failed attempt: the next `get` returns that loss at once
//! and reconnects after the first backoff delay, so a host that just dropped out is reported
//! without waiting for a connect timeout. Every such loss is also announced on
//! [`HostConnections::lost_connections`], so that the controller can react at once instead of at
//! its next periodic probe. A handle ferry closed itself is replaced at once;
//! [`HostConnections::invalidate`] does the same on request.
//!
//! A connection opened to a host that had one before (lost, closed, or attempts that failed) is
//! announced on [`HostConnections::reconnected`]: the host's domain events between the two
//! connections were not heard, so whatever depends on them (the VM controller) looks again.
//!
//! [`HostConnections::changes`] counts, per host, what may have changed its domains since they
//! were last read: every domain lifecycle event heard (starts and definitions included), every
//! call through a connection of the registry that changes the host, and every connection opened
//! (events before it were not heard). A reader that saw the same count before its last reading
//! knows that reading still stands, without asking the host.
//!
//! Every libvirt connection ferry opens comes from the registry's [`Connector`]: the shared ones
//! from [`HostConnections::get`], connections of their own (a migration, a volume copy, an image
//! upload) from [`HostConnections::dedicated`]. A test can therefore stand in for every host with
//! one connector (see [`fake`](super::fake)). Every connection handed out, shared or dedicated,
//! asks the registry's [`ActionGate`] before a call that changes the host (see
//! [`crate::gate`]), so no caller can act on a host while this replica may not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;

use super::change_counts::ChangeCounts;
use super::gated::Gated;
use super::libvirt::LibvirtHost;
use super::{HvResult, Hypervisor, HypervisorError};
use crate::gate::ActionGate;

pub use super::{CallObserver, ConnectOptions};

/// Opens connections for a [`HostConnections`] registry. The default is [`LibvirtConnector`];
/// tests of the controller can plug in fakes.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Opens a connection to `uri`, bounded in time by `opts.connect_timeout`.
    async fn connect(&self, uri: &str, opts: &ConnectOptions) -> HvResult<Arc<dyn Hypervisor>>;
}

/// Opens real libvirt connections ([`LibvirtHost::connect`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LibvirtConnector;

#[async_trait]
impl Connector for LibvirtConnector {
    async fn connect(&self, uri: &str, opts: &ConnectOptions) -> HvResult<Arc<dyn Hypervisor>> {
        let host = LibvirtHost::connect(uri, opts.clone()).await?;
        Ok(host)
    }
}

/// Shared registry of host connections; cheap to clone (all clones share the connections).
#[derive(Clone)]
pub struct HostConnections {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Arc<dyn Connector>,
    /// Every connection handed out asks it before a call that changes the host.
    gate: ActionGate,
    observer: Option<Arc<dyn CallObserver>>,
    min_backoff: Duration,
    max_backoff: Duration,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    lost: tokio::sync::broadcast::Sender<String>,
    domains: tokio::sync::broadcast::Sender<String>,
    reconnected: tokio::sync::broadcast::Sender<String>,
    changes: Arc<ChangeCounts>,
}

/// Capacity of the lost-connection channel; a receiver that falls further behind skips ahead.
const LOST_CHANNEL: usize = 256;
/// Capacity of the domain-event channel (a receiver that falls behind skips ahead: the periodic
/// resync covers what it missed).
const DOMAIN_CHANNEL: usize = 4096;
/// Capacity of the reconnection channel; a receiver that falls further behind skips ahead.
const RECONNECTED_CHANNEL: usize = 256;

/// The observer handed to each connection: forwards calls to the caller's observer and
/// announces lost connections on the registry's channel.
struct Notifying {
    inner: Option<Arc<dyn CallObserver>>,
    lost: tokio::sync::broadcast::Sender<String>,
    domains: tokio::sync::broadcast::Sender<String>,
    changes: Arc<ChangeCounts>,
}

impl CallObserver for Notifying {
    fn observe(&self, op: &'static str, seconds: f64, ok: bool) {
        if let Some(o) = &self.inner {
            o.observe(op, seconds, ok);
        }
    }

    fn connection_lost(&self, uri: &str, reason: &str) {
        tracing::info!(uri, reason, "libvirt connection lost");
        if let Some(o) = &self.inner {
            o.connection_lost(uri, reason);
        }
        // No receiver is not an error: nobody is listening.
        let _ = self.lost.send(uri.to_string());
    }

    fn domain_changed(&self, uri: &str, uuid: &str) {
        tracing::debug!(uri, uuid, "libvirt domain event");
        if let Some(o) = &self.inner {
            o.domain_changed(uri, uuid);
        }
        let _ = self.domains.send(uuid.to_string());
    }

    fn host_changed(&self, uri: &str) {
        if let Some(o) = &self.inner {
            o.host_changed(uri);
        }
        self.changes.bump(uri);
    }
}

/// One host. The async mutex makes connection attempts single-flight.
#[derive(Default)]
struct Entry {
    state: tokio::sync::Mutex<EntryState>,
}

#[derive(Default)]
struct EntryState {
    conn: Option<Arc<dyn Hypervisor>>,
    failure: Option<Failure>,
    /// A connection to this host was open before (events may have been missed since).
    connected_before: bool,
}

/// The last failed attempt and when the next one may be made.
struct Failure {
    error: HypervisorError,
    retry_at: Instant,
    delays: ExponentialBackoff,
}

impl std::fmt::Debug for HostConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hosts = self.inner.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("HostConnections")
            .field("hosts", &hosts)
            .field("min_backoff", &self.inner.min_backoff)
            .field("max_backoff", &self.inner.max_backoff)
            .finish()
    }
}

impl Default for HostConnections {
    fn default() -> Self {
        Self::new(None)
    }
}

impl HostConnections {
    /// A registry of libvirt connections with the default backoff (1 s doubling to 30 s).
    /// `observer` is told about every libvirt call (and every connection attempt) made through
    /// connections of this registry whose options name no observer of their own.
    pub fn new(observer: Option<Arc<dyn CallObserver>>) -> Self {
        let mut reg = Self::with_connector(Arc::new(LibvirtConnector));
        if let Some(inner) = Arc::get_mut(&mut reg.inner) {
            inner.observer = observer;
        }
        reg
    }

    /// A registry that opens connections with `connector` (a fake, in tests), without observer.
    pub fn with_connector(connector: Arc<dyn Connector>) -> Self {
        HostConnections {
            inner: Arc::new(Inner {
                connector,
                gate: ActionGate::open(),
                observer: None,
                min_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(30),
                entries: Mutex::new(HashMap::new()),
                lost: tokio::sync::broadcast::channel(LOST_CHANNEL).0,
                domains: tokio::sync::broadcast::channel(DOMAIN_CHANNEL).0,
                reconnected: tokio::sync::broadcast::channel(RECONNECTED_CHANNEL).0,
                changes: Arc::default(),
            }),
        }
    }

    /// A separate registry (its own connections, backoff state and channels) that opens
    /// connections the same way and reports calls to the same observer: for callers, such as
    /// liveness probes, that must not queue behind the long calls of the shared connections.
    pub fn sibling(&self) -> Self {
        HostConnections {
            inner: Arc::new(Inner {
                connector: self.inner.connector.clone(),
                gate: self.inner.gate.clone(),
                observer: self.inner.observer.clone(),
                min_backoff: self.inner.min_backoff,
                max_backoff: self.inner.max_backoff,
                entries: Mutex::new(HashMap::new()),
                lost: tokio::sync::broadcast::channel(LOST_CHANNEL).0,
                domains: tokio::sync::broadcast::channel(DOMAIN_CHANNEL).0,
                reconnected: tokio::sync::broadcast::channel(RECONNECTED_CHANNEL).0,
                changes: self.inner.changes.clone(),
            }),
        }
    }

    /// The same registry with another backoff after failed attempts: `min` after the first
    /// failure, doubling up to `max`. Call before sharing the registry.
    pub fn with_backoff(self, min: Duration, max: Duration) -> Self {
        self.reconfigured(self.inner.gate.clone(), min, max.max(min))
    }

    /// The same registry whose connections ask `gate` before every call that changes a host
    /// (see [`crate::gate`]). Call before sharing the registry; siblings share the gate.
    pub fn with_gate(self, gate: ActionGate) -> Self {
        let (min, max) = (self.inner.min_backoff, self.inner.max_backoff);
        self.reconfigured(gate, min, max)
    }

    /// This registry (its connections, connector, observer and channels) with another gate and
    /// backoff.
    fn reconfigured(&self, gate: ActionGate, min_backoff: Duration, max_backoff: Duration) -> Self {
        let entries = self
            .inner
            .entries
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        HostConnections {
            inner: Arc::new(Inner {
                connector: self.inner.connector.clone(),
                gate,
                observer: self.inner.observer.clone(),
                min_backoff,
                max_backoff,
                entries: Mutex::new(entries),
                lost: self.inner.lost.clone(),
                domains: self.inner.domains.clone(),
                reconnected: self.inner.reconnected.clone(),
                changes: self.inner.changes.clone(),
            }),
        }
    }

    /// The gate every connection of this registry asks before changing a host.
    pub fn gate(&self) -> &ActionGate {
        &self.inner.gate
    }

    /// The open connection to `uri`, or a new one opened with `opts` (options apply to new
    /// connections only: an open connection keeps the options it was opened with).
    ///
    /// Waits for an attempt already under way to the same URI instead of starting another. Within
    /// the backoff window after a failed attempt, returns that attempt's error at once.
    pub async fn get(&self, uri: &str, opts: &ConnectOptions) -> HvResult<Arc<dyn Hypervisor>> {
        let entry = self.entry(uri);
        let mut state = entry.state.lock().await;
        if let Some(conn) = &state.conn {
            if conn.is_connected() {
                return Ok(conn.clone());
            }
            let loss = conn.lost();
            if let Some(old) = state.conn.take() {
                close_in_background(old);
            }
            // Lost by the host or the network: a failed attempt, reported now, retried later.
            if let Some(error) = loss {
                self.record_failure(&mut state, uri, error.clone());
                return Err(error);
            }
        }
        if let Some(f) = &state.failure
            && Instant::now() < f.retry_at
        {
            return Err(f.error.clone());
        }
        let opts = ConnectOptions {
            observer: Some(Arc::new(Notifying {
                inner: opts
                    .observer
                    .clone()
                    .or_else(|| self.inner.observer.clone()),
                lost: self.inner.lost.clone(),
                domains: self.inner.domains.clone(),
                changes: self.inner.changes.clone(),
            })),
            ..opts.clone()
        };
        match self.inner.connector.connect(uri, &opts).await {
            Ok(conn) => {
                // What happened before this connection's events were heard is unknown.
                self.inner.changes.opened(uri);
                let conn = Gated::wrap(conn, &self.inner.gate, &self.inner.changes);
                let again = state.connected_before || state.failure.is_some();
                state.failure = None;
                state.connected_before = true;
                state.conn = Some(conn.clone());
                if again {
                    tracing::info!(uri, "libvirt connection re-established");
                    // No receiver is not an error: nobody is listening.
                    let _ = self.inner.reconnected.send(uri.to_string());
                }
                Ok(conn)
            }
            Err(error) => {
                self.record_failure(&mut state, uri, error.clone());
                Err(error)
            }
        }
    }

    /// A connection of its own to `uri`, outside the registry: opened through the registry's
    /// connector with `opts` as given (no observer is added), never shared or reused, and closed
    /// by the caller. For calls that occupy a connection for long (a migration, a volume copy, an
    /// upload) while the shared connection must keep answering.
    pub async fn dedicated(
        &self,
        uri: &str,
        opts: &ConnectOptions,
    ) -> HvResult<Arc<dyn Hypervisor>> {
        let conn = self.inner.connector.connect(uri, opts).await?;
        Ok(Gated::wrap(conn, &self.inner.gate, &self.inner.changes))
    }

    /// URIs of connections that the host or the network ended (keepalive timeout, daemon gone,
    /// a failed call), as they happen. Connections ferry closes itself are not announced.
    pub fn lost_connections(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.lost.subscribe()
    }

    /// UUIDs of domains that stopped, crashed, paused, resumed or were undefined on any host,
    /// as libvirt reports them.
    pub fn domain_events(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.domains.subscribe()
    }

    /// Announce domain `uuid` on [`domain_events`](Self::domain_events) as if libvirt had: a
    /// reading of its host found it changed though no event said so (an event was lost).
    pub fn announce_domain_change(&self, uuid: &str) {
        let _ = self.inner.domains.send(uuid.to_string());
    }

    /// URIs of hosts to which a shared connection was opened again after an earlier one (lost,
    /// closed) or after failed attempts: the domain events of the time between were not heard.
    /// The first connection to a host is not announced.
    pub fn reconnected(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.reconnected.subscribe()
    }

    /// How often the domains of the host at `uri` (as given to [`get`](Self::get)) may have
    /// changed so far: a count that grows with every domain lifecycle event heard on its shared
    /// connection (any kind, made by anyone), every call through a connection of this registry
    /// that changes the host (counted once the call returned), and every connection opened to it.
    /// Read it before reading the host: while it stays the same, that reading still stands
    /// (as far as libvirt's events tell; a host whose connection cannot deliver events is only
    /// covered by the calls ferry makes).
    pub fn changes(&self, uri: &str) -> u64 {
        self.inner.changes.get(uri).0
    }

    /// How many shared connections were opened to `uri` so far: it grows when a connection is
    /// replaced (the host's daemon may have been restarted or upgraded meanwhile).
    pub fn opened(&self, uri: &str) -> u64 {
        self.inner.changes.get(uri).1
    }

    /// Remember a failed attempt (or a lost connection) and when to try again.
    fn record_failure(&self, state: &mut EntryState, uri: &str, error: HypervisorError) {
        let mut delays = match state.failure.take() {
            Some(f) => f.delays,
            None => ExponentialBuilder::default()
                .with_min_delay(self.inner.min_backoff)
                .with_max_delay(self.inner.max_backoff)
                .with_factor(2.0)
                .without_max_times()
                .build(),
        };
        let delay = delays.next().unwrap_or(self.inner.max_backoff);
        tracing::debug!(uri, %error, ?delay, "connection attempt failed");
        state.failure = Some(Failure {
            error,
            retry_at: Instant::now() + delay,
            delays,
        });
    }

    /// The open connection to `uri` if there is a usable one; never connects.
    pub async fn existing(&self, uri: &str) -> Option<Arc<dyn Hypervisor>> {
        let entry = self.inner.entries.lock().ok()?.get(uri).cloned()?;
        let state = entry.state.lock().await;
        state.conn.clone().filter(|c| c.is_connected())
    }

    /// Drops and closes the connection to `uri` (after a call reported it lost, for example); the
    /// next [`get`](Self::get) reconnects at once. Does not touch the backoff of failed attempts.
    pub async fn invalidate(&self, uri: &str) {
        let entry = match self.inner.entries.lock() {
            Ok(entries) => entries.get(uri).cloned(),
            Err(_) => None,
        };
        let Some(entry) = entry else { return };
        let old = entry.state.lock().await.conn.take();
        if let Some(old) = old {
            old.close().await;
        }
    }

    /// Closes every connection (at shutdown). The registry stays usable.
    pub async fn close_all(&self) {
        let entries: Vec<Arc<Entry>> = match self.inner.entries.lock() {
            Ok(entries) => entries.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let mut open = Vec::new();
        for entry in entries {
            if let Some(conn) = entry.state.lock().await.conn.take() {
                open.push(conn);
            }
        }
        futures::future::join_all(open.iter().map(|c| c.close())).await;
    }

    fn entry(&self, uri: &str) -> Arc<Entry> {
        let mut entries = match self.inner.entries.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.entry(uri.to_string()).or_default().clone()
    }
}

/// Closes a replaced connection without making the caller wait for it.
fn close_in_background(conn: Arc<dyn Hypervisor>) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move { conn.close().await });
        }
        // No runtime: dropping the last handle closes the connection on its own thread.
        Err(_) => drop(conn),
    }
}
