//! `recommendations POOL [apply]`: the balancing moves a HostPool's status recommends, as a
//! table, and the VirtualMachineMigrations that carry them out.

use ferry::api::{HostPool, VirtualMachine, VirtualMachineMigration, VmPhase};
use ferry::controller::balancing;
use kube::ResourceExt;
use std::fmt::Write;

/// The table of `pool`'s recommendations, after a line on its last balancing run.
pub fn table(pool: &HostPool) -> String {
    let mut out = String::new();
    let name = pool.name_any();
    let Some(b) = pool.status.as_ref().and_then(|s| s.balancing.as_ref()) else {
        let _ = writeln!(
            out,
            "HostPool {name}: {}",
            if pool.spec.balancing.is_some() {
                "balancing has not run yet"
            } else {
                "no balancing (spec.balancing is not set)"
            }
        );
        return out;
    };
    let automation = pool
        .spec
        .balancing
        .as_ref()
        .map_or("-".to_string(), |s| format!("{:?}", s.automation));
    let _ = writeln!(
        out,
        "HostPool {name} ({automation}): imbalance {} points, target {}, last run {}",
        b.imbalance.as_deref().unwrap_or("-"),
        b.target.as_deref().unwrap_or("-"),
        b.last_run
            .as_ref()
            .map_or("never".to_string(), |t| t.0.to_string())
    );
    if let Some(m) = &b.message {
        let _ = writeln!(out, "{m}");
    }
    if b.recommendations.is_empty() {
        let _ = writeln!(out, "No recommendations.");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<28} {:<16} {:<16} {:>6} {:>6} {:>9}  MIGRATION",
        "VM", "FROM", "TO", "GAIN", "COST", "MEMORY"
    );
    for r in &b.recommendations {
        let _ = writeln!(
            out,
            "{:<28} {:<16} {:<16} {:>6} {:>6} {:>9}  {}",
            format!("{}/{}", r.namespace, r.vm),
            r.from,
            r.to,
            r.gain,
            r.cost,
            r.memory,
            r.migration.as_deref().unwrap_or("-")
        );
    }
    out
}

/// The migrations that carry out `pool`'s recommendations now, and a note for each one left
/// out: already a migration, its VM gone, not running on the host it was recommended from, or
/// already migrating.
pub fn to_apply(
    pool: &HostPool,
    vms: &[VirtualMachine],
    migrations: &[VirtualMachineMigration],
) -> Result<(Vec<VirtualMachineMigration>, Vec<String>), String> {
    let name = pool.name_any();
    let Some(b) = pool.status.as_ref().and_then(|s| s.balancing.as_ref()) else {
        return Err(format!("HostPool {name} has no balancing status yet"));
    };
    if b.recommendations.is_empty() {
        return Err(format!(
            "HostPool {name} has no recommendations to apply{}",
            b.message
                .as_ref()
                .map_or(String::new(), |m| format!(": {m}"))
        ));
    }
    let mut create = Vec::new();
    let mut skipped = Vec::new();
    for r in &b.recommendations {
        if let Some(m) = &r.migration {
            skipped.push(format!("{}: already migrating ({m})", r.vm));
            continue;
        }
        let Some(vm) = vms.iter().find(|v| v.name_any() == r.vm) else {
            skipped.push(format!("{}: no longer exists", r.vm));
            continue;
        };
        let st = vm.status.as_ref();
        let host = st.and_then(|s| s.host.as_deref());
        if host != Some(r.from.as_str()) || st.and_then(|s| s.phase) != Some(VmPhase::Running) {
            skipped.push(format!(
                "{}: no longer running on {} (the next balancing run recommends afresh)",
                r.vm, r.from
            ));
            continue;
        }
        let busy = migrations.iter().any(|m| {
            m.spec.vm_name == r.vm && !m.is_terminal() && m.metadata.deletion_timestamp.is_none()
        });
        if busy {
            skipped.push(format!("{}: a migration is already under way", r.vm));
            continue;
        }
        create.push(balancing::migration(vm, &name, &r.from, &r.to));
    }
    Ok((create, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pool, running, vm};
    use serde_json::json;

    fn balanced_pool() -> HostPool {
        let mut p = pool(json!({"balancing": {
        "lastRun": "2026-01-10T08:00:00Z", "imbalance": "40.2", "target": "12.0",
        "message": "imbalance 40.2 points, over the target 12.0: 1 move(s) bring it to 3.1",
        "recommendations": [
            {"namespace": "vms", "vm": "web-1", "from": "hv-1", "to": "hv-2", "gain": "30.5",
             "cost": "0.2", "memory": "200Mi", "computedAt": "2026-01-10T08:00:00Z"},
            {"namespace": "vms", "vm": "gone", "from": "hv-1", "to": "hv-3", "gain": "5.0",
             "cost": "0.2", "memory": "200Mi", "computedAt": "2026-01-10T08:00:00Z"}
        ]}}));
        p.spec.balancing =
            Some(serde_json::from_value(json!({"automation": "Manual"})).expect("spec"));
        p
    }

    #[test]
    fn the_table_shows_each_move_with_its_numbers() {
        let t = table(&balanced_pool());
        assert!(t.contains("HostPool rack1 (Manual): imbalance 40.2 points, target 12.0"));
        assert!(t.contains("1 move(s) bring it to 3.1"));
        let row = t
            .lines()
            .find(|l| l.starts_with("vms/web-1"))
            .expect("a row for web-1");
        for word in ["hv-1", "hv-2", "30.5", "0.2", "200Mi"] {
            assert!(row.contains(word), "{row}");
        }
        assert!(table(&pool(json!({}))).contains("no balancing"));
    }

    #[test]
    fn apply_creates_migrations_for_vms_still_where_they_were() {
        let p = balanced_pool();
        let web = vm(None, json!({}), running());
        let (create, skipped) = to_apply(&p, std::slice::from_ref(&web), &[]).expect("applies");
        assert_eq!(create.len(), 1);
        let m = &create[0];
        assert_eq!(m.spec.vm_name, "web-1");
        assert_eq!(m.spec.target_host.as_deref(), Some("hv-2"));
        assert_eq!(m.spec.reason.as_deref(), Some("balance"));
        assert_eq!(m.labels()["ferry.dev/balance"], "rack1");
        assert_eq!(m.annotations()["ferry.dev/balance-from"], "hv-1");
        assert_eq!(skipped, ["gone: no longer exists"]);
        // A VM that moved meanwhile is left alone.
        let mut moved = web.clone();
        if let Some(s) = moved.status.as_mut() {
            s.host = Some("hv-3".into());
        }
        let (create, skipped) = to_apply(&p, &[moved], &[]).expect("applies");
        assert!(create.is_empty());
        assert!(skipped[0].contains("no longer running on hv-1"));
        // No recommendations: an error that says why.
        let none = pool(json!({"balancing": {"message": "within the target"}}));
        let e = to_apply(&none, &[web], &[]).expect_err("nothing to apply");
        assert!(
            e.contains("no recommendations to apply: within the target"),
            "{e}"
        );
    }
}
