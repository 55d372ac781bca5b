//! Table tests for power management.

use super::*;

const GI: u64 = 1 << 30;

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).expect("a valid time")
}

fn ago(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 - secs).expect("a valid time")
}

/// Host `name`, on, 8 CPUs and 32 GiB, using `millis` of CPU and 4 GiB, with `vms` movable VMs.
fn host(name: &str, millis: u64, vms: usize) -> Host {
    Host {
        name: name.into(),
        power: Power::On,
        has_bmc: true,
        usable: true,
        capacity: Usage {
            cpu_millis: 8000,
            memory: 32 * GI,
        },
        used: Usage {
            cpu_millis: millis,
            memory: 4 * GI,
        },
        vms,
        pinned: 0,
        waiting: 0,
        wake_failed: false,
    }
}

fn with(mut h: Host, f: impl FnOnce(&mut Host)) -> Host {
    f(&mut h);
    h
}

fn settings() -> Settings {
    Settings {
        min_hosts_on: 2,
        standby_below: 0.5,
        wake_above: 0.8,
        standby_after: Duration::from_secs(900),
        failover_hosts: 1,
        scheduled: false,
    }
}

struct Case {
    name: &'static str,
    hosts: Vec<Host>,
    pending: usize,
    low_since: Option<Timestamp>,
    want: Action,
    says: &'static str,
}

fn standby(h: &str) -> Action {
    Action::Standby { host: h.into() }
}

fn wake(h: &str) -> Action {
    Action::Wake { host: h.into() }
}

fn cancel(h: &str) -> Action {
    Action::Cancel { host: h.into() }
}

fn hold(low_since: Option<Timestamp>) -> Action {
    Action::Hold { low_since }
}

