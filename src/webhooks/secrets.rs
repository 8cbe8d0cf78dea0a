//! A workspace's webhook signing secrets (SPEC §8): where they come from,
//! what makes one valid, and how one is shown.
//!
//! Precedence, highest first:
//! 1. the workspace's record set through `POST /api/v1/webhook-secrets`
//!    (stored durably, any workspace);
//! 2. for the `default` workspace only: the environment variable
//!    `EZTHROTTLE_WEBHOOK_SECRET`;
//! 3. for the `default` workspace only: `[webhooks] secret` in the config file.
//!
//! (Environment beats file, as everywhere in SPEC §2.) The fallbacks have no
//! secondary. Deliveries are always signed with the primary. Rotation
//! (docs/webhooks.md): receivers accept old and new; `POST` the new primary
//! with the old one as secondary; later `POST` the new one alone (a POST
//! replaces both).

use std::sync::Arc;

use crate::config::validate_secret as validate;
use crate::config::WebhooksConfig;
use crate::store::{Store, StoreError, WebhookSecrets};

/// The workspace that the config / environment secret belongs to.
pub const DEFAULT_WORKSPACE: &str = "default";

/// The environment variable holding the default workspace's secret.
pub const ENV_SECRET: &str = "EZTHROTTLE_WEBHOOK_SECRET";

/// `abcd****wxyz`: the first 4 and last 4 characters around `****`. A
/// secret of 8 characters or fewer (never valid) shows as `****`.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= 8 {
        return "****".into();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

/// Where a workspace's secrets came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// Set through the secrets API (stored).
    Api,
    /// `EZTHROTTLE_WEBHOOK_SECRET`.
    Environment,
    /// `[webhooks] secret`.
    Config,
}

impl SecretSource {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretSource::Api => "api",
            SecretSource::Environment => "environment",
            SecretSource::Config => "config",
        }
    }
}

/// Secrets in force for a workspace and their source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSecrets {
    pub secrets: WebhookSecrets,
    pub source: SecretSource,
}

/// A start-up problem with the environment secret.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {ENV_SECRET}: {reason}")]
pub struct EnvSecretError {
    pub reason: String,
}

/// Resolves workspace secrets (see the module docs for the order).
pub struct Secrets {
    store: Arc<dyn Store>,
    /// The default workspace's fallback: environment, else config.
    fallback: Option<(String, SecretSource)>,
}

/// Never print secrets.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field(
                "fallback",
                &self
                    .fallback
                    .as_ref()
                    .map(|(_, src)| (src.as_str(), "<redacted>")),
            )
            .finish()
    }
}

impl Secrets {
    /// `env` is the value of [`ENV_SECRET`] (empty counts as unset); it is
    /// validated like any other secret.
    pub fn new(
        store: Arc<dyn Store>,
        config: &WebhooksConfig,
        env: Option<String>,
    ) -> Result<Secrets, EnvSecretError> {
        let env = env.filter(|v| !v.is_empty());
        let fallback = match env {
            Some(v) => {
                // Name the variable, never echo its value.
                validate("the secret", &v).map_err(|reason| EnvSecretError { reason })?;
                Some((v, SecretSource::Environment))
            }
            None => config.secret.clone().map(|s| (s, SecretSource::Config)),
        };
        Ok(Secrets { store, fallback })
    }

    /// [`Secrets::new`] reading [`ENV_SECRET`] from the process environment.
    pub fn from_env(
        store: Arc<dyn Store>,
        config: &WebhooksConfig,
    ) -> Result<Secrets, EnvSecretError> {
        Self::new(store, config, std::env::var(ENV_SECRET).ok())
    }

    /// The secrets in force for `workspace`, if any.
    pub async fn resolve(&self, workspace: &str) -> Result<Option<ResolvedSecrets>, StoreError> {
        if let Some(secrets) = self.store.secrets_get(workspace).await? {
            return Ok(Some(ResolvedSecrets {
                secrets,
                source: SecretSource::Api,
            }));
        }
        Ok(self.fallback(workspace))
    }

