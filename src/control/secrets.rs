//! `/api/v1/webhook-secrets` (SPEC §8): a workspace's webhook signing
//! secrets. `POST {primary_secret, secondary_secret?}` replaces both;
//! `GET` shows them masked (or 404); `DELETE` removes the stored record.
//! Secret values are never logged or echoed, not even in error messages.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Workspace;
use super::error_response;
use crate::config::validate_secret as validate;
use crate::state::Shared;
use crate::store::WebhookSecrets;
use crate::webhooks::secrets::{mask, SecretSource};

fn ok(message: &str) -> Response {
    Json(json!({ "status": "ok", "message": message })).into_response()
}

fn store_unavailable(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "webhook secrets: store unavailable");
    let mut resp = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store could not be reached; try again",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// A refused POST body: `400` with this code and message.
#[derive(Debug)]
struct BadRequest(&'static str, String);

impl IntoResponse for BadRequest {
    fn into_response(self) -> Response {
        error_response(StatusCode::BAD_REQUEST, self.0, &self.1)
    }
}

fn bad(code: &'static str, message: &str) -> BadRequest {
    BadRequest(code, message.to_string())
}

/// `field` (or its camelCase alias) from the body: `Ok(None)` when absent or null.
fn field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
    alias: &str,
) -> Result<Option<&'a str>, BadRequest> {
    match obj.get(field).or_else(|| obj.get(alias)) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(
            "invalid_webhook_secret",
            &format!("{field} must be a string"),
        )),
    }
}

/// `(primary, secondary)` from a POST body, or the 400.
fn parse(body: &[u8]) -> Result<(String, Option<String>), BadRequest> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            "invalid_json",
            &format!(
                "request body must be a JSON object {{\"primary_secret\": ..., \"secondary_secret\": ...}}: {}",
                // serde's message names the position, never the content.
                e
            ),
        )
    })?;
    let Some(obj) = value.as_object() else {
        return Err(bad(
            "invalid_json",
            "request body must be a JSON object {\"primary_secret\": ..., \"secondary_secret\": ...}",
        ));
    };
    let primary = field(obj, "primary_secret", "primarySecret")?
        .ok_or_else(|| bad("invalid_webhook_secret", "primary_secret is required"))?;
    validate("primary_secret", primary).map_err(|m| bad("invalid_webhook_secret", &m))?;
    let secondary = field(obj, "secondary_secret", "secondarySecret")?;
    if let Some(s) = secondary {
        validate("secondary_secret", s).map_err(|m| bad("invalid_webhook_secret", &m))?;
    }
    Ok((primary.to_string(), secondary.map(str::to_string)))
}

/// `POST /api/v1/webhook-secrets`
pub async fn post(
    State(shared): State<Arc<Shared>>,
    Workspace(workspace): Workspace,
    body: Bytes,
) -> Response {
    let workspace = workspace.as_str();
    let (primary, secondary) = match parse(&body) {
        Ok(v) => v,
        Err(bad) => return bad.into_response(),
    };
    let store = &shared.store;
    let existed = match store.secrets_get(workspace).await {
        Ok(v) => v.is_some(),
        Err(e) => return store_unavailable(e),
    };
    let has_secondary = secondary.is_some();
    let record = WebhookSecrets {
        workspace: workspace.to_string(),
        primary,
        secondary,
    };
    if let Err(e) = store.secrets_put(record).await {
        return store_unavailable(e);
    }
    tracing::info!(workspace, has_secondary, "webhook secrets set");
    ok(if existed {
        "Webhook secrets updated"
    } else {
        "Webhook secrets created"
    })
}

/// `GET /api/v1/webhook-secrets`
pub async fn get(State(shared): State<Arc<Shared>>, Workspace(workspace): Workspace) -> Response {
    let workspace = workspace.as_str();
    match shared.webhooks.secrets().resolve(workspace).await {
        Ok(Some(r)) => Json(json!({
            "primary_secret": mask(&r.secrets.primary),
            "secondary_secret": r.secrets.secondary.as_deref().map(mask),
            "has_secondary": r.secrets.secondary.is_some(),
        }))
        .into_response(),
        Ok(None) => not_found(workspace),
        Err(e) => store_unavailable(e),
    }
}

/// `DELETE /api/v1/webhook-secrets`
pub async fn delete(
    State(shared): State<Arc<Shared>>,
    Workspace(workspace): Workspace,
) -> Response {
    let workspace = workspace.as_str();
    match shared.store.secrets_delete(workspace).await {
        Ok(true) => {
            tracing::info!(workspace, "webhook secrets deleted");
            match shared.webhooks.secrets().fallback(workspace) {
                Some(f) => ok(&format!(
                    "Webhook secrets deleted; deliveries are now signed with the secret from {}",
                    match f.source {
                        SecretSource::Environment => "EZTHROTTLE_WEBHOOK_SECRET",
                        _ => "[webhooks] secret",
                    }
                )),
                None => ok("Webhook secrets deleted"),
            }
        }
        Ok(false) => not_found(workspace),
        Err(e) => store_unavailable(e),
    }
}

fn not_found(workspace: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "webhook_secrets_not_found",
        &format!(
            "no webhook secrets are set for workspace {workspace:?}; POST /api/v1/webhook-secrets first"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_spec_fields_and_aliases() {
        let (p, s) = parse(br#"{"primary_secret":"0123456789abcdef"}"#).unwrap();
        assert_eq!((p.as_str(), s), ("0123456789abcdef", None));
        let (_, s) =
            parse(br#"{"primarySecret":"0123456789abcdef","secondarySecret":"fedcba9876543210"}"#)
                .unwrap();
        assert_eq!(s.as_deref(), Some("fedcba9876543210"));
        let (_, s) =
            parse(br#"{"primary_secret":"0123456789abcdef","secondary_secret":null}"#).unwrap();
        assert_eq!(s, None);
    }

    #[test]
    fn parse_takes_1024_bytes_and_refuses_more_naming_the_field() {
        let body = |p: usize, s: usize| {
            format!(
                r#"{{"primary_secret":"{}","secondary_secret":"{}"}}"#,
                "p".repeat(p),
                "s".repeat(s)
            )
        };
        assert!(parse(body(1024, 1024).as_bytes()).is_ok());
        for (p, s, field) in [
            (1025, 16, "primary_secret"),
            (1 << 20, 16, "primary_secret"),
            (16, 1025, "secondary_secret"),
        ] {
            let e = parse(body(p, s).as_bytes()).unwrap_err();
            assert_eq!(e.0, "invalid_webhook_secret");
            assert!(
                e.1.starts_with(&format!("{field} must be at most 1024 bytes")),
                "{}",
                e.1
            );
            assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn parse_refuses_with_400() {
        for body in [
            &b"not json"[..],
            br#"["x"]"#,
            br#"{}"#,
            br#"{"primary_secret":"short"}"#,
            br#"{"primary_secret":1234567890123456789}"#,
            br#"{"primary_secret":"0123456789abcdef","secondary_secret":"short"}"#,
        ] {
            let e = parse(body).unwrap_err();
            let text = String::from_utf8_lossy(body).into_owned();
            assert!(!e.1.contains("\"short\""), "secret value echoed: {e:?}");
            assert_eq!(
                e.into_response().status(),
                StatusCode::BAD_REQUEST,
                "{text}"
            );
        }
    }
}
