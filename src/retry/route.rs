//! Region order (SPEC §9): where each attempt of a request goes. `local`
//! connects directly; any other region is a peer HTTP proxy (usually another
//! ezthrottle) named under `[regions.NAME]`.

use std::sync::{Arc, LazyLock};

use crate::config::{Config, RetryConfig};

/// The built-in region: direct connections from this process.
pub const LOCAL: &str = "local";

/// One request's walk through its domain's regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Shared: most domains have the default `["local"]`, which every
    /// request then takes without an allocation (docs/performance.md, "The
    /// seventh pass").
    regions: Arc<[String]>,
    index: usize,
}

/// The default order, `["local"]`, made once.
fn local_only() -> Arc<[String]> {
    static LOCAL_ONLY: LazyLock<Arc<[String]>> = LazyLock::new(|| Arc::from([LOCAL.to_string()]));
    LOCAL_ONLY.clone()
}

impl Route {
    /// The domain's `regions` order (default `["local"]`).
    pub fn for_domain(config: &Config, domain: &str) -> Route {
        let regions = match config.domain(domain).map(|d| d.regions.as_slice()) {
            Some(r) if !r.is_empty() => Arc::from(r),
            _ => local_only(),
        };
        Route { regions, index: 0 }
    }

    /// A route that starts at `first` (a job pinned to a region), then
    /// follows the domain's order.
    pub fn starting_at(config: &Config, domain: &str, first: &str) -> Route {
        let rest = Route::for_domain(config, domain).regions;
        let regions = std::iter::once(first.to_string())
            .chain(rest.iter().filter(|r| *r != first).cloned())
            .collect();
        Route { regions, index: 0 }
    }

    pub fn current(&self) -> &str {
        &self.regions[self.index % self.regions.len()]
    }

    /// Move to the next region (wrapping); with one region this stays put,
    /// which makes a reroute a retry (SPEC §7).
    pub fn advance(&mut self) {
        self.index = (self.index + 1) % self.regions.len();
    }

    /// Whether a reroute would actually change region.
    pub fn has_alternative(&self) -> bool {
        self.regions.len() > 1
    }
}

/// The peer proxy of a named region: `(host, port)`; `None` for `local` or
/// an unknown name.
pub fn peer(config: &Config, region: &str) -> Option<(String, u16)> {
    if region == LOCAL {
        return None;
    }
    let uri: http::Uri = config.regions.get(region)?.proxy.parse().ok()?;
    Some((uri.host()?.to_string(), uri.port_u16()?))
}

/// The retry settings for a domain: its override, else `[retry]`.
pub fn retry_config<'a>(config: &'a Config, domain: &str) -> &'a RetryConfig {
    config
        .domain(domain)
        .and_then(|d| d.retry.as_ref())
        .unwrap_or(&config.retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml_str(
            r#"
[regions.lax]
proxy = "http://127.0.0.1:5000"
[regions.fra]
proxy = "http://peer.test:5001"
[limits.domains."api.test"]
regions = ["local", "lax", "fra"]
[limits.domains."api.test".retry]
max_retries = 7
"#,
            "t.toml",
        )
        .unwrap()
    }

    #[test]
    fn routes_follow_the_domain_order_and_wrap() {
        let c = config();
        let mut r = Route::for_domain(&c, "api.test");
        assert_eq!(r.current(), "local");
        assert!(r.has_alternative());
        r.advance();
        assert_eq!(r.current(), "lax");
        r.advance();
        r.advance();
        assert_eq!(r.current(), "local");
        let other = Route::for_domain(&c, "other.test");
        assert_eq!(other.current(), "local");
        assert!(!other.has_alternative());
        let pinned = Route::starting_at(&c, "api.test", "fra");
        assert_eq!(pinned.current(), "fra");
    }

    #[test]
    fn peers_and_retry_overrides() {
        let c = config();
        assert_eq!(peer(&c, "lax"), Some(("127.0.0.1".into(), 5000)));
        assert_eq!(peer(&c, "fra"), Some(("peer.test".into(), 5001)));
        assert_eq!(peer(&c, "local"), None);
        assert_eq!(peer(&c, "nope"), None);
        assert_eq!(retry_config(&c, "api.test").max_retries, 7);
        assert_eq!(retry_config(&c, "other.test").max_retries, 3);
    }
}
