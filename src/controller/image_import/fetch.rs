//! The HTTP client of one import, held to the pool's [`Policy`]: every name it resolves is
//! checked and the connection goes to exactly the addresses checked (a second DNS answer, as in
//! DNS rebinding, is never asked for), every redirect is checked before it is followed, and no
//! proxy is used (a proxy would resolve names where ferry cannot check them).

use crate::plan::import_policy::{Policy, Target};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most redirects one import follows.
const MAX_REDIRECTS: usize = 10;

/// Why the policy stopped a connection, kept for the import's report (reqwest wraps the
/// resolver's and the redirect policy's errors in its own words).
#[derive(Clone, Default)]
pub(super) struct Refusal(Arc<Mutex<Option<String>>>);

impl Refusal {
    fn set(&self, why: &str) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| why.to_string());
    }

    /// The first refusal, if the policy refused anything.
    pub(super) fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Resolves names with the system resolver and hands reqwest only addresses the policy allows;
/// one refused address refuses the name.
struct CheckedResolver {
    policy: Arc<Policy>,
    refusal: Refusal,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let (policy, refusal) = (self.policy.clone(), self.refusal.clone());
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address").into());
            }
            for a in &addrs {
                if let Err(why) = policy.check_address(a.ip()) {
                    let why = format!("{host} resolves to {why}");
                    refusal.set(&why);
                    return Err(why.into());
                }
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// A client for one import under `policy`; refusals are recorded in `refusal`.
pub(super) fn client(policy: Arc<Policy>, refusal: Refusal) -> Result<reqwest::Client, String> {
    let redirect_policy = policy.clone();
    let redirect_refusal = refusal.clone();
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        // An address in the new URL is checked here, a name when it is resolved.
        match redirect_policy.check_url(attempt.url().as_str()) {
            Ok(Target::Address(_) | Target::Name(_)) => attempt.follow(),
            Err(why) => {
                let why = format!("redirected to {why}");
                redirect_refusal.set(&why);
                attempt.error(why)
            }
        }
    });
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(120))
        .no_proxy()
        .redirect(redirects)
        .dns_resolver(Arc::new(CheckedResolver { policy, refusal }))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}
