//! Evacuating hosts (maintenance, cordoned Nodes): which VMs to live-migrate away, which
//! migrations to withdraw when an evacuation is cancelled, and what holds an evacuation up.
//! Creating the migrations is all an evacuation does: the migration controller runs them within
//! the pool's limits.

use std::collections::BTreeSet;

/// A VM placed on one of the pool's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// VM name.
    pub name: String,
    /// Its host.
    pub host: String,
    /// The domain runs (only running VMs live-migrate).
    pub running: bool,
    /// Its eviction strategy lets it be moved.
    pub movable: bool,
}

/// A migration of one of the pool's VMs, as an evacuation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// Migration name.
    pub name: String,
    /// The VM it moves.
    pub vm: String,
    /// The host it evacuates, when an evacuation created it.
    pub evacuates: Option<String>,
    /// It has not finished.
    pub unfinished: bool,
    /// It holds a slot and may be moving the VM (Scheduled or Running).
    pub started: bool,
    /// It ended in failure (Failed), with its message.
    pub failed: Option<String>,
    /// Why it waits (a Pending migration's message).
    pub waiting: Option<String>,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// VMs to create an evacuation migration for, with the host they leave.
    pub create: Vec<(String, String)>,
    /// Evacuation migrations to delete: their host is no longer evacuated and they have not
    /// started (started ones finish).
    pub withdraw: Vec<String>,
    /// Per evacuated host: VMs still on it and why each one stays or waits.
    pub hosts: Vec<HostReport>,
}

/// One evacuated host's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostReport {
    /// Host name.
    pub host: String,
    /// VMs moving now.
    pub moving: Vec<String>,
    /// VMs waiting for a slot or a target, with the reason.
    pub waiting: Vec<(String, String)>,
    /// Running VMs that will not move, with the reason.
    pub blocked: Vec<(String, String)>,
    /// VMs that do not run (they stay assigned to the host).
    pub stopped: Vec<String>,
}

impl HostReport {
    /// Nothing runs on the host any more.
    pub fn done(&self) -> bool {
        self.moving.is_empty() && self.waiting.is_empty() && self.blocked.is_empty()
    }
}

/// Plan the evacuation of `draining` hosts. A VM gets a migration when it runs, may move, and has
/// no unfinished migration; a failed evacuation migration is not retried on its own (its message
/// is reported; deleting it retries).
pub fn plan(draining: &BTreeSet<String>, vms: &[Vm], migrations: &[Migration]) -> Plan {
    let mut out = Plan::default();
    for m in migrations {
        if let Some(h) = &m.evacuates
            && !draining.contains(h)
            && m.unfinished
            && !m.started
        {
            out.withdraw.push(m.name.clone());
        }
    }
    for host in draining {
        let mut report = HostReport {
            host: host.clone(),
            ..HostReport::default()
        };
        for vm in vms.iter().filter(|v| &v.host == host) {
            let mine: Vec<&Migration> = migrations.iter().filter(|m| m.vm == vm.name).collect();
            if !vm.running {
                report.stopped.push(vm.name.clone());
                continue;
            }
            if !vm.movable {
                report
                    .blocked
                    .push((vm.name.clone(), "evictionStrategy None".into()));
                continue;
            }
            if let Some(m) = mine.iter().find(|m| m.unfinished) {
                if m.started {
                    report.moving.push(vm.name.clone());
                } else {
                    let why = m
                        .waiting
                        .clone()
                        .unwrap_or_else(|| format!("migration {} queued", m.name));
                    report.waiting.push((vm.name.clone(), why));
                }
                continue;
            }
            if let Some(m) = mine
                .iter()
                .rev()
                .find(|m| m.evacuates.as_deref() == Some(host.as_str()))
                && let Some(why) = &m.failed
            {
                report.blocked.push((
                    vm.name.clone(),
                    format!("migration {} failed: {why} (delete it to retry)", m.name),
                ));
                continue;
            }
            out.create.push((vm.name.clone(), host.clone()));
            report
                .waiting
                .push((vm.name.clone(), "migration being created".into()));
        }
        out.hosts.push(report);
    }
    out
}