#[test]
fn power_table() {
    let quiet = || {
        vec![
            host("h1", 1000, 3),
            host("h2", 800, 2),
            host("h3", 500, 1),
            host("h4", 900, 2),
        ]
    };
    let cases = vec![
        Case {
            name: "a quiet pool, low long enough: the least loaded host goes to Standby",
            hosts: quiet(),
            pending: 0,
            low_since: Some(ago(901)),
            want: standby("h3"),
            says: "host h3 goes to Standby",
        },
        Case {
            name: "a quiet pool, low for the first time: remember since when",
            hosts: quiet(),
            pending: 0,
            low_since: None,
            want: hold(Some(now())),
            says: "waiting until it has been so for 900 s",
        },
        Case {
            name: "low, but not yet for long enough: keep the time",
            hosts: quiet(),
            pending: 0,
            low_since: Some(ago(300)),
            want: hold(Some(ago(300))),
            says: "waiting",
        },
        Case {
            name: "a host holding a VM that may not move never goes",
            hosts: vec![
                host("h1", 1000, 3),
                host("h2", 800, 2),
                with(host("h3", 500, 1), |h| h.pinned = 1),
                host("h4", 900, 2),
            ],
            pending: 0,
            low_since: Some(ago(901)),
            want: standby("h2"),
            says: "host h2",
        },
        Case {
            name: "a host without a BMC never goes",
            hosts: vec![
                host("h1", 1000, 3),
                with(host("h3", 500, 1), |h| h.has_bmc = false),
                host("h4", 900, 2),
                host("h5", 900, 2),
            ],
            pending: 0,
            low_since: Some(ago(901)),
            want: standby("h4"),
            says: "host h4",
        },
        Case {
            name: "minimum and failover reserve: three hosts on stay on",
            hosts: vec![host("h1", 100, 1), host("h2", 100, 1), host("h3", 100, 1)],
            pending: 0,
            low_since: Some(ago(901)),
            want: hold(None),
            says: "no fewer than 3 are kept on",
        },
        Case {
            name: "busy: the others would be over the standby share",
            hosts: vec![
                host("h1", 4000, 3),
                host("h2", 4000, 2),
                host("h3", 3000, 1),
                host("h4", 4000, 2),
            ],
            pending: 0,
            low_since: Some(ago(901)),
            want: hold(None),
            says: "not below 50 %",
        },
        Case {
            name: "VMs wait for capacity: the Standby host comes back",
            hosts: vec![
                host("h1", 1000, 3),
                host("h2", 800, 2),
                host("h4", 900, 2),
                with(host("h3", 0, 0), |h| h.power = Power::Standby),
            ],
            pending: 2,
            low_since: None,
            want: wake("h3"),
            says: "2 VM(s) wait for capacity",
        },
        Case {
            name: "load past the wake share: a Standby host comes back",
            hosts: vec![
                host("h1", 7000, 3),
                host("h2", 7000, 2),
                host("h4", 7000, 2),
                with(host("h3", 0, 0), |h| h.power = Power::Standby),
            ],
            pending: 0,
            low_since: None,
            want: wake("h3"),
            says: "past 80 %",
        },
        Case {
            name: "a host failed: fewer than the reserve on, a Standby host comes back",
            hosts: vec![
                host("h1", 1000, 3),
                with(host("h2", 0, 2), |h| h.usable = false),
                host("h4", 900, 2),
                with(host("h3", 0, 0), |h| h.power = Power::Standby),
            ],
            pending: 0,
            low_since: None,
            want: wake("h3"),
            says: "fewer than the 3 kept on",
        },
        Case {
            name: "one host at a time: nothing while one powers on",
            hosts: vec![
                host("h1", 1000, 3),
                host("h2", 800, 2),
                with(host("h3", 0, 0), |h| h.power = Power::Waking),
                with(host("h4", 0, 0), |h| h.power = Power::Standby),
            ],
            pending: 5,
            low_since: None,
            want: hold(None),
            says: "host h3 is powering on",
        },
        Case {
            name: "VMs wait, nothing in Standby: said so",
            hosts: quiet(),
            pending: 1,
            low_since: Some(ago(901)),
            want: hold(None),
            says: "no host is in Standby",
        },
        Case {
            name: "one host at a time: nothing more while one drains",
            hosts: vec![
                host("h1", 1000, 3),
                host("h2", 800, 2),
                with(host("h3", 500, 1), |h| h.power = Power::Draining),
                host("h4", 900, 2),
                host("h5", 900, 2),
            ],
            pending: 0,
            low_since: Some(ago(901)),
            want: hold(Some(ago(901))),
            says: "host h3 is being emptied",
        },
        Case {
            name: "VMs placed on a Standby host wait for it: that host comes back",
            hosts: vec![
                host("h1", 1000, 3),
                host("h2", 800, 2),
                with(host("h3", 0, 0), |h| h.power = Power::Standby),
                with(host("h4", 0, 1), |h| {
                    h.power = Power::Standby;
                    h.waiting = 1;
                }),
            ],
            pending: 0,
            low_since: None,
            want: wake("h4"),
            says: "1 VM(s) placed on it wait for it",
        },
        Case {
            name: "VMs wait while a host is being emptied: it stays on",
            hosts: vec![
                host("h1", 1000, 3),
                host("h2", 800, 2),
                with(host("h3", 500, 1), |h| h.power = Power::Draining),
                with(host("h4", 0, 0), |h| h.power = Power::Standby),
            ],
            pending: 1,
            low_since: Some(ago(901)),
            want: cancel("h3"),
            says: "host h3 stays on: 1 VM(s) wait for capacity",
        },
        Case {
            name: "a host whose last power-on failed is woken after the others",
            hosts: vec![
                host("h1", 1000, 3),
                host("h2", 800, 2),
                with(host("h3", 0, 0), |h| {
                    h.power = Power::Standby;
                    h.wake_failed = true;
                }),
                with(host("h4", 0, 0), |h| h.power = Power::Standby),
            ],
            pending: 1,
            low_since: None,
            want: wake("h4"),
            says: "powering host h4 on",
        },
    ];
    for c in cases {
        let d = decide(
            &Inputs {
                hosts: &c.hosts,
                pending_for_capacity: c.pending,
                low_since: c.low_since,
                enabled: true,
                now: now(),
            },
            &settings(),
        );
        assert_eq!(d.action, c.want, "{}: {}", c.name, d.message);
        assert!(
            d.message.contains(c.says),
            "{}: {:?} lacks {:?}",
            c.name,
            d.message,
            c.says
        );
    }
}

#[test]
fn the_failover_reserve_holds_after_a_standby() {
    // Four hosts of which one may fail: without the quietest, three are left; losing the
    // largest of those must still leave room for every VM's load. Memory is what is tight here.
    let tight = |gib: u64| {
        (1..=4)
            .map(|i| {
                with(host(&format!("h{i}"), 500, 1), |h| {
                    h.used.memory = gib * GI;
                })
            })
            .collect::<Vec<_>>()
    };
    let s = Settings {
        standby_below: 0.9,
        ..settings()
    };
    let decide_for = |hosts: &[Host]| {
        decide(
            &Inputs {
                hosts,
                pending_for_capacity: 0,
                low_since: Some(ago(901)),
                enabled: true,
                now: now(),
            },
            &s,
        )
    };
    // 4 × 15 GiB = 60 GiB over two surviving hosts of 32 GiB: holds.
    assert_eq!(decide_for(&tight(15)).action, standby("h1"));
    // 4 × 17 GiB = 68 GiB: does not.
    let d = decide_for(&tight(17));
    assert_eq!(d.action, hold(None));
    assert!(
        d.message
            .contains("failover reserve (1 host(s)) would not hold"),
        "{}",
        d.message
    );
}

