//! What the dashboard's pages show, as JSON built from the controller's caches: pure functions
//! of the objects, what the user may see, and the page asked for. Lists are filtered, sorted and
//! cut into pages here, so a pool of 10,000 VMs sends the browser one page of rows.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::{HAPolicy, HostPool, MigrationPhase, VirtualMachine, VirtualMachineMigration};
use crate::plan::quantity::parse_bytes;

/// Rows per page when the request does not say.
pub const PER_PAGE: usize = 50;
/// Rows per page at most.
pub const MAX_PER_PAGE: usize = 500;

/// A page of a list: its number (from 1) and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub number: usize,
    pub size: usize,
}

impl Page {
    /// The page `number` and `size` from a query, bounded.
    pub fn new(number: Option<usize>, size: Option<usize>) -> Page {
        Page {
            number: number.unwrap_or(1).max(1),
            size: size.unwrap_or(PER_PAGE).clamp(1, MAX_PER_PAGE),
        }
    }

    /// `{total, page, perPage, pages, items}` of the `rows`' page.
    pub fn cut<T>(&self, rows: Vec<T>, row: impl Fn(&T) -> Value) -> Value {
        let total = rows.len();
        let pages = total.div_ceil(self.size).max(1);
        let number = self.number.min(pages);
        let items: Vec<Value> = rows
            .iter()
            .skip((number - 1) * self.size)
            .take(self.size)
            .map(row)
            .collect();
        json!({"total": total, "page": number, "perPage": self.size, "pages": pages, "items": items})
    }
}

/// Which VMs a list shows (every field optional; `text` matches part of the name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFilter {
    pub namespace: Option<String>,
    pub pool: Option<String>,
    pub host: Option<String>,
    pub phase: Option<String>,
    pub text: Option<String>,
}

impl VmFilter {
    fn matches(&self, vm: &VirtualMachine) -> bool {
        let status = vm.status.as_ref();
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| w.is_empty() || Some(w) == have)
        };
        eq(&self.namespace, vm.metadata.namespace.as_deref())
            && eq(&self.pool, Some(vm.spec.host_pool.as_str()))
            && eq(&self.host, status.and_then(|s| s.host.as_deref()))
            && eq(
                &self.phase,
                status
                    .and_then(|s| s.phase)
                    .map(|p| p.to_string())
                    .as_deref(),
            )
            && self
                .text
                .as_deref()
                .is_none_or(|t| t.is_empty() || vm.name_any().contains(t))
    }
}

/// The VMs `filter` selects among those `visible` lets the user see, by namespace and name,
/// cut to `page`.
pub fn vm_list(
    vms: &[Arc<VirtualMachine>],
    visible: impl Fn(&str) -> bool,
    filter: &VmFilter,
    page: Page,
) -> Value {
    let mut rows: Vec<&Arc<VirtualMachine>> = vms
        .iter()
        .filter(|vm| visible(vm.metadata.namespace.as_deref().unwrap_or_default()))
        .filter(|vm| filter.matches(vm))
        .collect();
    rows.sort_unstable_by(|a, b| {
        (a.metadata.namespace.as_deref(), a.metadata.name.as_deref())
            .cmp(&(b.metadata.namespace.as_deref(), b.metadata.name.as_deref()))
    });
    page.cut(rows, |vm| vm_row(vm))
}

/// One VM as a list row.
pub fn vm_row(vm: &VirtualMachine) -> Value {
    let status = vm.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| json!({"status": c.status, "reason": c.reason, "message": c.message}));
    let ip = status.and_then(|s| {
        s.interfaces.iter().find_map(|i| {
            i.ip_address
                .clone()
                .or_else(|| i.ip_addresses.first().cloned())
        })
    });
    json!({
        "namespace": vm.metadata.namespace,
        "name": vm.metadata.name,
        "pool": vm.spec.host_pool,
        "runStrategy": format!("{:?}", vm.run_strategy()),
        "phase": status.and_then(|s| s.phase).map(|p| p.to_string()),
        "host": status.and_then(|s| s.host.clone()),
        "ip": ip,
        "ready": ready,
        "cpus": status.and_then(|s| s.resources.as_ref()).map(|r| r.cpus),
        "memory": status.and_then(|s| s.resources.as_ref()).map(|r| r.memory.clone()),
        "migration": status.and_then(|s| s.migration.clone()),
    })
}

