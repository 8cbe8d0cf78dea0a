//! `rediss://`: the Redis backend over TLS to a real `redis-server` with a
//! TLS port, verifying the server's certificate (trusted through
//! `SSL_CERT_FILE`, as the system roots are extended in a container), and
//! refusing a server whose certificate it cannot verify.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::harness::{control_get, EzBuilder};
use common::{eventually, free_port};

struct TlsRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed certificate");
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).expect("cert");
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).expect("key");
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(dir.path().join("cert.pem"))
            .arg("--tls-key-file")
            .arg(dir.path().join("key.pem"))
            .args(["--tls-auth-clients", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let server = TlsRedis { child, port, dir };
        eventually(Duration::from_secs(20), "redis TLS port", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        server
    }

    fn cert(&self) -> String {
        self.dir.path().join("cert.pem").display().to_string()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(ez: &common::harness::Ezthrottle, name: &str) -> Option<String> {
    control_get(ez, "/metrics")
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l[name.len() + 1..].to_string())
}

#[test]
fn rediss_verifies_the_server_and_shares_state_over_tls() {
    let redis = TlsRedis::start();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let ez = EzBuilder::new()
        .storage(&format!("backend = \"redis\"\nurl = \"{url}\"\n"))
        .env("SSL_CERT_FILE", &redis.cert())
        .start();
    eventually(Duration::from_secs(10), "store_up 1 over TLS", || {
        (metric(&ez, "ezthrottle_store_up").as_deref() == Some("1")).then_some(())
    });
    // The job API reads the shared store: it answers over TLS.
    let jobs = control_get(&ez, "/api/v1/jobs");
    assert!(jobs.contains("\"jobs\""), "{jobs}");
}

#[test]
fn rediss_refuses_a_server_it_cannot_verify() {
    let redis = TlsRedis::start();
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    // No SSL_CERT_FILE: the self-signed certificate is not trusted.
    let ez = EzBuilder::new()
        .storage(&format!("backend = \"redis\"\nurl = \"{url}\"\n"))
        .start();
    // Started anyway (Redis trouble is no start-up failure) and degraded.
    let ready = control_get(&ez, "/readyz");
    assert!(ready.contains("\"degraded\""), "{ready}");
    assert_eq!(metric(&ez, "ezthrottle_store_up").as_deref(), Some("0"));
}
