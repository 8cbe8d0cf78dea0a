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