/// A VM's page: its row, spec and status as stored, and the migrations that moved it.
pub fn vm_detail(vm: &VirtualMachine, migrations: &[Arc<VirtualMachineMigration>]) -> Value {
    let ns = vm.metadata.namespace.as_deref();
    let mut moves: Vec<&Arc<VirtualMachineMigration>> = migrations
        .iter()
        .filter(|m| m.metadata.namespace.as_deref() == ns && m.spec.vm_name == vm.name_any())
        .collect();
    moves.sort_by_key(|m| std::cmp::Reverse(created(m)));
    moves.truncate(10);
    json!({
        "vm": vm_row(vm),
        "annotations": vm.metadata.annotations,
        "spec": vm.spec,
        "status": vm.status,
        "conditions": vm.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
        "migrations": moves.iter().map(|m| migration_row(m)).collect::<Vec<_>>(),
    })
}

/// The `n` most recent of `events` (by event time, else last seen, else creation), newest
/// first, as the VM page shows them.
pub fn event_rows(mut events: Vec<Arc<Event>>, n: usize) -> Vec<Value> {
    let when = |e: &Event| {
        e.event_time
            .as_ref()
            .map(|t| t.0)
            .or(e.last_timestamp.as_ref().map(|t| t.0))
            .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    events.sort_by_key(|e| std::cmp::Reverse(when(e)));
    events
        .iter()
        .take(n)
        .map(|e| {
            json!({
                "time": when(e).map(|t| t.to_string()),
                "type": e.type_,
                "reason": e.reason,
                "message": e.message,
                "count": e.count,
            })
        })
        .collect()
}

/// The pools the user may see, each with its hosts' totals.
pub fn pool_list(
    pools: &[Arc<HostPool>],
    vms: &[Arc<VirtualMachine>],
    visible: impl Fn(&str) -> bool,
) -> Value {
    let mut shown: Vec<&Arc<HostPool>> = pools
        .iter()
        .filter(|p| visible(p.metadata.namespace.as_deref().unwrap_or_default()))
        .collect();
    shown.sort_by_key(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()));
    let rows: Vec<Value> = shown
        .iter()
        .map(|p| {
            let hosts = p
                .status
                .as_ref()
                .map(|s| s.hosts.as_slice())
                .unwrap_or_default();
            let sum = |f: &dyn Fn(
                &crate::api::host_pool::HostStatus,
            ) -> Option<&crate::api::host_pool::Resources>| {
                hosts.iter().filter_map(f).fold((0i64, 0u64), |(c, m), r| {
                    (c + r.cpus, m + parse_bytes(&r.memory).unwrap_or(0))
                })
            };
            let (cap_cpus, cap_mem) = sum(&|h| h.allocatable.as_ref().or(h.capacity.as_ref()));
            let (used_cpus, used_mem) = sum(&|h| h.allocated.as_ref());
            let ns = p.metadata.namespace.as_deref();
            let name = p.name_any();
            let vm_count = vms
                .iter()
                .filter(|v| v.metadata.namespace.as_deref() == ns && v.spec.host_pool == name)
                .count();
            json!({
                "namespace": ns,
                "name": name,
                "selectedHosts": p.status.as_ref().map(|s| s.selected_hosts),
                "readyHosts": p.status.as_ref().map(|s| s.ready_hosts),
                "conditions": p.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
                "cpus": {"allocatable": cap_cpus, "allocated": used_cpus},
                "memoryBytes": {"allocatable": cap_mem, "allocated": used_mem},
                "vms": vm_count,
            })
        })
        .collect();
    json!({ "items": rows })
}

