//! libvirt's errors, sorted into "the connection is gone" and "the host refused this operation",
//! and the failures of ferry's own inside a call.

use virt::connect::Connect;
use virt::domain::Domain;

use crate::hypervisor::{HypervisorError, error_code};

// libvirt error numbers and domains (virterror.h) used to classify failures.
const VIR_ERR_INTERNAL_ERROR: i32 = 1;
pub(super) const VIR_ERR_NO_SUPPORT: i32 = 3;
const VIR_ERR_NO_CONNECT: i32 = 5;
const VIR_ERR_INVALID_CONN: i32 = 6;
pub(super) const VIR_ERR_INVALID_ARG: i32 = 8;
const VIR_ERR_SYSTEM_ERROR: i32 = 38;
const VIR_ERR_GNUTLS_ERROR: i32 = 40;
const VIR_ERR_AUTH_FAILED: i32 = 45;
pub(super) const VIR_ERR_ARGUMENT_UNSUPPORTED: i32 = 74;
const VIR_ERR_SSH: i32 = 85;
const VIR_ERR_LIBSSH: i32 = 98;
const VIR_FROM_RPC: i32 = 7;
const VIR_FROM_REMOTE: i32 = 13;

/// A libvirt error, or a failure of ferry's own inside a call (unparsable XML from the host).
pub(super) enum Fail {
    Virt(virt::error::Error),
    /// Reported by ferry with a libvirt error code (a lookup found nothing).
    Code(i32, String),
    Other(String),
}

impl From<virt::error::Error> for Fail {
    fn from(e: virt::error::Error) -> Self {
        Fail::Virt(e)
    }
}

impl Fail {
    pub(super) fn code(&self) -> i32 {
        match self {
            Fail::Virt(e) => e.code().to_raw() as i32,
            Fail::Code(code, _) => *code,
            Fail::Other(_) => 0,
        }
    }
}

/// What a call on the connection thread returns.
pub(super) type CallResult<T> = Result<T, Fail>;

/// Sorts a libvirt error into "the connection is gone" (reconnect) or "the host refused this
/// operation", after libvirt's `virterror.h` and KubeVirt's `cli/libvirt.go`:
/// - no connection / invalid connection (5, 6);
/// - any internal or system error raised by the RPC or remote layer (domain 7 or 13, codes 1 and
///   38: end of file, broken pipe, "client socket is closed", keepalive timeout);
/// - TLS and SSH transport errors (40, 85, 98).
///
/// A system error from another layer (say, the storage driver failing to unlink a file, code 38
/// domain 18) is an operation failure, not a lost connection.
pub(super) fn classify(uri: &str, op: &'static str, fail: Fail) -> HypervisorError {
    let e = match fail {
        Fail::Virt(e) => e,
        Fail::Code(code, message) => {
            return HypervisorError::OperationFailed {
                operation: op,
                code,
                message,
            };
        }
        Fail::Other(message) => {
            return HypervisorError::OperationFailed {
                operation: op,
                code: 0,
                message,
            };
        }
    };
    let code = e.code().to_raw() as i32;
    let domain = e.domain().to_raw() as i32;
    if is_connection_error(code, domain) {
        HypervisorError::ConnectionLost {
            uri: uri.into(),
            message: format!("{op}: {}", e.message()),
        }
    } else {
        HypervisorError::OperationFailed {
            operation: op,
            code,
            message: e.message().to_string(),
        }
    }
}

/// When a failed connection attempt is about credentials rather than reachability, what to fix.
/// libvirt reports these with generic codes, so its (untranslated) messages decide:
/// - the host closes the connection right after the TLS handshake ("Unable to read TLS
///   confirmation") when it rejects the client certificate;
/// - "Failed to verify peer's certificate": the host's certificate is not trusted;
/// - "failed validation against": the client certificate does not match `cacert.pem`;
/// - "Cannot read ...": a file of `pkipath` (or the SSH key) is missing;
/// - SSH: the key refused, or the host key unknown or changed.
pub(super) fn credentials_problem(code: i32, message: &str) -> Option<&'static str> {
    let has = |s: &str| message.contains(s);
    if has("TLS confirmation") {
        Some(
            "the host rejected ferry's TLS client certificate (it closed the connection right after \
             the handshake): clientcert.pem must be signed by a CA the host trusts (its ca_file) \
             and be allowed by its tls_allowed_dn_list",
        )
    } else if has("peer's certificate") || has("server certificate") {
        Some(
            "the host's TLS certificate was rejected: it is not signed by the CA in cacert.pem, \
             has expired, or does not name the host as the URI does",
        )
    } else if has("failed validation against") {
        Some(
            "the TLS client certificate was rejected: clientcert.pem is not signed by the CA in cacert.pem (or has expired)",
        )
    } else if has("Cannot read CA certificate")
        || has("Cannot read certificate")
        || has("Cannot read private key")
        || has("reading private key")
        || has("Identity file")
    {
        Some("a credentials file is missing or unreadable")
    } else if has("Host key verification failed") || has("host key") || has("known_hosts") {
        Some("the host's SSH host key is not in known_hosts, or has changed")
    } else if has("Permission denied") || has("publickey") {
        Some("the host refused the SSH key")
    } else if code == VIR_ERR_AUTH_FAILED {
        Some("the host refused ferry's credentials")
    } else {
        None
    }
}

