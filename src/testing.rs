//! Helpers the unit tests of several modules share.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from `(name, value)` pairs, repeats kept in order.
pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    m
}