/// A pool's hosts: state, HA verdict, versions, capacity and allocation (memory also in bytes,
/// for the bars).
pub fn pool_detail(pool: &HostPool) -> Value {
    let bytes = |r: Option<&crate::api::host_pool::Resources>| {
        r.map(|r| json!({"cpus": r.cpus, "memory": r.memory, "memoryBytes": parse_bytes(&r.memory).ok()}))
    };
    let hosts: Vec<Value> = pool
        .status
        .as_ref()
        .map(|s| s.hosts.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            json!({
                "name": h.name,
                "state": h.state,
                "message": h.message,
                "haVerdict": h.ha_verdict,
                "libvirtVersion": h.libvirt_version,
                "hypervisorVersion": h.hypervisor_version,
                "lastContact": h.last_contact,
                "capacity": bytes(h.capacity.as_ref()),
                "allocatable": bytes(h.allocatable.as_ref()),
                "allocated": bytes(h.allocated.as_ref()),
                "vmCount": h.vm_count,
                "foreignDomains": h.foreign_domains,
                "load": h.load,
            })
        })
        .collect();
    json!({
        "namespace": pool.metadata.namespace,
        "name": pool.name_any(),
        "selectedHosts": pool.status.as_ref().map(|s| s.selected_hosts),
        "readyHosts": pool.status.as_ref().map(|s| s.ready_hosts),
        "conditions": pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
        "hosts": hosts,
    })
}

fn created(m: &VirtualMachineMigration) -> Option<k8s_openapi::jiff::Timestamp> {
    m.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn ended(m: &VirtualMachineMigration) -> bool {
    matches!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(MigrationPhase::Succeeded | MigrationPhase::Failed | MigrationPhase::Cancelled)
    )
}

/// One migration with its progress: the share of memory sent (`transferred / (transferred +
/// remaining)`), when the hypervisor reported both.
pub fn migration_row(m: &VirtualMachineMigration) -> Value {
    let s = m.status.as_ref();
    let progress = s.and_then(
        |s| match (s.data_transferred_bytes, s.data_remaining_bytes) {
            (Some(done), Some(left)) if done + left > 0 => Some(done as f64 / (done + left) as f64),
            _ => None,
        },
    );
    let progress = if s.and_then(|s| s.phase) == Some(MigrationPhase::Succeeded) {
        Some(1.0)
    } else {
        progress
    };
    json!({
        "namespace": m.metadata.namespace,
        "name": m.metadata.name,
        "vm": m.spec.vm_name,
        "targetHost": m.spec.target_host,
        "reason": m.spec.reason,
        "phase": s.and_then(|s| s.phase),
        "source": s.and_then(|s| s.source.clone()),
        "target": s.and_then(|s| s.target.clone()),
        "startTime": s.and_then(|s| s.start_time.clone()),
        "endTime": s.and_then(|s| s.end_time.clone()),
        "transferredBytes": s.and_then(|s| s.data_transferred_bytes),
        "remainingBytes": s.and_then(|s| s.data_remaining_bytes),
        "downtimeMs": s.and_then(|s| s.downtime_ms),
        "message": s.and_then(|s| s.message.clone()),
        "progress": progress,
        "created": m.metadata.creation_timestamp,
    })
}

/// Migrations the user may see: those under way first, then the most recent ended ones
/// (at most `recent` of those).
pub fn migration_list(
    migrations: &[Arc<VirtualMachineMigration>],
    visible: impl Fn(&str) -> bool,
    recent: usize,
) -> Value {
    let mut shown: Vec<&Arc<VirtualMachineMigration>> = migrations
        .iter()
        .filter(|m| visible(m.metadata.namespace.as_deref().unwrap_or_default()))
        .collect();
    shown.sort_by_key(|m| std::cmp::Reverse(created(m)));
    let (open, done): (Vec<_>, Vec<_>) = shown.into_iter().partition(|m| !ended(m));
    json!({
        "active": open.iter().map(|m| migration_row(m)).collect::<Vec<_>>(),
        "recent": done.iter().take(recent).map(|m| migration_row(m)).collect::<Vec<_>>(),
    })
}

/// One step of an incident's timeline: when, which kind (`detected`, `off`, `released`,
/// `restarted`, `back`), the VM it is about (for `released` and `restarted`), and what happened.
struct Step {
    at: Time,
    kind: &'static str,
    vm: Option<String>,
    what: String,
}

