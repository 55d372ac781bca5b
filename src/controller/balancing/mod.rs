//! Load balancing, run by the HostPool controller (so only by the replica that may act): for a
//! pool with `spec.balancing`, every `intervalSeconds` (up to a tenth later) and whenever the
//! `ferry.dev/rebalance` annotation takes a new value, the planner ([`crate::plan::balance`]) is
//! fed the pool's hosts, VMs and their measured load. `Manual` and `Partial` pools get its moves
//! as recommendations in `status.balancing`; `Full` pools get VirtualMachineMigrations (reason
//! `balance`), as many as the pool's migration limits allow, each with an Event on its VM and on
//! the pool. No run is made while a migration of the pool is under way or a running VM's load is
//! not measured yet: the run waits for the next probe.

mod act;
mod facts;

pub use act::{BALANCING_EVENT, migration};

use crate::api::balancing::{
    BalanceMove, BalancingAutomation, REBALANCE_ANNOTATION, Recommendation,
};
use crate::api::{HostPool, HostPoolStatus};
use crate::controller::Context;
use crate::plan::balance::{self, Plan, Settings};
use crate::plan::{capacity, migration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// Recommendations kept in a pool's status, at most.
pub const MAX_RECOMMENDATIONS: usize = 50;

/// Balancing moves remembered in a pool's status, at most.
pub const MAX_RECENT_MOVES: usize = 500;

/// Run balancing for `pool` if a run is due at `now`, and put what it found in `st` (the status
/// about to be written). Returns how long until the next run is due, if one is planned.
pub async fn reconcile(
    pool: &HostPool,
    ctx: &Context,
    st: &mut HostPoolStatus,
    now: Timestamp,
) -> Option<Duration> {
    let Some(spec) = pool.spec.balancing.as_ref() else {
        st.balancing = None;
        return None;
    };
    let mut b = st.balancing.clone().unwrap_or_default();
    let requested = pool.annotations().get(REBALANCE_ANNOTATION).cloned();
    let asked = requested.is_some() && requested != b.requested;
    let next = balance::next_run(
        b.last_run.as_ref().map(|t| t.0),
        spec.interval(),
        seed(pool),
    );
    if let Some(at) = next.filter(|at| !asked && *at > now) {
        st.balancing = Some(b);
        return Some(until(at, now));
    }
    let policy = migration::Policy::of(pool);
    let mut settings = Settings::level(
        spec.level(),
        MAX_RECOMMENDATIONS,
        MAX_RECOMMENDATIONS,
        MAX_RECOMMENDATIONS,
    )
    .with_cooldown(spec.cooldown());
    // A Full run the migration limits cut short is carried on down to the target.
    let made = b
        .recommendations
        .iter()
        .filter(|r| r.migration.is_some())
        .count();
    if made > 0 && b.planned.unwrap_or(0) as usize > made {
        settings = settings.continuing();
    }
    // Moves remembered for no longer than they bar a return.
    let keep = i64::try_from(settings.no_return.as_millis()).unwrap_or(i64::MAX);
    b.recent_moves
        .retain(|m| now.as_millisecond().saturating_sub(m.at.0.as_millisecond()) < keep);
    let facts = match facts::gather(pool, st, ctx, &b.recent_moves) {
        Ok(f) => f,
        Err(wait) => {
            // Asked again at the next probe; the last run's findings stay.
            b.message = Some(wait);
            st.balancing = Some(b);
            return None;
        }
    };
    let whole = balance::plan(&facts.hosts, &facts.vms, &settings, now);
    let full = spec.automation == BalancingAutomation::Full;
    let (plan, created) = if full {
        let limited = Settings {
            max_moves: policy.max_parallel as usize,
            max_out_per_host: policy.max_outbound_per_host as usize,
            max_in_per_host: policy.max_inbound_per_host as usize,
            ..settings
        };
        let plan = balance::plan(&facts.hosts, &facts.vms, &limited, now);
        let created = act::create(ctx, pool, &facts.pool_vms, &plan).await;
        let made = created.iter().flatten().count();
        if made > 0 {
            let ns = pool.namespace().unwrap_or_default();
            ctx.metrics
                .balancing_migrations(&ns, &pool.name_any(), made);
        }
        (plan, created)
    } else {
        (whole.clone(), Vec::new())
    };
    let ns = pool.namespace().unwrap_or_default();
    b.recommendations = plan
        .moves
        .iter()
        .take(MAX_RECOMMENDATIONS)
        .enumerate()
        .map(|(i, m)| Recommendation {
            namespace: ns.clone(),
            vm: m.vm.clone(),
            from: m.from.clone(),
            to: m.to.clone(),
            gain: format!("{:.1}", m.gain),
            cost: format!("{:.1}", m.cost),
            memory: capacity::quantity(whole_mib(m.copy_bytes)),
            computed_at: Time(now),
            migration: created.get(i).cloned().flatten(),
        })
        .collect();
    for (m, name) in plan.moves.iter().zip(&created) {
        if name.is_some() {
            b.recent_moves.push(BalanceMove {
                vm: m.vm.clone(),
                from: m.from.clone(),
                to: m.to.clone(),
                at: Time(now),
            });
        }
    }
    let over = b.recent_moves.len().saturating_sub(MAX_RECENT_MOVES);
    b.recent_moves.drain(..over);
    b.message = Some(message(
        &pool.name_any(),
        spec.automation,
        &plan,
        &whole,
        &created,
    ));
    b.last_run = Some(Time(now));
    b.requested = requested;
    b.target = Some(format!("{:.1}", plan.target));
    b.imbalance = Some(format!("{:.1}", plan.imbalance));
    b.expected = Some(format!("{:.1}", plan.expected));
    b.lower_bound = Some(i32::try_from(plan.lower_bound).unwrap_or(i32::MAX));
    b.planned = Some(i32::try_from(whole.moves.len()).unwrap_or(i32::MAX));
    st.balancing = Some(b);
    Some(spec.interval())
}

/// What a run found and did, in a sentence.
fn message(
    pool: &str,
    automation: BalancingAutomation,
    plan: &Plan,
    whole: &Plan,
    created: &[Option<String>],
) -> String {
    if plan.moves.is_empty() {
        return plan.message.clone();
    }
    match automation {
        BalancingAutomation::Full => {
            let made = created.iter().flatten().count();
            let failed = created.len() - made;
            let mut s = format!(
                "{}; {made} migration(s) created",
                plan.message.trim_end_matches('.')
            );
            if whole.moves.len() > plan.moves.len() {
                s.push_str(&format!(
                    " ({} in the whole plan; the migration limits allow {} now)",
                    whole.moves.len(),
                    plan.moves.len()
                ));
            }
            if failed > 0 {
                s.push_str(&format!(", {failed} could not be created"));
            }
            s
        }
        BalancingAutomation::Manual | BalancingAutomation::Partial => format!(
            "{}; `kubectl ferry recommendations {pool} apply` carries them out",
            plan.message.trim_end_matches('.')
        ),
    }
}

/// A number of the pool's own, to spread runs of pools that started together.
fn seed(pool: &HostPool) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pool.metadata.uid.hash(&mut h);
    h.finish()
}

/// `bytes` rounded to the nearest MiB (what a person reads in a table).
pub(super) fn whole_mib(bytes: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    bytes.saturating_add(MIB / 2) / MIB * MIB
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    let ms = at
        .as_millisecond()
        .saturating_sub(now.as_millisecond())
        .max(0);
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
