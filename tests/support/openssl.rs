//! `openssl` for tests that make their own certificates. Include it with
//! `#[path = "support/openssl.rs"] mod openssl;` from a test that does not use `support`.

/// Run `openssl` with `args` in `dir`; panics with its error text on failure.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
