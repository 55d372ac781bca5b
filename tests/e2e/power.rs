//! Power management on the lab, with an IPMI BMC emulator per host whose power-off kills the lab
//! host's daemons and guests (`lab.sh power-off`) and whose power-on starts its libvirtd again:
//! a mostly idle pool of three hosts puts the empty one in Standby (the BMC reports Off, its
//! libvirtd is gone), and a VM that fits on no host on powers it on and runs there.

use crate::support::bmc;
use crate::support::cluster::wait_for;
use crate::support::ha::{ipmi_fencing, put_bmc_password};
use crate::support::lab;
use crate::support::objects::{
    BOOT, LABEL, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm,
};
use ferry::api::power::HostPower;
use ferry::api::{HostState, VirtualMachine};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
#[ignore = "needs root, libvirt, QEMU, ipmi_sim and an API server (e2e/run.sh)"]
async fn an_idle_host_goes_to_standby_and_a_waiting_vm_powers_it_on() {
    assert!(
        bmc::missing().is_empty(),
        "BMC emulators missing: {:?}",
        bmc::missing()
    );
    let pool = |lab: &lab::Lab| {
        let mut p = pool_manifest("lab", lab);
        let mut fencing = ipmi_fencing();
        // The BMC's power-on starts the host's libvirtd and answers once it does.
        fencing["requestTimeoutSeconds"] = json!(15);
        p["spec"]["fencing"] = fencing;
        p["spec"]["power"] = json!({"minHostsOn": 2, "standbyAfterSeconds": 10,
                                    "standbyBelowPercent": 90, "wakeAbovePercent": 95});
        p
    };
    let (lab, c, _ctl) =
        crate::support::migration::migration_lab("power", 3, LABEL, pool, json!({})).await;
    // One BMC per lab host; each Node names its own.
    put_bmc_password(&c, "s3cret").await;
    let mut sims = Vec::new();
    for h in &lab.hosts {
        let off = lab.power_off_command(&h.name);
        let on = off.replacen(" power-off ", " start-libvirtd ", 1);
        let sim = bmc::IpmiSim::start_with_power_on("admin", "s3cret", &off, false, &on);
        let addr = sim.address().trim_start_matches("ipmi://").to_string();
        crate::support::ha::set_node_bmc(&c, &format!("{}-{}", c.namespace, h.name), &addr).await;
        sims.push(sim);
    }
    // Two idle one-CPU VMs, spread over two of the three two-CPU hosts.
    for name in ["idle-a", "idle-b"] {
        c.apply::<VirtualMachine>(vm_manifest(name, "lab", &lab, "Always"))
            .await;
    }
    let mut used = Vec::new();
    for name in ["idle-a", "idle-b"] {
        let vm = wait_vm(&c, name, "Ready", BOOT, |vm| {
            ready_reason(vm) == Some(("True".into(), "Running".into()))
        })
        .await;
        used.push(host_of(&vm).expect("host"));
    }
    assert_ne!(used[0], used[1], "Spread: {used:?}");
    // The empty host goes to Standby and is powered off through its BMC.
    let standby = wait_for(
        "a host in Standby, powered off",
        Duration::from_secs(120),
        || {
            let pools = c.pools();
            async move {
                let st = pools.get("lab").await.ok()?.status?;
                st.hosts
                    .into_iter()
                    .find(|h| {
                        h.power() == HostPower::Standby
                            && h.power_message.as_deref()
                                == Some("powered off: the BMC reports Off")
                    })
                    .map(|h| (h.name, h.state))
            }
        },
    )
    .await;
    assert!(
        !used.contains(&standby.0),
        "{standby:?} held a VM: {used:?}"
    );
    assert_eq!(standby.1, HostState::Unreachable, "its libvirtd is gone");
    let lab_name = standby.0.rsplit('-').next().unwrap_or_default().to_string();
    let i = lab
        .hosts
        .iter()
        .position(|h| h.name == lab_name)
        .expect("lab host");
    assert!(!sims[i].power_on(), "the BMC reports Off");
    // A two-CPU VM fits on neither host on (one CPU free on each): the Standby host is powered
    // on and the VM runs there.
    let mut big = vm_manifest("big", "lab", &lab, "Always");
    big["spec"]["cpu"] = json!({"cores": 2});
    let asked = Instant::now();
    c.apply::<VirtualMachine>(big).await;
    let vm = wait_vm(&c, "big", "Ready", BOOT, |vm| {
        ready_reason(vm) == Some(("True".into(), "Running".into()))
    })
    .await;
    let latency = asked.elapsed();
    assert_eq!(host_of(&vm).as_deref(), Some(standby.0.as_str()));
    assert!(sims[i].power_on(), "the BMC reports On");
    let st = c
        .pools()
        .get("lab")
        .await
        .expect("pool")
        .status
        .expect("status");
    let h = st.hosts.iter().find(|h| h.name == standby.0).expect("host");
    assert_eq!(h.power(), HostPower::On, "{h:?}");
    eprintln!(
        "power-on latency: {:.1} s from the VM's creation to its domain running on the woken host",
        latency.as_secs_f64()
    );
}
