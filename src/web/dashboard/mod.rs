//! The web dashboard under `/dashboard/`: pools → hosts → VMs, live migrations and HA incidents,
//! updated live, with start / stop / restart / migrate on each VM page.
//!
//! - Login with a bearer token (checked with a TokenReview) opens a server-side session
//!   ([`session`]); the token stays on the server.
//! - What a user sees is what RBAC lets them list (a SubjectAccessReview per namespace and
//!   resource, cached briefly); buttons show only where RBAC allows the action.
//! - Actions are made **with the user's own token**, so the API server authorizes and audits
//!   them as that user; the controller's own rights are never lent out.
//! - Pages are plain HTML, CSS and JavaScript embedded in the binary (no CDN); lists are paged on
//!   the server; `/dashboard/api/changes` is a server-sent event stream fed by the controller's
//!   caches ([`changes`]).

pub mod changes;
pub mod novnc;
pub mod session;
pub mod view;

use std::collections::{BTreeSet, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::sync::watch;

use self::changes::Notice;
use self::session::{CSRF_HEADER, Session, Sessions};
use self::view::{Page, VmFilter};
use super::Web;
use crate::access::{AccessError, Identity, Request};
use crate::api::{VirtualMachine, VirtualMachineMigration};
use crate::controller::Context;
use crate::hypervisor::ConsoleKind;
use crate::plan::migration_request;
use crate::plan::power_request::{self, Plan, Want};

/// Field manager of the dashboard's writes (made as the user, shown in `managedFields`).
pub const FIELD_MANAGER: &str = "ferry-dashboard";

/// How long a call to the API server made for a page may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Events shown on a VM's page, at most.
const EVENTS_SHOWN: usize = 20;

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// xterm.js, vendored from npm (`@xterm/xterm` 6.0.0, MIT: `assets/vendor/xterm-6.0.0/`), for
/// the serial console.
const XTERM_JS: &str = include_str!("assets/vendor/xterm-6.0.0/xterm.js");
const XTERM_CSS: &str = include_str!("assets/vendor/xterm-6.0.0/xterm.css");
const XTERM_LICENSE: &str = include_str!("assets/vendor/xterm-6.0.0/LICENSE");

/// The dashboard's state: sessions, change notices, and the cluster settings user clients are
/// made from.
pub struct Dashboard {
    /// Logged-in people.
    pub sessions: Sessions,
    /// The controller's cluster settings (API server URL and CA), for clients that carry a
    /// user's token instead of the controller's credentials.
    config: Config,
    notices: watch::Sender<Notice>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Dashboard {
    /// State for a dashboard whose user clients talk to the cluster `config` names.
    pub fn new(config: Config) -> Self {
        Dashboard {
            sessions: Sessions::default(),
            config,
            notices: watch::channel(Notice::default()).0,
            watcher: Mutex::new(None),
        }
    }

    /// Start publishing change notices from the leader's caches.
    pub fn follow(&self, ctx: Arc<Context>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = rt.spawn(changes::watch_caches(ctx, self.notices.clone()));
        if let Some(old) = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// A client that authenticates as the holder of `token`, to the controller's cluster.
    fn user_client(&self, token: &str) -> Result<Client, String> {
        let mut config = self.config.clone();
        config.auth_info = kube::config::AuthInfo {
            token: Some(secrecy::SecretString::from(token.to_string())),
            ..Default::default()
        };
        Client::try_from(config).map_err(|e| format!("a client for the user: {e}"))
    }
}

/// The dashboard's routes.
pub fn routes(web: Arc<Web>) -> Router {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(shell))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/assets/{file}", get(asset))
        .route("/dashboard/assets/novnc/{*path}", get(novnc_asset))
        .route("/dashboard/api/overview", get(overview))
        .route("/dashboard/api/pools/{ns}/{name}", get(pool))
        .route("/dashboard/api/vms", get(vms))
        .route("/dashboard/api/vms/{ns}/{name}", get(vm))
        .route("/dashboard/api/vms/{ns}/{name}/{action}", post(action))
        .route(
            "/dashboard/api/vms/{ns}/{name}/console",
            get(|state, path, headers, ws| console(state, path, headers, ws, ConsoleKind::Serial)),
        )
        .route(
            "/dashboard/api/vms/{ns}/{name}/vnc",
            get(|state, path, headers, ws| console(state, path, headers, ws, ConsoleKind::Vnc)),
        )
        .route("/dashboard/api/migrations", get(migrations))
        .route("/dashboard/api/incidents", get(incidents))
        .route("/dashboard/api/changes", get(changes))
        .layer(middleware::from_fn_with_state(web.clone(), leader_only))
        .layer(middleware::map_response(security_headers))
        .with_state(web)
}

/// A standby has no caches and no sessions: it answers 503, as the console proxy does.
async fn leader_only(State(web): State<Arc<Web>>, req: HttpRequest, next: Next) -> Response {
    match web.context() {
        Ok(_) => next.run(req).await,
        Err(r) => r,
    }
}

/// Headers on every dashboard response: nothing but the dashboard's own files may run or load,
/// no framing, no caching of data.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        // xterm.js sets the terminal's colours and sizes in <style> elements it creates:
        // inline styles are allowed, inline scripts are not.
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    );
    set(h, "x-content-type-options", "nosniff");
    // `no-referrer` would make browsers send `Origin: null` on the login form, which
    // [`same_origin`] refuses.
    set(h, "referrer-policy", "same-origin");
    set(h, "x-frame-options", "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    r
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, &json!({"error": message.into()}))
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Text made safe to put into HTML.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

fn login_html(status: StatusCode, message: &str) -> Response {
    let note = if message.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"error\" id=\"login-error\">{}</p>",
            escape(message)
        )
    };
    html(status, LOGIN_HTML.replace("<!--message-->", &note))
}

