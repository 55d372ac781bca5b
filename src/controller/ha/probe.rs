//! Liveness probes: one at a time per host, in the background, on connections of their own.

use super::*;
use crate::api::HostPool;
use crate::controller::lock;
use crate::plan::host_health::Signal;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use memory::Listed;
use std::sync::Arc;
use std::time::Instant;

/// The Node's Ready condition as a signal (`None` when it has none).
pub(super) fn node_signal(n: &Node, now: Timestamp) -> Option<Signal> {
    let c = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))?;
    Some(Signal {
        up: c.status == "True",
        since: c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(now),
    })
}

/// Say that the host's libvirt stopped answering the HA probe, and why.
fn silent(key: &HaKey, why: &str) {
    tracing::warn!(policy = %key.policy, pool = %key.host.pool, host = %key.host.node, "libvirt does not answer the HA probe: {why}");
}

/// What a probe that found the host alive learnt of its domains.
enum Listing {
    /// Listed now, with the probe connection's counts before the listing.
    Fresh(Vec<crate::hypervisor::DomainInfo>, Listed),
    /// Nothing changed since the last listing: it stands.
    Stands,
    /// The listing failed or took too long.
    Failed,
}

/// Whether the probe lists the host's domains again: when no listing stands since libvirt last
/// came up, after a new probe connection (events may have been missed), when a domain changed
/// since the last listing (at most every [`LIST_CHURN_INTERVAL`] while they keep changing), and
/// once every `full_every` (the safety resync) in any case.
fn must_list(probed: bool, last: Option<&Listed>, now: &Listed, full_every: Duration) -> bool {
    let Some(last) = last.filter(|_| probed) else {
        return true;
    };
    let age = now.at.saturating_duration_since(last.at);
    last.opened != now.opened
        || (last.changes != now.changes && age >= LIST_CHURN_INTERVAL)
        || age >= full_every
}