/// One line per host for the pool's `Evacuating` condition.
pub fn summary(reports: &[HostReport]) -> String {
    reports
        .iter()
        .map(|r| {
            if r.done() {
                return format!("host {}: evacuated{}", r.host, stopped_note(&r.stopped));
            }
            let mut parts = Vec::new();
            if !r.moving.is_empty() {
                parts.push(format!("moving {}", r.moving.join(", ")));
            }
            if !r.waiting.is_empty() {
                let w: Vec<String> = r
                    .waiting
                    .iter()
                    .map(|(v, why)| format!("{v} ({why})"))
                    .collect();
                parts.push(format!("waiting: {}", w.join(", ")));
            }
            if !r.blocked.is_empty() {
                let b: Vec<String> = r
                    .blocked
                    .iter()
                    .map(|(v, why)| format!("{v} ({why})"))
                    .collect();
                parts.push(format!("cannot move: {}", b.join(", ")));
            }
            format!(
                "host {}: {}{}",
                r.host,
                parts.join("; "),
                stopped_note(&r.stopped)
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

fn stopped_note(stopped: &[String]) -> String {
    if stopped.is_empty() {
        String::new()
    } else {
        format!(
            " ({} stopped VM(s) stay assigned: {})",
            stopped.len(),
            stopped.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, host: &str, running: bool, movable: bool) -> Vm {
        Vm {
            name: name.into(),
            host: host.into(),
            running,
            movable,
        }
    }

    fn mig(name: &str, vm: &str, evacuates: Option<&str>) -> Migration {
        Migration {
            name: name.into(),
            vm: vm.into(),
            evacuates: evacuates.map(String::from),
            unfinished: true,
            started: false,
            failed: None,
            waiting: None,
        }
    }

    fn hosts(h: &[&str]) -> BTreeSet<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_running_movable_vm_without_a_migration_gets_one() {
        let vms = [
            vm("a", "h1", true, true),
            vm("b", "h1", true, true),
            vm("c", "h2", true, true),
            vm("stopped", "h1", false, true),
            vm("pinned", "h1", true, false),
        ];
        let p = plan(&hosts(&["h1"]), &vms, &[]);
        assert_eq!(
            p.create,
            vec![("a".into(), "h1".into()), ("b".into(), "h1".into())]
        );
        let r = &p.hosts[0];
        assert_eq!(r.stopped, vec!["stopped".to_string()]);
        assert_eq!(
            r.blocked,
            vec![("pinned".to_string(), "evictionStrategy None".to_string())]
        );
        assert!(!r.done());
        let s = summary(&p.hosts);
        assert!(
            s.contains("cannot move: pinned (evictionStrategy None)"),
            "{s}"
        );
        assert!(s.contains("1 stopped VM(s) stay assigned: stopped"), "{s}");
    }

    #[test]
    fn existing_migrations_are_followed_not_duplicated() {
        let vms = [vm("a", "h1", true, true), vm("b", "h1", true, true)];
        let mut running = mig("m-a", "a", Some("h1"));
        running.started = true;
        let mut queued = mig("m-b", "b", None);
        queued.waiting = Some("waiting for a migration slot".into());
        let p = plan(&hosts(&["h1"]), &vms, &[running, queued]);
        assert!(p.create.is_empty());
        assert_eq!(p.hosts[0].moving, vec!["a".to_string()]);
        assert_eq!(
            p.hosts[0].waiting,
            vec![("b".to_string(), "waiting for a migration slot".to_string())]
        );
    }

    #[test]
    fn a_failed_evacuation_migration_blocks_until_deleted() {
        let vms = [vm("a", "h1", true, true)];
        let mut failed = mig("m-a", "a", Some("h1"));
        failed.unfinished = false;
        failed.failed = Some("no host fits".into());
        let p = plan(&hosts(&["h1"]), &vms, &[failed]);
        assert!(p.create.is_empty());
        assert!(p.hosts[0].blocked[0].1.contains("no host fits"));
        // A failed manual migration does not block an evacuation.
        let mut manual = mig("manual", "a", None);
        manual.unfinished = false;
        manual.failed = Some("x".into());
        let p = plan(&hosts(&["h1"]), &vms, &[manual]);
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn cancelling_withdraws_queued_migrations_and_lets_started_ones_finish() {
        let mut started = mig("m-a", "a", Some("h1"));
        started.started = true;
        let queued = mig("m-b", "b", Some("h1"));
        let manual = mig("m-c", "c", None);
        let p = plan(&hosts(&[]), &[], &[started, queued, manual]);
        assert_eq!(p.withdraw, vec!["m-b".to_string()]);
        assert!(p.create.is_empty() && p.hosts.is_empty());
    }

    #[test]
    fn an_empty_host_is_evacuated() {
        let p = plan(&hosts(&["h1"]), &[vm("s", "h1", false, true)], &[]);
        assert!(p.hosts[0].done());
        assert_eq!(
            summary(&p.hosts),
            "host h1: evacuated (1 stopped VM(s) stay assigned: s)"
        );
    }
}
