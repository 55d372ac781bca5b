//! Dashboard sessions: a person logs in with a bearer token once; the server keeps the token and
//! the user the TokenReview named under a random session id, which the browser holds in an
//! `HttpOnly`, `SameSite=Strict` cookie (`Secure` when the page came over HTTPS). The token never
//! reaches a URL or a page. Every state-changing request also carries the session's CSRF token in
//! a header ([`CSRF_HEADER`]), which a page of another site cannot set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use kube::Client;
use secrecy::{ExposeSecret, SecretString};

use crate::access::Identity;

/// Name of the session cookie.
pub const COOKIE: &str = "ferry_session";
/// Header that carries the session's CSRF token on every POST.
pub const CSRF_HEADER: &str = "x-ferry-csrf";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; a login past that is refused until some expire.
pub const MAX_SESSIONS: usize = 10_000;

/// One logged-in person.
pub struct Session {
    /// The session id (the cookie's value).
    pub id: String,
    /// Who the TokenReview said the token belongs to.
    pub who: Identity,
    /// The bearer token, kept to re-check it and to act as this user.
    token: SecretString,
    /// The CSRF token the page sends back on POSTs.
    pub csrf: String,
    created: Instant,
    client: std::sync::OnceLock<Client>,
}

impl Session {
    /// The user's bearer token.
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }

    /// A Kubernetes client that authenticates as this user, made once per session by `make`.
    pub fn client(
        &self,
        make: impl FnOnce(&str) -> Result<Client, String>,
    ) -> Result<Client, String> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let c = make(self.token())?;
        Ok(self.client.get_or_init(|| c).clone())
    }

    /// Whether `given` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, given: Option<&str>) -> bool {
        let Some(given) = given else { return false };
        let (a, b) = (given.as_bytes(), self.csrf.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

struct Entry {
    session: Arc<Session>,
    last_used: Instant,
}

/// The sessions of this replica (in memory: a new leader starts with none).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    /// A new session for `who`, or why not (too many sessions, no randomness).
    pub fn create(
        &self,
        who: Identity,
        token: String,
        now: Instant,
    ) -> Result<Arc<Session>, String> {
        let session = Arc::new(Session {
            id: random_hex(32)?,
            who,
            token: SecretString::from(token),
            csrf: random_hex(32)?,
            created: now,
            client: std::sync::OnceLock::new(),
        });
        let mut map = lock(&self.map);
        map.retain(|_, e| alive(e, now));
        if map.len() >= MAX_SESSIONS {
            return Err("too many dashboard sessions are open; try again later".into());
        }
        map.insert(
            session.id.clone(),
            Entry {
                session: session.clone(),
                last_used: now,
            },
        );
        Ok(session)
    }

    /// The live session `id`, marked as used at `now`.
    pub fn get(&self, id: &str, now: Instant) -> Option<Arc<Session>> {
        let mut map = lock(&self.map);
        let entry = map.get_mut(id)?;
        if !alive(entry, now) {
            map.remove(id);
            return None;
        }
        entry.last_used = now;
        Some(entry.session.clone())
    }

    /// Whether session `id` is still open at `now` (without marking it used).
    pub fn is_open(&self, id: &str, now: Instant) -> bool {
        lock(&self.map).get(id).is_some_and(|e| alive(e, now))
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) {
        lock(&self.map).remove(id);
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn alive(e: &Entry, now: Instant) -> bool {
    now.saturating_duration_since(e.last_used) < IDLE
        && now.saturating_duration_since(e.session.created) < LIFETIME
}

/// The session id the request's cookie carries.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached the dashboard over HTTPS (a TLS-terminating proxy in front says
/// so with `X-Forwarded-Proto`; the flag only ever makes the cookie stricter).
pub fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .next()
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
        })
}

/// The `Set-Cookie` value that hands session `id` to the browser.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{COOKIE}={id}; Path=/dashboard/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/dashboard/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// `bytes` random bytes from the operating system, in hex.
fn random_hex(bytes: usize) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| "no randomness for a session id".to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn alice() -> Identity {
        Identity {
            username: "alice".into(),
            uid: None,
            groups: vec![],
            extra: Default::default(),
        }
    }

    #[test]
    fn sessions_end_when_idle_or_old_and_on_logout() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let s = sessions.create(alice(), "tok".into(), t0).expect("session");
        assert_eq!(s.id.len(), 64);
        assert_ne!(s.id, s.csrf);
        assert_eq!(s.token(), "tok");
        // Used every 20 minutes it lives on, until its lifetime is over.
        let mut t = t0;
        while t + Duration::from_secs(20 * 60) < t0 + LIFETIME {
            t += Duration::from_secs(20 * 60);
            assert!(sessions.get(&s.id, t).is_some(), "alive at {:?}", t - t0);
        }
        assert!(sessions.get(&s.id, t0 + LIFETIME).is_none(), "too old");

        let s = sessions.create(alice(), "tok".into(), t0).expect("session");
        assert!(sessions.get(&s.id, t0 + IDLE).is_none(), "idle too long");

        let s = sessions.create(alice(), "tok".into(), t0).expect("session");
        assert!(sessions.is_open(&s.id, t0));
        sessions.remove(&s.id);
        assert!(sessions.get(&s.id, t0).is_none(), "logged out");
        assert!(sessions.get("nonsense", t0).is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let sessions = Sessions::default();
        let s = sessions
            .create(alice(), "tok".into(), Instant::now())
            .expect("session");
        assert!(s.csrf_matches(Some(&s.csrf.clone())));
        assert!(!s.csrf_matches(None));
        assert!(!s.csrf_matches(Some("")));
        assert!(!s.csrf_matches(Some(&s.csrf[1..])));
        assert!(!s.csrf_matches(Some(&s.id.clone())));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_https() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; ferry_session=abc123; x=y"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("abc123"));
        assert_eq!(cookie(&HeaderMap::new()), None);
        let plain = set_cookie("abc", false);
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_https(&h));
        assert!(!over_https(&HeaderMap::new()));
    }
}
