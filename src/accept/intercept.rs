//! Interception: terminate the client's TLS with a leaf minted for the
//! CONNECT host, then run every inner request (HTTP/1.1, or each stream of
//! an h2 connection) through the same pipeline as plain HTTP, with the
//! CONNECT target as the authoritative destination.

use std::time::Duration;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Peek, Ssl, Stream, ALPN};
use pingora::server::ShutdownWatch;

use super::{connect, FrontDoor};
use crate::pipeline::ctx::{ConnInfo, ConnectTarget};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How the HTTP/2 connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`)
/// starts; no HTTP/1.1 method is `PRI`, and the peek needs only this much.
const H2_PREFACE_START: &[u8; 4] = b"PRI ";

pub async fn run(
    door: &FrontDoor,
    mut client: Stream,
    conn: ConnInfo,
    target: ConnectTarget,
    shutdown: &ShutdownWatch,
) {
    let shared = &door.shared;
    let server_config = match shared.leaves.server_config(&target.host) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(domain = %target.host, error = %e, "cannot mint a certificate");
            let err = crate::error::ProxyError::BadRequest(format!(
                "cannot intercept {:?}: {e}",
                target.host
            ));
            connect::refuse(&mut client, &err).await;
            return;
        }
    };
    if connect::established(&mut client).await.is_err() {
        return;
    }
    // The TLS acceptor needs the concrete stream type (a boxed `dyn IO` is not
    // itself `IO`).
    let l4: Box<L4Stream> = match client.into_any().downcast::<L4Stream>() {
        Ok(s) => s,
        Err(_) => {
            tracing::error!("intercept: unexpected stream type");
            return;
        }
    };
    // A TLS ClientHello starts with a handshake record (0x16). Anything else
    // is plain HTTP through a CONNECT (undici's `EnvHttpProxyAgent` does
    // this for `http://` URLs): the same pipeline, without TLS.
    let mut l4 = l4;
    let mut first = [0u8; H2_PREFACE_START.len()];
    // Every request line and ClientHello is longer than the peek.
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, l4.try_peek(&mut first)).await {
        Ok(Ok(_)) => {}
        // Gone or silent: nothing to serve.
        Ok(Err(_)) | Err(_) => return,
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let conn = ConnInfo {
            connect: Some(std::sync::Arc::new(ConnectTarget {
                tls: false,
                ..target
            })),
            ..conn
        };
        // HTTP/2 with prior knowledge (h2c: gRPC's insecure channels
        // through a proxy) or HTTP/1.1.
        if first == *H2_PREFACE_START {
            super::http2::serve(door, l4, &conn, shutdown, super::KEEPALIVE).await;
        } else {
            door.serve_http1(l4, &conn, shutdown, false).await;
        }
        return;
    }
    let acceptor = Acceptor::from_server_config(server_config);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls_handshake(*l4)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // Usually a client that does not trust our CA: expected, not an error of ours.
            shared
                .metrics
                .proxy_errors_total
                .with_label_values(&["client_tls_failed"])
                .inc();
            // A certificate alert: the client does not trust our CA. Say
            // how to fix that, once per client and domain.
            let untrusted = crate::tls::client_trust::warn_if_untrusted(
                &e.to_string(),
                conn.client.map(|a| a.ip()),
                &target.host,
                shared.config.load().control.listen,
            );
            if !untrusted {
                tracing::info!(domain = %target.host, error = %e, "client TLS handshake failed");
            }
            return;
        }
        Err(_) => return,
    };
    let conn = ConnInfo {
        connect: Some(std::sync::Arc::new(target)),
        ..conn
    };
    if matches!(tls.selected_alpn_proto(), Some(ALPN::H2)) {
        super::http2::serve(door, Box::new(tls), &conn, shutdown, super::KEEPALIVE).await;
        return;
    }
    // Inner requests go through the same checked reader as plain ones.
    door.serve_http1(Box::new(tls), &conn, shutdown, false)
        .await;
}
