//! Who is calling, and what they may do, as Kubernetes decides it: the caller's bearer token is
//! checked with a TokenReview, each request with a SubjectAccessReview, so RBAC roles grant
//! consoles and dashboard actions like any other verb.
//!
//! A VM's serial console is the subresource `virtualmachines/console` of group
//! `subresources.ferry.dev` (ferry's aggregated API), its VNC display `virtualmachines/vnc` (verb
//! `get`); the chart aggregates both into `edit`.
//! Dashboard actions are checked with the verb the action's API call needs (`patch` on
//! `virtualmachines`, `create` on `virtualmachinemigrations`), and then made with the caller's
//! own token, so the API server checks them once more.
//!
//! Answers are cached for [`CACHE_TTL`] (a page refresh or a reconnect does not cost a review
//! each), keyed by the token's SHA-256, never the token itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// How long an answer of the API server is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// Entries kept per cache; past that the cache starts over.
const CACHE_ENTRIES: usize = 4096;

/// The API group of ferry's resources.
pub const GROUP: &str = "ferry.dev";

/// The API group of ferry's aggregated API, whose subresources are a VM's consoles
/// (`virtualmachines/console`, `virtualmachines/vnc`).
pub const SUBRESOURCE_GROUP: &str = "subresources.ferry.dev";

/// An authenticated user, as the TokenReview named them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// User name (`system:serviceaccount:ns:name` for service accounts).
    pub username: String,
    /// The user's UID, when the authenticator gives one.
    pub uid: Option<String>,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (scopes, the service account's pod, ...), passed on to RBAC.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Why a caller is not let in.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No token, or one the API server does not accept.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The API server could not be asked (the caller is neither let in nor turned away for
    /// good).
    #[error("cannot check access with the API server: {0}")]
    Unavailable(String),
}

/// What a request asks to do: a verb on a (sub)resource of one object, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// `get`, `patch`, `create`, ...
    pub verb: &'static str,
    /// API group (`ferry.dev`).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Subresource, e.g. `console`; empty for none.
    pub subresource: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Object name; empty for a request on the collection (`create`).
    pub name: String,
}

impl Request {
    /// Opening the serial console of VM `name` (as the API server authorizes it for the
    /// aggregated API).
    pub fn console(namespace: &str, name: &str) -> Request {
        Request {
            group: SUBRESOURCE_GROUP,
            ..Self::vm("get", "console", namespace, name)
        }
    }

    /// Opening the VNC display of VM `name`.
    pub fn vnc(namespace: &str, name: &str) -> Request {
        Request {
            group: SUBRESOURCE_GROUP,
            ..Self::vm("get", "vnc", namespace, name)
        }
    }

    /// Changing VM `name` (start, stop, restart: annotations or `spec.runStrategy`).
    pub fn patch_vm(namespace: &str, name: &str) -> Request {
        Self::vm("patch", "", namespace, name)
    }

    /// Listing `resource` (of group `ferry.dev`, or `""` for the core group's `events`) in
    /// `namespace`; in every namespace when `namespace` is empty.
    pub fn list(resource: &'static str, namespace: &str) -> Request {
        Request {
            verb: "list",
            group: if resource == "events" { "" } else { GROUP },
            resource,
            subresource: "",
            namespace: namespace.into(),
            name: String::new(),
        }
    }

    /// Creating a VirtualMachineMigration in `namespace`.
    pub fn create_migration(namespace: &str) -> Request {
        Request {
            verb: "create",
            group: GROUP,
            resource: "virtualmachinemigrations",
            subresource: "",
            namespace: namespace.into(),
            name: String::new(),
        }
    }