#[test]
fn power_management_turned_off_brings_every_host_back() {
    let decide_off = |hosts: &[Host]| {
        decide(
            &Inputs {
                hosts,
                pending_for_capacity: 0,
                low_since: Some(ago(901)),
                enabled: false,
                now: now(),
            },
            &settings(),
        )
    };
    let quiet = [
        host("h1", 1000, 3),
        host("h2", 800, 2),
        host("h3", 500, 1),
        host("h4", 900, 2),
    ];
    // Nothing goes to Standby.
    assert_eq!(decide_off(&quiet).action, hold(None));
    // A host being emptied stays on.
    let mut draining = quiet.clone();
    draining[2].power = Power::Draining;
    let d = decide_off(&draining);
    assert_eq!(d.action, cancel("h3"), "{}", d.message);
    assert!(
        d.message.contains("power management is off"),
        "{}",
        d.message
    );
    // Hosts in Standby come back, one at a time.
    let mut standby = quiet.clone();
    standby[2].power = Power::Standby;
    standby[3].power = Power::Standby;
    assert_eq!(decide_off(&standby).action, wake("h3"));
    standby[2].power = Power::Waking;
    assert_eq!(decide_off(&standby).action, hold(None));
}

fn window(days: &[Weekday], from: &str, to: &str, min_hosts_on: i32) -> PowerWindow {
    PowerWindow {
        days: days.to_vec(),
        from: from.into(),
        to: to.into(),
        min_hosts_on,
    }
}

/// `2026-12-07` is a Monday; `hh:mm` UTC on that day, plus `days`.
fn at(days: i64, hh: i64, mm: i64) -> Timestamp {
    let monday = Timestamp::from_second(1_796_601_600).expect("2026-12-07T00:00Z");
    Timestamp::from_second(monday.as_second() + days * 86_400 + hh * 3600 + mm * 60)
        .expect("a valid time")
}

#[test]
fn schedule_windows_table() {
    use Weekday::*;
    let lead = Duration::from_secs(600);
    let business = [window(&[Mon, Tue, Wed, Thu, Fri], "08:00", "18:00", 4)];
    let night = [window(&[Fri], "22:00", "06:00", 3)];
    let both = [business[0].clone(), window(&[], "12:00", "13:00", 6)];
    let cases: &[(&str, &[PowerWindow], Timestamp, Option<usize>)] = &[
        ("Monday 07:49: not yet", &business, at(0, 7, 49), None),
        ("Monday 07:50: wake lead", &business, at(0, 7, 50), Some(4)),
        ("Monday noon", &business, at(0, 12, 0), Some(4)),
        ("Monday 17:59", &business, at(0, 17, 59), Some(4)),
        ("Monday 18:00: over", &business, at(0, 18, 0), None),
        (
            "Saturday noon: not a window day",
            &business,
            at(5, 12, 0),
            None,
        ),
        (
            "Sunday 23:55: Monday's lead is not Sunday's",
            &business,
            at(6, 23, 55),
            None,
        ),
        ("Friday 23:00: night window", &night, at(4, 23, 0), Some(3)),
        (
            "Saturday 05:59: begun on Friday",
            &night,
            at(5, 5, 59),
            Some(3),
        ),
        ("Saturday 06:00: over", &night, at(5, 6, 0), None),
        (
            "Saturday 23:00: begins Fridays only",
            &night,
            at(5, 23, 0),
            None,
        ),
        (
            "Monday 12:30: the larger of two",
            &both,
            at(0, 12, 30),
            Some(6),
        ),
        ("Sunday 12:30: every day", &both, at(6, 12, 30), Some(6)),
    ];
    for (name, schedule, now, want) in cases {
        assert_eq!(
            scheduled_min_hosts_on(schedule, *now, lead),
            *want,
            "{name}"
        );
    }
    // Across midnight into a window day: Monday 00:05 wakes ahead from Sunday 23:55.
    let early = [window(&[Mon], "00:05", "01:00", 2)];
    assert_eq!(scheduled_min_hosts_on(&early, at(6, 23, 55), lead), Some(2));
}

#[test]
fn a_schedule_window_wakes_a_host_and_says_so() {
    let spec = PowerSpec {
        min_hosts_on: Some(1),
        schedule: vec![window(&[], "08:00", "18:00", 3)],
        ..PowerSpec::default()
    };
    let hosts = vec![
        host("h1", 500, 1),
        host("h2", 500, 1),
        with(host("h3", 0, 0), |h| h.power = Power::Standby),
    ];
    let decide_at = |now: Timestamp| {
        let s = Settings::of(&spec, 0, now);
        decide(
            &Inputs {
                hosts: &hosts,
                pending_for_capacity: 0,
                low_since: None,
                enabled: true,
                now,
            },
            &s,
        )
    };
    let night = decide_at(at(0, 3, 0));
    assert!(matches!(night.action, Action::Hold { .. }), "{night:?}");
    let morning = decide_at(at(0, 7, 55));
    assert_eq!(morning.action, Action::Wake { host: "h3".into() });
    assert!(
        morning.message.contains("spec.power.schedule"),
        "{}",
        morning.message
    );
}
