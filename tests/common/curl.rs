//! The `curl` command line as a client.
//!
//! `curl().proxy(&ez).fetch(url)` runs one transfer and returns status,
//! headers (of the final response), body, curl's exit code and its `%{json}`
//! write-out (which carries `http_connect` for CONNECT answers).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use super::harness::Ezthrottle;
use super::proc::run;
use super::CLIENT_TIMEOUT;

pub struct CurlCmd {
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

/// A curl invocation with `~/.curlrc` ignored, no inherited proxy or CA
/// environment, and bounded connect/transfer times.
pub fn curl() -> CurlCmd {
    CurlCmd {
        args: vec![],
        env: vec![],
        dir: tempfile::tempdir().expect("curl tempdir"),
    }
}

#[derive(Debug)]
pub struct CurlRun {
    pub exit: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

#[derive(Debug)]
pub struct Fetch {
    /// curl's exit code (0 success, 60 certificate not trusted, 56 CONNECT refused...).
    pub exit: i32,
    /// Final HTTP status (`%{http_code}`), 0 if none.
    pub code: u16,
    /// Status of the proxy's CONNECT answer (`%{http_connect}`), 0 if none.
    pub connect_code: u16,
    /// Headers of the final response, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
    /// The whole `%{json}` write-out.
    pub info: serde_json::Value,
}

impl Fetch {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The server certificate's issuer as `curl -v` printed it
    /// (`*  issuer: CN=...`); needs `-v`.
    pub fn issuer(&self) -> Option<String> {
        verbose_field(&self.stderr, "issuer:")
    }

    /// The server certificate's subject as `curl -v` printed it; needs `-v`.
    pub fn subject(&self) -> Option<String> {
        verbose_field(&self.stderr, "subject:")
    }

    /// One-line summary for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "curl exit {} http_code {} http_connect {}\nbody: {}\nstderr: {}",
            self.exit,
            self.code,
            self.connect_code,
            String::from_utf8_lossy(&self.body[..self.body.len().min(1000)]),
            self.stderr
        )
    }

    /// Panics (with everything curl said) unless curl succeeded with `status`.
    pub fn assert_status(&self, status: u16) -> &Self {
        assert!(
            self.exit == 0 && self.code == status,
            "expected HTTP {status} with curl exit 0, got {}",
            self.describe()
        );
        self
    }
}

impl CurlCmd {
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, it: I) -> Self {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    /// `--proxy http://<proxy addr>`
    pub fn proxy(self, ez: &Ezthrottle) -> Self {
        self.arg("--proxy").arg(ez.proxy_url())
    }

    /// `--cacert <path>`
    pub fn cacert(self, path: &Path) -> Self {
        self.arg("--cacert").arg(path)
    }

    /// `--data-binary @<path>` (a POST with the file's exact bytes).
    pub fn data_file(self, path: &Path) -> Self {
        let mut at = OsString::from("@");
        at.push(path);
        self.arg("--data-binary")
            .arg(at)
            .arg("-H")
            .arg("Content-Type: application/octet-stream")
    }

    /// Write `data` to a temp file and send it with `--data-binary`.
    pub fn upload(self, data: &[u8]) -> Self {
        let path = self.temp_path("upload.bin");
        std::fs::write(&path, data).expect("write upload file");
        self.data_file(&path)
    }

    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.env.push((key.into(), value.as_ref().into()));
        self
    }

    /// A file path inside this invocation's temp dir.
    pub fn temp_path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("curl");
        for k in super::CLIENT_ENV {
            cmd.env_remove(k);
        }
        cmd.arg("-q")
            .arg("-sS")
            .arg("--connect-timeout")
            .arg("10")
            .arg("--max-time")
            .arg("60");
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run as given; raw stdout/stderr and exit code.
    pub fn run(self) -> CurlRun {
        let mut cmd = self.command();
        let out = run(&mut cmd, CLIENT_TIMEOUT);
        CurlRun {
            exit: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// One transfer of `url`; body and final headers captured.
    pub fn fetch(self, url: &str) -> Fetch {
        let headers_path = self.dir.path().join("headers.txt");
        let body_path = self.dir.path().join("body.bin");
        let mut cmd = self.command();
        cmd.arg("-D")
            .arg(&headers_path)
            .arg("-o")
            .arg(&body_path)
            .arg("-w")
            .arg("%{json}")
            .arg(url);
        let out = run(&mut cmd, CLIENT_TIMEOUT);
        let info: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let num = |k: &str| info[k].as_u64().unwrap_or(0) as u16;
        let raw_headers = std::fs::read_to_string(&headers_path).unwrap_or_default();
        Fetch {
            exit: out.status.code().unwrap_or(-1),
            code: num("http_code"),
            connect_code: num("http_connect"),
            headers: last_header_block(&raw_headers),
            body: std::fs::read(&body_path).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            info,
        }
    }
}

/// The headers of the last response in a `-D` dump (which also holds the
/// CONNECT answer and any `100 Continue`).
fn last_header_block(dump: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            blocks.push(Vec::new());
        } else if let (Some(block), Some((k, v))) = (blocks.last_mut(), line.split_once(':')) {
            block.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    blocks.pop().unwrap_or_default()
}

fn verbose_field(stderr: &str, field: &str) -> Option<String> {
    stderr.lines().find_map(|l| {
        l.strip_prefix('*')
            .map(str::trim_start)
            .and_then(|l| l.strip_prefix(field))
            .map(|v| v.trim().to_string())
    })
}

/// The response as the client saw it, minus the replay marker and the two
/// headers pingora's HTTP/1 server writes afresh on every transmission
/// (`Date`, and the hop-by-hop `Connection`).
pub fn without_replay(f: &Fetch) -> Vec<(String, String)> {
    f.headers
        .iter()
        .filter(|(k, _)| {
            !["idempotency-replay", "date", "connection"]
                .iter()
                .any(|h| k.eq_ignore_ascii_case(h))
        })
        .cloned()
        .collect()
}

/// An Idempotency-Key replay: the first response again, byte for byte
/// (status, body, headers in order), marked `Idempotency-Replay: true`.
pub fn assert_replay_of(replay: &Fetch, first: &Fetch) {
    assert_eq!(replay.code, first.code, "{}", replay.describe());
    assert_eq!(
        replay.header("idempotency-replay"),
        Some("true"),
        "{}",
        replay.describe()
    );
    assert_eq!(first.header("idempotency-replay"), None);
    assert_eq!(replay.body, first.body, "body must be byte-for-byte");
    assert_eq!(
        without_replay(replay),
        without_replay(first),
        "headers in order"
    );
}
