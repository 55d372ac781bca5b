//! The caller's bearer token, from wherever a client can put it, checked with the API server.
//!
//! - `Authorization: Bearer <token>` (kubectl ferry, scripts);
//! - the WebSocket subprotocol `base64url.bearer.authorization.k8s.io.<base64url token>`, as
//!   Kubernetes' own API server takes it from browsers, which cannot set headers on WebSockets.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use super::{Web, problem};
use crate::access::{AccessError, Identity, Request};

/// Prefix of the WebSocket subprotocol that carries a token.
pub const PROTOCOL_PREFIX: &str = "base64url.bearer.authorization.k8s.io.";

/// Where the token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Protocol,
}

/// The bearer token of a request and where it was found.
pub fn bearer(headers: &HeaderMap) -> Option<(String, Source)> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    {
        return Some((t.trim().to_string(), Source::Header));
    }
    for v in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        for p in v.to_str().unwrap_or_default().split(',') {
            if let Some(encoded) = p.trim().strip_prefix(PROTOCOL_PREFIX)
                && let Some(token) = base64url_decode(encoded)
            {
                return Some((token, Source::Protocol));
            }
        }
    }
    None
}

/// The caller, or the response that turns them away (401; 503 when the API server cannot be
/// asked).
pub async fn caller(web: &Web, headers: &HeaderMap) -> Result<(Identity, String), Response> {
    let Some((token, _)) = bearer(headers) else {
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "no bearer token: send `Authorization: Bearer <token>` (a Kubernetes token, e.g. from `kubectl create token`)",
        ));
    };
    match web.access.authenticate(&token).await {
        Ok(who) => Ok((who, token)),
        Err(AccessError::Unauthenticated(why)) => Err(problem(StatusCode::UNAUTHORIZED, why)),
        Err(e @ AccessError::Unavailable(_)) => {
            Err(problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

/// `Ok` when `who` may do `what`, else the 403 (or 503) that says what RBAC must grant.
pub async fn authorize(web: &Web, who: &Identity, what: &Request) -> Result<(), Response> {
    match web.access.allowed(who, what).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(problem(
            StatusCode::FORBIDDEN,
            format!(
                "{} may not {} (RBAC decides; the built-in edit role grants it)",
                who.username,
                what.describe()
            ),
        )),
        Err(e) => Err(problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

/// base64url without padding (RFC 4648 §5), as the subprotocol carries the token.
fn base64url_decode(s: &str) -> Option<String> {
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_token_is_found_where_each_client_puts_it() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc.def")])),
            Some(("abc.def".into(), Source::Header))
        );
        // "my-token" in base64url is bXktdG9rZW4.
        assert_eq!(
            bearer(&headers(&[(
                "sec-websocket-protocol",
                "binary, base64url.bearer.authorization.k8s.io.bXktdG9rZW4"
            )])),
            Some(("my-token".into(), Source::Protocol))
        );
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
