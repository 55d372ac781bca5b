//! The `ferry` and `kubectl-ferry` command lines as a person meets them: the version with its
//! commit, a closed pipe, and logs on a non-terminal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const PLUGIN: &str = env!("CARGO_BIN_EXE_kubectl-ferry");

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_release_and_the_commit() {
    let commit = match std::env::var("FERRY_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().chars().take(12).collect(),
        _ => git_head().map_or("unknown".to_string(), |h| h[..12].to_string()),
    };
    for (bin, name) in [(FERRY, "ferry"), (PLUGIN, "kubectl-ferry")] {
        let out = Command::new(bin).arg("--version").output().expect("runs");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{name} {} (git {commit})", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn crds_to_a_reader_that_stops_early_ends_quietly() {
    let mut child = Command::new(FERRY)
        .arg("crds")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("one line");
    // The reader (`head -1`) is gone: stdout is closed.
    assert_eq!(first.trim(), "---");
    let out = child.wait_with_output().expect("exits");
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    // A kubeconfig that does not exist: the controller logs why it stops, and stops.
    let start = Instant::now();
    let out = Command::new(FERRY)
        .args([
            "controller",
            "--kubeconfig",
            "/nonexistent/ferry-kubeconfig",
            "--log-format",
            "text",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ferry controller stopped"), "{err}");
    assert!(err.contains("/nonexistent/ferry-kubeconfig"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour codes in {err:?}");
}
