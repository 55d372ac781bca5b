//! Fencing: power a failed host off through its BMC and wait until the BMC confirms Off; and
//! power a host on again (power management wakes hosts it put in Standby).
//!
//! One [`Fencer`] trait, two protocols: Redfish (`redfish.rs`, ComputerSystem.Reset ForceOff /
//! On) and IPMI v2.0 over LAN (`ipmi.rs`, chassis power off / on). Every BMC call is bounded by
//! a timeout. A fence counts only when the BMC reports Off: a timeout, an error or a state that
//! stays On is a failed fence, and [`fence`] says which. Every driver is built with the
//! [`ActionGate`] and asks it before changing power either way: a replica that may not act (see
//! [`crate::gate`]) never does.

pub mod fake;
pub mod ipmi;
pub mod redfish;

use crate::gate::ActionGate;
use async_trait::async_trait;
use std::time::{Duration, Instant};

/// Power state as a BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    On,
    Off,
    /// The BMC answered with something else (powering on/off, unknown).
    Other,
}

/// Why a BMC call or a fence failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    /// The BMC settings cannot work (bad address, unreadable CA); fix the HostPool or Secret.
    #[error("fencing misconfigured: {0}")]
    Config(String),
    /// The BMC rejected the credentials.
    #[error("BMC {bmc} rejected the credentials: {detail}")]
    Auth { bmc: String, detail: String },
    /// The BMC did not answer in time.
    #[error("BMC {bmc} did not answer within {seconds}s ({what})")]
    Timeout {
        bmc: String,
        what: &'static str,
        seconds: u64,
    },
    /// The BMC answered with an error, or could not be reached.
    #[error("BMC {bmc}: {what} failed: {detail}")]
    Failed {
        bmc: String,
        what: &'static str,
        detail: String,
    },
    /// The BMC answers for another machine than the host's (Redfish: the system's UUID is not
    /// the Node's `systemUUID`): its power state does not count and it is not powered off.
    #[error(
        "BMC {bmc} answers for system {found}, not for this host (whose UUID is {expected}): its power state does not count, and nothing was powered off"
    )]
    WrongSystem {
        bmc: String,
        expected: String,
        found: String,
    },
    /// This replica may not act now (see [`crate::gate`]): no power change was sent.
    #[error("power change through BMC {bmc} withheld: {reason}")]
    Withheld { bmc: String, reason: String },
    /// The power-off was accepted but the BMC did not report Off in time.
    #[error(
        "BMC {bmc} still reports power {state:?} {seconds}s after the power-off: not confirmed"
    )]
    Unconfirmed {
        bmc: String,
        state: Power,
        seconds: u64,
    },
}

/// A BMC that can report and cut a host's power.
#[async_trait]
pub trait Fencer: Send + Sync {
    /// The BMC, for messages (address and system, no credentials).
    fn describe(&self) -> String;
    /// The power state the BMC reports, once it has shown it answers for the host it was made
    /// for ([`FenceError::WrongSystem`] otherwise).
    async fn power_state(&self) -> Result<Power, FenceError>;
    /// Ask the BMC to cut power at once (no graceful shutdown).
    async fn power_off(&self) -> Result<(), FenceError>;
    /// Ask the BMC to power the host on (it boots; the BMC may report On before the host's
    /// services answer).
    async fn power_on(&self) -> Result<(), FenceError>;
}

/// A confirmed fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    /// From the power-off request to the BMC reporting Off.
    pub elapsed: Duration,
    /// The BMC already reported Off before any request.
    pub was_off: bool,
}

/// Fence: power off unless the BMC already reports Off, then poll every `poll` until it reports
/// Off, for at most `confirm_timeout`. Every reading, the first one before any power-off
/// included, checks that the BMC answers for the host's own system.
pub async fn fence(
    f: &dyn Fencer,
    confirm_timeout: Duration,
    poll: Duration,
) -> Result<Fenced, FenceError> {
    let start = Instant::now();
    if f.power_state().await? == Power::Off {
        return Ok(Fenced {
            elapsed: start.elapsed(),
            was_off: true,
        });
    }
    f.power_off().await?;
    let deadline = start + confirm_timeout;
    loop {
        let state = f.power_state().await?;
        if state == Power::Off {
            return Ok(Fenced {
                elapsed: start.elapsed(),
                was_off: false,
            });
        }
        if Instant::now() + poll > deadline {
            return Err(FenceError::Unconfirmed {
                bmc: f.describe(),
                state,
                seconds: confirm_timeout.as_secs(),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

/// Power the host on unless the BMC already reports On; `Ok(true)` when a power-on was sent.
/// Does not wait for the host to boot (its Node and libvirt tell when it is up).
pub async fn power_on(f: &dyn Fencer) -> Result<bool, FenceError> {
    if f.power_state().await? == Power::On {
        return Ok(false);
    }
    f.power_on().await?;
    Ok(true)
}

/// BMC credentials, from the HostPool's `fencing.credentialsSecret`.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// PEM CA bundle that signed the BMC certificates (Redfish over HTTPS).
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("ca_pem", &self.ca_pem.as_ref().map(|c| c.len()))
            .finish()
    }
}

/// Ask `gate` before changing power (`what`) through `bmc`.
pub(crate) fn allowed(gate: &ActionGate, bmc: &str, what: &'static str) -> Result<(), FenceError> {
    gate.check(what).map_err(|w| FenceError::Withheld {
        bmc: bmc.to_string(),
        reason: w.reason,
    })
}

/// Run `fut` with a timeout, turning the elapsed timeout into [`FenceError::Timeout`].
pub(crate) async fn bounded<T>(
    bmc: &str,
    what: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, FenceError>>,
) -> Result<T, FenceError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(FenceError::Timeout {
            bmc: bmc.to_string(),
            what,
            seconds: limit.as_secs().max(1),
        })
    })
}
