//! IPMI v2.0 over LAN fencing (RMCP+, cipher suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128)
//! through the `ipmi` crate: open a session, raise it to Administrator (Set Session Privilege
//! Level, which the crate does not send itself and BMCs such as OpenIPMI's require before
//! chassis control), then `Chassis Control: power down` (or `power up`) or `Get Chassis Status`. Each call opens
//! its own short session on a blocking thread (the crate's async client holds a thread-local RNG
//! across awaits, so its futures cannot move between tokio workers), bounded by the request
//! timeout as a whole.

use super::{Credentials, FenceError, Fencer, Power, allowed, bounded};
use crate::gate::ActionGate;
use async_trait::async_trait;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// IPMI network function App, command Set Session Privilege Level.
const NETFN_APP: u8 = 0x06;
const CMD_SET_SESSION_PRIVILEGE: u8 = 0x3B;
const PRIVILEGE_ADMINISTRATOR: u8 = 0x04;

/// One BMC reached over IPMI LAN.
pub struct Ipmi {
    target: SocketAddr,
    creds: Credentials,
    timeout: Duration,
    gate: ActionGate,
}

impl Ipmi {
    /// A client for `address` (`ipmi://host[:port]`, or `host[:port]`; port 623 by default);
    /// every power-off asks `gate` first.
    pub fn new(
        address: &str,
        creds: Credentials,
        timeout: Duration,
        gate: ActionGate,
    ) -> Result<Ipmi, FenceError> {
        let hostport = address.strip_prefix("ipmi://").unwrap_or(address);
        let hostport = hostport.trim_end_matches('/');
        let with_port = if hostport
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hostport.to_string()
        } else {
            format!("{hostport}:623")
        };
        let target = with_port
            .to_socket_addrs()
            .map_err(|e| FenceError::Config(format!("IPMI address {address:?}: {e}")))?
            .next()
            .ok_or_else(|| {
                FenceError::Config(format!("IPMI address {address:?} resolves to nothing"))
            })?;
        if creds.username.len() > 16 || creds.password.len() > 20 {
            return Err(FenceError::Config(
                "IPMI user names are at most 16 bytes and passwords at most 20".to_string(),
            ));
        }
        Ok(Ipmi {
            target,
            creds,
            timeout,
            gate,
        })
    }

    fn map(&self, what: &'static str, e: ipmi::Error) -> FenceError {
        match e {
            ipmi::Error::Timeout => FenceError::Timeout {
                bmc: self.describe(),
                what,
                seconds: self.timeout.as_secs().max(1),
            },
            ipmi::Error::AuthenticationFailed(d) => FenceError::Auth {
                bmc: self.describe(),
                detail: d.to_string(),
            },
            other => {
                let detail = other.to_string();
                // A wrong password shows as a RAKP status code from the BMC.
                if detail.contains("RAKP")
                    || detail.contains("unauthorized")
                    || detail.contains("password")
                {
                    FenceError::Auth {
                        bmc: self.describe(),
                        detail,
                    }
                } else {
                    FenceError::Failed {
                        bmc: self.describe(),
                        what,
                        detail,
                    }
                }
            }
        }
    }

    /// Run `op` in an Administrator session on a blocking thread, bounded by the timeout.
    async fn with_session<T: Send + 'static>(
        &self,
        what: &'static str,
        op: impl FnOnce(&ipmi::BlockingClient) -> Result<T, ipmi::Error> + Send + 'static,
    ) -> Result<T, FenceError> {
        let target = self.target;
        let (user, pass) = (self.creds.username.clone(), self.creds.password.clone());
        let timeout = self.timeout;
        let job = tokio::task::spawn_blocking(move || -> Result<Result<T, ipmi::Error>, u8> {
            // Replies can take > 1.6 s on a loaded BMC: one attempt with the whole timeout
            // rather than the crate's 1 s × 3.
            let client = match ipmi::BlockingClient::builder(target)
                .username(&user)
                .password(&pass)
                .privilege_level(ipmi::PrivilegeLevel::Administrator)
                .timeout(timeout)
                .retries(1)
                .build()
            {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            let out = match client.send_raw(
                NETFN_APP,
                CMD_SET_SESSION_PRIVILEGE,
                &[PRIVILEGE_ADMINISTRATOR],
            ) {
                Ok(r) if r.completion_code != 0 => Err(r.completion_code),
                Ok(_) => Ok(op(&client)),
                Err(e) => Ok(Err(e)),
            };
            let _ = client.close_session();
            out
        });
        let bmc = self.describe();
        let joined = bounded(&bmc, what, timeout + Duration::from_millis(500), async {
            job.await.map_err(|e| FenceError::Failed {
                bmc: bmc.clone(),
                what,
                detail: format!("IPMI worker: {e}"),
            })
        })
        .await?;
        match joined {
            Ok(r) => r.map_err(|e| self.map(what, e)),
            Err(code) => Err(FenceError::Auth {
                bmc,
                detail: format!(
                    "Set Session Privilege Level (Administrator) refused with completion code {code:#04x}"
                ),
            }),
        }
    }
}

#[async_trait]
impl Fencer for Ipmi {
    fn describe(&self) -> String {
        format!("ipmi://{}", self.target)
    }

    async fn power_state(&self) -> Result<Power, FenceError> {
        let st = self
            .with_session("Get Chassis Status", |c| c.get_chassis_status())
            .await?;
        Ok(if st.system_power_on {
            Power::On
        } else {
            Power::Off
        })
    }

    async fn power_off(&self) -> Result<(), FenceError> {
        allowed(&self.gate, &self.describe(), "fence power_off")?;
        self.with_session("Chassis Control power down", |c| {
            c.chassis_control(ipmi::ChassisControl::PowerDown)
        })
        .await
    }

    async fn power_on(&self) -> Result<(), FenceError> {
        allowed(&self.gate, &self.describe(), "power_on")?;
        self.with_session("Chassis Control power up", |c| {
            c.chassis_control(ipmi::ChassisControl::PowerUp)
        })
        .await
    }
}
