//! Header names reach the other side written as they were sent, both ways:
//! the client's to the origin, the origin's to the client. The vendored
//! pingora-http keeps a map of the names' case only once a name differs
//! from its default form (`CaseNames`), so the heads here cover all
//! three ways that can go: every name in its default form, the first name
//! not, and a later one not, after names that were, with repeated names.

mod common;

use common::raw::RawConn;
use common::{EzBuilder, Ezthrottle};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A raw origin that records every request head as it arrived and answers
/// each with the response header lines given on `answers` (one per
/// request, in order), written exactly so.
struct CaseOrigin {
    _server: common::serve::Loopback,
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CaseOrigin {
    fn start(answers: Vec<&'static str>) -> CaseOrigin {
        use tokio::io::AsyncWriteExt;
        let server = common::serve::Loopback::new("case origin");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let answers = Arc::new(answers);
        let addr = server.serve_tcp(move |mut tcp| {
            let (seen, answers) = (seen.clone(), answers.clone());
            async move {
                while let Some(head) = common::serve::read_request_head(&mut tcp).await {
                    let n = {
                        let mut heads = seen.lock().expect("heads");
                        heads.push(head);
                        heads.len() - 1
                    };
                    let lines = answers.get(n).copied().unwrap_or("");
                    let answer = format!("HTTP/1.1 200 OK\r\n{lines}Content-Length: 2\r\n\r\nok");
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        });
        CaseOrigin {
            _server: server,
            addr,
            heads,
        }
    }

    fn head(&self, n: usize) -> String {
        let heads = self.heads.lock().expect("heads");
        String::from_utf8_lossy(&heads[n]).into_owned()
    }
}

/// The header lines of `head` (after its first line) whose names are among
/// `names`, compared without case, as (name as written, value).
fn lines_named(head: &str, names: &[&str]) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .filter(|(k, _)| names.iter().any(|n| n.eq_ignore_ascii_case(k)))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `lines` ("Name: value\r\n"...) as (name, value) pairs.
fn pairs(lines: &str) -> Vec<(String, String)> {
    lines_named(&format!("first line\r\n{lines}"), &names_of(lines))
}

fn names_of(lines: &str) -> Vec<&str> {
    lines
        .split("\r\n")
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k))
        .collect()
}

#[test]
fn header_names_keep_their_case_both_ways() {
    // (request header lines, response header lines); names repeat only
    // next to each other, as a header map keeps a name's values together.
    let cases: [(&str, &'static str); 3] = [
        (
            "User-Agent: t\r\nAccept: */*\r\nAccept-Encoding: gzip\r\n",
            "Content-Type: text/plain\r\nETag: \"x\"\r\nLast-Modified: Tue, 01 Dec 2026 00:00:00 GMT\r\n",
        ),
        (
            "user-agent: t\r\nX-Mixed-CASE: 1\r\nAccept: */*\r\n",
            "x-Mixed-Case: a\r\nContent-Type: text/plain\r\nServer: o\r\n",
        ),
        (
            "Accept: a\r\nACCEPT: b\r\nX-Trace: 1\r\nx-trace: 2\r\nUser-Agent: t\r\n",
            "Set-Cookie: a=1\r\nSET-COOKIE: b=2\r\nContent-type: text/plain\r\nVary: Accept\r\n",
        ),
    ];
    let origin = CaseOrigin::start(cases.iter().map(|(_, resp)| *resp).collect());
    let ez: Ezthrottle = EzBuilder::new().resolve("case.test", "127.0.0.1").start();
    let host = format!("case.test:{}", origin.addr.port());
    let mut c = RawConn::connect(ez.proxy);
    for (n, (req_lines, resp_lines)) in cases.iter().enumerate() {
        c.send(
            format!("GET http://{host}/{n} HTTP/1.1\r\nHost: {host}\r\n{req_lines}\r\n").as_bytes(),
        );
        let resp = c.read_response();
        assert_eq!(resp.status, 200, "case {n}: {}", resp.text());
        let sent = lines_named(&origin.head(n), &names_of(req_lines));
        assert_eq!(
            sent,
            pairs(req_lines),
            "case {n}: the request head as the origin got it"
        );
        let names = names_of(resp_lines);
        let got: Vec<(String, String)> = resp
            .headers
            .iter()
            .filter(|(k, _)| names.iter().any(|name| name.eq_ignore_ascii_case(k)))
            .cloned()
            .collect();
        assert_eq!(
            got,
            pairs(resp_lines),
            "case {n}: the response head as the client got it"
        );
    }
}

/// The case map made late gives what a map kept from the start gave: over
/// random runs of appends, inserts, removals and static inserts (seeded,
/// so a failure repeats), a head built with case writes the same lines as
/// one built without (same values, same order, names equal but for case),
/// every name spelled as it was when its value was added, and, when every
/// spelling used was the default one, exactly the same bytes.
#[test]
fn a_late_case_map_keeps_every_spelling_in_step() {
    use pingora::http::RequestHeader;
    static VIA: http::HeaderName = http::header::VIA;
    // (spelling, is it the name's default form)
    const NAMES: [(&str, bool); 11] = [
        ("Host", true),
        ("host", false),
        ("User-Agent", true),
        ("user-agent", false),
        ("x-trace", true),
        ("X-Trace", false),
        ("X-TRACE", false),
        ("Accept", true),
        ("ETag", true),
        ("etag", false),
        ("Via", true),
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        // xorshift64*: a fixed sequence, no dependency.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    };
    let lines = |h: &RequestHeader| -> Vec<(String, String)> {
        let mut wire = Vec::new();
        h.header_to_h1_wire(&mut wire);
        String::from_utf8(wire)
            .expect("ASCII")
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("name: value");
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    for run in 0..2_000 {
        let mut kept = RequestHeader::build("GET", b"/", None).expect("head");
        let mut plain = RequestHeader::build_no_case("GET", b"/", None).expect("head");
        // The spelling each value went in with.
        let mut spelled: std::collections::HashMap<String, String> = Default::default();
        let mut all_default = true;
        let ops = 1 + next(12);
        for op in 0..ops {
            let (name, default) = NAMES[next(NAMES.len())];
            let value = format!("v{op}");
            let kind = next(4);
            for head in [&mut kept, &mut plain] {
                match kind {
                    0 => {
                        head.append_header(name.to_string(), value.as_str())
                            .expect("append");
                    }
                    1 => head
                        .insert_header(name.to_string(), value.as_str())
                        .expect("insert"),
                    2 => {
                        head.remove_header(name);
                    }
                    _ => head.insert_static_header(
                        &VIA,
                        http::HeaderValue::from_str(&value).expect("value"),
                    ),
                }
            }
            match kind {
                2 => continue,
                3 => {
                    spelled.insert(value, "Via".to_string());
                    continue;
                }
                _ => {}
            }
            all_default &= default;
            spelled.insert(value, name.to_string());
        }
        let (k, p) = (lines(&kept), lines(&plain));
        assert_eq!(k.len(), p.len(), "run {run}: {k:?} / {p:?}");
        for ((kn, kv), (pn, pv)) in k.iter().zip(&p) {
            assert_eq!(kv, pv, "run {run}: values out of step: {k:?} / {p:?}");
            assert!(kn.eq_ignore_ascii_case(pn), "run {run}: {k:?} / {p:?}");
            assert_eq!(
                Some(kn),
                spelled.get(kv),
                "run {run}: {kv} spelled {kn}: {k:?}"
            );
        }
        if all_default {
            assert_eq!(k, p, "run {run}: default spellings only");
        }
    }
}
