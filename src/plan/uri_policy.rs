//! Which libvirt URIs ferry uses, whatever a HostPool says.
//!
//! A libvirt URI is more than an address: its transport may run a program (`qemu+ext`, or
//! `command=` with the SSH transports), and its parameters name files the controller reads
//! (`pkipath=`, `keyfile=`, `known_hosts=`) and sockets it connects to (`socket=`). The
//! controller holds credentials for every host and Secret, so a URI is allowed only when:
//!
//! - its driver is `qemu` with a transport from [`TRANSPORTS`] (or none: TLS with a host, the
//!   local socket without), and its path is `/system`; `test` (libvirt's in-process fake
//!   hosts) only when the controller runs with `--allow-test-driver`;
//! - each query parameter is one of the few ferry knows, given once, without `%`, `+`, `;` or
//!   `#` (libvirt would decode or split them), and fits the transport;
//! - `socket=` names a socket inside a directory of [`Limits::socket_dirs`], and `pkipath=`,
//!   `keyfile=` and `known_hosts=` name something inside [`Limits::credential_dirs`], never
//!   inside the directory where ferry writes credentials from Secrets (another namespace's);
//! - host verification stays on (`no_verify=1`, `known_hosts_verify=ignore`) unless the pool
//!   says `insecureSkipHostVerification: true`.
//!
//! The same check runs on a template (placeholders such as `{label:KEY}` are opaque: a
//! directory must be literal up to where a file inside it is named) and on each URI rendered
//! from it, just before it is used.

use crate::plan::host_paths;

/// libvirt transports ferry uses with the `qemu` driver.
pub const TRANSPORTS: &[&str] = &["tls", "ssh", "libssh", "libssh2", "tcp", "unix"];

/// What the controller's installation allows (flags of `ferry controller`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `test://` URIs: libvirt's in-process fake hosts, for tests and benchmarks.
    pub allow_test_driver: bool,
    /// Directories whose sockets `socket=` may name (the controller's file system).
    pub socket_dirs: Vec<String>,
    /// Directories `pkipath=`, `keyfile=` and `known_hosts=` may name.
    pub credential_dirs: Vec<String>,
    /// Where ferry writes credentials from Secrets; no URI may name it.
    pub own_credentials_dir: Option<String>,
}

/// libvirt's own socket directories.
pub const DEFAULT_SOCKET_DIRS: &[&str] = &["/run/libvirt", "/var/run/libvirt"];
/// Where the Helm chart mounts PKI Secrets, and libvirt's own default.
pub const DEFAULT_CREDENTIAL_DIRS: &[&str] = &["/etc/ferry/pki", "/etc/pki/libvirt"];

impl Default for Limits {
    fn default() -> Self {
        Limits {
            allow_test_driver: false,
            socket_dirs: DEFAULT_SOCKET_DIRS.iter().map(|d| d.to_string()).collect(),
            credential_dirs: DEFAULT_CREDENTIAL_DIRS
                .iter()
                .map(|d| d.to_string())
                .collect(),
            own_credentials_dir: None,
        }
    }
}

impl Limits {
    /// Check the directories themselves (absolute, normalized, not `/`), or say which is wrong.
    pub fn validate(&self) -> Result<(), String> {
        for d in self.socket_dirs.iter().chain(&self.credential_dirs) {
            host_paths::segments(d).map_err(|e| format!("allowed directory {d}: {e}"))?;
        }
        Ok(())
    }
}

/// Who uses the URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The controller connects with it (`libvirt.uriTemplate`).
    Controller,
    /// The source host's libvirtd connects to the destination with it during a peer-to-peer
    /// migration (`migration.peerUriTemplate`): it uses the host's own client configuration, so
    /// no socket or credential file may be named and no local socket used.
    Peer,
}

