//! A tiny HTTP/1.1 client over a raw `TcpStream`, for requests real clients
//! will not send (origin-form to a proxy, garbage, keep-alive sequences).
//! All reads and writes carry a timeout.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub reason: String,
    /// Header (name as sent, value) pairs in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
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

    pub fn json(&self) -> serde_json::Value {
        super::json(&self.body)
    }

    /// `error.code` of the SPEC §8 error body.
    pub fn error_code(&self) -> String {
        super::error_code(&self.body)
    }

    pub fn error_message(&self) -> String {
        super::error_message(&self.body)
    }
}

pub struct RawConn {
    reader: BufReader<TcpStream>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            reader: BufReader::new(stream),
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.reader
            .get_mut()
            .write_all(data)
            .expect("write request");
    }

    /// Read one response to a non-HEAD, non-CONNECT request.
    pub fn read_response(&mut self) -> RawResponse {
        self.try_read_response(false).unwrap_or_else(|e| {
            panic!("reading response failed (read timeout {IO_TIMEOUT:?}): {e}")
        })
    }

    /// Read the response to a CONNECT: a 2xx has no body (the tunnel follows);
    /// anything else is framed normally.
    pub fn read_connect_response(&mut self) -> RawResponse {
        self.try_read_response(true).unwrap_or_else(|e| {
            panic!("reading CONNECT response failed (read timeout {IO_TIMEOUT:?}): {e}")
        })
    }

    /// Like `read_response`, but reports EOF / timeouts as errors.
    pub fn try_read_response(&mut self, connect: bool) -> std::io::Result<RawResponse> {
        let status_line = self.read_line()?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        }
        let status: u16 = parts.next().unwrap_or_default().parse().map_err(|_| {
            std::io::Error::new(
                ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').ok_or_else(|| {
                std::io::Error::new(ErrorKind::InvalidData, format!("bad header {line:?}"))
            })?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = RawResponse {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) && status != 101 {
            // Interim response: read the final one.
            return self.try_read_response(connect);
        }
        // A 101's connection carries the new protocol from here: no body.
        if status == 101
            || status == 204
            || status == 304
            || (connect && (200..300).contains(&status))
        {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            resp.body = self.read_chunked()?;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "bad content-length"))?;
            let mut body = vec![0u8; len];
            self.reader.read_exact(&mut body)?;
            resp.body = body;
        } else {
            self.reader.read_to_end(&mut resp.body)?;
        }
        Ok(resp)
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.read_line()?;
            let size_hex = size_line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
                std::io::Error::new(ErrorKind::InvalidData, format!("bad chunk {size_line:?}"))
            })?;
            if size == 0 {
                // Trailers until the empty line.
                while !self.read_line()?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            let crlf = self.read_line()?;
            if !crlf.is_empty() {
                return Err(std::io::Error::new(
                    ErrorKind::InvalidData,
                    "missing CRLF after chunk",
                ));
            }
        }
    }

    /// The socket, e.g. to start TLS over an established CONNECT tunnel
    /// (nothing is buffered after a CONNECT response: clients wait for it).
    pub fn into_stream(self) -> TcpStream {
        self.reader.into_inner()
    }

    /// The connection's reader (bytes after a response, e.g. an upgrade's).
    pub fn reader_mut(&mut self) -> &mut BufReader<TcpStream> {
        &mut self.reader
    }

    /// True when the peer has closed the connection (reads EOF), bounded.
    pub fn is_closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }
}

/// One request on a fresh connection, one response.
pub fn request(addr: SocketAddr, raw: &str) -> RawResponse {
    let mut c = RawConn::connect(addr);
    c.send(raw.as_bytes());
    c.read_response()
}

/// `GET <path>` on a fresh connection to `addr` (control endpoints).
pub fn get(addr: SocketAddr, path: &str) -> RawResponse {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
}

/// Absolute-form `GET` through the proxy at `proxy`.
pub fn proxy_get(proxy: SocketAddr, url: &str) -> RawResponse {
    let host = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("");
    request(
        proxy,
        &format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    )
}

/// `CONNECT target` on a fresh connection; returns the connection (tunnel
/// open on success) and the CONNECT response.
pub fn connect(proxy: SocketAddr, target: &str) -> (RawConn, RawResponse) {
    let mut c = RawConn::connect(proxy);
    c.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
    let resp = c.read_connect_response();
    (c, resp)
}
