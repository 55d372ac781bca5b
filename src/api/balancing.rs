//! A HostPool's load balancing: the `balancing` section of its spec and what its status says
//! about the last run.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Live-migrating VMs between the pool's hosts so that their measured load stays even.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.vmCooldownSeconds) || self.vmCooldownSeconds >= (has(self.intervalSeconds) ? self.intervalSeconds : 300)").message("vmCooldownSeconds must be at least intervalSeconds (default 300): a VM could otherwise move at every run"))]
pub struct BalancingSpec {
    /// `Manual`: recommendations in `status.balancing`, carried out by
    /// `kubectl ferry recommendations POOL apply`. `Partial`: new VMs are also placed by
    /// measured load; nothing moves on its own. `Full`: ferry creates the
    /// VirtualMachineMigrations itself (reason `balance`), each with an Event.
    pub automation: BalancingAutomation,
    /// 1 (conservative: only a large imbalance, only moves that gain much) to 5 (aggressive).
    /// Default 3. The target imbalance per level is 25, 18, 12, 8 and 5 points (see
    /// docs/balancing.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    pub threshold: Option<i32>,
    /// Seconds between two runs of the planner, 10 to 86400. Default 300. Each run comes up to
    /// a tenth later (jitter). The annotation `ferry.dev/rebalance` with a new value asks for a
    /// run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub interval_seconds: Option<i32>,
    /// Seconds after a balancing move of a VM before balancing moves it again, 10 to 86400, at
    /// least `intervalSeconds`. Default 1800. A VM never goes back to a host a balancing move
    /// took it from within four times this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub vm_cooldown_seconds: Option<i32>,
}

/// What balancing may do on its own.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalancingAutomation {
    /// Recommend moves; a human carries them out.
    Manual,
    /// Place new VMs by measured load too; recommend moves.
    Partial,
    /// Place new VMs by measured load and move VMs.
    Full,
}

impl BalancingAutomation {
    /// Whether placement weighs the hosts' measured load.
    pub fn places_by_load(self) -> bool {
        matches!(self, Self::Partial | Self::Full)
    }
}

/// Default of `intervalSeconds`.
pub const DEFAULT_INTERVAL_SECONDS: i32 = 300;
/// Default of `vmCooldownSeconds`.
pub const DEFAULT_COOLDOWN_SECONDS: i32 = 1800;
/// Default of `threshold`.
pub const DEFAULT_THRESHOLD: i32 = 3;

impl BalancingSpec {
    /// Time between runs (without jitter).
    pub fn interval(&self) -> std::time::Duration {
        let s = self
            .interval_seconds
            .unwrap_or(DEFAULT_INTERVAL_SECONDS)
            .max(1);
        std::time::Duration::from_secs(s as u64)
    }

    /// Time a VM sits out after a balancing move.
    pub fn cooldown(&self) -> std::time::Duration {
        let s = self
            .vm_cooldown_seconds
            .unwrap_or(DEFAULT_COOLDOWN_SECONDS)
            .max(0);
        std::time::Duration::from_secs(s as u64)
    }

    /// The threshold level, 1 to 5.
    pub fn level(&self) -> i32 {
        self.threshold.unwrap_or(DEFAULT_THRESHOLD).clamp(1, 5)
    }
}

/// What balancing decided last.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BalancingStatus {
    /// When the planner ran last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// The value of the `ferry.dev/rebalance` annotation the last run answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// The threshold's target imbalance, in points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The imbalance at the last run, in points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imbalance: Option<String>,
    /// The imbalance expected once the recommended moves are made, in points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Fewest moves any plan could need to reach the target, as the planner bounds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_bound: Option<i32>,
    /// Moves the whole plan needs (a `Full` run makes at most what the migration limits allow
    /// and the next runs continue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned: Option<i32>,
    /// What the last run found, in a sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The moves of the last run (at most 50): recommendations (`Manual`, `Partial`), or the
    /// migrations created (`Full`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub recommendations: Vec<Recommendation>,
    /// Balancing moves made lately (at most 500, kept four cooldowns): a VM never goes back to a
    /// host it left by one of them within that time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 500))]
    pub recent_moves: Vec<BalanceMove>,
}

/// One proposed live migration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    /// The VM's namespace (the pool's).
    pub namespace: String,
    /// VirtualMachine name.
    pub vm: String,
    /// Host it runs on.
    pub from: String,
    /// Host it should move to.
    pub to: String,
    /// Expected drop of the imbalance around its two hosts, in points.
    pub gain: String,
    /// The move's cost in points (its memory to copy, weighed by the threshold).
    pub cost: String,
    /// Memory to copy, as a quantity.
    pub memory: String,
    /// When the planner proposed it.
    pub computed_at: Time,
    /// The VirtualMachineMigration created for it (`Full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<String>,
}

/// A balancing move that was made.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BalanceMove {
    /// VirtualMachine name.
    pub vm: String,
    /// Host it left.
    pub from: String,
    /// Host it moved to.
    pub to: String,
    /// When the migration was created.
    pub at: Time,
}

/// HostPool annotation whose new value (a timestamp, say) asks for a balancing run at once.
pub const REBALANCE_ANNOTATION: &str = "ferry.dev/rebalance";

/// Reason of the migrations balancing creates (and `kubectl ferry recommendations apply`).
pub const BALANCE_REASON: &str = "balance";

/// Label on those migrations; its value is the pool's name.
pub const BALANCE_LABEL: &str = "ferry.dev/balance";

/// Annotation on those migrations naming the host the VM leaves.
pub const BALANCE_FROM_ANNOTATION: &str = "ferry.dev/balance-from";
