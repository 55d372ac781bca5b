//! Records the git commit ferry is built from, for `ferry --version` and the build-info metric:
//! `FERRY_GIT_COMMIT` from the environment when set (the Dockerfile passes it as a build
//! argument: its context has no `.git`), else `git rev-parse HEAD` of this checkout, else
//! `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_GIT_COMMIT");
    let from_env = std::env::var("FERRY_GIT_COMMIT")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let commit = match from_env {
        Some(c) => c,
        None => {
            // Build again when HEAD moves: HEAD itself, and the branch it points to.
            for path in [
                Some("HEAD".to_string()),
                git(&["symbolic-ref", "-q", "HEAD"]),
            ]
            .into_iter()
            .flatten()
            .filter_map(|p| git(&["rev-parse", "--git-path", &p]))
            .chain(git(&["rev-parse", "--git-path", "packed-refs"]))
            {
                if std::path::Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string())
        }
    };
    let short: String = commit.chars().take(12).collect();
    println!("cargo:rustc-env=FERRY_GIT_COMMIT={short}");
}
