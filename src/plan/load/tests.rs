//! Rolling windows of domain counters.

use super::*;

const MI: u64 = 1 << 20;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).expect("a valid time")
}

fn dom(uuid: &str, cpu_secs: f64, rss_mib: u64) -> DomainCounters {
    DomainCounters {
        uuid: uuid.into(),
        cpu_time_ns: (cpu_secs * 1e9) as u64,
        rss_bytes: rss_mib * MI,
    }
}

fn sample(secs: i64, domains: Vec<DomainCounters>) -> Sample {
    Sample {
        at: at(secs),
        domains,
    }
}

fn cpu(w: &Window, uuid: &str) -> Option<u64> {
    w.usage().domains.get(uuid).map(|u| u.cpu_millis)
}

#[test]
fn cpu_is_counter_growth_over_the_window() {
    let mut w = Window::new(Duration::from_secs(60));
    w.push(sample(0, vec![dom("a", 10.0, 100), dom("b", 0.0, 50)]));
    // One sample: no CPU figure yet, memory known.
    let u = w.usage();
    assert_eq!(u.unmeasured.len(), 2);
    assert_eq!(
        u.total,
        Usage {
            cpu_millis: 0,
            memory: 150 * MI
        }
    );
    // 15 s later: a used 7.5 s of CPU (half a core), b 15 s (one core).
    w.push(sample(15, vec![dom("a", 17.5, 120), dom("b", 15.0, 50)]));
    assert_eq!(cpu(&w, "a"), Some(500));
    assert_eq!(cpu(&w, "b"), Some(1000));
    let u = w.usage();
    assert_eq!(u.unmeasured.len(), 0);
    assert_eq!(
        u.total,
        Usage {
            cpu_millis: 1500,
            memory: 170 * MI
        }
    );
    // The figure is the average over the whole window, not the last step.
    w.push(sample(30, vec![dom("a", 17.5, 120), dom("b", 30.0, 50)]));
    assert_eq!(cpu(&w, "a"), Some(250));
    assert_eq!(cpu(&w, "b"), Some(1000));
}

#[test]
fn old_samples_fall_out_of_the_span() {
    let mut w = Window::new(Duration::from_secs(30));
    w.push(sample(0, vec![dom("a", 0.0, 1)]));
    w.push(sample(15, vec![dom("a", 15.0, 1)]));
    w.push(sample(30, vec![dom("a", 30.0, 1)]));
    assert_eq!(w.len(), 3);
    // At 45 s the sample of 0 s is out: the average is over 15–45 s, idle from 30 s.
    w.push(sample(45, vec![dom("a", 30.0, 1)]));
    assert_eq!(w.len(), 3);
    assert_eq!(cpu(&w, "a"), Some(500));
    // A long gap keeps the newest sample only.
    w.push(sample(500, vec![dom("a", 40.0, 1)]));
    assert_eq!(w.len(), 1);
    assert_eq!(cpu(&w, "a"), Some(0));
    assert_eq!(w.usage().unmeasured.len(), 1);
}

#[test]
fn a_restarted_domain_starts_again() {
    let mut w = Window::new(Duration::from_secs(120));
    w.push(sample(0, vec![dom("a", 100.0, 1)]));
    w.push(sample(15, vec![dom("a", 115.0, 1)]));
    // The counter went back: the domain restarted between the samples.
    w.push(sample(30, vec![dom("a", 1.0, 1)]));
    assert_eq!(cpu(&w, "a"), Some(0));
    assert_eq!(w.usage().unmeasured.len(), 1);
    w.push(sample(45, vec![dom("a", 4.0, 1)]));
    assert_eq!(cpu(&w, "a"), Some(200));
}

#[test]
fn a_domain_missing_from_a_sample_starts_again() {
    let mut w = Window::new(Duration::from_secs(120));
    w.push(sample(0, vec![dom("a", 0.0, 1)]));
    w.push(sample(15, vec![]));
    w.push(sample(30, vec![dom("a", 50.0, 1)]));
    assert_eq!(w.usage().unmeasured.len(), 1);
    w.push(sample(45, vec![dom("a", 65.0, 1)]));
    assert_eq!(cpu(&w, "a"), Some(1000));
    // Gone from the newest sample: not counted.
    w.push(sample(60, vec![]));
    assert_eq!(w.usage(), HostUse::default());
}

#[test]
fn samples_out_of_order_are_dropped() {
    let mut w = Window::new(Duration::from_secs(120));
    w.push(sample(15, vec![dom("a", 15.0, 1)]));
    w.push(sample(0, vec![dom("a", 0.0, 1)]));
    w.push(sample(15, vec![dom("a", 99.0, 1)]));
    assert_eq!(w.len(), 1);
    assert!(Window::new(Duration::from_secs(1)).is_empty());
    assert_eq!(
        Window::new(Duration::from_secs(1)).usage(),
        HostUse::default()
    );
}

#[test]
fn the_report_changes_by_five_percent_of_capacity_at_most_every_five_minutes() {
    let cap = Usage {
        cpu_millis: 4000,
        memory: 16 << 30,
    };
    let u = |cpu_millis: u64, mib: u64| Usage {
        cpu_millis,
        memory: mib * MI,
    };
    let r = |cpu_millis: u64, mib: u64, secs: i64| Report {
        usage: u(cpu_millis, mib),
        at: at(secs),
    };
    // First report: rounded to 100 millicores and 64 MiB.
    assert_eq!(report(None, u(1234, 1000), cap, at(0)), r(1200, 1024, 0));
    assert_eq!(report(None, u(1250, 1056), cap, at(0)), r(1300, 1088, 0));
    let first = r(1200, 1024, 0);
    // Within 5 minutes: unchanged, however far the load moved.
    assert_eq!(report(Some(first), u(4000, 9000), cap, at(299)), first);
    // Later, within 5 % of 4 CPUs (200 millicores) and of 16 GiB (819 MiB): unchanged.
    assert_eq!(report(Some(first), u(1390, 1800), cap, at(600)), first);
    // CPU moved by 200 millicores or more: a new report.
    assert_eq!(
        report(Some(first), u(1400, 1024), cap, at(300)),
        r(1400, 1024, 300)
    );
    // Memory moved by 5 % or more: a new report.
    assert_eq!(
        report(Some(first), u(1200, 1900), cap, at(900)),
        r(1200, 1920, 900)
    );
    // A host of unknown size (0) reports every change once the interval is over, rounded.
    let zero = Usage::default();
    assert_eq!(
        report(Some(r(100, 64, 0)), u(160, 64), zero, at(300)),
        r(200, 64, 300)
    );
}

#[test]
fn share_is_the_mean_of_cpu_and_memory_in_thousandths() {
    let cap = Usage {
        cpu_millis: 4000,
        memory: 1000 * MI,
    };
    let u = |cpu_millis: u64, mib: u64| Usage {
        cpu_millis,
        memory: mib * MI,
    };
    assert_eq!(share(u(2000, 0), cap), Some(250));
    assert_eq!(share(u(1000, 500), cap), Some(375));
    // Each part stops at the whole host.
    assert_eq!(share(u(9000, 2000), cap), Some(1000));
    assert_eq!(share(u(9000, 0), cap), Some(500));
    assert_eq!(share(u(1, 1), Usage::default()), None);
}
