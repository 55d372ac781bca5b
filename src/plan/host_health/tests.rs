use super::*;
use HostVerdict as V;

const NOW: i64 = 1_800_000_000;

fn at(secs_ago: i64) -> Timestamp {
    Timestamp::from_second(NOW - secs_ago).expect("valid time")
}

fn sig(up: bool, secs_ago: i64) -> Signal {
    Signal {
        up,
        since: at(secs_ago),
    }
}

/// A healthy host with fencing configured and VMs on it; cases change what they need.
fn base() -> Inputs {
    Inputs {
        node: Some(sig(true, 1000)),
        libvirt: sig(true, 1000),
        bmc: None,
        fencing_configured: true,
        human_confirmed: false,
        fence: FenceRecord::default(),
        storm: false,
        has_vms: true,
        shut_off_confirmed: false,
        stale_domains: false,
        standby: false,
        previous: V::Healthy,
        previous_since: at(1000),
        now: at(0),
    }
}

fn failed_fence(attempts: u32, secs_ago: i64) -> FenceRecord {
    FenceRecord {
        attempts,
        last_attempt: Some(at(secs_ago)),
        last_error: Some("401 Unauthorized".into()),
        confirmed_at: None,
        in_flight: false,
    }
}

/// The record of a fence the BMC confirmed `secs_ago`.
fn confirmed(secs_ago: i64) -> FenceRecord {
    FenceRecord {
        attempts: 1,
        last_attempt: Some(at(secs_ago + 1)),
        confirmed_at: Some(at(secs_ago)),
        ..FenceRecord::default()
    }
}

