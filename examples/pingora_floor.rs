//! The floor under ezthrottle: pingora 0.9 with empty hooks, built like
//! ezthrottle (same pingora, same features, same allocator, same release
//! profile), so `benches/compare.sh` can show how much of ezthrottle's CPU
//! per request is pingora's own request machinery and how much is ours.
//!
//! Two modes, one listener each (all on loopback, 1 worker thread unless
//! `--threads`):
//!
//! - `--plain ADDR`: a forward proxy for absolute-form requests
//!   (`GET http://host:port/path`): the upstream is the URI's authority and
//!   the request goes on in origin form, over pooled keep-alive connections.
//!   The least a forward proxy must do.
//! - `--tls ADDR --cert F --key F --upstream HOST:PORT --sni NAME`: TLS
//!   terminated with rustls and re-originated to a fixed upstream, verified
//!   against `--ca-file` (the same job as the nginx row of the intercepted
//!   table; pingora has no CONNECT interception of its own).
//!
//! Not a product: no limits, no errors worth the name. Only for benchmarks.

use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: ezthrottle::allocator::MiMalloc = ezthrottle::allocator::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Plain forward-proxy listener.
    #[arg(long)]
    plain: Option<String>,
    /// TLS-terminating listener.
    #[arg(long)]
    tls: Option<String>,
    #[arg(long)]
    cert: Option<String>,
    #[arg(long)]
    key: Option<String>,
    /// The fixed upstream of the TLS listener.
    #[arg(long)]
    upstream: Option<String>,
    /// Server name to send and verify upstream.
    #[arg(long, default_value = "localhost")]
    sni: String,
    /// CA bundle that verifies the upstream.
    #[arg(long)]
    ca_file: Option<String>,
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

struct Forward;

#[async_trait]
impl ProxyHttp for Forward {
    type CTX = ();
    // As ezthrottle: hooks left at their defaults are not called.
    const EARLY_REQUEST_FILTER: bool = false;
    const PROXY_UPSTREAM_FILTER: bool = false;
    const CONNECTED_TO_UPSTREAM_H1: bool = false;
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        // pingora keeps the absolute form in the raw path (its `uri` is the
        // origin form).
        let uri = http::Uri::try_from(session.req_header().raw_path())
            .map_err(|e| Error::because(ErrorType::HTTPStatus(400), "bad target", e))?;
        let (Some(host), Some(port)) = (uri.host(), uri.port_u16().or(Some(80))) else {
            return Err(Error::explain(
                ErrorType::HTTPStatus(400),
                "absolute-form only",
            ));
        };
        Ok(Box::new(HttpPeer::new(
            (host, port),
            false,
            host.to_string(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        // Origin form upstream, as a forward proxy sends it.
        let origin_form = req.uri.clone();
        req.set_uri(origin_form);
        Ok(())
    }
}

struct Fixed {
    upstream: String,
    sni: String,
}

#[async_trait]
impl ProxyHttp for Fixed {
    type CTX = ();
    // As ezthrottle: hooks left at their defaults are not called.
    const EARLY_REQUEST_FILTER: bool = false;
    const PROXY_UPSTREAM_FILTER: bool = false;
    const CONNECTED_TO_UPSTREAM_H1: bool = false;
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            true,
            self.sni.clone(),
        )))
    }
}

fn main() {
    let args = Args::parse();
    let threads = if args.threads > 0 {
        args.threads
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    };
    let conf = ServerConf {
        threads,
        // As ezthrottle does (src/server.rs): one worker, one
        // single-threaded runtime; more, tokio's work-stealing scheduler.
        work_stealing: threads > 1,
        ca_file: args.ca_file.clone(),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = Arc::clone(&server.configuration);
    if let Some(addr) = &args.plain {
        let mut svc = http_proxy_service(&conf, Forward);
        svc.add_tcp(addr);
        server.add_service(svc);
    }
    if let Some(addr) = &args.tls {
        let (Some(cert), Some(key), Some(upstream)) = (&args.cert, &args.key, &args.upstream)
        else {
            eprintln!("--tls needs --cert, --key and --upstream");
            std::process::exit(2);
        };
        let mut svc = http_proxy_service(
            &conf,
            Fixed {
                upstream: upstream.clone(),
                sni: args.sni.clone(),
            },
        );
        if let Err(e) = svc.add_tls(addr, cert, key) {
            eprintln!("tls listener: {e}");
            std::process::exit(2);
        }
        server.add_service(svc);
    }
    println!("ready");
    server.run_forever();
}
