//! Per-host leaf certificates for interception, minted on first use and
//! cached as ready-made rustls server configs.
//!
//! Every intercepted CONNECT needs a certificate for its host signed by the
//! local CA. Minting one (ECDSA P-256 key + signature) costs ~0.2 ms, cheap
//! but not free, and building a `ServerConfig` per connection would also throw
//! away rustls' session-resumption state; so configs are cached per host.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use pingora::tls::{CertificateDer, PrivateKeyDer, ServerConfig};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::PrivatePkcs8KeyDer;
use time::OffsetDateTime;

use super::ca::{random_serial, ring_provider};
use super::{LocalCa, TlsError};

/// Bound on cached hosts: a proxy fronting an unbounded set of hosts (or a
/// client sending random CONNECT names) must not grow without limit.
const MAX_CACHED: usize = 10_000;
/// How many entries one eviction pass removes once the cache is full, so the
/// (linear) eviction scan is amortised over many inserts.
const EVICT_BATCH: usize = MAX_CACHED / 16;
/// Backdating tolerates clients whose clocks run a little behind ours.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);
/// Total validity (not-before to not-after) of 397 days: the most Apple and
/// Chrome accept for a TLS server certificate, even one from a private CA.
const LEAF_VALIDITY: Duration = Duration::from_secs(397 * 24 * 3600);
/// A cached leaf older than this is re-minted, so a long-running proxy never
/// serves one near its expiry.
const REMINT_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);
/// The longest DNS name (RFC 1035), also a cap on what goes into errors.
const MAX_HOST_LEN: usize = 253;
/// X.509 upper bound for a CommonName (RFC 5280 `ub-common-name`).
const MAX_CN_LEN: usize = 64;

struct Cached {
    config: Arc<ServerConfig>,
    minted: Instant,
}

/// Mints and caches one TLS server config per intercepted host.
pub struct LeafCache {
    ca: Arc<LocalCa>,
    provider: Arc<CryptoProvider>,
    cache: DashMap<String, Cached>,
    capacity: usize,
    /// ALPN protocols offered to intercepted clients, in preference order.
    alpn: Vec<Vec<u8>>,
}

impl LeafCache {
    /// `http2`: offer `h2` before `http/1.1` (`[tls] http2`).
    pub fn new(ca: Arc<LocalCa>, http2: bool) -> LeafCache {
        Self::with_capacity(ca, MAX_CACHED, http2)
    }

    fn with_capacity(ca: Arc<LocalCa>, capacity: usize, http2: bool) -> LeafCache {
        let mut alpn = Vec::new();
        if http2 {
            alpn.push(b"h2".to_vec());
        }
        alpn.push(b"http/1.1".to_vec());
        LeafCache {
            ca,
            provider: ring_provider(),
            cache: DashMap::new(),
            capacity: capacity.max(1),
            alpn,
        }
    }

    /// The TLS server config presenting a leaf for `host` (a DNS name or an IP
    /// literal; IPv6 with or without brackets, no port). `host` comes from a
    /// client's CONNECT line, so anything that is not a plausible host name is
    /// an error, never a panic.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let key = normalize(host)?;
        if let Some(c) = self.cache.get(&key) {
            if c.minted.elapsed() < REMINT_AFTER {
                return Ok(c.config.clone());
            }
        }
        let config = Arc::new(self.mint(&key)?);
        self.make_room();
        // If another task minted the same host meanwhile, keep theirs so every
        // caller shares one config per host; replace only a stale entry.
        let mut entry = self.cache.entry(key).or_insert_with(|| Cached {
            config: config.clone(),
            minted: Instant::now(),
        });
        if entry.minted.elapsed() >= REMINT_AFTER {
            *entry = Cached {
                config,
                minted: Instant::now(),
            };
        }
        Ok(entry.config.clone())
    }

    /// Number of cached hosts.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Evicts a batch of arbitrary entries when full. Arbitrary (not LRU) is
    /// enough: an evicted host just costs one more mint on its next CONNECT.
    fn make_room(&self) {
        if self.cache.len() < self.capacity {
            return;
        }
        let victims: Vec<String> = self
            .cache
            .iter()
            .take(EVICT_BATCH.clamp(1, self.capacity))
            .map(|e| e.key().clone())
            .collect();
        for v in victims {
            self.cache.remove(&v);
        }
    }

    fn mint(&self, host: &str) -> Result<ServerConfig, TlsError> {
        let (chain, key_der) = self.mint_leaf(host)?;
        let gen = |what: &str, e: &dyn std::fmt::Display| {
            TlsError::Generate(format!("leaf for {host:?}: {what}: {e}"))
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| gen("tls versions", &e))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| gen("server config", &e))?;
        // h2 streams and HTTP/1.1 requests run through the same pipeline
        // (accept/http2.rs); a client that offers neither gets HTTP/1.1.
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }

    /// The chain `[leaf, ca]` and the leaf key for an already-normalized host.
    fn mint_leaf(
        &self,
        host: &str,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let gen = |what: &str, e: &dyn std::fmt::Display| {
            TlsError::Generate(format!("leaf for {host:?}: {what}: {e}"))
        };
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.try_into()
                    .map_err(|e: rcgen::Error| invalid(host, &e.to_string()))?,
            ),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        if host.len() <= MAX_CN_LEN {
            // Clients match the SAN; the CN is for humans reading the cert.
            dn.push(DnType::CommonName, host);
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = params.not_before + LEAF_VALIDITY;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| gen("key", &e))?;
        let leaf = params
            .signed_by(&key, self.ca.issuer())
            .map_err(|e| gen("sign", &e))?;
        let chain: Vec<CertificateDer<'static>> =
            vec![leaf.der().clone(), self.ca.cert_der().clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((chain, key_der))
    }
}

