//! Fencing against real BMC emulators: sushy-emulator (Redfish over HTTPS with basic auth) and
//! OpenIPMI's ipmi_sim (IPMI v2.0 over LAN). A fence counts only when the BMC reports Off.

#[path = "support/bmc.rs"]
mod bmc;

use bmc::{IpmiSim, Sushy};
use ferry::fence::{self, Credentials, FenceError, Fencer, Power, ipmi::Ipmi, redfish::Redfish};
use ferry::gate::ActionGate;
use std::time::{Duration, Instant};

const USER: &str = "admin";
const PASS: &str = "s3cret";
const POLL: Duration = Duration::from_millis(250);

fn creds(password: &str, ca: Option<Vec<u8>>) -> Credentials {
    Credentials {
        username: USER.into(),
        password: password.into(),
        ca_pem: ca,
    }
}

fn redfish(s: &Sushy, system: &str, password: &str) -> Redfish {
    Redfish::new(
        &s.base(),
        &format!("/redfish/v1/Systems/{system}"),
        creds(password, Some(s.pki.ca_pem())),
        Duration::from_secs(3),
        ActionGate::open(),
    )
    .expect("client")
}

#[tokio::test]
async fn redfish_fence_outcomes() {
    if !bmc::should_run("redfish_fence_outcomes") {
        return;
    }
    // Power changes apply 1 s after the request.
    let mut sushy = Sushy::start(&["h1", "h2"], USER, PASS, 1);

    // Confirmed Off, on the system named (h1), not another one.
    let f = redfish(&sushy, "h1", PASS);
    assert_eq!(f.power_state().await.expect("state"), Power::On);
    let done = fence::fence(&f, Duration::from_secs(20), POLL)
        .await
        .unwrap_or_else(|e| panic!("fence failed: {e}\n{}", sushy.log()));
    assert!(!done.was_off);
    assert_eq!(f.power_state().await.expect("state"), Power::Off);
    assert_eq!(
        redfish(&sushy, "h2", PASS).power_state().await.expect("h2"),
        Power::On,
        "only the named system is fenced"
    );
    // Fencing a host that is already off is confirmed at once.
    let again = fence::fence(&f, Duration::from_secs(5), POLL)
        .await
        .expect("again");
    assert!(again.was_off);

    // Powered on again (ResetType On), the named system only; a second power-on sends nothing.
    assert!(
        fence::power_on(&f).await.expect("power on"),
        "a power-on was sent"
    );
    wait_for(&f, Power::On).await;
    assert!(!fence::power_on(&f).await.expect("power on again"));
    // A replica that may not act sends no power-on either.
    let off = fence::fence(&f, Duration::from_secs(20), POLL).await;
    assert!(off.is_ok(), "{off:?}");
    let lapsed = ActionGate::leased();
    lapsed.renewed_until(Instant::now());
    let gated = Redfish::new(
        &sushy.base(),
        "/redfish/v1/Systems/h1",
        creds(PASS, Some(sushy.pki.ca_pem())),
        Duration::from_secs(3),
        lapsed,
    )
    .expect("client");
    let r = fence::power_on(&gated).await;
    assert!(matches!(r, Err(FenceError::Withheld { .. })), "{r:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(f.power_state().await.expect("state"), Power::Off);

    // Wrong password: a failed fence that says so.
    let bad = redfish(&sushy, "h2", "wrong");
    match fence::fence(&bad, Duration::from_secs(5), POLL).await {
        Err(FenceError::Auth { detail, .. }) => assert!(detail.contains("401"), "{detail}"),
        other => panic!("expected an auth failure, got {other:?}"),
    }

    // A CA that did not sign the BMC's certificate: refused.
    let other_ca = bmc::TestPki::new();
    let untrusted = Redfish::new(
        &sushy.base(),
        "/redfish/v1/Systems/h2",
        creds(PASS, Some(other_ca.ca_pem())),
        Duration::from_secs(3),
        ActionGate::open(),
    )
    .expect("client");
    match untrusted.power_state().await {
        Err(FenceError::Failed { detail, .. }) => {
            assert!(detail.to_lowercase().contains("certificate"), "{detail}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }

    // A hung BMC (process stopped): every call is bounded by the timeout.
    sushy.freeze(true);
    let start = Instant::now();
    let hung = fence::fence(&redfish(&sushy, "h2", PASS), Duration::from_secs(20), POLL).await;
    let took = start.elapsed();
    sushy.freeze(false);
    assert!(matches!(hung, Err(FenceError::Timeout { .. })), "{hung:?}");
    assert!(took < Duration::from_secs(6), "took {took:?}");

    // BMC down: refused at once, a failed fence.
    let base = sushy.base();
    sushy.stop();
    let down = Redfish::new(
        &base,
        "/redfish/v1/Systems/h2",
        creds(PASS, Some(sushy.pki.ca_pem())),
        Duration::from_secs(3),
        ActionGate::open(),
    )
    .expect("client");
    let r = fence::fence(&down, Duration::from_secs(5), POLL).await;
    assert!(matches!(r, Err(FenceError::Failed { .. })), "{r:?}");
}

#[tokio::test]
async fn redfish_power_off_not_confirmed_is_a_failed_fence() {
    if !bmc::should_run("redfish_power_off_not_confirmed_is_a_failed_fence") {
        return;
    }
    // The BMC accepts ForceOff but reports On for an hour.
    let sushy = Sushy::start(&["h1"], USER, PASS, 3600);
    let f = redfish(&sushy, "h1", PASS);
    let start = Instant::now();
    let r = fence::fence(&f, Duration::from_secs(3), POLL).await;
    match r {
        Err(FenceError::Unconfirmed { state, .. }) => assert_eq!(state, Power::On),
        other => panic!("expected an unconfirmed fence, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(8));
}

/// Wait (at most 20 s) for the BMC to report `want`.
async fn wait_for(f: &dyn Fencer, want: Power) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = f.power_state().await.expect("state");
        if state == want {
            return;
        }
        assert!(Instant::now() < deadline, "the BMC still reports {state:?}");
        tokio::time::sleep(POLL).await;
    }
}

fn ipmi(sim: &IpmiSim, password: &str) -> Ipmi {
    Ipmi::new(
        &sim.address(),
        creds(password, None),
        Duration::from_secs(3),
        ActionGate::open(),
    )
    .expect("client")
}

#[tokio::test]
async fn ipmi_fence_outcomes() {
    if !bmc::should_run("ipmi_fence_outcomes") {
        return;
    }
    let marker = tempfile::tempdir().expect("tmp");
    let killed = marker.path().join("killed");
    let started = marker.path().join("started");
    let mut sim = IpmiSim::start_with_power_on(
        USER,
        PASS,
        &format!("touch {}", killed.display()),
        false,
        &format!("touch {}", started.display()),
    );

    let f = ipmi(&sim, PASS);
    assert_eq!(f.power_state().await.expect("state"), Power::On);
    let done = fence::fence(&f, Duration::from_secs(10), POLL)
        .await
        .expect("fence confirmed");
    assert!(!done.was_off);
    assert!(!sim.power_on(), "the emulator holds power off");
    assert!(killed.exists(), "the power-off hook ran");
    assert_eq!(f.power_state().await.expect("state"), Power::Off);

    // Powered on again (chassis power up): the power-on hook runs; a second one sends nothing.
    assert!(!started.exists());
    assert!(
        fence::power_on(&f).await.expect("power on"),
        "a power-on was sent"
    );
    assert!(sim.power_on(), "the emulator holds power on");
    assert!(started.exists(), "the power-on hook ran");
    assert_eq!(f.power_state().await.expect("state"), Power::On);
    assert!(!fence::power_on(&f).await.expect("power on again"));
    sim.set_power(false);
    std::fs::remove_file(&started).expect("remove the hook's marker");

    // A replica that may not act (its leader lease lapsed): the BMC is asked nothing that
    // changes power, and the fence fails saying why.
    sim.set_power(true);
    std::fs::remove_file(&killed).expect("remove the hook's marker");
    let lapsed = ActionGate::leased();
    lapsed.renewed_until(Instant::now());
    let gated = Ipmi::new(
        &sim.address(),
        creds(PASS, None),
        Duration::from_secs(3),
        lapsed,
    )
    .expect("client");
    // Nor powered on.
    sim.set_power(false);
    let r = fence::power_on(&gated).await;
    assert!(matches!(r, Err(FenceError::Withheld { .. })), "{r:?}");
    assert!(!sim.power_on(), "nothing was powered on");
    assert!(!started.exists(), "the power-on hook did not run");
    sim.set_power(true);
    let r = fence::fence(&gated, Duration::from_secs(5), POLL).await;
    assert!(matches!(r, Err(FenceError::Withheld { .. })), "{r:?}");
    assert!(sim.power_on(), "nothing was powered off");
    assert!(!killed.exists(), "the power-off hook did not run");

    // Wrong password.
    let r = fence::fence(&ipmi(&sim, "wrong"), Duration::from_secs(5), POLL).await;
    assert!(matches!(r, Err(FenceError::Auth { .. })), "{r:?}");
    assert!(sim.power_on(), "nothing was powered off");

    // A hung BMC (process stopped): a timeout within the bound.
    let addr = sim.address();
    let short = Ipmi::new(
        &addr,
        creds(PASS, None),
        Duration::from_secs(2),
        ActionGate::open(),
    )
    .expect("client");
    sim.freeze(true);
    let start = Instant::now();
    let r = fence::fence(&short, Duration::from_secs(5), POLL).await;
    let took = start.elapsed();
    sim.freeze(false);
    assert!(matches!(r, Err(FenceError::Timeout { .. })), "{r:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(sim.power_on(), "nothing was powered off");

    // BMC gone: refused, a failed fence.
    sim.stop();
    let r = fence::fence(&short, Duration::from_secs(5), POLL).await;
    assert!(matches!(r, Err(FenceError::Failed { .. })), "{r:?}");
}

#[tokio::test]
async fn ipmi_power_off_not_confirmed_is_a_failed_fence() {
    if !bmc::should_run("ipmi_power_off_not_confirmed_is_a_failed_fence") {
        return;
    }
    let sim = IpmiSim::start(USER, PASS, "true", true);
    let r = fence::fence(&ipmi(&sim, PASS), Duration::from_secs(2), POLL).await;
    match r {
        Err(FenceError::Unconfirmed { state, .. }) => assert_eq!(state, Power::On),
        other => panic!("expected an unconfirmed fence, got {other:?}"),
    }
    assert!(sim.power_on());
}
