//! A real browser for tests: Debian's headless Chromium driven through chromedriver with the W3C
//! WebDriver protocol (plain HTTP and JSON, spoken here with reqwest). chromedriver runs in a
//! process group of its own, which is killed with everything in it when the [`Browser`] drops,
//! also when a test fails. The browser's profile and its temporary files (`TMPDIR`; Chromium
//! makes some outside its profile) are in one temporary directory, removed with it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// chromedriver from Debian's `chromium-driver` package.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Chromium from Debian's `chromium` package.
pub const CHROMIUM: &str = "/usr/bin/chromium";

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium session.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    driver: Child,
    /// `profile/` (Chromium's user data) and `tmp/` (its `TMPDIR`).
    home: tempfile::TempDir,
    /// Where screenshots go.
    pub out: PathBuf,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session; screenshots go to `out`.
    pub async fn start(out: &Path) -> Result<Browser, String> {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            if !Path::new(bin).exists() {
                return Err(format!(
                    "{bin} is missing: install Debian's chromium and chromium-driver (scripts/setup.sh does)"
                ));
            }
        }
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let log = out.join("chromedriver.log");
        let home = tempfile::tempdir().map_err(|e| e.to_string())?;
        let tmp = home.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let driver = Command::new(CHROMEDRIVER)
            .env("TMPDIR", &tmp)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{CHROMEDRIVER}: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let mut b = Browser {
            http,
            base: format!("http://127.0.0.1:{port}"),
            driver,
            home,
            out: out.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = b
                .http
                .get(format!("{}/status", b.base))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err("chromedriver did not answer within 20 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync", "--disable-default-apps",
                    "--disable-component-update",
                    format!("--user-data-dir={}", b.home.path().join("profile").display()),
                ],
            },
        }}});
        let answer = b.call("POST", "/session", Some(caps)).await?;
        let id = answer["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {answer}"))?
            .to_string();
        b.base = format!("{}/session/{id}", b.base);
        Ok(b)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or(json!({}))),
        };
        let r = req
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status}: {}", v["value"]));
        }
        Ok(v.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<(), String> {
        self.call("POST", "/url", Some(json!({"url": url})))
            .await
            .map(|_| ())
    }

    /// The page's URL.
    pub async fn url(&self) -> Result<String, String> {
        Ok(self
            .call("GET", "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// The first element `css` selects, if any.
    pub async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .ok()?;
        v.as_array()?.first()?[ELEMENT].as_str().map(str::to_string)
    }

    /// The text of the first element `css` selects, if any.
    pub async fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css).await?;
        let v = self
            .call("GET", &format!("/element/{id}/text"), None)
            .await
            .ok()?;
        v.as_str().map(str::to_string)
    }

    /// Waits until an element `css` selects shows text containing `needle` (any text when
    /// empty); its text, or an error after `limit` that says what was on the page.
    pub async fn wait_text(
        &self,
        css: &str,
        needle: &str,
        limit: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.text(css).await
                && t.contains(needle)
            {
                return Ok(t);
            }
            if Instant::now() > deadline {
                let body = self.text("body").await.unwrap_or_default();
                return Err(format!(
                    "no {css:?} with {needle:?} after {limit:?}; the page says:\n{body}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks the first element `css` selects. A live update may redraw the page between
    /// finding the element and clicking it (WebDriver's "stale element reference"): it is then
    /// found again and clicked, five times at most.
    pub async fn click(&self, css: &str) -> Result<(), String> {
        let mut stale = 0;
        loop {
            let id = self
                .find(css)
                .await
                .ok_or_else(|| format!("nothing matches {css:?}"))?;
            match self
                .call("POST", &format!("/element/{id}/click"), Some(json!({})))
                .await
            {
                Err(e) if e.contains("stale element") && stale < 5 => {
                    stale += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done => return done.map(|_| ()),
            }
        }
    }

    /// Types `text` into the first element `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self
            .find(css)
            .await
            .ok_or_else(|| format!("nothing matches {css:?}"))?;
        self.call("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await?;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await
        .map(|_| ())
    }

    /// Sends `text` as key presses to the first element `css` selects (WebDriver key codes such
    /// as `\u{e007}`, Enter, included), without clearing it first.
    pub async fn keys(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self
            .find(css)
            .await
            .ok_or_else(|| format!("nothing matches {css:?}"))?;
        self.call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await
        .map(|_| ())
    }

    /// Runs `script` (an async function body whose last argument is the callback) in the page.
    pub async fn run_async(&self, script: &str, args: Value) -> Result<Value, String> {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Saves a PNG screenshot of the window as `name` in the output directory; its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let v = self.call("GET", "/screenshot", None).await?;
        let png = decode_base64(v.as_str().unwrap_or_default())?;
        let path = self.out.join(name);
        std::fs::write(&path, png).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Ends the session and stops chromedriver and the browser.
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.call("DELETE", "", None)).await;
        self.stop();
    }

    fn stop(&mut self) {
        let pgid = self.driver.id() as i32;
        // SAFETY: signals the process group this Browser started (chromedriver and its
        // Chromium processes); nothing else is in it.
        unsafe {
            libc::killpg(pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.driver.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; whatever of the group is left is killed.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut bits, mut n) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(format!("not base64: {c:?}")),
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Ok(out)
}