/// Lower-cases, strips IPv6 brackets and a trailing root dot, and rejects
/// anything that cannot be a certificate name (the CONNECT host is
/// client-controlled).
fn normalize(host: &str) -> Result<String, TlsError> {
    if host.len() > MAX_HOST_LEN + 2 {
        return Err(invalid(host, "longer than 253 characters"));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match inner.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Ok(ip.to_string()),
            Err(_) => Err(invalid(host, "brackets hold no IPv6 address")),
        };
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        // Canonical text form, so `::1` and `0:0::1` share one entry.
        return Ok(ip.to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return Err(invalid(host, "empty or too long"));
    }
    let labels_ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !labels_ok {
        return Err(invalid(host, "not a valid DNS name"));
    }
    // An all-numeric dotted name that is not a valid IP (e.g. `1.2.3.999`)
    // would be rejected by clients as a DNS SAN anyway.
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(invalid(host, "numeric name that is not an IP address"));
    }
    Ok(name)
}

fn invalid(host: &str, reason: &str) -> TlsError {
    // Debug formatting escapes control characters; the cap keeps log lines sane.
    let shown: String = host.chars().take(MAX_HOST_LEN + 2).collect();
    TlsError::InvalidHost {
        host: format!("{shown:?}"),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn test_ca(dir: &Path) -> Arc<LocalCa> {
        Arc::new(LocalCa::load_or_create_in(dir).expect("CA"))
    }

    fn cache() -> (tempfile::TempDir, LeafCache) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = test_ca(dir.path());
        (dir, LeafCache::new(ca, true))
    }

    /// A real TLS handshake over an in-memory pipe: the client trusts only the
    /// local CA and checks `server_name`; the server presents the leaf for `host`.
    async fn handshake(
        leaves: &LeafCache,
        ca: &LocalCa,
        host: &str,
        server_name: &str,
    ) -> Result<Option<Vec<u8>>, String> {
        let server = leaves.server_config(host).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.cert_der().clone())
            .map_err(|e| e.to_string())?;
        let mut client = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (a, b) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| e.to_string())?;
        let srv = tokio::spawn(async move {
            let mut s = acceptor.accept(a).await.map_err(|e| e.to_string())?;
            s.write_all(b"hi").await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())
        });
        let client_result = async {
            let mut c = connector
                .connect(name, b)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2];
            c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            if &buf != b"hi" {
                return Err(format!("unexpected bytes {buf:?}"));
            }
            Ok(c.get_ref().1.alpn_protocol().map(|p| p.to_vec()))
        }
        .await;
        // On a client-side failure the server sees an alert or EOF; either
        // way the task ends, so awaiting it cannot hang.
        let server_result = srv.await.map_err(|e| e.to_string())?;
        let alpn = client_result?;
        server_result?;
        Ok(alpn)
    }

    #[tokio::test]
    async fn real_handshakes_succeed_for_the_right_name_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = test_ca(dir.path());
        let leaves = LeafCache::new(ca.clone(), true);
        for (host, sni) in [
            ("api.example.test", "api.example.test"),
            ("API.Example.TEST", "api.example.test"),
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("[::1]", "::1"),
        ] {
            let alpn = handshake(&leaves, &ca, host, sni)
                .await
                .unwrap_or_else(|e| panic!("{host} as {sni}: {e}"));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "{host}");
        }
        for (host, sni) in [
            ("api.example.test", "other.example.test"),
            ("api.example.test", "example.test"),
            ("127.0.0.1", "127.0.0.2"),
            ("127.0.0.1", "::1"),
        ] {
            let err = handshake(&leaves, &ca, host, sni)
                .await
                .expect_err("wrong name must fail");
            assert!(
                err.contains("certificate") || err.contains("Certificate"),
                "{host} as {sni}: {err}"
            );
        }
    }

    /// `[tls] http2 = false`: a client offering h2 is answered with
    /// HTTP/1.1 only.
    #[tokio::test]
    async fn http2_off_offers_only_http1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = test_ca(dir.path());
        let leaves = LeafCache::new(ca.clone(), false);
        let alpn = handshake(&leaves, &ca, "api.example.test", "api.example.test")
            .await
            .expect("handshake");
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn leaf_from_another_ca_is_rejected() {
        let (dir_a, leaves_a) = cache();
        let dir_b = tempfile::tempdir().expect("tempdir");
        let ca_b = test_ca(dir_b.path());
        assert!(
            handshake(&leaves_a, &ca_b, "api.example.test", "api.example.test")
                .await
                .is_err()
        );
        drop(dir_a);
    }

    #[test]
    fn leaf_has_expected_fields() {
        use x509_parser::extensions::GeneralName;
        let (_dir, leaves) = cache();
        for host in ["api.example.test", "127.0.0.1", "::1"] {
            let (chain, _key) = leaves.mint_leaf(host).expect("mint");
            assert_eq!(chain.len(), 2);
            assert_eq!(&chain[1], leaves.ca.cert_der(), "chain ends with the CA");
            let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).expect("parse");
            let san = cert
                .subject_alternative_name()
                .expect("san ext")
                .expect("san present");
            let names: Vec<String> = san
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => format!("dns:{d}"),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => format!(
                            "ip:{}",
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4"))
                        ),
                        16 => format!(
                            "ip:{}",
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16"))
                        ),
                        _ => "ip:?".into(),
                    },
                    other => format!("{other:?}"),
                })
                .collect();
            let want = if host.parse::<IpAddr>().is_ok() {
                format!("ip:{host}")
            } else {
                format!("dns:{host}")
            };
            assert_eq!(names, vec![want], "{host}");
            let cn: Vec<_> = cert
                .subject()
                .iter_common_name()
                .filter_map(|c| c.as_str().ok())
                .collect();
            assert_eq!(cn, vec![host]);
            let eku = cert
                .extended_key_usage()
                .expect("eku ext")
                .expect("eku present");
            assert!(eku.value.server_auth);
            assert!(!cert.is_ca());
            let v = cert.validity();
            let now = OffsetDateTime::now_utc().unix_timestamp();
            assert!(v.not_before.timestamp() <= now - 23 * 3600, "backdated");
            let span = v.not_after.timestamp() - v.not_before.timestamp();
            assert!(span <= 397 * 24 * 3600, "validity {span}s");
            assert!(v.not_after.timestamp() > now + 300 * 24 * 3600);
        }
    }

    #[test]
    fn cached_per_host_and_bad_hosts_refused() {
        let (_dir, leaves) = cache();
        let a = leaves.server_config("API.example.test").expect("mint");
        let b = leaves.server_config("api.example.test").expect("cached");
        let c = leaves.server_config("api.example.test.").expect("cached");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a, &c));
        let d = leaves.server_config("other.example.test").expect("mint");
        assert!(!Arc::ptr_eq(&a, &d));
        let v6 = leaves.server_config("::1").expect("mint");
        assert!(Arc::ptr_eq(
            &v6,
            &leaves.server_config("[::1]").expect("cached")
        ));
        assert_eq!(leaves.len(), 3);

        let long = "a".repeat(300);
        let long_label = format!("{}.test", "b".repeat(64));
        for bad in [
            "",
            ".",
            "bad host",
            "a..b",
            "x/y",
            "host:443",
            "[::1]:443",
            "[not-ip]",
            "1.2.3.999",
            "-lead.test",
            "ünïcode.test",
            "nul\0.test",
            "*.example.test",
            long.as_str(),
            long_label.as_str(),
        ] {
            let err = leaves.server_config(bad).expect_err(bad);
            assert!(
                matches!(err, TlsError::InvalidHost { .. }),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(leaves.len(), 3, "refused hosts are not cached");
    }

    #[test]
    fn shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<LeafCache>();
        assert_send_sync::<LocalCa>();
    }

    #[test]
    fn cache_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leaves = LeafCache::with_capacity(test_ca(dir.path()), 4, true);
        for i in 0..20 {
            leaves
                .server_config(&format!("h{i}.example.test"))
                .expect("mint");
            assert!(leaves.len() <= 4, "len {} after {i}", leaves.len());
        }
        // The most recent host is always present after its insert.
        let last = leaves.server_config("h19.example.test").expect("cached");
        assert!(Arc::ptr_eq(
            &last,
            &leaves.server_config("h19.example.test").expect("cached")
        ));
    }
}