/// What the HostPool says that the check depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolTerms {
    /// `libvirt.insecureSkipHostVerification`.
    pub skip_host_verification: bool,
    /// `libvirt.credentialsSecret` is set: ferry adds `pkipath=` or `keyfile=` itself.
    pub credentials_secret: bool,
}

/// One reason a URI is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Condition reason: `TransportNotAllowed`, `URIParameterNotAllowed` or `PathNotAllowed`.
    pub reason: &'static str,
    pub message: String,
}

fn problem(reason: &'static str, message: String) -> Problem {
    Problem { reason, message }
}

const TRANSPORT: &str = "TransportNotAllowed";
const PARAMETER: &str = "URIParameterNotAllowed";
const PATH: &str = "PathNotAllowed";

/// Check `uri` (a template or a rendered URI) for `role`; every problem is listed.
pub fn check(uri: &str, role: Role, limits: &Limits, terms: PoolTerms) -> Result<(), Vec<Problem>> {
    let mut out = Vec::new();
    // A placeholder's key may hold `/` (`{annotation:example.com/host}`) but its value never
    // does: parse the URI with each placeholder shortened to its kind.
    let uri = &opaque_placeholders(uri);
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(vec![problem(
            TRANSPORT,
            format!("{uri:?} is not a libvirt URI (expected e.g. qemu+tls://{{address}}/system)"),
        )]);
    };
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let allowed_transports = match role {
        Role::Controller => {
            "qemu+tls://, qemu+ssh://, qemu+libssh://, qemu+libssh2://, qemu+tcp:// or qemu+unix://"
        }
        Role::Peer => "qemu+tls://, qemu+ssh://, qemu+libssh://, qemu+libssh2:// or qemu+tcp://",
    };
    // The transport the connection uses: libvirt's default is TLS with a host, the local
    // socket without.
    let effective = match (driver, transport) {
        ("test", None) if role == Role::Controller => {
            if !limits.allow_test_driver {
                out.push(problem(
                    TRANSPORT,
                    "the test driver (test://) is libvirt's in-process fake host, for tests only: the controller allows it only with --allow-test-driver".into(),
                ));
            }
            if query.is_some() {
                out.push(problem(PARAMETER, "test:// URIs take no parameters".into()));
            }
            return finish(out);
        }
        ("qemu", None) if authority.is_empty() && role == Role::Controller => "unix",
        ("qemu", None) => "tls",
        ("qemu", Some(t)) if TRANSPORTS.contains(&t) && !(role == Role::Peer && t == "unix") => t,
        (_, Some("ext")) => {
            out.push(problem(
                TRANSPORT,
                format!("transport ext runs a local program (command=) with the controller's credentials and is never allowed: use {allowed_transports}"),
            ));
            return finish(out);
        }
        ("qemu", Some(t)) => {
            out.push(problem(
                TRANSPORT,
                format!("transport {t:?} is not allowed: use {allowed_transports}"),
            ));
            return finish(out);
        }
        (d, _) => {
            out.push(problem(
                TRANSPORT,
                format!("driver {d:?} is not allowed: ferry runs QEMU domains, so use {allowed_transports}"),
            ));
            return finish(out);
        }
    };
    if path != "/system" {
        out.push(problem(
            TRANSPORT,
            format!("path {path:?}: ferry manages the system instance (…/system); a /session URI would start a per-user daemon"),
        ));
    }
    if let Some(q) = query {
        check_query(q, effective, role, limits, terms, &mut out);
    }
    finish(out)
}