/// Start a liveness probe of the host unless one runs; a probe running longer than the deadline
/// marks libvirt down from when it started.
pub(super) fn start_probe(
    hc: &Arc<HaContext>,
    key: &HaKey,
    pool: &HostPool,
    node: &Node,
    now: Timestamp,
) {
    // The probe writes its outcome only into the memory that started it (not into memory made
    // afresh meanwhile for a pool or policy deleted and made again).
    let started_at = Instant::now();
    {
        let mut hosts = lock(&hc.hosts);
        let Some(m) = hosts.get_mut(key) else {
            drop(hosts);
            // The caller made the memory just before; it is gone only if the policy or pool was
            // forgotten meanwhile: nothing to probe for.
            return;
        };
        if let Some(started) = m.probe_started {
            if started.elapsed() > PROBE_DEADLINE && m.libvirt.up && !m.probe_answered {
                silent(key, "the probe has not answered within its deadline");
                m.probed = false;
                m.libvirt = Signal {
                    up: false,
                    since: Timestamp::from_millisecond(
                        now.as_millisecond() - started.elapsed().as_millis() as i64,
                    )
                    .unwrap_or(now),
                };
            }
            return;
        }
        m.probe_started = Some(started_at);
        m.probe_answered = false;
    }
    let uri = match hc.ctx.hosts.uri(pool, node) {
        Ok(u) => u,
        Err(_) => {
            // The pool cannot reach this host (its URI cannot be made, or is not allowed): for
            // this pool the host's libvirt does not answer.
            if let Some(m) = lock(&hc.hosts).get_mut(key) {
                m.probe_started = None;
                if m.libvirt.up {
                    silent(
                        key,
                        "the pool cannot make or may not use the host's libvirt URI",
                    );
                    m.libvirt = Signal {
                        up: false,
                        since: now,
                    };
                    m.probed = false;
                }
            }
            return;
        }
    };
    let hc = hc.clone();
    let pool = pool.clone();
    let key = key.clone();
    tokio::spawn(async move {
        // Liveness: a round trip that touches no domain, within the deadline.
        let alive = tokio::time::timeout(PROBE_DEADLINE, async {
            let hv = hc.ctx.hosts.connect_in(&hc.probes, &uri, &pool).await?;
            match hv.ping().await {
                Ok(()) => Ok(hv),
                Err(e) => {
                    if e.is_connection_lost() {
                        hc.probes.invalidate(hv.uri()).await;
                    }
                    Err(e)
                }
            }
        })
        .await;
        let mut failure = String::new();
        let hv = match alive {
            Ok(Ok(hv)) => Some(hv),
            Ok(Err(e)) => {
                failure = e.to_string();
                None
            }
            Err(_) => {
                failure = format!("no answer within {}s", PROBE_DEADLINE.as_secs());
                // Timed out: drop the probe connection (whatever URI the credentials made of it).
                if let Ok(full) = hc.ctx.hosts.credentialed_uri(&uri, &pool).await {
                    hc.probes.invalidate(&full).await;
                }
                None
            }
        };
        // The domains, when they may have changed since the last listing: the listing may
        // wait behind an operation on a domain (a destroy holds the domain's lock until QEMU
        // exits), which is no sign of a dead host.
        let ok = match hv {
            Some(hv) => {
                let now = Listed {
                    at: Instant::now(),
                    changes: hc.probes.changes(hv.uri()),
                    opened: hc.probes.opened(hv.uri()),
                };
                let list = lock(&hc.hosts)
                    .get_mut(&key)
                    .filter(|m| m.probe_started == Some(started_at))
                    .is_some_and(|m| {
                        m.probe_answered = true;
                        must_list(
                            m.probed,
                            m.listed.as_ref(),
                            &now,
                            hc.ctx.safety_resync.period(),
                        )
                    });
                if !list {
                    Some(Listing::Stands)
                } else {
                    match tokio::time::timeout(LIST_DEADLINE, hv.list_domains()).await {
                        Ok(Ok(domains)) => Some(Listing::Fresh(domains, now)),
                        _ => Some(Listing::Failed),
                    }
                }
            }
            None => None,
        };
        let now = Timestamp::now();
        let mut hosts = lock(&hc.hosts);
        if let Some(m) = hosts
            .get_mut(&key)
            .filter(|m| m.probe_started == Some(started_at))
        {
            let started = m.probe_started.take();
            m.probe_answered = false;
            match ok {
                Some(listing) => {
                    // Without a listing that stands nothing is concluded from the domains.
                    match listing {
                        Listing::Fresh(domains, counts) => {
                            m.domains = domains;
                            m.listed = Some(counts);
                            m.probed = true;
                        }
                        Listing::Stands => {}
                        Listing::Failed => m.probed = false,
                    }
                    if !m.libvirt.up {
                        tracing::info!(policy = %key.policy, pool = %key.host.pool, host = %key.host.node, "libvirt answers the HA probe again");
                        m.libvirt = Signal {
                            up: true,
                            since: now,
                        };
                    }
                }
                None if m.libvirt.up => {
                    silent(&key, &failure);
                    hc.fell_silent.notify_one();
                    let began = started
                        .map(|s| now.as_millisecond() - s.elapsed().as_millis() as i64)
                        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
                        .unwrap_or(now);
                    m.libvirt = Signal {
                        up: false,
                        since: began,
                    };
                    m.probed = false;
                }
                None => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64, changes: u64, opened: u64) -> Listed {
        Listed {
            at: base + Duration::from_secs(secs),
            changes,
            opened,
        }
    }

    #[test]
    fn domains_are_listed_again_only_when_they_may_have_changed() {
        let t = Instant::now();
        let every = Duration::from_secs(300);
        let last = at(t, 0, 7, 1);
        // Nothing heard since: the listing stands, up to the safety resync.
        assert!(!must_list(true, Some(&last), &at(t, 1, 7, 1), every));
        assert!(!must_list(true, Some(&last), &at(t, 299, 7, 1), every));
        assert!(must_list(true, Some(&last), &at(t, 300, 7, 1), every));
        // A domain changed: listed again, at most every LIST_CHURN_INTERVAL.
        assert!(!must_list(true, Some(&last), &at(t, 1, 9, 1), every));
        let churn = LIST_CHURN_INTERVAL.as_secs();
        assert!(must_list(true, Some(&last), &at(t, churn, 9, 1), every));
        // A new probe connection (events may have been missed), libvirt back up, no listing yet.
        assert!(must_list(true, Some(&last), &at(t, 1, 7, 2), every));
        assert!(must_list(false, Some(&last), &at(t, 1, 7, 1), every));
        assert!(must_list(true, None, &at(t, 0, 0, 0), every));
    }
}