/// A POST from a page of another origin is refused (the SameSite cookie already keeps the
/// session out of it; this also covers the login form).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        == Some(host)
}

/// The request's session, its token checked again with the API server (answers are cached
/// briefly), or the 401 that sends the page back to the login.
async fn session(web: &Web, headers: &HeaderMap) -> Result<Arc<Session>, Response> {
    let gone = || {
        error(
            StatusCode::UNAUTHORIZED,
            "not logged in (or the session ended)",
        )
    };
    let id = session::cookie(headers).ok_or_else(gone)?;
    let sessions = &web.dashboard.sessions;
    let s = sessions.get(&id, Instant::now()).ok_or_else(gone)?;
    match web.access.authenticate(s.token()).await {
        Ok(who) if who == s.who => Ok(s),
        Ok(_) | Err(AccessError::Unauthenticated(_)) => {
            sessions.remove(&id);
            Err(gone())
        }
        Err(e) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// A POST's session, with its CSRF token and origin checked.
async fn posting(web: &Web, headers: &HeaderMap) -> Result<Arc<Session>, Response> {
    if !same_origin(headers) {
        return Err(error(StatusCode::FORBIDDEN, "cross-origin request refused"));
    }
    let s = session(web, headers).await?;
    let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !s.csrf_matches(given) {
        return Err(error(
            StatusCode::FORBIDDEN,
            format!("missing or wrong {CSRF_HEADER} header"),
        ));
    }
    Ok(s)
}

/// The namespaces in which a user may list a resource.
enum Visible {
    All,
    Only(HashSet<String>),
}

impl Visible {
    fn sees(&self, ns: &str) -> bool {
        match self {
            Visible::All => true,
            Visible::Only(set) => set.contains(ns),
        }
    }
}

/// Where `who` may list `resource`: everywhere, or the namespaces among `namespaces` RBAC
/// allows (SubjectAccessReviews, a few at a time, each answer cached briefly).
async fn visible(
    web: &Web,
    who: &Identity,
    resource: &'static str,
    namespaces: BTreeSet<String>,
) -> Result<Visible, Response> {
    let unavailable = |e: AccessError| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    if web
        .access
        .allowed(who, &Request::list(resource, ""))
        .await
        .map_err(unavailable)?
    {
        return Ok(Visible::All);
    }
    let answers: Vec<(String, Result<bool, AccessError>)> =
        futures::stream::iter(namespaces.into_iter().map(|ns| async move {
            let r = web.access.allowed(who, &Request::list(resource, &ns)).await;
            (ns, r)
        }))
        .buffer_unordered(8)
        .collect()
        .await;
    let mut seen = HashSet::new();
    for (ns, r) in answers {
        if r.map_err(unavailable)? {
            seen.insert(ns);
        }
    }
    Ok(Visible::Only(seen))
}

fn namespaces<K: kube::Resource>(objects: &[Arc<K>]) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(|o| o.meta().namespace.clone())
        .collect()
}

/// The query string's pairs.
fn query(raw: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn param(q: &[(String, String)], key: &str) -> Option<String> {
    q.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

async fn shell(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    match session(&web, &headers).await {
        Ok(_) => html(StatusCode::OK, INDEX_HTML.to_string()),
        Err(_) => Redirect::to("/dashboard/login").into_response(),
    }
}

async fn login_page() -> Response {
    login_html(StatusCode::OK, "")
}

async fn login(State(web): State<Arc<Web>>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers) {
        return login_html(StatusCode::FORBIDDEN, "cross-origin login refused");
    }
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if token.is_empty() {
        return login_html(StatusCode::BAD_REQUEST, "Paste a Kubernetes bearer token.");
    }
    let who = match web.access.authenticate(&token).await {
        Ok(who) => who,
        Err(AccessError::Unauthenticated(why)) => {
            return login_html(
                StatusCode::UNAUTHORIZED,
                &format!("The API server did not accept the token: {why}"),
            );
        }
        Err(e) => return login_html(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let user = who.username.clone();
    match web.dashboard.sessions.create(who, token, Instant::now()) {
        Ok(s) => {
            tracing::info!(user = %user, "dashboard login");
            let cookie = session::set_cookie(&s.id, session::over_https(&headers));
            let mut r = Redirect::to("/dashboard/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => login_html(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

async fn logout(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let s = match posting(&web, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    web.dashboard.sessions.remove(&s.id);
    tracing::info!(user = %s.who.username, "dashboard logout");
    let mut r = json_response(StatusCode::OK, &json!({"message": "logged out"}));
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(session::over_https(&headers))) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn asset(Path(file): Path<String>) -> Response {
    let (kind, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "app.css" => ("text/css; charset=utf-8", APP_CSS),
        "xterm.js" => ("text/javascript; charset=utf-8", XTERM_JS),
        "xterm.css" => ("text/css; charset=utf-8", XTERM_CSS),
        "xterm-LICENSE.txt" => ("text/plain; charset=utf-8", XTERM_LICENSE),
        _ => return error(StatusCode::NOT_FOUND, "no such file"),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn novnc_asset(Path(path): Path<String>) -> Response {
    match novnc::file(&path) {
        Some((kind, body)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "no such file"),
    }
}

/// Runs `f` with the session and the leader's context, turning refusals into responses.
macro_rules! with_session {
    ($web:expr, $headers:expr) => {{
        let s = match session(&$web, &$headers).await {
            Ok(s) => s,
            Err(r) => return r,
        };
        let ctx = match $web.context() {
            Ok(c) => c,
            Err(r) => return r,
        };
        (s, ctx)
    }};
}

macro_rules! try_response {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

async fn overview(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (s, ctx) = with_session!(web, headers);
    let pools = ctx.caches.pools.state();
    let vms = ctx.caches.vms.state();
    let see_pools = try_response!(visible(&web, &s.who, "hostpools", namespaces(&pools)).await);
    let see_vms = try_response!(visible(&web, &s.who, "virtualmachines", namespaces(&vms)).await);
    let mut vm_namespaces: Vec<String> = namespaces(&vms)
        .into_iter()
        .filter(|ns| see_vms.sees(ns))
        .collect();
    vm_namespaces.sort();
    json_response(
        StatusCode::OK,
        &json!({
            "user": s.who.username,
            "csrf": s.csrf,
            "pools": view::pool_list(&pools, &vms, |ns| see_pools.sees(ns))["items"],
            "vmNamespaces": vm_namespaces,
            "vms": vms.iter().filter(|v| see_vms.sees(v.metadata.namespace.as_deref().unwrap_or_default())).count(),
        }),
    )
}

async fn pool(
    State(web): State<Arc<Web>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (s, ctx) = with_session!(web, headers);
    let see = try_response!(visible(&web, &s.who, "hostpools", BTreeSet::from([ns.clone()])).await);
    let found = ctx
        .caches
        .pools
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|_| see.sees(&ns));
    match found {
        Some(p) => json_response(StatusCode::OK, &view::pool_detail(&p)),
        None => error(
            StatusCode::NOT_FOUND,
            format!("hostpool {ns}/{name} not found"),
        ),
    }
}

async fn vms(State(web): State<Arc<Web>>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let (s, ctx) = with_session!(web, headers);
    let q = query(raw);
    let all = ctx.caches.vms.state();
    let see = try_response!(visible(&web, &s.who, "virtualmachines", namespaces(&all)).await);
    let filter = VmFilter {
        namespace: param(&q, "namespace"),
        pool: param(&q, "pool"),
        host: param(&q, "host"),
        phase: param(&q, "phase"),
        text: param(&q, "q"),
    };
    let number = |k: &str| param(&q, k).and_then(|v| v.parse().ok());
    let page = Page::new(number("page"), number("perPage"));
    json_response(
        StatusCode::OK,
        &view::vm_list(&all, |ns| see.sees(ns), &filter, page),
    )
}

/// The VM `ns/name` if the user may see it, or 404 (also when they may not: its existence is
/// not theirs to learn).
async fn visible_vm(
    web: &Web,
    ctx: &Context,
    who: &Identity,
    ns: &str,
    name: &str,
) -> Result<Arc<VirtualMachine>, Response> {
    let see = visible(
        web,
        who,
        "virtualmachines",
        BTreeSet::from([ns.to_string()]),
    )
    .await?;
    ctx.caches
        .vms
        .get(&ObjectRef::new(name).within(ns))
        .filter(|_| see.sees(ns))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("virtualmachine {ns}/{name} not found"),
            )
        })
}

async fn vm(
    State(web): State<Arc<Web>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (s, ctx) = with_session!(web, headers);
    let vm = try_response!(visible_vm(&web, &ctx, &s.who, &ns, &name).await);
    let migrations = ctx.caches.migrations.state();
    let mut body = view::vm_detail(&vm, &migrations);
    let may = |r: Request| {
        let web = web.clone();
        let who = s.who.clone();
        async move { web.access.allowed(&who, &r).await.unwrap_or(false) }
    };
    let (patch, migrate, serial, vnc) = futures::join!(
        may(Request::patch_vm(&ns, &name)),
        may(Request::create_migration(&ns)),
        may(Request::console(&ns, &name)),
        may(Request::vnc(&ns, &name)),
    );
    let serial = serial && super::console::check_console(&vm, ConsoleKind::Serial).is_ok();
    let vnc = vnc && super::console::check_console(&vm, ConsoleKind::Vnc).is_ok();
    body["actions"] = json!({
        "start": patch, "stop": patch, "restart": patch, "migrate": migrate,
        "console": serial, "vnc": vnc,
    });
    let (events, events_error) = match vm_events(&web, &ctx, &s, &ns, &name).await {
        Ok(e) => (e, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    body["events"] = json!(events);
    body["eventsError"] = json!(events_error);
    json_response(StatusCode::OK, &body)
}

/// The VM's most recent Events, where RBAC lets the user list Events in its namespace: from
/// the controller's Events cache (a SubjectAccessReview, cached, decides), or, while that cache
/// has no complete list (or no watch: RBAC without it), listed with the user's own token.
async fn vm_events(
    web: &Web,
    ctx: &Context,
    s: &Session,
    ns: &str,
    name: &str,
) -> Result<Vec<Value>, String> {
    let items: Vec<Arc<Event>> = match ctx.caches.events_about("VirtualMachine", ns, name) {
        Some(cached) => {
            let may = web
                .access
                .allowed(&s.who, &Request::list("events", ns))
                .await
                .map_err(|e| e.to_string())?;
            if !may {
                return Err(format!(
                    "{} may not list events in namespace {ns}",
                    s.who.username
                ));
            }
            cached
        }
        None => {
            let client = s.client(|t| web.dashboard.user_client(t))?;
            let api: Api<Event> = Api::namespaced(client, ns);
            let lp = ListParams::default().fields(&format!(
                "involvedObject.name={name},involvedObject.kind=VirtualMachine"
            ));
            let list = tokio::time::timeout(API_TIMEOUT, api.list(&lp))
                .await
                .map_err(|_| "the API server did not answer in time".to_string())?
                .map_err(|e| format!("listing Events: {e}"))?;
            list.items.into_iter().map(Arc::new).collect()
        }
    };
    Ok(view::event_rows(items, EVENTS_SHOWN))
}

/// Start, stop, restart or migrate, made with the user's token.
async fn action(
    State(web): State<Arc<Web>>,
    Path((ns, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let s = try_response!(posting(&web, &headers).await);
    let ctx = try_response!(web.context());
    let vm = try_response!(visible_vm(&web, &ctx, &s.who, &ns, &name).await);
    let request = match action.as_str() {
        "start" | "stop" | "restart" => Request::patch_vm(&ns, &name),
        "migrate" => Request::create_migration(&ns),
        other => return error(StatusCode::NOT_FOUND, format!("no action {other:?}")),
    };
    match web.access.allowed(&s.who, &request).await {
        Ok(true) => {}
        Ok(false) => {
            return error(
                StatusCode::FORBIDDEN,
                format!("{} may not {}", s.who.username, request.describe()),
            );
        }
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
    let client = match s.client(|t| web.dashboard.user_client(t)) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let result = if action == "migrate" {
        let target = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["targetHost"].as_str().map(str::to_string))
            .filter(|t| !t.is_empty());
        migrate(client, &vm, target.as_deref(), &s.who.username).await
    } else {
        let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
        let plan = match action.as_str() {
            "start" => power_request::power_plan(&vm, Want::Start, false, &stamp),
            "stop" => power_request::power_plan(&vm, Want::Stop, false, &stamp),
            _ => power_request::restart_plan(&vm, &stamp),
        };
        apply(client, &ns, &name, plan).await
    };
    match result {
        Ok(message) => {
            tracing::info!(user = %s.who.username, vm = %format!("{ns}/{name}"), action, "dashboard action");
            json_response(StatusCode::OK, &json!({"message": message}))
        }
        Err(r) => r,
    }
}

/// The status and message of a failed API call, passed on to the page.
fn api_error(e: kube::Error) -> Response {
    match e {
        kube::Error::Api(s) => error(
            StatusCode::from_u16(s.code).unwrap_or(StatusCode::BAD_GATEWAY),
            s.message,
        ),
        other => error(StatusCode::BAD_GATEWAY, other.to_string()),
    }
}

async fn apply(client: Client, ns: &str, name: &str, plan: Plan) -> Result<String, Response> {
    match plan {
        Plan::Nothing(why) => Ok(why),
        Plan::Refuse(why) => Err(error(StatusCode::CONFLICT, why)),
        Plan::Patch(patch, what) => {
            let api: Api<VirtualMachine> = Api::namespaced(client, ns);
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            tokio::time::timeout(API_TIMEOUT, api.patch(name, &pp, &Patch::Merge(&patch)))
                .await
                .map_err(|_| {
                    error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the API server did not answer in time",
                    )
                })?
                .map_err(api_error)?;
            Ok(what)
        }
    }
}

async fn migrate(
    client: Client,
    vm: &VirtualMachine,
    target: Option<&str>,
    user: &str,
) -> Result<String, Response> {
    let m = migration_request::migration(vm, target, &format!("manual (dashboard, {user})"))
        .map_err(|why| error(StatusCode::CONFLICT, why))?;
    let ns = vm.metadata.namespace.clone().unwrap_or_default();
    let api: Api<VirtualMachineMigration> = Api::namespaced(client, &ns);
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let made = tokio::time::timeout(API_TIMEOUT, api.create(&pp, &m))
        .await
        .map_err(|_| {
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "the API server did not answer in time",
            )
        })?
        .map_err(api_error)?;
    Ok(format!(
        "created VirtualMachineMigration {}",
        made.metadata.name.unwrap_or_default()
    ))
}

/// The VM's serial console (for the page's terminal, xterm.js) or VNC display (for noVNC) as a
/// WebSocket: the session's user, then the console proxy's own checks (RBAC on
/// `virtualmachines/console` or `/vnc`, a running VM) and Events. A handshake from another
/// origin is refused (browsers send the session cookie with it).
async fn console(
    State(web): State<Arc<Web>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
    kind: ConsoleKind,
) -> Response {
    if headers.get(header::ORIGIN).is_none() || !same_origin(&headers) {
        return error(StatusCode::FORBIDDEN, "cross-origin console refused");
    }
    let s = try_response!(session(&web, &headers).await);
    let ctx = try_response!(web.context());
    try_response!(visible_vm(&web, &ctx, &s.who, &ns, &name).await);
    super::console::open(web.clone(), s.who.clone(), ns, name, kind, ws)
        .await
        .unwrap_or_else(|r| r)
}

async fn migrations(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (s, ctx) = with_session!(web, headers);
    let all = ctx.caches.migrations.state();
    let see =
        try_response!(visible(&web, &s.who, "virtualmachinemigrations", namespaces(&all)).await);
    json_response(
        StatusCode::OK,
        &view::migration_list(&all, |ns| see.sees(ns), 20),
    )
}

async fn incidents(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (s, ctx) = with_session!(web, headers);
    let all = ctx.caches.policies.state();
    let see = try_response!(visible(&web, &s.who, "hapolicies", namespaces(&all)).await);
    json_response(
        StatusCode::OK,
        &view::incident_list(&all, |ns| see.sees(ns)),
    )
}

/// Server-sent events: `change` with the kinds that changed (`vms,migrations`), until the
/// session ends (checked at each notice and every 15 s).
async fn changes(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let (s, _ctx) = with_session!(web, headers);
    let rx = web.dashboard.notices.subscribe();
    let state = (rx, web.clone(), s.id.clone());
    let stream = futures::stream::unfold(state, |(mut rx, web, id)| async move {
        loop {
            let changed = tokio::time::timeout(Duration::from_secs(15), rx.changed()).await;
            if !web.dashboard.sessions.is_open(&id, Instant::now()) {
                return None;
            }
            match changed {
                Ok(Ok(())) => {
                    let notice = rx.borrow_and_update().clone();
                    let event = SseEvent::default()
                        .event("change")
                        .id(notice.seq.to_string())
                        .data(notice.kinds.join(","));
                    return Some((Ok::<_, Infallible>(event), (rx, web, id)));
                }
                Ok(Err(_)) => return None,
                Err(_) => continue,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_origins_compared() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            same_origin(&h),
            "no Origin: not a cross-site browser request"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn queries_are_decoded() {
        let q = query(Some("q=web%201&page=2&host=".into()));
        assert_eq!(param(&q, "q").as_deref(), Some("web 1"));
        assert_eq!(param(&q, "page").as_deref(), Some("2"));
        assert_eq!(param(&q, "host"), None);
    }
}
