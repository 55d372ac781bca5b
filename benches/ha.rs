//! Benchmark: HA recovery time after a host power loss, through a real IPMI BMC emulator
//! (`ipmi_sim`): fence confirmed, VMs restarted on the survivor. Run by e2e/bench-ha.sh, which
//! sets FERRY_HA_BENCH to runs like `1x3,5x2` (3 runs with 1 VM, 2 runs with 5 VMs). Each run:
//! fresh lab and cluster, VMs running on h1, the BMC powers h1 off (its hook kills h1's guests
//! and libvirtd) and kubelet goes silent; measured from the power-off: detection and fence
//! confirmation (from the HAPolicy status, 1 s resolution), each domain running on h2 (virsh
//! polled every 100 ms) and each guest's second boot on its console. With
//! `FERRY_HA_BENCH_HANG=1` the host dies without the BMC knowing (it still reports On):
//! detection then waits for the Node NotReady grace and ferry powers the host off through the
//! BMC. Needs a cluster (`KUBECONFIG`) and root; prints one `HA-BENCH` line per run.

#[path = "../tests/support/mod.rs"]
mod support;

use kube::Api;
use std::time::Duration;
use support::ha::{ha_setup_with_ipmi, ipmi_power_off};
use support::hosts::{console, running};
use support::lab;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Ok(spec) = std::env::var("FERRY_HA_BENCH") else {
        eprintln!("FERRY_HA_BENCH not set: nothing to measure");
        return;
    };
    let hang = std::env::var("FERRY_HA_BENCH_HANG").is_ok_and(|v| v == "1");
    let mut rows = Vec::new();
    for part in spec.split(',') {
        let (n, runs) = part.split_once('x').expect("NxRUNS");
        let (n, runs): (usize, usize) = (n.parse().expect("N"), runs.parse().expect("RUNS"));
        for run in 0..runs {
            let names: Vec<String> = (1..=n).map(|i| format!("vm-{i}")).collect();
            let refs: Vec<(&str, Option<&str>)> =
                names.iter().map(|n| (n.as_str(), None)).collect();
            let ((mut c, lab, h1, _h2, ctl), sim) =
                ha_setup_with_ipmi(&format!("ferry-bench-ha{n}-{run}"), &refs, 8, "s3cret").await;
            let ns = c.namespace.clone();
            // Let the controller see the annotation and warm h2 (its first define builds caches).
            tokio::time::sleep(Duration::from_secs(3)).await;
            let t0 = k8s_openapi::jiff::Timestamp::now();
            let start = std::time::Instant::now();
            if hang {
                lab.power_off("h1")
                    .expect("h1 dies; its BMC still reports On");
            } else {
                ipmi_power_off(&sim);
            }
            c.node_not_ready(&h1).await;
            // Each domain running on h2 (virsh), and each guest's second boot on its console
            // (the boot counter on its disk went to 2: it booted again on h2).
            let logs: Vec<_> = names.iter().map(|v| console(&lab, &ns, v)).collect();
            let mut each = Vec::new();
            let mut markers: Vec<Option<f64>> = vec![None; n];
            let deadline = start + Duration::from_secs(300);
            while (each.len() < n || markers.iter().any(Option::is_none))
                && std::time::Instant::now() < deadline
            {
                let now_running = running(&lab, "h2").len();
                while each.len() < now_running {
                    each.push(start.elapsed().as_secs_f64());
                }
                for (m, log) in markers.iter_mut().zip(&logs) {
                    if m.is_none() && lab::console_log(log).contains("FERRY-BOOT 2") {
                        *m = Some(start.elapsed().as_secs_f64());
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(each.len(), n, "all domains running on h2");
            let last_marker = markers
                .iter()
                .map(|m| m.expect("every guest booted again on h2"))
                .fold(0.0, f64::max);
            let policies: Api<ferry::api::HAPolicy> = Api::namespaced(c.client.clone(), &ns);
            let st = policies
                .get("ha")
                .await
                .expect("policy")
                .status
                .expect("status");
            let inc = st
                .incidents
                .iter()
                .find(|i| i.host == h1)
                .expect("incident");
            let secs = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
                (t.0.as_millisecond() - t0.as_millisecond()) as f64 / 1000.0
            };
            let detected = secs(&inc.detected);
            let fenced = inc.proven_off.as_ref().map(secs).unwrap_or(f64::NAN);
            let row = format!(
                "mode={} vms={n} run={run} detected={detected:.0}s fenced={fenced:.0}s first_domain={:.2}s last_domain={:.2}s last_console_boot={last_marker:.2}s",
                if hang { "hang" } else { "bmc-power-off" },
                each[0],
                each[n - 1]
            );
            eprintln!("HA-BENCH {row}");
            rows.push(row);
            drop(ctl);
            drop(sim);
            drop(c);
            drop(lab);
        }
    }
    eprintln!("HA-BENCH summary:\n{}", rows.join("\n"));
}
