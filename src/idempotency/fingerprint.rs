//! The request fingerprint: SHA-256 of the canonicalised body (SPEC §6).
//!
//! A JSON body is re-serialised with object keys sorted recursively and no
//! insignificant whitespace, while number and string tokens keep their exact
//! text (`1.50` stays `1.50`). serde_json can only keep number text with its
//! crate-wide `arbitrary_precision` feature, which changes `Value` for every
//! user of serde_json in the binary; so serde_json validates the body and the
//! small token walker below rewrites it.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of the canonical form of `body`.
pub fn fingerprint(body: &[u8]) -> String {
    match canonical_json(body) {
        Some(canon) => hex(&Sha256::digest(&canon)),
        None => hex(&Sha256::digest(body)),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The canonical form of a JSON document, or `None` if `body` is not JSON.
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    // Validates the whole text (and bounds nesting depth at 128, which keeps
    // the recursion below shallow).
    serde_json::from_str::<serde::de::IgnoredAny>(text).ok()?;
    let mut walker = Walker {
        s: text.as_bytes(),
        i: 0,
    };
    let mut out = Vec::with_capacity(body.len());
    walker.value(&mut out)?;
    Some(out)
}

struct Walker<'a> {
    s: &'a [u8],
    i: usize,
}

impl Walker<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'{' => self.object(out),
            b'[' => self.array(out),
            b'"' => {
                let tok = self.string()?;
                out.extend_from_slice(tok);
                Some(())
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && !matches!(
                        self.s[self.i],
                        b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.i += 1;
                }
                out.extend_from_slice(&self.s[start..self.i]);
                Some(())
            }
        }
    }

    /// A string token, quotes and escapes included, exactly as written.
    fn string(&mut self) -> Option<&[u8]> {
        let start = self.i;
        self.i += 1;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(&self.s[start..self.i]);
                }
                _ => self.i += 1,
            }
        }
    }

    fn array(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.i += 1;
        out.push(b'[');
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.value(out)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    out.push(b',');
                }
                b']' => {
                    self.i += 1;
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>) -> Option<()> {
        self.i += 1;
        // (decoded key for ordering, key token, canonical value)
        let mut members: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                self.ws();
                let tok = self.string()?.to_vec();
                let key: String = serde_json::from_slice(&tok).ok()?;
                self.ws();
                if self.peek()? != b':' {
                    return None;
                }
                self.i += 1;
                let mut v = Vec::new();
                self.value(&mut v)?;
                members.push((key, tok, v));
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        // Stable: duplicate keys keep their relative order.
        members.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(b'{');
        for (n, (_, tok, v)) in members.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(tok);
            out.push(b':');
            out.extend_from_slice(v);
        }
        out.push(b'}');
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonical_json(s.as_bytes()).expect("json")).unwrap()
    }

    #[test]
    fn sorts_keys_recursively_and_drops_whitespace() {
        assert_eq!(
            canon(" { \"b\" : [ 1 , {\"z\":1,\"a\":2} ], \"a\": \"x y\" } "),
            r#"{"a":"x y","b":[1,{"a":2,"z":1}]}"#
        );
        assert_eq!(canon("[]"), "[]");
        assert_eq!(canon("{}"), "{}");
        assert_eq!(canon("  true "), "true");
    }

    #[test]
    fn number_and_string_text_is_kept() {
        assert_eq!(
            canon(r#"{"n":1.50,"e":1E3,"s":"a\"}\\"}"#),
            r#"{"e":1E3,"n":1.50,"s":"a\"}\\"}"#
        );
        assert_ne!(fingerprint(br#"{"n":1.5}"#), fingerprint(br#"{"n":1.50}"#));
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter_values_do() {
        let a = fingerprint(br#"{"amount":100,"currency":"USD","meta":{"x":1,"y":[1,2]}}"#);
        let b = fingerprint(b"{\n  \"meta\": {\"y\": [1, 2], \"x\": 1},\n  \"currency\": \"USD\",\n  \"amount\": 100\n}");
        assert_eq!(a, b);
        let c = fingerprint(br#"{"amount":101,"currency":"USD","meta":{"x":1,"y":[1,2]}}"#);
        assert_ne!(a, c);
        // Array order is data, not formatting.
        let d = fingerprint(br#"{"amount":100,"currency":"USD","meta":{"x":1,"y":[2,1]}}"#);
        assert_ne!(a, d);
    }

    #[test]
    fn non_json_is_hashed_raw() {
        assert!(canonical_json(b"a=1&b=2").is_none());
        assert!(canonical_json(b"{\"a\":1} trailing").is_none());
        assert!(canonical_json(&[0xff, 0xfe]).is_none());
        assert_eq!(fingerprint(b"a=1&b=2"), hex(&Sha256::digest(b"a=1&b=2")));
        assert_ne!(fingerprint(b"a=1&b=2"), fingerprint(b"b=2&a=1"));
        // The empty body has a fingerprint too.
        assert_eq!(fingerprint(b"").len(), 64);
    }

    #[test]
    fn deep_nesting_is_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(canonical_json(deep.as_bytes()).is_none());
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(canon(&ok), ok);
    }
}
