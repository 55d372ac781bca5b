//! The web dashboard of a running controller, for the e2e tests and the scale benchmark: logging
//! a browser in with a token, a user for the page, where screenshots go; and measuring it (API
//! answer times for the pages, page load and view switch in headless Chromium, and update latency:
//! a VM changed → the `change` server-sent event that makes a page reload).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::browser::Browser;
use super::cluster::{Cluster, ControllerProcess};
use super::consoles;

/// Whether the dashboard can log anyone in here: it asks the API server for TokenReviews and
/// SubjectAccessReviews, which the API stand-in does not have (e2e/run.sh uses a real API
/// server where this machine has one).
pub fn supported() -> bool {
    std::env::var_os("FERRY_STANDIN").is_none()
}

/// Where a test in namespace `ns` saves its dashboard screenshots (printed by the tests).
pub fn output_dir(ns: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("dashboard-{ns}"))
}

/// Logs the browser in at the dashboard at `base` (`http://host:port`) with `token` through the
/// login page; the user the page names (once it names one: the header's user is empty until the
/// page asked the server).
pub async fn log_in(b: &Browser, base: &str, token: &str) -> Result<String, String> {
    b.goto(&format!("{base}/dashboard/login")).await?;
    b.type_into("#token", token).await?;
    b.click("#login").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let user = b.wait_text("#user", "", Duration::from_secs(30)).await?;
        if !user.trim().is_empty() {
            return Ok(user);
        }
        if Instant::now() > deadline {
            return Err("logged in, but the page names no user after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Headless Chromium logged in to `ctl`'s dashboard as a new ServiceAccount `name` of the test
/// namespace bound there to ClusterRole `role` (ferry's aggregated user roles applied), once
/// RBAC lets it `verb resource` (`plural.group`); screenshots go to [`output_dir`].
pub async fn browser_as(
    c: &Cluster,
    ctl: &ControllerProcess,
    name: &str,
    role: &str,
    (verb, resource): (&str, &str),
) -> Browser {
    consoles::apply_user_roles(c);
    let token = consoles::user(c, name, role);
    consoles::wait_can(c, &token, verb, resource, true).await;
    let out = output_dir(&c.namespace);
    eprintln!("dashboard screenshots: {}", out.display());
    let b = Browser::start(&out).await.expect("headless Chromium");
    let base = format!("http://127.0.0.1:{}", ctl.http_port);
    let user = log_in(&b, &base, &token).await.expect("logged in");
    assert!(user.ends_with(&format!(":{name}")), "logged in as {user}");
    b
}

/// What the HA incidents page (`#/incidents`) shows: the first incident's timeline as drawn, and
/// what [`watch_incidents`] recorded since it was called.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentsPage {
    /// The page was loaded anew since [`watch_incidents`] (its record is gone).
    pub reloaded: bool,
    /// The number of timeline steps of each drawing of the page, in order, without repeats.
    pub drawn: Vec<usize>,
    /// How many times the page was drawn.
    pub draws: usize,
    /// The page's text (for messages).
    pub text: String,
    /// The failed host of each incident shown, newest first.
    pub hosts: Vec<String>,
    /// The first incident's summary line.
    pub summary: String,
    /// The first incident's timeline, top to bottom.
    pub steps: Vec<TimelineStep>,
}

/// A step of an incident's timeline on the page.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TimelineStep {
    /// `detected`, `off`, `released`, `restarted` or `back`.
    pub step: String,
    /// The VM the step is about.
    pub vm: Option<String>,
    /// When, as the API gives it (RFC 3339, whole seconds).
    pub at: String,
    /// The text shown: the time, seconds since detection, what happened.
    pub text: String,
}

/// On the incidents page: records each drawing of the page from now on (the number of timeline
/// steps), in the page itself, so that a reload shows as a lost record.
pub async fn watch_incidents(b: &Browser) -> Result<(), String> {
    b.run_async(
        "const done = arguments[arguments.length - 1];
         window.ferryE2e = { drawn: [], draws: 0 };
         const look = () => {
           window.ferryE2e.draws += 1;
           const n = document.querySelectorAll('.incident li[data-step]').length;
           const d = window.ferryE2e.drawn;
           if (d[d.length - 1] !== n) d.push(n);
         };
         new MutationObserver(look)
           .observe(document.getElementById('main'), { childList: true, subtree: true });
         look();
         done(true);",
        json!([]),
    )
    .await
    .map(|_| ())
}

/// What the incidents page shows now.
pub async fn incidents_page(b: &Browser) -> Result<IncidentsPage, String> {
    let v = b
        .run_async(
            "const done = arguments[arguments.length - 1];
             const sections = [...document.querySelectorAll('.incident')];
             const first = sections[0];
             done({
               reloaded: !window.ferryE2e,
               drawn: window.ferryE2e ? window.ferryE2e.drawn : [],
               draws: window.ferryE2e ? window.ferryE2e.draws : 0,
               text: document.getElementById('main').innerText,
               hosts: sections.map((s) => s.dataset.host),
               summary: first ? first.querySelector('.incident-summary').textContent : '',
               steps: first ? [...first.querySelectorAll('li[data-step]')].map((li) => ({
                 step: li.dataset.step, vm: li.dataset.vm || null, at: li.dataset.at,
                 text: li.textContent })) : [],
             });",
            json!([]),
        )
        .await?;
    serde_json::from_value(v.clone()).map_err(|e| format!("{e}: {v}"))
}

/// `GET /dashboard/api/<path>` from the page (with its session): the status and the body.
pub async fn fetch_in_page(b: &Browser, path: &str) -> Result<String, String> {
    let v = b
        .run_async(
            "const [path, done] = arguments;
             fetch('/dashboard/api/' + path)
               .then(async (r) => done(r.status + ' ' + await r.text()))
               .catch((e) => done(String(e)));",
            json!([path]),
        )
        .await?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

/// A logged-in dashboard session over plain HTTP.
pub struct Session {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Session {
    /// Logs in at the controller on `port` with `token`.
    pub async fn login(port: u16, token: &str) -> Result<Session, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let base = format!("http://127.0.0.1:{port}");
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .finish();
        let r = http
            .post(format!("{base}/dashboard/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("login: {e}"))?;
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .ok_or_else(|| format!("login: {} without a session cookie", r.status()))?
            .to_string();
        Ok(Session { http, base, cookie })
    }

    /// GETs `path` (under `/dashboard/api/`): how long the answer took, and its JSON.
    pub async fn get(&self, path: &str) -> Result<(Duration, serde_json::Value), String> {
        let started = Instant::now();
        let r = self
            .http
            .get(format!("{}/dashboard/api/{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let status = r.status();
        let body = r.bytes().await.map_err(|e| format!("{path}: {e}"))?;
        let took = started.elapsed();
        if !status.is_success() {
            return Err(format!(
                "{path}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let v = serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))?;
        Ok((took, v))
    }

    /// `n` answers of `path`: (median, max).
    pub async fn timed(&self, path: &str, n: usize) -> Result<(Duration, Duration), String> {
        let mut all = Vec::with_capacity(n);
        for _ in 0..n {
            all.push(self.get(path).await?.0);
        }
        Ok(spread(all))
    }

    /// Update latency: `n` times, a label of VM `vm` is changed through `vms` and the time until
    /// the change stream names `vms` is taken: (median, max).
    pub async fn update_latency(
        &self,
        vms: &Api<ferry::api::VirtualMachine>,
        vm: &str,
        n: usize,
    ) -> Result<(Duration, Duration), String> {
        let r = self
            .http
            .get(format!("{}/dashboard/api/changes", self.base))
            .header("cookie", &self.cookie)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| format!("changes: {e}"))?;
        let mut stream = r.bytes_stream();
        let mut all = Vec::new();
        let mut text = String::new();
        for i in 0..n {
            tokio::time::sleep(Duration::from_millis(700)).await;
            text.clear();
            let started = Instant::now();
            vms.patch(
                vm,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"dashboard-bench": i.to_string()}}})),
            )
            .await
            .map_err(|e| format!("patch {vm}: {e}"))?;
            let deadline = started + Duration::from_secs(30);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let chunk = tokio::time::timeout(left, stream.next())
                    .await
                    .map_err(|_| "no change event within 30 s".to_string())?
                    .ok_or("the change stream ended")?
                    .map_err(|e| format!("changes: {e}"))?;
                text.push_str(&String::from_utf8_lossy(&chunk));
                if text
                    .split("\n\n")
                    .any(|e| e.contains("event: change") && e.contains("vms"))
                {
                    all.push(started.elapsed());
                    break;
                }
            }
        }
        Ok(spread(all))
    }
}

/// (median, max).
pub fn spread(mut all: Vec<Duration>) -> (Duration, Duration) {
    all.sort();
    (
        all.get(all.len() / 2).copied().unwrap_or_default(),
        all.last().copied().unwrap_or_default(),
    )
}

/// In Chromium: log in at `base` with `token`, then (a) load `/dashboard/#/vms` afresh and take
/// the time from navigation start to the first page of VMs drawn, (b) switch to page `pages`
/// and back `n` times and take the time from the hash change to the page drawn. (a), (b)
/// median, (b) max.
pub async fn browser_load(
    b: &Browser,
    base: &str,
    token: &str,
    n: usize,
) -> Result<(Duration, Duration, Duration), String> {
    log_in(b, base, token).await?;
    b.goto(&format!("{base}/dashboard/#/vms")).await?;
    b.wait_text("#page-info", "VMs", Duration::from_secs(60))
        .await?;
    let load = b
        .run_async(
            "const done = arguments[arguments.length - 1]; done(Number(document.body.dataset.renderedAt));",
            json!([]),
        )
        .await?;
    let load = Duration::from_secs_f64(load.as_f64().unwrap_or(0.0) / 1000.0);
    let mut switches = Vec::new();
    for i in 0..n {
        let page = if i % 2 == 0 { 100 } else { 1 };
        let ms = b
            .run_async(
                "const [page, done] = arguments;
                 const before = document.body.dataset.rendered;
                 const t0 = performance.now();
                 location.hash = '#/vms?page=' + page;
                 const poll = () => document.body.dataset.rendered !== before
                   ? done(performance.now() - t0) : setTimeout(poll, 2);
                 poll();",
                json!([page]),
            )
            .await?;
        switches.push(Duration::from_secs_f64(ms.as_f64().unwrap_or(0.0) / 1000.0));
    }
    let (median, max) = spread(switches);
    Ok((load, median, max))
}
