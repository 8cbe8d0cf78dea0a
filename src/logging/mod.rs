//! Logging set-up, with the guarantee that no log level prints credentials,
//! cookies, API keys, query strings or bodies (docs/observability.md).
//!
//! Two guards, whatever `EZTHROTTLE_LOG` asks for:
//!
//! 1. **Other crates stop at `info`.** pingora (`pingora_core`,
//!    `pingora_proxy`, …), hyper, h2, reqwest, rustls and rusqlite print
//!    request and response heads (`Authorization`, `Cookie`, `X-Api-Key`,
//!    `Proxy-Authorization`, full URLs) and body bytes at `debug`/`trace`.
//!    Those events are dropped before any filter a user writes can enable
//!    them: only `ezthrottle` targets, whose every event is audited, go below
//!    `info`. This is an allow-list, so a crate added later is covered too.
//! 2. **Every line is scrubbed before it is written.** pingora's own
//!    `warn`/`error` lines carry a request summary with the request target
//!    (`GET http://host/path?api_key=…, Host: …`); error texts of HTTP
//!    clients can carry URLs. The writer replaces the query string of any
//!    URL or path (`?<redacted>`), URL user-info (`//<redacted>@`) and the
//!    token after `Bearer`/`Basic`, in text and JSON output alike.

pub mod access;

use std::borrow::Cow;
use std::io::Write;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The filter used when `EZTHROTTLE_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "info,pingora_core=warn,pingora_proxy=warn,pingora=warn";

/// What replaces a query string, user-info or token.
pub const REDACTED: &str = "<redacted>";

/// Whether an event may be written at all (before the user's filter): our
/// own targets at any level, everything else at `info` and above.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    let target = meta.target();
    if target == "ezthrottle" || target.starts_with("ezthrottle::") {
        return true;
    }
    // More verbose levels compare greater: TRACE > DEBUG > INFO.
    *meta.level() <= Level::INFO
}

/// The environment variable holding the log filter.
pub const LOG_ENV: &str = "EZTHROTTLE_LOG";

/// The filter `EZTHROTTLE_LOG` asks for: [`DEFAULT_FILTER`] when it is unset
/// or empty, an error naming the variable and the reason when it does not
/// parse. (A typo used to fall back to the default silently, so the debug
/// lines someone asked for never came and nothing said why.)
pub fn filter_from(value: Option<&std::ffi::OsStr>) -> Result<EnvFilter, String> {
    let Some(value) = value else {
        return Ok(EnvFilter::new(DEFAULT_FILTER));
    };
    let Some(text) = value.to_str() else {
        return Err(format!("{LOG_ENV} is not valid UTF-8"));
    };
    if text.trim().is_empty() {
        return Ok(EnvFilter::new(DEFAULT_FILTER));
    }
    EnvFilter::builder().parse(text).map_err(|e| {
        format!(
            "{LOG_ENV}={text:?} is not a valid log filter: {e} \
             (expected levels and targets such as `info` or `info,ezthrottle=debug`)"
        )
    })
}

/// `EZTHROTTLE_LOG` (tracing filter) and `EZTHROTTLE_LOG_FORMAT=json|text`;
/// logs go to stderr so stdout stays for the ready line and command output.
/// Fails, before anything is logged, when `EZTHROTTLE_LOG` is invalid.
pub fn init() -> Result<(), String> {
    let filter = filter_from(std::env::var_os(LOG_ENV).as_deref())?;
    let json = std::env::var("EZTHROTTLE_LOG_FORMAT")
        .map(|v| v.eq_ignore_ascii_case("json"))
        .unwrap_or(false);
    // Colours only for a terminal: piped logs (files, journald, kubectl)
    // stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(ScrubbingStderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    if !ansi {
        access::start(if json {
            access::Format::Json
        } else {
            access::Format::Text
        });
    }
    let result = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::filter_fn(allowed))
        .with(filter)
        .with(fmt)
        .try_init();
    if let Err(e) = result {
        eprintln!("ezthrottle: logging: {e}");
    }
    access::settle();
    Ok(())
}

/// stderr, each formatted event scrubbed by [`scrub`] on the way.
#[derive(Debug, Clone, Copy)]
pub struct ScrubbingStderr;

impl<'a> MakeWriter<'a> for ScrubbingStderr {
    type Writer = ScrubbingWriter;
    fn make_writer(&'a self) -> ScrubbingWriter {
        ScrubbingWriter
    }
}

/// Writes whole buffers: the fmt layer hands over one formatted event per
/// `write`, so a URL is never split across two calls.
#[derive(Debug)]
pub struct ScrubbingWriter;

impl Write for ScrubbingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let clean = scrub(&text);
        std::io::stderr().lock().write_all(clean.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Characters that end a URL-ish token in a log line (text or JSON).
fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '<' | '>' | '`' | ')' | ']' | '}')
}

