//! Trust roots for upstream TLS: the system roots plus `[tls] upstream_ca_file`
//! (SPEC §4).
//!
//! pingora's connector takes ONE `ca_file` and, when it is set, uses it
//! *instead of* the system roots. So when an extra file is configured we write
//! system roots + that file into one bundle under the data dir and hand pingora
//! that path. pingora also refuses the whole file if any certificate in it
//! fails to parse (`RootCertStore::add`), so every certificate is checked the
//! same way before it goes in: bad system roots are skipped, a bad extra
//! certificate is an error naming the file.

use std::path::{Path, PathBuf};

use pingora::tls::{CertificateDer, RootCertStore};

use super::ca::write_atomic;
use super::TlsError;
use crate::config::Config;

/// Bundle location under the data dir.
const BUNDLE_DIR: &str = "tls";
const BUNDLE_FILE: &str = "upstream-roots.pem";

/// `Ok(None)` when no `upstream_ca_file` is configured (pingora then loads the
/// system roots itself); else the path of the freshly written bundle.
pub fn bundle_path(config: &Config) -> Result<Option<PathBuf>, TlsError> {
    let Some(extra) = &config.tls.upstream_ca_file else {
        return Ok(None);
    };
    let system = match pingora::tls::load_native_certs() {
        Ok(certs) => certs,
        Err(e) => {
            // Fail closed: fewer roots only means fewer upstreams verify.
            tracing::warn!(error = %e, "cannot load the system trust roots; upstream TLS trusts only tls.upstream_ca_file");
            Vec::new()
        }
    };
    write_bundle(extra, &config.data_dir, system).map(Some)
}

/// Writes `system` + the certificates of `extra` to `<data_dir>/tls/upstream-roots.pem`.
fn write_bundle(
    extra: &Path,
    data_dir: &Path,
    system: Vec<CertificateDer<'static>>,
) -> Result<PathBuf, TlsError> {
    // Named by its key too: "run" reports these, and the key is what the
    // reader edits.
    let extra_err = |reason: String| TlsError::File {
        path: format!("[tls] upstream_ca_file {}", extra.display()),
        reason,
    };
    let text = std::fs::read(extra).map_err(|e| extra_err(format!("cannot read: {e}")))?;
    let extra_certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| extra_err(format!("unreadable PEM: {e}")))?;
    if extra_certs.is_empty() {
        return Err(extra_err(
            "contains no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    // Same check pingora applies when it loads the bundle.
    let mut store = RootCertStore::empty();
    for (i, cert) in extra_certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| {
            extra_err(format!(
                "certificate #{} is not usable as a trust anchor: {e}",
                i + 1
            ))
        })?;
    }

    let mut pem = String::new();
    let mut skipped = 0usize;
    for cert in &system {
        if store.add(cert.clone()).is_ok() {
            pem.push_str(&pem_block(cert));
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        tracing::debug!(skipped, "skipped unparsable system trust roots");
    }
    for cert in &extra_certs {
        pem.push_str(&pem_block(cert));
    }

    let dir = data_dir.join(BUNDLE_DIR);
    // 0700/0600 like everything under the data dir (store/files.rs).
    crate::store::files::create_private_dir(&dir).map_err(|e| TlsError::File {
        path: dir.display().to_string(),
        reason: format!("cannot create directory: {e}"),
    })?;
    let path = dir.join(BUNDLE_FILE);
    write_atomic(&path, pem.as_bytes(), crate::store::files::FILE_MODE)?;
    tracing::info!(
        path = %path.display(),
        system = system.len() - skipped,
        extra = extra_certs.len(),
        "wrote upstream trust bundle"
    );
    Ok(path)
}

/// Standard PEM armour: base64 in 64-character lines.
fn pem_block(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::LocalCa;
    use super::*;

    fn read_certs(path: &Path) -> Vec<CertificateDer<'static>> {
        let bytes = std::fs::read(path).expect("read bundle");
        rustls_pemfile::certs(&mut bytes.as_slice())
            .collect::<Result<_, _>>()
            .expect("bundle parses")
    }

    #[test]
    fn bundle_holds_system_roots_then_extra_certs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca1 = LocalCa::load_or_create_in(&tmp.path().join("a")).expect("ca1");
        let ca2 = LocalCa::load_or_create_in(&tmp.path().join("b")).expect("ca2");
        let ca3 = LocalCa::load_or_create_in(&tmp.path().join("c")).expect("ca3");
        let extra = tmp.path().join("extra.pem");
        std::fs::write(
            &extra,
            format!("some comment\n{}{}", ca2.cert_pem(), ca3.cert_pem()),
        )
        .expect("write");
        // A "system" set with one garbage entry that pingora would refuse.
        let system = vec![
            ca1.cert_der().clone(),
            CertificateDer::from(b"not a certificate".to_vec()),
        ];
        let data_dir = tmp.path().join("data");
        let path = write_bundle(&extra, &data_dir, system).expect("bundle");
        assert_eq!(path, data_dir.join("tls/upstream-roots.pem"));
        let certs = read_certs(&path);
        assert_eq!(
            certs,
            vec![
                ca1.cert_der().clone(),
                ca2.cert_der().clone(),
                ca3.cert_der().clone()
            ]
        );
        // Loads into a root store exactly as pingora does, without error.
        let mut store = RootCertStore::empty();
        for c in certs {
            store.add(c).expect("pingora-compatible");
        }
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn bad_extra_file_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let extra = tmp.path().join("extra.pem");

        std::fs::write(&extra, "not pem at all").expect("write");
        let err = write_bundle(&extra, &data_dir, Vec::new()).expect_err("no certs");
        assert!(err.to_string().contains("extra.pem"), "{err}");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        assert!(err.to_string().contains("upstream_ca_file"), "{err}");

        std::fs::write(
            &extra,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = write_bundle(&extra, &data_dir, Vec::new()).expect_err("junk cert");
        assert!(err.to_string().contains("extra.pem"), "{err}");

        let missing = tmp.path().join("missing.pem");
        let err = write_bundle(&missing, &data_dir, Vec::new()).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        assert!(!data_dir.join("tls/upstream-roots.pem").exists());
    }

    #[test]
    fn pem_block_round_trips() {
        let der: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let pem = pem_block(&der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let parsed: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("parse");
        assert_eq!(parsed, vec![CertificateDer::from(der)]);
    }
}