#[test]
fn verdict_table() {
    let t = Timings::default(); // NotReady grace 30 s, libvirt grace 10 s, LiveMigrate
    let restart = Timings {
        action: NotReadyAction::Restart,
        ..t
    };
    let then_restart = Timings {
        action: NotReadyAction::LiveMigrateThenRestart,
        evacuation_deadline: Duration::from_secs(60),
        ..t
    };
    let none = Timings {
        action: NotReadyAction::None,
        ..t
    };
    #[rustfmt::skip]
    let cases: Vec<(&str, Inputs, Timings, V, HostAction)> = vec![
        ("all well", base(), t, V::Healthy, HostAction::None),
        ("Standby: Node NotReady, libvirt down, BMC Off: no fence, no incident", Inputs { node: Some(sig(false, 600)), libvirt: sig(false, 600), bmc: Some(Power::Off), standby: true, ..base() }, t, V::Standby, HostAction::None),
        ("Standby, Node gone, no fencing configured: nobody is asked to confirm", Inputs { node: None, libvirt: sig(false, 600), fencing_configured: false, standby: true, ..base() }, restart, V::Standby, HostAction::None),
        ("Standby (Waking) while libvirt answers and the Node is NotReady: nothing is stopped", Inputs { node: Some(sig(false, 600)), standby: true, ..base() }, restart, V::Standby, HostAction::None),
        ("an incident under way goes on even if the host is put in Standby", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), fence: FenceRecord { attempts: 1, in_flight: true, ..Default::default() }, standby: true, previous: V::Fencing, ..base() }, t, V::Fencing, HostAction::None),
        ("partition: Node Ready, libvirt down long", Inputs { libvirt: sig(false, 600), ..base() }, t, V::Degraded, HostAction::None),
        ("partition with BMC On stays degraded", Inputs { libvirt: sig(false, 600), bmc: Some(Power::On), ..base() }, t, V::Degraded, HostAction::None),
        ("BMC Off: down now, no grace waited", Inputs { libvirt: sig(false, 1), bmc: Some(Power::Off), ..base() }, t, V::Fencing, HostAction::Fence),
        ("BMC Off but storm guard", Inputs { libvirt: sig(false, 1), bmc: Some(Power::Off), storm: true, ..base() }, t, V::Failed, HostAction::None),
        ("NotReady within grace, libvirt up", Inputs { node: Some(sig(false, 10)), ..base() }, t, V::Suspect, HostAction::None),
        ("NotReady past grace, libvirt up: evacuate", Inputs { node: Some(sig(false, 31)), ..base() }, t, V::Evacuating, HostAction::Evacuate),
        ("evacuated: nothing left to move", Inputs { node: Some(sig(false, 31)), has_vms: false, previous: V::Evacuating, ..base() }, t, V::Evacuating, HostAction::None),
        ("notReadyAction None", Inputs { node: Some(sig(false, 31)), ..base() }, none, V::Suspect, HostAction::None),
        ("notReadyAction Restart: stop through libvirt first", Inputs { node: Some(sig(false, 31)), ..base() }, restart, V::Failed, HostAction::StopDomains),
        ("notReadyAction Restart: shut off confirmed", Inputs { node: Some(sig(false, 31)), shut_off_confirmed: true, previous: V::Failed, ..base() }, restart, V::Failed, HostAction::Restart(Evidence::ShutOff)),
        ("notReadyAction Restart: VMs restarted elsewhere, old domains undefined", Inputs { node: Some(sig(false, 40)), has_vms: false, stale_domains: true, previous: V::Failed, ..base() }, restart, V::Failed, HostAction::CleanStaleDomains),
        ("notReadyAction Restart: nothing left", Inputs { node: Some(sig(false, 40)), has_vms: false, previous: V::Failed, ..base() }, restart, V::Failed, HostAction::None),
        ("LiveMigrateThenRestart before the deadline", Inputs { node: Some(sig(false, 40)), previous: V::Evacuating, previous_since: at(9), ..base() }, then_restart, V::Evacuating, HostAction::Evacuate),
        ("LiveMigrateThenRestart after the deadline: fence", Inputs { node: Some(sig(false, 100)), previous: V::Evacuating, previous_since: at(61), ..base() }, then_restart, V::Fencing, HostAction::Fence),
        ("LiveMigrateThenRestart: all moved by the deadline", Inputs { node: Some(sig(false, 100)), has_vms: false, previous: V::Evacuating, previous_since: at(61), ..base() }, then_restart, V::Evacuating, HostAction::None),
        ("libvirt down within its grace", Inputs { node: Some(sig(false, 100)), libvirt: sig(false, 5), ..base() }, t, V::Suspect, HostAction::None),
        ("libvirt down, Node NotReady within grace", Inputs { node: Some(sig(false, 20)), libvirt: sig(false, 20), ..base() }, t, V::Suspect, HostAction::None),
        ("both past grace: fence", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), ..base() }, t, V::Fencing, HostAction::Fence),
        ("Node gone, libvirt down past grace: fence", Inputs { node: None, libvirt: sig(false, 31), ..base() }, t, V::Fencing, HostAction::Fence),
        ("both past grace, no fencing: ask a human", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), fencing_configured: false, ..base() }, t, V::Failed, HostAction::AskConfirmation),
        ("human confirmed: restart", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), fencing_configured: false, human_confirmed: true, previous: V::Failed, ..base() }, t, V::Fenced, HostAction::Restart(Evidence::Confirmed)),
        ("no VMs of the policy on the failed host: nothing is fenced", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), has_vms: false, ..base() }, t, V::Failed, HostAction::None),
        ("BMC Off but no VMs of the policy there: nothing is fenced", Inputs { libvirt: sig(false, 1), bmc: Some(Power::Off), has_vms: false, ..base() }, t, V::Failed, HostAction::None),
        ("no VMs and no fencing: nobody is asked to confirm", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), fencing_configured: false, has_vms: false, ..base() }, t, V::Failed, HostAction::None),
        ("storm guard: fence nothing", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), storm: true, ..base() }, t, V::Failed, HostAction::None),
        ("storm guard: Restart stops no domain", Inputs { node: Some(sig(false, 31)), storm: true, ..base() }, restart, V::Failed, HostAction::None),
        ("storm guard: Restart restarts nothing, even with proof", Inputs { node: Some(sig(false, 31)), shut_off_confirmed: true, storm: true, previous: V::Failed, ..base() }, restart, V::Failed, HostAction::None),
        ("storm guard: Restart undefines no stale domain", Inputs { node: Some(sig(false, 40)), has_vms: false, stale_domains: true, storm: true, previous: V::Failed, ..base() }, restart, V::Failed, HostAction::None),
        ("storm guard: LiveMigrateThenRestart fences nothing after the deadline", Inputs { node: Some(sig(false, 100)), storm: true, previous: V::Evacuating, previous_since: at(61), ..base() }, then_restart, V::Failed, HostAction::None),
        ("storm guard: live migration goes on (it stops nothing)", Inputs { node: Some(sig(false, 31)), storm: true, ..base() }, t, V::Evacuating, HostAction::Evacuate),
        ("storm guard: a fenced host's VMs wait", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), fence: confirmed(1), storm: true, previous: V::Fencing, ..base() }, t, V::Fenced, HostAction::None),
        ("storm guard: still fenced after a restart of the controller, VMs wait", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), storm: true, previous: V::Fenced, ..base() }, t, V::Fenced, HostAction::None),
        ("storm guard: a human confirmation still restarts", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), fencing_configured: false, human_confirmed: true, storm: true, previous: V::Failed, ..base() }, t, V::Fenced, HostAction::Restart(Evidence::Confirmed)),
        ("storm guard: stale domains wait", Inputs { node: Some(sig(false, 60)), libvirt: sig(true, 1), stale_domains: true, storm: true, previous: V::Fenced, ..base() }, t, V::Recovering, HostAction::None),
        ("fence in flight", Inputs { node: Some(sig(false, 31)), libvirt: sig(false, 31), fence: FenceRecord { in_flight: true, attempts: 1, ..Default::default() }, previous: V::Fencing, ..base() }, t, V::Fencing, HostAction::None),
        ("fence failed, backoff not over: no restart", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), fence: failed_fence(1, 1), previous: V::Fencing, ..base() }, t, V::Failed, HostAction::None),
        ("fence failed, backoff over: retry", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), fence: failed_fence(1, 3), previous: V::Failed, ..base() }, t, V::Fencing, HostAction::Fence),
        ("third failure waits 8 s", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), fence: failed_fence(3, 7), previous: V::Failed, ..base() }, t, V::Failed, HostAction::None),
        ("fence confirmed: restart", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), fence: FenceRecord { attempts: 1, confirmed_at: Some(at(1)), ..Default::default() }, previous: V::Fencing, ..base() }, t, V::Fenced, HostAction::Restart(Evidence::Fenced)),
        ("fenced stays fenced (restarted controller)", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), previous: V::Fenced, ..base() }, t, V::Fenced, HostAction::Restart(Evidence::Fenced)),
        ("fenced host back with stale domains", Inputs { node: Some(sig(false, 60)), libvirt: sig(true, 1), stale_domains: true, previous: V::Fenced, ..base() }, t, V::Recovering, HostAction::CleanStaleDomains),
        ("fenced host back, clean", Inputs { node: Some(sig(false, 60)), libvirt: sig(true, 1), previous: V::Recovering, ..base() }, t, V::Recovered, HostAction::None),
        ("BMC Off confirmed but the host answers and its Node is Ready: not counted", Inputs { fence: FenceRecord { attempts: 1, confirmed_at: Some(at(1)), ..Default::default() }, previous: V::Fencing, ..base() }, t, V::Healthy, HostAction::None),
        ("BMC Off confirmed, Node NotReady while libvirt answers: counted", Inputs { node: Some(sig(false, 120)), fence: FenceRecord { attempts: 1, confirmed_at: Some(at(1)), ..Default::default() }, previous: V::Fencing, ..base() }, then_restart, V::Fenced, HostAction::Restart(Evidence::Fenced)),
        ("BMC Off confirmed, Node Ready but libvirt gone: counted", Inputs { libvirt: sig(false, 5), fence: FenceRecord { attempts: 1, confirmed_at: Some(at(1)), ..Default::default() }, previous: V::Fencing, ..base() }, t, V::Fenced, HostAction::Restart(Evidence::Fenced)),
        ("notReadyAction Restart: no lookup proof yet, stop again", Inputs { node: Some(sig(false, 40)), previous: V::Failed, ..base() }, restart, V::Failed, HostAction::StopDomains),
        ("recovered and Ready: healthy", Inputs { previous: V::Recovered, ..base() }, t, V::Healthy, HostAction::None),
        ("fenced host back with its fence on record", Inputs { node: Some(sig(false, 60)), libvirt: sig(true, 1), fence: confirmed(30), previous: V::Recovering, ..base() }, t, V::Recovered, HostAction::None),
        ("recovered, fence on record, Node NotReady: stays recovered", Inputs { node: Some(sig(false, 60)), libvirt: sig(true, 5), fence: confirmed(30), previous: V::Recovered, ..base() }, t, V::Recovered, HostAction::None),
        ("recovered, fence on record, Node Ready: healthy", Inputs { fence: confirmed(30), previous: V::Recovered, ..base() }, t, V::Healthy, HostAction::None),
        ("recovered host fails again: the old fence proves nothing", Inputs { node: Some(sig(false, 60)), libvirt: sig(false, 60), fence: confirmed(300), previous: V::Recovered, ..base() }, t, V::Fencing, HostAction::Fence),
        ("recovered but a stale domain appeared", Inputs { previous: V::Recovered, stale_domains: true, ..base() }, t, V::Recovering, HostAction::CleanStaleDomains),
        ("host answers again before any fence: healthy", Inputs { previous: V::Failed, fence: failed_fence(2, 1), ..base() }, t, V::Healthy, HostAction::None),
        ("host answers while a fence is in flight: wait", Inputs { previous: V::Fencing, fence: FenceRecord { in_flight: true, attempts: 1, ..Default::default() }, ..base() }, t, V::Fencing, HostAction::None),
    ];
    for (what, inputs, timings, verdict, action) in cases {
        let d = decide(&inputs, &timings);
        assert_eq!(
            (d.verdict, d.action),
            (verdict, action),
            "{what}: {}",
            d.message
        );
        assert!(!d.message.is_empty(), "{what}");
    }
}