/// Characters that start a token (looking backwards from a `?`).
fn starts_token(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | '\\' | '<' | '>' | '`' | '(' | '[' | '{' | '=' | ','
        )
}

/// Remove query strings, URL user-info and `Bearer`/`Basic` tokens from one
/// log line. A `?` counts as a query only after a token that holds a `/`
/// (a path or URL), so questions in messages stay as they are.
pub fn scrub(line: &str) -> Cow<'_, str> {
    if memchr::memchr2(b'?', b'@', line.as_bytes()).is_none() && !has_auth_scheme(line) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Query string of a path or URL.
        if c == '?' {
            let mut start = out.len();
            for (pos, ch) in out.char_indices().rev() {
                if starts_token(ch) {
                    break;
                }
                start = pos;
            }
            if out[start..].contains('/') {
                out.push('?');
                out.push_str(REDACTED);
                i += 1;
                while i < chars.len() && !ends_token(chars[i]) {
                    i += 1;
                }
                continue;
            }
        }
        // `scheme://user:pass@host`: drop the user-info.
        if c == '/' && i + 1 < chars.len() && chars[i + 1] == '/' {
            let mut j = i + 2;
            let mut at = None;
            while j < chars.len() && !ends_token(chars[j]) && !matches!(chars[j], '/' | '?' | '#') {
                if chars[j] == '@' {
                    at = Some(j);
                }
                j += 1;
            }
            if let Some(at) = at {
                out.push_str("//");
                out.push_str(REDACTED);
                i = at; // '@' is pushed next round
                continue;
            }
        }
        // `Bearer <token>` / `Basic <token>`.
        if let Some(skip) = auth_scheme_at(&chars, i) {
            for ch in &chars[i..i + skip] {
                out.push(*ch);
            }
            i += skip;
            out.push_str(REDACTED);
            while i < chars.len() && !ends_token(chars[i]) && chars[i] != ',' {
                i += 1;
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    Cow::Owned(out)
}

/// Whether `bearer` or `basic` (any case) occurs anywhere: a cheap test on
/// the first letter before comparing (this runs for every log line).
fn has_auth_scheme(line: &str) -> bool {
    let b = line.as_bytes();
    // Every line passes here (each access line too), so the `b`s are found
    // with memchr's vectorised search rather than byte by byte.
    memchr::memchr2_iter(b'b', b'B', b).any(|i| {
        b[i..]
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"bearer"))
            || b[i..]
                .get(..5)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"basic"))
    })
}