/// Whether a libvirt error code and error domain mean the connection is gone.
pub(super) fn is_connection_error(code: i32, domain: i32) -> bool {
    match code {
        VIR_ERR_NO_CONNECT | VIR_ERR_INVALID_CONN => true,
        VIR_ERR_GNUTLS_ERROR | VIR_ERR_SSH | VIR_ERR_LIBSSH => true,
        VIR_ERR_INTERNAL_ERROR | VIR_ERR_SYSTEM_ERROR => {
            domain == VIR_FROM_RPC || domain == VIR_FROM_REMOTE
        }
        _ => false,
    }
}

/// Whether a failure carries this libvirt error code.
pub(super) fn is_code(fail: &Fail, code: i32) -> bool {
    fail.code() == code
}

/// `Ok(None)` when libvirt says the object does not exist.
pub(super) fn found<T>(r: Result<T, virt::error::Error>, not_found: i32) -> CallResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code().to_raw() as i32 == not_found => Ok(None),
        Err(e) => Err(Fail::Virt(e)),
    }
}

/// The domain with this UUID, `None` when the host has none.
pub(super) fn lookup_dom(conn: &Connect, uuid: &str) -> CallResult<Option<Domain>> {
    found(
        conn.lookup_domain_by_uuid_string(uuid),
        error_code::NO_DOMAIN,
    )
}

/// The error of a call on a domain that does not exist.
pub(super) fn not_found_domain(uuid: &str) -> Fail {
    Fail::Code(error_code::NO_DOMAIN, format!("no domain with UUID {uuid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_code_and_domain() {
        // Refused / no route / EOF / broken pipe / keepalive: all from the RPC layer.
        assert!(is_connection_error(VIR_ERR_SYSTEM_ERROR, VIR_FROM_RPC));
        assert!(is_connection_error(VIR_ERR_INTERNAL_ERROR, VIR_FROM_RPC));
        assert!(is_connection_error(VIR_ERR_SYSTEM_ERROR, VIR_FROM_REMOTE));
        assert!(is_connection_error(VIR_ERR_NO_CONNECT, 0));
        assert!(is_connection_error(VIR_ERR_INVALID_CONN, 0));
        assert!(is_connection_error(VIR_ERR_GNUTLS_ERROR, VIR_FROM_RPC));
        // A storage driver failing a syscall, a missing domain, a QEMU error: the host answered.
        assert!(!is_connection_error(VIR_ERR_SYSTEM_ERROR, 18));
        assert!(!is_connection_error(error_code::NO_DOMAIN, 10));
        assert!(!is_connection_error(VIR_ERR_INTERNAL_ERROR, 10));
        assert!(!is_connection_error(error_code::OPERATION_INVALID, 10));
    }

    #[test]
    fn credential_failures_say_what_to_fix() {
        let cases = [
            // The host rejected the client certificate (lab: a client cert from another CA).
            (
                38,
                "Unable to read TLS confirmation: Input/output error",
                Some("rejected ferry's TLS client certificate"),
            ),
            // The host's certificate is not signed by cacert.pem.
            (
                45,
                "authentication failed: Failed to verify peer's certificate",
                Some("host's TLS certificate was rejected"),
            ),
            (
                38,
                "Our own certificate /p/clientcert.pem failed validation against /p/cacert.pem: The certificate hasn't got a known issuer.",
                Some("clientcert.pem is not signed"),
            ),
            (
                38,
                "Cannot read CA certificate '/p/cacert.pem': No such file or directory",
                Some("missing or unreadable"),
            ),
            (
                38,
                "Cannot recv data: Warning: Identity file /k not accessible: No such file or directory.",
                Some("missing or unreadable"),
            ),
            (
                38,
                "Cannot recv data: Host key verification failed.: Connection reset by peer",
                Some("SSH host key"),
            ),
            (
                45,
                "authentication failed: error while reading private key '/k'",
                Some("missing or unreadable"),
            ),
            (
                45,
                "authentication failed: !!! SSH HOST KEY VERIFICATION FAILED !!!: Identity of host '10.0.0.1:22' differs from stored identity. Please verify the new host key",
                Some("SSH host key"),
            ),
            (
                85,
                "libssh transport error: SSH host key for '10.0.0.1' (77:01) was not accepted",
                Some("SSH host key"),
            ),
            (
                85,
                "libssh transport error: failed to authenticate: Access denied for 'publickey'. Authentication that can continue: publickey",
                Some("refused the SSH key"),
            ),
            (
                38,
                "Cannot recv data: root@10.0.0.1: Permission denied (publickey,password).: Connection reset by peer",
                Some("refused the SSH key"),
            ),
            (
                45,
                "authentication failed: no agent",
                Some("refused ferry's credentials"),
            ),
            // Reachability, not credentials.
            (
                38,
                "unable to connect to server at '10.0.0.1:16514': No route to host",
                None,
            ),
            (
                38,
                "unable to connect to server at '10.0.0.1:16514': Connection refused",
                None,
            ),
        ];
        for (code, message, want) in cases {
            let got = credentials_problem(code, message);
            match want {
                Some(w) => assert!(got.is_some_and(|g| g.contains(w)), "{message}: {got:?}"),
                None => assert_eq!(got, None, "{message}"),
            }
        }
    }
}
