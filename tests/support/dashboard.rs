//! Measuring the web dashboard of a running controller (for the scale benchmark): API answer
//! times for the pages, page load and view switch in headless Chromium, and update latency
//! (a VM changed → the `change` server-sent event that makes a page reload).

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::browser::Browser;

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
    b.goto(&format!("{base}/dashboard/login")).await?;
    b.type_into("#token", token).await?;
    b.click("#login").await?;
    b.wait_text("#user", "", Duration::from_secs(30)).await?;
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