/// HA incidents of the policies the user may see, newest first, each as a timeline: detected,
/// proven off (fenced, or how else), each VM handed over for restart and restarted (where), the
/// host back. Steps are in the order of their times (the API's times have whole seconds; steps
/// of the same second keep that order).
pub fn incident_list(policies: &[Arc<HAPolicy>], visible: impl Fn(&str) -> bool) -> Value {
    let mut rows: Vec<(Option<Time>, Value)> = Vec::new();
    for p in policies
        .iter()
        .filter(|p| visible(p.metadata.namespace.as_deref().unwrap_or_default()))
    {
        for i in p
            .status
            .as_ref()
            .map(|s| s.incidents.as_slice())
            .unwrap_or_default()
        {
            let step = |at: &Time, kind, vm: Option<&str>, what: String| Step {
                at: at.clone(),
                kind,
                vm: vm.map(str::to_string),
                what,
            };
            let mut steps = vec![step(
                &i.detected,
                "detected",
                None,
                format!("host {} failure detected", i.host),
            )];
            if let Some(t) = &i.proven_off {
                let what = match i.evidence.as_deref() {
                    Some("Fenced") => format!("host {} fenced (proven off)", i.host),
                    Some("Confirmed") => format!("host {} confirmed off by a person", i.host),
                    Some(how) => format!("host {} proven off ({how})", i.host),
                    None => format!("host {} proven off", i.host),
                };
                steps.push(step(t, "off", None, what));
            }
            for vm in &i.vms {
                if let Some(t) = &vm.released {
                    let what = format!("{} handed over for restart", vm.name);
                    steps.push(step(t, "released", Some(&vm.name), what));
                }
                if let Some(t) = &vm.running {
                    let at = vm
                        .host
                        .as_deref()
                        .map(|h| format!(" on {h}"))
                        .unwrap_or_default();
                    let what = format!("{} restarted{at}", vm.name);
                    steps.push(step(t, "restarted", Some(&vm.name), what));
                }
            }
            if let Some(t) = &i.host_back {
                steps.push(step(t, "back", None, format!("host {} back", i.host)));
            }
            steps.sort_by_key(|s| s.at.0);
            let first = steps.first().map(|s| s.at.0);
            let timeline: Vec<Value> = steps
                .iter()
                .map(|s| {
                    let after = first
                        .map(|f| (s.at.0.as_millisecond() - f.as_millisecond()) as f64 / 1000.0);
                    json!({"at": s.at, "afterSeconds": after, "step": s.kind, "vm": s.vm,
                           "what": s.what})
                })
                .collect();
            let waiting: Vec<Value> = i
                .vms
                .iter()
                .filter_map(|v| {
                    v.waiting
                        .as_ref()
                        .map(|w| json!({"vm": v.name, "waiting": w}))
                })
                .collect();
            let restarted = i.vms.iter().filter(|v| v.running.is_some()).count();
            rows.push((
                Some(i.detected.clone()),
                json!({
                    "policy": p.name_any(),
                    "namespace": p.metadata.namespace,
                    "incident": i.name,
                    "host": i.host,
                    "pool": i.pool,
                    "evidence": i.evidence,
                    "vms": i.vms.len(),
                    "restarted": restarted,
                    "timeline": timeline,
                    "waiting": waiting,
                }),
            ));
        }
    }
    rows.sort_by_key(|(t, _)| std::cmp::Reverse(t.as_ref().map(|t| t.0)));
    json!({"items": rows.into_iter().map(|(_, v)| v).collect::<Vec<_>>()})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(ns: &str, name: &str, pool: &str, status: Value) -> Arc<VirtualMachine> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"hostPool": pool, "cpu": {"cores": 1}, "memory": "1Gi"},
                "status": status,
            }))
            .expect("valid VM"),
        )
    }

    fn running(host: &str) -> Value {
        json!({"phase": "Running", "host": host,
               "interfaces": [{"name": "eth0", "mac": "52:54:00:00:00:01", "ipAddress": "10.0.0.5"}],
               "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                               "message": "running", "lastTransitionTime": "2026-01-10T08:00:00Z"}]})
    }

    #[test]
    fn a_large_pool_is_filtered_sorted_and_paged_on_the_server() {
        let mut vms = Vec::new();
        for i in (0..10_000).rev() {
            let ns = if i % 2 == 0 { "team-a" } else { "team-b" };
            let host = format!("hv-{}", i % 500);
            vms.push(vm(ns, &format!("vm-{i:05}"), "rack1", running(&host)));
        }
        let only_a = |ns: &str| ns == "team-a";
        let started = std::time::Instant::now();
        let page = vm_list(
            &vms,
            only_a,
            &VmFilter::default(),
            Page::new(Some(2), Some(100)),
        );
        let took = started.elapsed();
        assert_eq!(page["total"], 5000, "only team-a's VMs");
        assert_eq!(page["pages"], 50);
        assert_eq!(page["items"].as_array().map(Vec::len), Some(100));
        assert_eq!(
            page["items"][0]["name"], "vm-00200",
            "sorted by name, page 2"
        );
        assert_eq!(page["items"][0]["ip"], "10.0.0.5");
        assert_eq!(page["items"][0]["ready"]["reason"], "Running");
        assert!(took < std::time::Duration::from_millis(500), "{took:?}");

        let on_host = VmFilter {
            host: Some("hv-4".into()),
            ..Default::default()
        };
        let page = vm_list(&vms, |_| true, &on_host, Page::new(None, None));
        assert_eq!(page["total"], 20);
        let named = VmFilter {
            text: Some("vm-0999".into()),
            ..Default::default()
        };
        assert_eq!(
            vm_list(&vms, |_| true, &named, Page::new(None, None))["total"],
            10
        );
        // A page past the end shows the last one; sizes are bounded.
        let last = vm_list(
            &vms,
            |_| true,
            &VmFilter::default(),
            Page::new(Some(999), Some(10_000)),
        );
        assert_eq!(last["perPage"], MAX_PER_PAGE);
        assert_eq!(last["page"], 20);
        assert_eq!(
            vm_list(&vms, |_| false, &VmFilter::default(), Page::new(None, None))["total"],
            0
        );
    }

    #[test]
    fn pools_sum_their_hosts_and_show_each_host() {
        let pool: HostPool = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
            "metadata": {"name": "rack1", "namespace": "infra"},
            "spec": {"nodeSelector": {}, "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
                     "storage": {"pool": "ferry"}},
            "status": {"selectedHosts": 2, "readyHosts": 1, "hosts": [
                {"name": "hv-1", "state": "Ready", "libvirtVersion": "9.0.0", "hypervisorVersion": "7.2.0",
                 "capacity": {"cpus": 8, "memory": "16Gi"}, "allocatable": {"cpus": 6, "memory": "12Gi"},
                 "allocated": {"cpus": 3, "memory": "6Gi"}, "vmCount": 3, "haVerdict": "Healthy"},
                {"name": "hv-2", "state": "Unreachable", "haVerdict": "Fenced",
                 "allocatable": {"cpus": 6, "memory": "12Gi"}}
            ]},
        }))
        .expect("valid pool");
        let pools = [Arc::new(pool)];
        let vms = [
            vm("infra", "a", "rack1", running("hv-1")),
            vm("other", "b", "rack1", running("hv-1")),
        ];
        let list = pool_list(&pools, &vms, |_| true);
        let p = &list["items"][0];
        assert_eq!(p["cpus"], json!({"allocatable": 12, "allocated": 3}));
        assert_eq!(p["memoryBytes"]["allocated"], 6u64 << 30);
        assert_eq!(p["vms"], 1, "VMs of the pool's namespace only");
        assert_eq!(
            pool_list(&pools, &vms, |ns| ns != "infra")["items"],
            json!([])
        );

        let detail = pool_detail(&pools[0]);
        assert_eq!(detail["hosts"][0]["libvirtVersion"], "9.0.0");
        assert_eq!(detail["hosts"][0]["allocated"]["memoryBytes"], 6u64 << 30);
        assert_eq!(detail["hosts"][1]["haVerdict"], "Fenced");
        assert_eq!(detail["hosts"][1]["capacity"], Value::Null);
    }

    #[test]
    fn migrations_show_progress_and_open_ones_first() {
        let m = |name: &str, created: &str, status: Value| {
            Arc::new(
                serde_json::from_value::<VirtualMachineMigration>(json!({
                    "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineMigration",
                    "metadata": {"name": name, "namespace": "team", "creationTimestamp": created},
                    "spec": {"vmName": "web"}, "status": status,
                }))
                .expect("valid migration"),
            )
        };
        let all = [
            m("old", "2026-01-01T00:00:00Z", json!({"phase": "Succeeded"})),
            m(
                "now",
                "2026-01-02T00:00:00Z",
                json!({"phase": "Running", "dataTransferredBytes": 300, "dataRemainingBytes": 100}),
            ),
        ];
        let list = migration_list(&all, |_| true, 5);
        assert_eq!(list["active"][0]["name"], "now");
        assert_eq!(list["active"][0]["progress"], 0.75);
        assert_eq!(list["recent"][0]["progress"], 1.0);
        let v = vm("team", "web", "rack1", running("hv-1"));
        assert_eq!(vm_detail(&v, &all)["migrations"][0]["name"], "now");
    }

    #[test]
    fn a_vms_events_newest_first_and_at_most_n() {
        let e = |name: &str, event_time: Option<&str>, last: Option<&str>| {
            Arc::new(
                serde_json::from_value::<Event>(json!({
                    "metadata": {"name": name, "namespace": "team",
                                 "creationTimestamp": "2026-01-10T07:00:00Z"},
                    "involvedObject": {"kind": "VirtualMachine", "name": "web"},
                    "reason": name, "eventTime": event_time, "lastTimestamp": last,
                }))
                .expect("valid Event"),
            )
        };
        let rows = event_rows(
            vec![
                e("old", None, None),
                e("series", None, Some("2026-01-10T08:00:05Z")),
                e("new", Some("2026-01-10T08:00:09.000000Z"), None),
                e("mid", None, Some("2026-01-10T08:00:01Z")),
            ],
            3,
        );
        let reasons: Vec<&str> = rows.iter().filter_map(|r| r["reason"].as_str()).collect();
        assert_eq!(reasons, ["new", "series", "mid"]);
    }

    #[test]
    fn incidents_read_as_a_timeline() {
        let policy: HAPolicy = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
            "metadata": {"name": "default", "namespace": "infra"},
            "spec": {"hostPools": ["rack1"]},
            "status": {"incidents": [{
                "name": "hv-2-1", "host": "hv-2", "detected": "2026-01-10T08:00:00Z",
                "provenOff": "2026-01-10T08:00:01Z", "evidence": "Fenced",
                // Listed by name; the second wave (web) was handed over once db ran.
                "vms": [{"name": "db", "released": "2026-01-10T08:00:01Z",
                         "host": "hv-1", "running": "2026-01-10T08:00:03Z"},
                        {"name": "lost", "waiting": "no capacity"},
                        {"name": "web", "released": "2026-01-10T08:00:03Z",
                         "host": "hv-3", "running": "2026-01-10T08:00:06Z"}]
            }, {
                "name": "hv-1-0", "host": "hv-1", "detected": "2026-01-09T08:00:00Z",
                "provenOff": "2026-01-09T08:00:30Z", "evidence": "Confirmed",
                "hostBack": "2026-01-09T09:00:00Z"
            }]},
        }))
        .expect("valid policy");
        let policies = [Arc::new(policy)];
        let list = incident_list(&policies, |_| true);
        let newest = &list["items"][0];
        assert_eq!(newest["incident"], "hv-2-1", "newest first");
        let timeline = newest["timeline"].as_array().expect("timeline");
        let steps: Vec<(&str, &str, &str)> = timeline
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap_or_default(),
                    s["at"].as_str().unwrap_or_default(),
                    s["what"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            steps,
            [
                (
                    "detected",
                    "2026-01-10T08:00:00Z",
                    "host hv-2 failure detected"
                ),
                (
                    "off",
                    "2026-01-10T08:00:01Z",
                    "host hv-2 fenced (proven off)"
                ),
                (
                    "released",
                    "2026-01-10T08:00:01Z",
                    "db handed over for restart"
                ),
                ("restarted", "2026-01-10T08:00:03Z", "db restarted on hv-1"),
                (
                    "released",
                    "2026-01-10T08:00:03Z",
                    "web handed over for restart"
                ),
                ("restarted", "2026-01-10T08:00:06Z", "web restarted on hv-3"),
            ]
        );
        assert_eq!(timeline[0]["vm"], Value::Null);
        assert_eq!(timeline[5]["vm"], "web");
        assert_eq!(timeline[5]["afterSeconds"], 6.0);
        assert_eq!(newest["vms"], 3);
        assert_eq!(newest["restarted"], 2);
        assert_eq!(newest["waiting"][0]["vm"], "lost");

        let older: Vec<&str> = list["items"][1]["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .filter_map(|s| s["what"].as_str())
            .collect();
        assert_eq!(
            older,
            [
                "host hv-1 failure detected",
                "host hv-1 confirmed off by a person",
                "host hv-1 back",
            ]
        );
        assert_eq!(
            incident_list(&policies, |ns| ns != "infra")["items"],
            json!([])
        );
    }
}
