//! Control API authentication (SPEC §8): `Authorization: Bearer <token>`,
//! tokens mapped to workspaces by `[control] api_keys`.
//!
//! With no keys configured every request is workspace `default` (the config
//! refuses a non-loopback `[control] listen` without keys, see
//! `config::load::cross_checks`). With keys, a missing, malformed or unknown
//! token gets `401 unauthorized`. Tokens are compared in constant time and
//! never logged or echoed.
//!
//! Use it as an axum extractor: `async fn handler(Workspace(ws): Workspace, ...)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error_response;
use crate::state::Shared;

/// The workspace when no API keys are configured.
pub const DEFAULT_WORKSPACE: &str = "default";

/// The caller's workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace(pub String);

impl<S> FromRequestParts<S> for Workspace
where
    Arc<Shared>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Unauthorized;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let shared = Arc::<Shared>::from_ref(state);
        authenticate(&shared.config.load().control.api_keys, &parts.headers)
    }
}

/// A refused request: answers `401 unauthorized` with `WWW-Authenticate: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthorized(pub &'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let mut resp = error_response(StatusCode::UNAUTHORIZED, "unauthorized", self.0);
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        resp
    }
}

/// The workspace for a request with `headers`, or why not. Public so that
/// other entry points (the SDK envelope) apply the same rule.
pub fn authenticate(
    api_keys: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Result<Workspace, Unauthorized> {
    if api_keys.is_empty() {
        return Ok(Workspace(DEFAULT_WORKSPACE.to_string()));
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let Some(token) = token else {
        return Err(Unauthorized("missing Authorization: Bearer <token> header"));
    };
    match workspace_for(api_keys, token) {
        Some(ws) => Ok(Workspace(ws)),
        None => Err(Unauthorized("unknown API token")),
    }
}

/// `Bearer <token>` (scheme case-insensitive) -> token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The workspace of `token`, comparing against every key in constant time
/// (hashes first, so lengths do not leak either).
fn workspace_for(api_keys: &BTreeMap<String, String>, token: &str) -> Option<String> {
    let presented = Sha256::digest(token.as_bytes());
    let mut found = None;
    for (key, workspace) in api_keys {
        let expected = Sha256::digest(key.as_bytes());
        let diff = presented
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(workspace.clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> BTreeMap<String, String> {
        [
            ("tok_a".to_string(), "ws-a".to_string()),
            ("tok_b".into(), "ws-b".into()),
        ]
        .into_iter()
        .collect()
    }

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn no_keys_means_default_workspace() {
        let ws = authenticate(&BTreeMap::new(), &headers(Some("Bearer whatever"))).unwrap();
        assert_eq!(ws, Workspace("default".into()));
        assert_eq!(
            authenticate(&BTreeMap::new(), &headers(None)).unwrap().0,
            "default"
        );
    }

    #[test]
    fn tokens_map_to_workspaces_and_others_get_401() {
        assert_eq!(
            authenticate(&keys(), &headers(Some("Bearer tok_b")))
                .unwrap()
                .0,
            "ws-b"
        );
        assert_eq!(
            authenticate(&keys(), &headers(Some("bearer  tok_a ")))
                .unwrap()
                .0,
            "ws-a"
        );
        for bad in [
            None,
            Some("Bearer"),
            Some("Basic dG9rX2E="),
            Some("Bearer tok_c"),
            Some("tok_a"),
        ] {
            let resp = authenticate(&keys(), &headers(bad))
                .unwrap_err()
                .into_response();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad:?}");
            assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        }
    }
}