    fn vm(verb: &'static str, subresource: &'static str, namespace: &str, name: &str) -> Request {
        Request {
            verb,
            group: GROUP,
            resource: "virtualmachines",
            subresource,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `verb virtualmachines/console ns/name`, for messages.
    pub fn describe(&self) -> String {
        let mut resource = self.resource.to_string();
        if !self.subresource.is_empty() {
            resource = format!("{resource}/{}", self.subresource);
        }
        let object = if self.name.is_empty() && self.namespace.is_empty() {
            "in all namespaces".to_string()
        } else if self.name.is_empty() {
            format!("in namespace {}", self.namespace)
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        format!("{} {resource}.{} {object}", self.verb, self.group)
    }

    fn attributes(&self) -> ResourceAttributes {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ResourceAttributes {
            verb: Some(self.verb.into()),
            group: Some(self.group.into()),
            resource: Some(self.resource.into()),
            subresource: some(self.subresource),
            namespace: some(&self.namespace),
            name: some(&self.name),
            ..Default::default()
        }
    }
}

/// TokenReview answers by the token's SHA-256: when asked, and the user or why not.
type TokenCache = HashMap<[u8; 32], (Instant, Result<Identity, String>)>;

/// Asks the API server who a token belongs to and what its user may do.
pub struct Access {
    client: Client,
    tokens: Mutex<TokenCache>,
    decisions: Mutex<HashMap<(Identity, Request), (Instant, bool)>>,
}

impl Access {
    /// Reviews through `client` (the controller's own: it needs `create` on `tokenreviews` and
    /// `subjectaccessreviews`).
    pub fn new(client: Client) -> Self {
        Access {
            client,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// The user `token` belongs to (TokenReview).
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AccessError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AccessError::Unauthenticated("no bearer token".into()));
        }
        let key = token_key(token);
        let now = Instant::now();
        if let Some((at, answer)) = lock(&self.tokens).get(&key).cloned()
            && now.duration_since(at) < CACHE_TTL
        {
            return answer.map_err(AccessError::Unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: None,
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AccessError::Unavailable(e.to_string()))?;
        let identity = identity_of(&answer);
        remember(&self.tokens, key, (now, identity.clone()));
        identity.map_err(AccessError::Unauthenticated)
    }

    /// Whether `who` may do `what` (SubjectAccessReview).
    pub async fn allowed(&self, who: &Identity, what: &Request) -> Result<bool, AccessError> {
        let key = (who.clone(), what.clone());
        let now = Instant::now();
        if let Some((at, allowed)) = lock(&self.decisions).get(&key).copied()
            && now.duration_since(at) < CACHE_TTL
        {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.username.clone()),
                uid: who.uid.clone(),
                groups: Some(who.groups.clone()),
                extra: (!who.extra.is_empty()).then(|| who.extra.clone()),
                resource_attributes: Some(what.attributes()),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AccessError::Unavailable(e.to_string()))?;
        let allowed = answer
            .status
            .as_ref()
            .is_some_and(|s| s.allowed && !s.denied.unwrap_or(false));
        remember(&self.decisions, key, (now, allowed));
        Ok(allowed)
    }
}

/// The identity a TokenReview answered, or why it did not authenticate.
fn identity_of(review: &TokenReview) -> Result<Identity, String> {
    let status = review
        .status
        .as_ref()
        .ok_or("no status in the TokenReview")?;
    if !status.authenticated.unwrap_or(false) {
        return Err(status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server did not accept the token".into()));
    }
    let user = status.user.as_ref().ok_or("no user in the TokenReview")?;
    let username = user
        .username
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or("no user name in the TokenReview")?;
    Ok(Identity {
        username,
        uid: user.uid.clone().filter(|u| !u.is_empty()),
        groups: user.groups.clone().unwrap_or_default(),
        extra: user.extra.clone().unwrap_or_default(),
    })
}

fn token_key(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

fn remember<K: std::hash::Hash + Eq, V>(cache: &Mutex<HashMap<K, V>>, key: K, value: V) {
    let mut map = lock(cache);
    if map.len() >= CACHE_ENTRIES {
        map.clear();
    }
    map.insert(key, value);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn review(status: Option<TokenReviewStatus>) -> TokenReview {
        TokenReview {
            status,
            ..Default::default()
        }
    }

    #[test]
    fn a_token_review_names_the_user_or_says_why_not() {
        let ok = review(Some(TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:team:alice".into()),
                uid: Some("u1".into()),
                groups: Some(vec!["system:serviceaccounts".into()]),
                extra: None,
            }),
            ..Default::default()
        }));
        let who = identity_of(&ok).expect("authenticated");
        assert_eq!(who.username, "system:serviceaccount:team:alice");
        assert_eq!(who.groups, ["system:serviceaccounts"]);

        let refused = review(Some(TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token has expired".into()),
            ..Default::default()
        }));
        assert_eq!(identity_of(&refused).unwrap_err(), "token has expired");
        assert!(identity_of(&review(None)).is_err());
        let nameless = review(Some(TokenReviewStatus {
            authenticated: Some(true),
            user: Some(UserInfo::default()),
            ..Default::default()
        }));
        assert!(identity_of(&nameless).is_err());
    }

    #[test]
    fn requests_read_as_rbac_rules() {
        assert_eq!(
            Request::console("team", "web").describe(),
            "get virtualmachines/console.subresources.ferry.dev team/web"
        );
        assert_eq!(
            Request::create_migration("team").describe(),
            "create virtualmachinemigrations.ferry.dev in namespace team"
        );
        let a = Request::vnc("team", "web").attributes();
        assert_eq!(a.subresource.as_deref(), Some("vnc"));
        assert_eq!(a.group.as_deref(), Some("subresources.ferry.dev"));
        assert_eq!(Request::patch_vm("t", "w").attributes().subresource, None);
        let everywhere = Request::list("hostpools", "");
        assert_eq!(everywhere.attributes().namespace, None);
        assert_eq!(
            everywhere.describe(),
            "list hostpools.ferry.dev in all namespaces"
        );
        assert_eq!(
            Request::list("events", "t").attributes().group.as_deref(),
            Some("")
        );
    }
}