#[test]
fn restart_only_with_proof() {
    // Whatever the signals, a restart is decided only with a confirmed fence, a confirmed
    // shut-off, a human confirmation, or a Fenced verdict recorded before.
    let t = Timings {
        action: NotReadyAction::Restart,
        ..Timings::default()
    };
    for node in [None, Some(sig(true, 100)), Some(sig(false, 100))] {
        for libvirt in [sig(true, 100), sig(false, 100), sig(false, 1)] {
            for bmc in [None, Some(Power::On), Some(Power::Off), Some(Power::Other)] {
                for fencing_configured in [true, false] {
                    for previous in [V::Healthy, V::Suspect, V::Failed, V::Fencing, V::Evacuating] {
                        let i = Inputs {
                            node,
                            libvirt,
                            bmc,
                            fencing_configured,
                            fence: failed_fence(1, 100),
                            previous,
                            ..base()
                        };
                        let d = decide(&i, &t);
                        assert!(
                            !matches!(d.action, HostAction::Restart(_)),
                            "restart without proof: {i:?} → {d:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fence_backoff_doubles_and_caps() {
    let t = Timings::default();
    let secs: Vec<u64> = (1..=8).map(|n| fence_backoff(&t, n).as_secs()).collect();
    assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60, 60]);
}

#[test]
fn storm_guard() {
    // (hosts, failing, max %) → storm
    let cases = [
        (3, 1, 50, false),
        (3, 2, 50, true),
        (2, 1, 50, false),
        (4, 2, 50, false),
        (4, 3, 50, true),
        (10, 1, 5, true),
        (0, 0, 50, false),
        // At most 99 %: a pool whose every host looks failed is always a storm.
        (5, 5, 100, true),
        (100, 100, 100, true),
        (100, 99, 100, false),
    ];
    for (hosts, failing, max, want) in cases {
        assert_eq!(storm(hosts, failing, max), want, "{hosts} {failing} {max}");
    }
}

#[test]
fn what_counts_as_failing_for_the_storm_guard() {
    let t = Timings::default(); // NotReady grace 30 s, libvirt grace 10 s
    // (what, Node, libvirt, previous verdict, counts)
    #[rustfmt::skip]
    let cases = [
        ("healthy", Some(sig(true, 100)), sig(true, 100), V::Healthy, false),
        ("libvirt silent within its grace", Some(sig(true, 100)), sig(false, 5), V::Healthy, false),
        ("libvirt silent past its grace", Some(sig(true, 100)), sig(false, 11), V::Degraded, true),
        ("Node NotReady within its grace", Some(sig(false, 10)), sig(true, 100), V::Suspect, false),
        ("Node NotReady past its grace, libvirt answers", Some(sig(false, 31)), sig(true, 100), V::Suspect, true),
        ("Node gone or without a Ready condition", None, sig(true, 100), V::Healthy, true),
        ("an incident under way", Some(sig(true, 100)), sig(true, 100), V::Fencing, true),
        ("evacuated and recovered", Some(sig(true, 100)), sig(true, 100), V::Recovered, false),
    ];
    for (what, node, libvirt, previous, want) in cases {
        assert_eq!(
            looks_failed(node, libvirt, previous, at(0), &t).is_some(),
            want,
            "{what}"
        );
    }
}