/// `s` with every `{KIND:KEY}` shortened to `{KIND}`.
fn opaque_placeholders(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 1..start + len];
        out.push_str(&rest[..start]);
        out.push('{');
        out.push_str(inner.split_once(':').map_or(inner, |(kind, _)| kind));
        out.push('}');
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn finish(out: Vec<Problem>) -> Result<(), Vec<Problem>> {
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// Which transports a parameter applies to.
const SSH: &[&str] = &["ssh", "libssh", "libssh2"];

fn check_query(
    query: &str,
    transport: &str,
    role: Role,
    limits: &Limits,
    terms: PoolTerms,
    out: &mut Vec<Problem>,
) {
    if let Some(c) = query.chars().find(|c| matches!(c, '%' | '+' | ';' | '#')) {
        out.push(problem(
            PARAMETER,
            format!("the query may not contain {c:?} (libvirt would decode it or split on it): write parameters as plain key=value pairs joined by &"),
        ));
        return;
    }
    let mut seen: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let Some((key, value)) = pair.split_once('=') else {
            out.push(problem(
                PARAMETER,
                format!("parameter {pair:?} needs a value (key=value)"),
            ));
            continue;
        };
        if seen.contains(&key) {
            out.push(problem(
                PARAMETER,
                format!("parameter {key} is given twice"),
            ));
            continue;
        }
        seen.push(key);
        if let Err(p) = check_parameter(key, value, transport, role, limits, terms) {
            out.push(p);
        }
    }
}

fn check_parameter(
    key: &str,
    value: &str,
    transport: &str,
    role: Role,
    limits: &Limits,
    terms: PoolTerms,
) -> Result<(), Problem> {
    let only = |transports: &[&str]| {
        if transports.contains(&transport) {
            Ok(())
        } else {
            Err(problem(
                PARAMETER,
                format!(
                    "parameter {key} does not apply to transport {transport} (only {})",
                    transports.join(", ")
                ),
            ))
        }
    };
    let one_of = |values: &[&str]| {
        if values.contains(&value) {
            Ok(())
        } else {
            Err(problem(
                PARAMETER,
                format!("{key}={value} is not one of {}", values.join(", ")),
            ))
        }
    };
    let no_placeholder = || {
        if value.contains(['{', '}']) {
            Err(problem(PARAMETER, format!("{key}= takes no placeholder")))
        } else {
            Ok(())
        }
    };
    let insecure = |what: &str| {
        if terms.skip_host_verification {
            Ok(())
        } else {
            Err(problem(
                PARAMETER,
                format!(
                    "{what} turns off checking the host's identity: set spec.libvirt.insecureSkipHostVerification: true in the HostPool to allow it (labs only)"
                ),
            ))
        }
    };
    let file_param = |dirs: &[String], kind: &str, flag: &str| -> Result<(), Problem> {
        if role == Role::Peer {
            return Err(problem(
                PARAMETER,
                format!(
                    "{key}= in peerUriTemplate: the source host uses its own libvirt client configuration"
                ),
            ));
        }
        if terms.credentials_secret && key != "socket" {
            return Err(problem(
                PARAMETER,
                format!(
                    "{key}= in uriTemplate together with spec.libvirt.credentialsSecret: ferry adds the credentials' own files; give them in one place"
                ),
            ));
        }
        confined(
            key,
            value,
            dirs,
            kind,
            flag,
            limits.own_credentials_dir.as_deref(),
        )
    };
    match key {
        "command" => Err(problem(
            PARAMETER,
            "command= names a program for the controller to run and is never allowed".into(),
        )),
        "socket" => {
            only(&["unix"])?;
            file_param(&limits.socket_dirs, "socket", "--libvirt-socket-dir")
        }
        "pkipath" => {
            only(&["tls"])?;
            file_param(
                &limits.credential_dirs,
                "credentials",
                "--libvirt-credentials-dir",
            )
        }
        "keyfile" | "known_hosts" => {
            only(SSH)?;
            file_param(
                &limits.credential_dirs,
                "credentials",
                "--libvirt-credentials-dir",
            )
        }
        "no_verify" => {
            // TLS: no check of the host's certificate; ssh and libssh2: accept an unknown host
            // key (libssh has known_hosts_verify instead).
            only(&["tls", "ssh", "libssh2"])?;
            no_placeholder()?;
            one_of(&["0", "1"])?;
            if value == "1" {
                insecure("no_verify=1")?;
            }
            Ok(())
        }
        "known_hosts_verify" => {
            only(&["libssh", "libssh2"])?;
            no_placeholder()?;
            one_of(&["normal", "auto", "ignore"])?;
            if value == "ignore" {
                insecure("known_hosts_verify=ignore")?;
            }
            Ok(())
        }
        "sshauth" => {
            only(SSH)?;
            no_placeholder()?;
            if value
                .split(',')
                .all(|m| ["agent", "privkey", "password", "keyboard-interactive"].contains(&m))
            {
                Ok(())
            } else {
                Err(problem(
                    PARAMETER,
                    format!(
                        "sshauth={value}: methods are agent, privkey, password and keyboard-interactive"
                    ),
                ))
            }
        }
        "no_tty" => {
            only(SSH)?;
            no_placeholder()?;
            one_of(&["0", "1"])
        }
        "mode" => {
            no_placeholder()?;
            one_of(&["auto", "legacy", "direct"])
        }
        "proxy" => {
            no_placeholder()?;
            one_of(&["auto", "netcat", "native"])
        }
        _ => Err(problem(
            PARAMETER,
            format!(
                "parameter {key:?} is not allowed (ferry allows socket, pkipath, keyfile, known_hosts, known_hosts_verify, no_verify, sshauth, no_tty, mode and proxy)"
            ),
        )),
    }
}

