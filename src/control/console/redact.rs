//! What the console may show of a job's request and response: nothing that
//! authenticates anyone.
//!
//! Why whole values are withheld rather than partly masked like webhook
//! secrets (`webhooks::secrets::mask`, first and last four characters):
//! those are secrets of ours, long and random; an `Authorization` or
//! `Cookie` value is the caller's credential, often short or structured
//! (`Basic` user:password), and four characters of it are already too much.
//! A header is withheld when its name is a known credential header or
//! contains a word that credentials are named with; URL query values and
//! user-info are withheld the same way (tokens travel in queries too).

use serde_json::{json, Value};

/// Header names that always carry credentials.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-ezthrottle-signature",
];

/// Words that make a header name (or query parameter) a credential.
const CREDENTIAL_WORDS: &[&str] = &[
    "auth",
    "token",
    "secret",
    "key",
    "password",
    "passwd",
    "signature",
    "session",
    "credential",
    "cookie",
];

/// What replaces a withheld value.
pub const WITHHELD: &str = "(withheld)";

/// Whether a header (or query parameter) named `name` carries a credential.
pub fn is_credential(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    CREDENTIAL_HEADERS.contains(&lower.as_str())
        || CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
}

/// Headers as `[[name, value]]` with credential values withheld.
pub fn headers(pairs: &[(String, String)]) -> Value {
    Value::Array(
        pairs
            .iter()
            .map(|(k, v)| {
                if is_credential(k) {
                    json!([k, WITHHELD])
                } else {
                    json!([k, v])
                }
            })
            .collect(),
    )
}

/// `url` with user-info removed and every query value withheld (names are
/// kept: they say what the request was); not a URL: withheld whole.
pub fn url(raw: &str) -> String {
    let Ok(mut u) = url::Url::parse(raw) else {
        return WITHHELD.to_string();
    };
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_username("");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let names: Vec<String> = u.query_pairs().map(|(k, _)| k.into_owned()).collect();
        if names.is_empty() {
            u.set_query(None);
        } else {
            let mut q = u.query_pairs_mut();
            q.clear();
            for n in &names {
                q.append_pair(n, "***");
            }
        }
    }
    u.set_fragment(None);
    u.to_string()
}

/// The host of `raw` (lower-case), if it is a URL with one.
pub fn host(raw: &str) -> Option<String> {
    url::Url::parse(raw)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
}

/// At most `max` bytes of a body as text (cut on a character boundary),
/// and whether it was cut.
pub fn body(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_string(), false);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (text[..cut].to_string(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_are_withheld_whole() {
        let h = headers(&[
            ("Authorization".into(), "Bearer sk_live_abcdef".into()),
            ("X-Api-Key".into(), "k1".into()),
            ("Stripe-Signature".into(), "t=1,v1=aa".into()),
            ("Cookie".into(), "sid=1".into()),
            ("Content-Type".into(), "application/json".into()),
        ]);
        let text = h.to_string();
        for secret in ["sk_live", "k1\"", "v1=aa", "sid=1"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("application/json"));
        assert_eq!(h[0][1], WITHHELD);
    }

    #[test]
    fn urls_lose_user_info_and_query_values() {
        let u = url("https://user:pw@api.test/v1/x?api_key=SECRET&page=2#frag");
        assert_eq!(u, "https://api.test/v1/x?api_key=***&page=***");
        assert_eq!(url("not a url"), WITHHELD);
        assert_eq!(url("http://api.test/p"), "http://api.test/p");
        assert_eq!(host("https://API.test:8443/x").as_deref(), Some("api.test"));
    }

    #[test]
    fn bodies_are_cut_on_a_char_boundary() {
        assert_eq!(body("héllo", 2), ("h".to_string(), true));
        assert_eq!(body("abc", 10), ("abc".to_string(), false));
    }
}
