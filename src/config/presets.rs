//! Built-in knowledge of well-known API hosts (issue 13, docs/dialects.md
//! "Presets"): which rate-limit dialect each speaks, the published limits
//! that hold for every account, and which request header names the
//! credential the vendor counts against.
//!
//! Why a table at all: the budget headers alone arrive only after the first
//! responses, and they cannot say whether two API keys share one budget.
//! The vendors document both, so a user calling these APIs gets sensible
//! pacing and per-key budgets with no configuration. A `[limits.domains]`
//! table for the host replaces its preset; `[limits] presets = false` turns
//! them all off (`Config::preset`).
//!
//! Numbers are only given where the vendor publishes one that applies to
//! every account; tiered or per-plan limits are left to the headers (`None`)
//! rather than guessed.

use http::HeaderName;

/// One well-known API host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// Exact host, or `*.suffix` (e.g. `*.myshopify.com`).
    pub host: &'static str,
    /// The dialect the API speaks: the `source` label suffix, e.g. "openai"
    /// (shown as `dialect:openai`), matching `Dialect::source()` without the
    /// `dialect:` prefix (`admission::dialects` checks every entry names a
    /// dialect its reader knows).
    pub dialect: &'static str,
    /// Published default request rate, if the vendor documents one that
    /// applies to every account (else None: the budget headers decide).
    pub rps: Option<f64>,
    pub max_concurrent: Option<u32>,
    /// Request headers whose value splits the budget (per API key/token),
    /// lower-case; empty = per host.
    pub budget_key: &'static [&'static str],
    /// One line: where the numbers come from (vendor doc), shown by
    /// `ezthrottle presets`.
    pub note: &'static str,
}

impl Preset {
    /// `budget_key` as header names. Entries that are not header names are
    /// skipped rather than panicking (the unit tests prove there are none).
    pub fn budget_headers(&self) -> Vec<HeaderName> {
        self.budget_key
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect()
    }
}

/// The table, in the order `ezthrottle presets` prints it.
pub static PRESETS: &[Preset] = &[
    Preset {
        host: "api.openai.com",
        dialect: "openai",
        rps: None,
        max_concurrent: None,
        budget_key: &["authorization"],
        note: "limits depend on usage tier and model, per organization/project (platform.openai.com/docs/guides/rate-limits); x-ratelimit-* headers set the pace",
    },
    Preset {
        host: "api.anthropic.com",
        dialect: "anthropic",
        rps: None,
        max_concurrent: None,
        budget_key: &["x-api-key"],
        note: "limits depend on the organization's usage tier (docs.anthropic.com/en/api/rate-limits); anthropic-ratelimit-* headers set the pace",
    },
    Preset {
        host: "api.github.com",
        dialect: "x-ratelimit",
        rps: Some(5000.0 / 3600.0),
        max_concurrent: Some(100),
        budget_key: &["authorization"],
        note: "5,000 requests/h per authenticated token, at most 100 concurrent (secondary limit) (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api)",
    },
    Preset {
        host: "*.myshopify.com",
        dialect: "shopify",
        rps: Some(2.0),
        max_concurrent: None,
        budget_key: &["x-shopify-access-token"],
        note: "REST Admin API, standard plan: leaky bucket of 40 draining 2/s per app and store (shopify.dev/docs/api/usage/rate-limits); bigger plans show in the header",
    },
    Preset {
        host: "api.stripe.com",
        dialect: "retry-after",
        rps: Some(25.0),
        max_concurrent: None,
        budget_key: &["authorization"],
        note: "100 read + 100 write ops/s in live mode, 25 each in test mode (docs.stripe.com/rate-limits); 25/s is safe in both; no budget headers, only 429s",
    },
    Preset {
        host: "slack.com",
        dialect: "retry-after",
        rps: Some(20.0 / 60.0),
        max_concurrent: None,
        budget_key: &["authorization"],
        note: "Web API tiers per method, app and workspace: 1+, 20+, 50+, 100+/min (api.slack.com/apis/rate-limits); 20/min (Tier 2) is safe for most methods",
    },
    Preset {
        host: "hooks.slack.com",
        dialect: "retry-after",
        rps: Some(1.0),
        max_concurrent: None,
        budget_key: &[],
        note: "incoming webhooks: 1 message/s, short bursts tolerated (api.slack.com/apis/rate-limits); the URL, not a header, is the credential",
    },
    Preset {
        host: "discord.com",
        dialect: "discord",
        rps: Some(50.0),
        max_concurrent: None,
        budget_key: &["authorization"],
        note: "50 requests/s global per bot token (discord.com/developers/docs/topics/rate-limits); per-route buckets come in X-RateLimit-* headers",
    },
    Preset {
        host: "api.twitter.com",
        dialect: "x-ratelimit",
        rps: None,
        max_concurrent: None,
        budget_key: &["authorization"],
        note: "per-endpoint limits per 15-minute window, by plan (docs.x.com/x-api/fundamentals/rate-limits); x-rate-limit-* headers set the pace",
    },
    Preset {
        host: "api.x.com",
        dialect: "x-ratelimit",
        rps: None,
        max_concurrent: None,
        budget_key: &["authorization"],
        note: "per-endpoint limits per 15-minute window, by plan (docs.x.com/x-api/fundamentals/rate-limits); x-rate-limit-* headers set the pace",
    },
];