/// At `chars[i]`, `Bearer ` or `Basic ` (any case) where a header value
/// starts (after `:`, `=` or a quote, spaces between) and followed by a
/// token: the length of the scheme and its spaces. Prose ("a basic idea")
/// is left alone.
fn auth_scheme_at(chars: &[char], i: usize) -> Option<usize> {
    let before = chars[..i].iter().rev().copied().find(|c| *c != ' ');
    if i > 0 && !matches!(before, Some(':' | '=' | '"' | '\'')) {
        return None;
    }
    for scheme in ["bearer", "basic"] {
        let n = scheme.len();
        if i + n >= chars.len() {
            continue;
        }
        let word: String = chars[i..i + n].iter().collect();
        if !word.eq_ignore_ascii_case(scheme) || chars[i + n] != ' ' {
            continue;
        }
        let mut j = i + n;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        if j < chars.len() && !ends_token(chars[j]) {
            return Some(j - i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filter_errors_name_the_variable() {
        use std::ffi::OsStr;
        assert!(filter_from(None).is_ok());
        assert!(filter_from(Some(OsStr::new(""))).is_ok());
        assert!(filter_from(Some(OsStr::new("info,ezthrottle=debug"))).is_ok());
        for bad in ["info,ezthrottle=loud", "[{", "=debug"] {
            let err = filter_from(Some(OsStr::new(bad))).expect_err(bad);
            assert!(err.contains("EZTHROTTLE_LOG"), "{err}");
            assert!(err.contains("not a valid log filter"), "{err}");
        }
    }

    #[test]
    fn query_strings_of_urls_and_paths_are_redacted() {
        assert_eq!(
            scrub("Fail to proxy: Upstream ConnectRefused, status: 502, GET http://api.test:80/v1/x?api_key=SECRET1&b=2, Host: api.test"),
            "Fail to proxy: Upstream ConnectRefused, status: 502, GET http://api.test:80/v1/x?<redacted> Host: api.test"
        );
        assert_eq!(
            scrub(r#"{"fields":{"message":"GET /a/b?token=SECRET2 HTTP/1.1"}}"#),
            r#"{"fields":{"message":"GET /a/b?<redacted> HTTP/1.1"}}"#
        );
        assert_eq!(
            scrub(r#"error="error sending request for url (https://hook.test/h?sig=SECRET3)""#),
            r#"error="error sending request for url (https://hook.test/h?<redacted>)""#
        );
        assert_eq!(scrub("url=/p?x=SECRET4"), "url=/p?<redacted>");
    }

    #[test]
    fn questions_and_plain_lines_are_left_alone() {
        for line in [
            "ready proxy=127.0.0.1:4000",
            "what happened? nothing",
            "2026-01-01T00:00:00Z INFO ezthrottle::access: method=GET path=/v1/x status=200",
        ] {
            assert_eq!(scrub(line), line);
        }
    }

    #[test]
    fn userinfo_and_auth_tokens_are_redacted() {
        assert_eq!(
            scrub("connect to http://user:SECRET5@proxy.test:8080/x failed"),
            "connect to http://<redacted>@proxy.test:8080/x failed"
        );
        assert_eq!(
            scrub("authorization: Bearer SECRET6, cookie: a"),
            "authorization: Bearer <redacted>, cookie: a"
        );
        assert_eq!(
            scrub(r#""Proxy-Authorization": "Basic U0VDUkVUNw==""#),
            r#""Proxy-Authorization": "Basic <redacted>""#
        );
        assert_eq!(scrub("mail me at a@b.test"), "mail me at a@b.test");
        assert_eq!(scrub("a basic idea"), "a basic idea");
        assert_eq!(scrub("auth=bearer  SECRET8"), "auth=bearer  <redacted>");
    }

    #[test]
    fn only_our_targets_go_below_info() {
        use tracing::callsite::Identifier;
        use tracing::field::FieldSet;
        use tracing::metadata::Kind;
        struct Cs;
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CS: Cs = Cs;
        let meta = |target: &'static str, level: Level| {
            Metadata::new(
                "e",
                target,
                level,
                None,
                None,
                None,
                FieldSet::new(&[], Identifier(&CS)),
                Kind::EVENT,
            )
        };
        assert!(allowed(&meta("ezthrottle::jobs", Level::TRACE)));
        assert!(allowed(&meta("ezthrottle", Level::DEBUG)));
        assert!(!allowed(&meta("ezthrottlex", Level::DEBUG)));
        for t in [
            "pingora_core::protocols::http::v1::client",
            "pingora_proxy",
            "hyper::proto",
            "h2::codec",
            "reqwest::connect",
            "rustls::client",
            "rusqlite",
        ] {
            assert!(!allowed(&meta(t, Level::DEBUG)), "{t}");
            assert!(!allowed(&meta(t, Level::TRACE)), "{t}");
            assert!(allowed(&meta(t, Level::INFO)), "{t}");
            assert!(allowed(&meta(t, Level::ERROR)), "{t}");
        }
    }
}
