//! Per-credential budgets (`budget_key`, docs/dialects.md): real APIs
//! count per API key, not per host, so a domain's throttle can be split by
//! the value of a request header. The throttle of one credential is named
//! `host#<12 hex>`, a short SHA-256 prefix of the value: the credential
//! itself is never kept in memory beyond the request, nor shown in logs,
//! metrics, the status page or the store.

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

/// Separates a host from its budget key in a throttle name (`#` never
/// appears in a host).
pub const SEPARATOR: char = '#';

/// The throttle a request counts against: `domain`, or `domain#<hash>` when
/// the domain's budget is split by `headers` and the request carries at
/// least one of them. A request carrying none shares the domain's own
/// (unkeyed) budget.
pub fn throttle_name(domain: &str, headers: &[HeaderName], request: &HeaderMap) -> String {
    if headers.is_empty() {
        return domain.to_string();
    }
    let mut hash = Sha256::new();
    let mut any = false;
    for name in headers {
        hash.update(name.as_str().as_bytes());
        hash.update([0]);
        for value in request.get_all(name) {
            any = true;
            hash.update(value.as_bytes());
            hash.update([0]);
        }
        hash.update([1]);
    }
    if !any {
        return domain.to_string();
    }
    let digest = hash.finalize();
    let mut name = String::with_capacity(domain.len() + 13);
    name.push_str(domain);
    name.push(SEPARATOR);
    for b in &digest[..6] {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// The host of a throttle name (config, presets and the max wait are per
/// host, whatever the key).
pub fn host_of(name: &str) -> &str {
    name.split_once(SEPARATOR).map_or(name, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        m
    }

    #[test]
    fn the_value_splits_the_budget_and_never_appears() {
        let auth = [http::header::AUTHORIZATION];
        let a = throttle_name(
            "api.x.com",
            &auth,
            &req(&[("authorization", "Bearer sk-a")]),
        );
        let a2 = throttle_name(
            "api.x.com",
            &auth,
            &req(&[("Authorization", "Bearer sk-a")]),
        );
        let b = throttle_name(
            "api.x.com",
            &auth,
            &req(&[("authorization", "Bearer sk-b")]),
        );
        assert_eq!(a, a2, "same credential, same budget");
        assert_ne!(a, b, "two credentials, two budgets");
        assert!(
            a.starts_with("api.x.com#") && a.len() == "api.x.com#".len() + 12,
            "{a}"
        );
        assert!(!a.contains("sk-a"));
        assert_eq!(host_of(&a), "api.x.com");
        assert_eq!(host_of("api.x.com"), "api.x.com");
    }

    #[test]
    fn without_the_header_or_a_key_the_domain_is_one_budget() {
        let auth = [http::header::AUTHORIZATION];
        assert_eq!(throttle_name("h.test", &auth, &req(&[])), "h.test");
        assert_eq!(
            throttle_name("h.test", &[], &req(&[("authorization", "x")])),
            "h.test"
        );
    }

    /// With several headers, which header a value came in matters (the
    /// same value in another header is another credential).
    #[test]
    fn several_headers_are_one_key() {
        let both = [
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-org"),
        ];
        let a = throttle_name("h.test", &both, &req(&[("x-api-key", "k"), ("x-org", "1")]));
        let b = throttle_name("h.test", &both, &req(&[("x-api-key", "k"), ("x-org", "2")]));
        let c = throttle_name("h.test", &both, &req(&[("x-org", "k")]));
        let d = throttle_name("h.test", &both, &req(&[("x-api-key", "k")]));
        assert_ne!(a, b);
        assert_ne!(c, d);
    }
}