/// The preset for `host` (no port): an exact entry, else the longest
/// matching `*.suffix` entry. The same rule as `Config::domain`, so a
/// wildcard never matches its bare suffix (`*.x.com` matches `a.x.com`, not
/// `x.com`). Hosts arrive lower-case; the comparison ignores ASCII case
/// anyway, since a preset silently not applying would be hard to notice.
pub fn lookup(host: &str) -> Option<&'static Preset> {
    if let Some(p) = PRESETS
        .iter()
        .find(|p| !p.host.starts_with("*.") && p.host.eq_ignore_ascii_case(host))
    {
        return Some(p);
    }
    PRESETS
        .iter()
        .filter_map(|p| {
            let suffix = p.host.strip_prefix("*.")?;
            let cut = host.len().checked_sub(suffix.len())?;
            let (rest, tail) = (host.get(..cut)?, host.get(cut..)?);
            (tail.eq_ignore_ascii_case(suffix) && rest.len() > 1 && rest.ends_with('.'))
                .then_some((suffix.len(), p))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_hosts_match_exactly() {
        let p = lookup("api.openai.com").expect("openai preset");
        assert_eq!(p.dialect, "openai");
        assert_eq!(p.budget_key, &["authorization"]);
        assert_eq!(
            lookup("api.anthropic.com").map(|p| p.budget_key),
            Some(&["x-api-key"][..])
        );
        assert_eq!(
            lookup("api.github.com").map(|p| p.max_concurrent),
            Some(Some(100))
        );
        // An exact entry covers only itself, not its subdomains or parents.
        assert!(lookup("eu.api.openai.com").is_none());
        assert!(lookup("openai.com").is_none());
        // slack.com and hooks.slack.com are separate entries.
        assert_eq!(lookup("slack.com").map(|p| p.host), Some("slack.com"));
        assert_eq!(
            lookup("hooks.slack.com").map(|p| p.host),
            Some("hooks.slack.com")
        );
        assert!(lookup("files.slack.com").is_none());
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = lookup("shop-1.myshopify.com").expect("shopify preset");
        assert_eq!(p.host, "*.myshopify.com");
        assert_eq!(p.rps, Some(2.0));
        assert_eq!(
            lookup("a.b.myshopify.com").map(|p| p.host),
            Some("*.myshopify.com")
        );
        assert!(lookup("myshopify.com").is_none());
        assert!(lookup(".myshopify.com").is_none());
        assert!(lookup("evilmyshopify.com").is_none());
        assert!(lookup("myshopify.com.evil.test").is_none());
    }

    #[test]
    fn unknown_hosts_have_no_preset() {
        for host in [
            "",
            "example.com",
            "api.example.test",
            "com",
            "é.myshopify.co",
        ] {
            assert!(lookup(host).is_none(), "{host:?}");
        }
    }

    #[test]
    fn case_does_not_hide_a_preset() {
        assert_eq!(lookup("api.openai.com"), lookup("API.OpenAI.com"));
        assert!(lookup("API.OPENAI.COM").is_some());
        assert_eq!(
            lookup("Shop.MyShopify.COM").map(|p| p.host),
            Some("*.myshopify.com")
        );
        // Every stored host is lower-case, as config hosts are.
        for p in PRESETS {
            assert_eq!(p.host, p.host.to_ascii_lowercase(), "{}", p.host);
        }
    }

    #[test]
    fn every_host_is_listed_once_and_well_formed() {
        let mut hosts: Vec<&str> = PRESETS.iter().map(|p| p.host).collect();
        hosts.sort();
        hosts.dedup();
        assert_eq!(hosts.len(), PRESETS.len(), "duplicate host");
        for p in PRESETS {
            let bare = p.host.strip_prefix("*.").unwrap_or(p.host);
            assert!(
                bare.split('.').count() >= 2
                    && bare.split('.').all(|l| !l.is_empty()
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
                "{}",
                p.host
            );
            assert!(!p.note.is_empty() && !p.note.contains('\n'), "{}", p.host);
            // Every preset is found by its own host (wildcards by a subdomain).
            let probe = p.host.replace("*.", "probe.");
            assert_eq!(lookup(&probe).map(|q| q.host), Some(p.host));
        }
        for host in [
            "api.openai.com",
            "api.anthropic.com",
            "api.github.com",
            "x.myshopify.com",
            "api.stripe.com",
            "slack.com",
            "discord.com",
            "api.twitter.com",
            "api.x.com",
        ] {
            assert!(lookup(host).is_some(), "{host} has no preset");
        }
    }

    #[test]
    fn every_budget_key_is_a_lower_case_header_name() {
        for p in PRESETS {
            for h in p.budget_key {
                let name = HeaderName::from_bytes(h.as_bytes())
                    .unwrap_or_else(|e| panic!("{}: {h:?}: {e}", p.host));
                assert_eq!(name.as_str(), *h, "{}: not lower-case", p.host);
            }
            assert_eq!(p.budget_headers().len(), p.budget_key.len(), "{}", p.host);
            assert!(p.budget_key.len() <= 4, "{}", p.host);
        }
    }

    #[test]
    fn every_published_number_is_usable() {
        for p in PRESETS {
            if let Some(rps) = p.rps {
                assert!(rps.is_finite() && rps > 0.0, "{}: rps {rps}", p.host);
            }
            if let Some(mc) = p.max_concurrent {
                assert!(mc > 0, "{}", p.host);
            }
        }
        let github = lookup("api.github.com").and_then(|p| p.rps);
        assert!(github.is_some_and(|r| (r * 3600.0 - 5000.0).abs() < 1e-6));
    }
}