/// `value` (the path in parameter `key`) names something inside one of `dirs`, and not inside
/// ferry's own credentials directory. Placeholders may only name things inside a literal
/// directory: a filled value is a host name or address, so it adds no segment.
fn confined(
    key: &str,
    value: &str,
    dirs: &[String],
    kind: &str,
    flag: &str,
    own: Option<&str>,
) -> Result<(), Problem> {
    let segs = host_paths::segments(value).map_err(|e| problem(PATH, format!("{key}=: {e}")))?;
    let literal_prefix = |d: &[&str]| segs.len() > d.len() && segs[..d.len()] == *d;
    if let Some(own) = own.and_then(|o| host_paths::segments(o).ok())
        && (segs == own || host_paths::inside(&segs, &own))
    {
        return Err(problem(
            PATH,
            format!(
                "{key}={value} is where ferry keeps credentials from Secrets (each namespace's own): name credentials through spec.libvirt.credentialsSecret instead"
            ),
        ));
    }
    let inside = dirs
        .iter()
        .filter_map(|d| host_paths::segments(d).ok())
        .any(|d| literal_prefix(&d));
    if inside {
        Ok(())
    } else {
        Err(problem(
            PATH,
            format!(
                "{key}={value} is outside the controller's allowed {kind} directories ({}): use one of them (the directory part written out, without placeholders), or start the controller with {flag} naming yours",
                dirs.join(", ")
            ),
        ))
    }
}

/// Why connecting to `uri` would run a program of the URI's choosing on the client (the `ext`
/// transport, or `command=` with any transport), or `None`. For clients that take URIs from a
/// HostPool without the controller's limits, such as `kubectl ferry console`.
pub fn runs_a_program(uri: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once("://")?;
    if scheme.ends_with("+ext") {
        return Some(format!("{scheme}:// runs a local program"));
    }
    let query = rest.split_once('?')?.1;
    query
        .split(['&', ';'])
        .any(|kv| {
            let key = kv.split_once('=').map_or(kv, |(k, _)| k);
            key.eq_ignore_ascii_case("command") || key.contains('%')
        })
        .then(|| "its command= parameter names a program to run".to_string())
}

/// The problems as one message and the first one's reason.
pub fn summary(problems: &[Problem]) -> (&'static str, String) {
    let reason = problems.first().map(|p| p.reason).unwrap_or(PARAMETER);
    let message = problems
        .iter()
        .map(|p| p.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    (reason, message)
}

#[cfg(test)]
mod tests;
