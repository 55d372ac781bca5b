//! In-memory BMCs for tests of the controllers: each host's power state, the calls made, and a
//! hook run on each power change (to take a fake libvirt host down or bring it back).

use super::{FenceError, Fencer, Power};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A power change hook: `(host, on)`.
pub type Hook = Arc<dyn Fn(&str, bool) + Send + Sync>;

#[derive(Default)]
struct State {
    power: HashMap<String, Power>,
    calls: Vec<(String, &'static str)>,
    hook: Option<Hook>,
}

/// The BMCs of a set of hosts, every host powered On until told otherwise.
#[derive(Clone, Default)]
pub struct FakeBmcs {
    state: Arc<Mutex<State>>,
}

impl FakeBmcs {
    /// BMCs for every host, all On.
    pub fn new() -> FakeBmcs {
        FakeBmcs::default()
    }

    /// Run `hook(host, on)` after each power change.
    pub fn on_change(&self, hook: impl Fn(&str, bool) + Send + Sync + 'static) {
        self.lock().hook = Some(Arc::new(hook));
    }

    /// The BMC of `host`.
    pub fn bmc(&self, host: &str) -> Box<dyn Fencer> {
        Box::new(FakeBmc {
            host: host.to_string(),
            bmcs: self.clone(),
        })
    }

    /// The power state `host`'s BMC reports.
    pub fn power(&self, host: &str) -> Power {
        self.lock().power.get(host).copied().unwrap_or(Power::On)
    }

    /// Set `host`'s power state without running the hook.
    pub fn set_power(&self, host: &str, p: Power) {
        self.lock().power.insert(host.to_string(), p);
    }

    /// The power changes asked for so far: `(host, "power_off" | "power_on")`.
    pub fn changes(&self) -> Vec<(String, &'static str)> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn change(&self, host: &str, on: bool) {
        let hook = {
            let mut s = self.lock();
            s.calls
                .push((host.to_string(), if on { "power_on" } else { "power_off" }));
            s.power
                .insert(host.to_string(), if on { Power::On } else { Power::Off });
            s.hook.clone()
        };
        if let Some(h) = hook {
            h(host, on);
        }
    }
}

struct FakeBmc {
    host: String,
    bmcs: FakeBmcs,
}

#[async_trait]
impl Fencer for FakeBmc {
    fn describe(&self) -> String {
        format!("fake://{}", self.host)
    }

    async fn power_state(&self) -> Result<Power, FenceError> {
        Ok(self.bmcs.power(&self.host))
    }

    async fn power_off(&self) -> Result<(), FenceError> {
        self.bmcs.change(&self.host, false);
        Ok(())
    }

    async fn power_on(&self) -> Result<(), FenceError> {
        self.bmcs.change(&self.host, true);
        Ok(())
    }
}