    /// The config/environment fallback for `workspace` (only `default` has one).
    pub fn fallback(&self, workspace: &str) -> Option<ResolvedSecrets> {
        if workspace != DEFAULT_WORKSPACE {
            return None;
        }
        self.fallback
            .as_ref()
            .map(|(primary, source)| ResolvedSecrets {
                secrets: WebhookSecrets {
                    workspace: workspace.to_string(),
                    primary: primary.clone(),
                    secondary: None,
                },
                source: *source,
            })
    }

    /// The secret deliveries of `workspace` are signed with (its primary).
    pub async fn signing_secret(&self, workspace: &str) -> Result<Option<String>, StoreError> {
        Ok(self.resolve(workspace).await?.map(|r| r.secrets.primary))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_SECRET_BYTES;
    use crate::store::EmbeddedStore;

    #[test]
    fn masks_first_four_and_last_four() {
        assert_eq!(mask("abcdefghijklmnopqrstuvwxyz"), "abcd****wxyz");
        assert_eq!(mask("0123456789abcdef"), "0123****cdef");
        assert_eq!(mask("short"), "****");
        assert_eq!(mask("äöüß_secret_ÄÖÜ€"), "äöüß****ÄÖÜ€");
    }

    #[test]
    fn validation_names_the_field() {
        assert!(validate("primary_secret", "0123456789abcdef").is_ok());
        let e = validate("primary_secret", "too-short").unwrap_err();
        assert!(e.contains("primary_secret") && e.contains("16"), "{e}");
        let e = validate("secondary_secret", "0123456789abcdef\n").unwrap_err();
        assert!(e.contains("secondary_secret"), "{e}");
        assert!(validate("s", " 0123456789abcdef").is_err());
        // Characters, not bytes.
        assert!(validate("s", "ééééééééé").is_err());
    }

    #[test]
    fn secrets_are_at_most_one_kib() {
        assert!(validate("primary_secret", &"a".repeat(MAX_SECRET_BYTES)).is_ok());
        for n in [MAX_SECRET_BYTES + 1, 1 << 20] {
            let e = validate("primary_secret", &"a".repeat(n)).unwrap_err();
            assert!(
                e.contains("primary_secret") && e.contains("1024 bytes") && !e.contains("aaaa"),
                "{e}"
            );
        }
        // Bytes, not characters: 342 three-byte characters are 1026 bytes.
        assert!(validate("s", &"€".repeat(342)).is_err());
    }

    fn config(secret: Option<&str>) -> WebhooksConfig {
        let mut c = crate::config::Config::from_toml_str("", "t")
            .unwrap()
            .webhooks;
        c.secret = secret.map(str::to_string);
        c
    }

    #[tokio::test]
    async fn api_beats_environment_beats_config_and_only_for_default() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let cfg = config(Some("config-secret-0123456"));

        let s = Secrets::new(store.clone(), &cfg, None).unwrap();
        let r = s.resolve("default").await.unwrap().unwrap();
        assert_eq!(
            (r.secrets.primary.as_str(), r.source),
            ("config-secret-0123456", SecretSource::Config)
        );
        assert_eq!(s.resolve("other").await.unwrap(), None);

        let s = Secrets::new(store.clone(), &cfg, Some("env-secret-0123456789".into())).unwrap();
        let r = s.resolve("default").await.unwrap().unwrap();
        assert_eq!(r.source, SecretSource::Environment);
        assert_eq!(
            s.signing_secret("default").await.unwrap().as_deref(),
            Some("env-secret-0123456789")
        );
        // Empty environment value = unset.
        let s2 = Secrets::new(store.clone(), &cfg, Some(String::new())).unwrap();
        assert_eq!(
            s2.resolve("default").await.unwrap().unwrap().source,
            SecretSource::Config
        );

        store
            .secrets_put(WebhookSecrets {
                workspace: "default".into(),
                primary: "api-secret-0123456789".into(),
                secondary: Some("config-secret-0123456".into()),
            })
            .await
            .unwrap();
        let r = s.resolve("default").await.unwrap().unwrap();
        assert_eq!(r.source, SecretSource::Api);
        assert_eq!(r.secrets.primary, "api-secret-0123456789");

        let e = Secrets::new(store, &cfg, Some("short".into())).unwrap_err();
        assert!(
            e.to_string().contains(ENV_SECRET) && !e.to_string().contains("short\""),
            "{e}"
        );
        assert!(!format!("{s:?}").contains("secret-0123"));
    }
}
