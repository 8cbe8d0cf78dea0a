//! The local certificate authority that signs the per-host leaf certificates
//! used for HTTPS interception (SPEC §4).
//!
//! Apps are told to trust this CA once (`SSL_CERT_FILE`, `/ca.pem`, ...), so it
//! must survive restarts: it is created on first use under `<data_dir>/ca/` and
//! loaded from there afterwards. Operators can bring their own CA instead
//! (`[tls] ca_cert` + `ca_key`). The private key never leaves this module except
//! as the signing half of an [`rcgen::Issuer`], and it is never logged: the
//! `Debug` impl and every error message name files, not contents.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::tls::{CertificateDer, PrivateKeyDer};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use super::TlsError;
use crate::config::Config;

/// File names inside `<data_dir>/ca/`.
const CA_DIR: &str = "ca";
const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca.key";

/// Ten years: long enough that users do not have to re-trust the CA, which is
/// the expensive, manual step of setting the proxy up.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// Backdating tolerates clients whose clocks run a little behind ours.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// The CA: its certificate (handed to clients) and an issuer that signs leaves.
pub struct LocalCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// Where the certificate was loaded from (for messages, never the key).
    cert_path: PathBuf,
}

impl fmt::Debug for LocalCa {
    /// Deliberately omits the key: a `{:?}` in a log line must not leak it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// Where the CA lives, and whether the operator chose it (then we never create it).
struct CaFiles {
    cert: PathBuf,
    key: PathBuf,
    configured: bool,
}

impl CaFiles {
    fn from_config(config: &Config) -> Result<CaFiles, TlsError> {
        Self::resolve(
            config.tls.ca_cert.as_deref(),
            config.tls.ca_key.as_deref(),
            &config.data_dir,
        )
    }

    fn resolve(
        ca_cert: Option<&Path>,
        ca_key: Option<&Path>,
        data_dir: &Path,
    ) -> Result<CaFiles, TlsError> {
        match (ca_cert, ca_key) {
            (Some(cert), Some(key)) => Ok(CaFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                configured: true,
            }),
            (None, None) => {
                let dir = data_dir.join(CA_DIR);
                Ok(CaFiles {
                    cert: dir.join(CERT_FILE),
                    key: dir.join(KEY_FILE),
                    configured: false,
                })
            }
            (Some(_), None) => Err(TlsError::Config(
                "[tls] ca_cert is set but ca_key is not: set both or neither".into(),
            )),
            (None, Some(_)) => Err(TlsError::Config(
                "[tls] ca_key is set but ca_cert is not: set both or neither".into(),
            )),
        }
    }
}

impl LocalCa {
    /// Loads the configured or data-dir CA, creating the data-dir one on first use.
    pub fn load_or_create(config: &Config) -> Result<LocalCa, TlsError> {
        Self::load_or_create_files(&CaFiles::from_config(config)?)
    }

    /// Loads the CA if it exists; never creates one. Used by commands such as
    /// `ca export` that must not leave a fresh CA behind as a side effect.
    pub fn load_existing(config: &Config) -> Result<Option<LocalCa>, TlsError> {
        Self::load_existing_files(&CaFiles::from_config(config)?)
    }

    /// The CA certificate path: the configured `ca_cert`, else `<data_dir>/ca/ca.pem`.
    pub fn cert_path(config: &Config) -> PathBuf {
        match &config.tls.ca_cert {
            Some(p) => p.clone(),
            None => config.data_dir.join(CA_DIR).join(CERT_FILE),
        }
    }

    /// The CA certificate as PEM (what `/ca.pem` serves).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER (the second element of every leaf chain).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The signer for leaf certificates.
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Test helper: the data-dir CA under `data_dir` (no `Config` needed).
    #[cfg(test)]
    pub(crate) fn load_or_create_in(data_dir: &Path) -> Result<LocalCa, TlsError> {
        Self::load_or_create_files(&CaFiles::resolve(None, None, data_dir)?)
    }

    fn load_existing_files(files: &CaFiles) -> Result<Option<LocalCa>, TlsError> {
        if files.configured {
            return Self::load_files(files).map(Some);
        }
        match (files.cert.exists(), files.key.exists()) {
            (true, true) => Self::load_files(files).map(Some),
            (false, false) => Ok(None),
            (true, false) => Err(file_err(
                &files.key,
                format!(
                    "missing, but {} exists; restore the key or delete the certificate to create a new CA",
                    files.cert.display()
                ),
            )),
            (false, true) => Err(file_err(
                &files.cert,
                format!(
                    "missing, but {} exists; restore the certificate or delete the key to create a new CA",
                    files.key.display()
                ),
            )),
        }
    }

    fn load_or_create_files(files: &CaFiles) -> Result<LocalCa, TlsError> {
        if let Some(ca) = Self::load_existing_files(files)? {
            return Ok(ca);
        }
        create_files(files)?;
        // Read back what is on disk, so the CA we use is exactly the one a
        // later start (or `ca export`) will see.
        Self::load_files(files)
    }

    fn load_files(files: &CaFiles) -> Result<LocalCa, TlsError> {
        let cert_pem = fs::read_to_string(&files.cert)
            .map_err(|e| file_err(&files.cert, format!("cannot read CA certificate: {e}")))?;
        let key_pem = fs::read_to_string(&files.key)
            .map_err(|e| file_err(&files.key, format!("cannot read CA key: {e}")))?;
        Self::from_pem(cert_pem, &key_pem, &files.cert, &files.key)
    }

    /// Parses and cross-checks a CA certificate and key.
    fn from_pem(
        cert_pem: String,
        key_pem: &str,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<LocalCa, TlsError> {
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| file_err(cert_path, "no PEM CERTIFICATE block found".into()))?
            .map_err(|e| file_err(cert_path, format!("unreadable PEM certificate: {e}")))?;

        // rustls/ring loads PKCS#8, SEC1 and PKCS#1 keys; it also lets us check
        // that the key belongs to the certificate before we sign anything with it.
        let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| file_err(key_path, format!("unreadable PEM private key: {e}")))?
            .ok_or_else(|| file_err(key_path, "no PEM PRIVATE KEY block found".into()))?;
        let provider = ring_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|e| file_err(key_path, format!("unsupported private key: {e}")))?;
        CertifiedKey::new(vec![cert_der.clone()], signing_key)
            .keys_match()
            .map_err(|e| {
                file_err(
                    key_path,
                    format!(
                        "private key does not match the certificate {}: {e}",
                        cert_path.display()
                    ),
                )
            })?;

        let key = KeyPair::try_from(&key_der).map_err(|e| {
            file_err(
                key_path,
                format!("cannot sign with this key ({e}); a PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA key is needed (convert with `openssl pkcs8 -topk8 -nocrypt`)"),
            )
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| file_err(cert_path, format!("cannot use as a CA certificate: {e}")))?;
        if !issuer.key_usages().is_empty()
            && !issuer.key_usages().contains(&KeyUsagePurpose::KeyCertSign)
        {
            return Err(file_err(
                cert_path,
                "certificate lacks the keyCertSign key usage, so it cannot sign leaf certificates"
                    .into(),
            ));
        }

        Ok(LocalCa {
            cert_pem,
            cert_der,
            issuer,
            cert_path: cert_path.to_path_buf(),
        })
    }
}

/// The crypto provider used everywhere in ezthrottle: ring, never aws-lc.
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(path: &Path, reason: String) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason,
    }
}

/// Generates a new CA and writes it. The key is written before the certificate,
/// each atomically (temp file + rename), so a crash never leaves a half-written
/// file that would later be loaded. Both are 0600 from the moment they exist
/// (and directories 0700) like everything under the data dir, whatever the
/// umask: the certificate is public, but it is handed out through
/// `ca export` and `GET /ca.pem`, not by reading the data dir.
fn create_files(files: &CaFiles) -> Result<(), TlsError> {
    let (cert_pem, key_pem) = generate_ca()?;
    for path in [&files.cert, &files.key] {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                // 0700: the directory holds the CA key.
                crate::store::files::create_private_dir(dir)
                    .map_err(|e| file_err(dir, format!("cannot create directory: {e}")))?;
            }
        }
    }
    write_atomic(
        &files.key,
        key_pem.as_bytes(),
        crate::store::files::FILE_MODE,
    )?;
    write_atomic(
        &files.cert,
        cert_pem.as_bytes(),
        crate::store::files::FILE_MODE,
    )?;
    tracing::info!(cert = %files.cert.display(), "created a new local CA");
    Ok(())
}

/// Returns (certificate PEM, PKCS#8 key PEM) of a fresh ECDSA P-256 CA.
fn generate_ca() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Generate(format!("CA key: {e}")))?;
    let mut params = CertificateParams::default();
    // A short random id makes each installation's CA distinguishable in a
    // trust store that has collected several of them.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("ezthrottle local CA {}", &id[..8]),
    );
    dn.push(DnType::OrganizationName, "ezthrottle");
    params.distinguished_name = dn;
    // Path length 0: the CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(format!("CA certificate: {e}")))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A positive 127-bit random serial (RFC 5280: positive, at most 20 octets).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = uuid::Uuid::new_v4().into_bytes().to_vec();
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.truncate(16);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero octet
    SerialNumber::from_slice(&bytes)
}

/// Writes `data` to `path` via a temp file in the same directory and a rename,
/// creating the temp file with `mode` so there is no window with looser permissions.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        file_err(path, format!("cannot write: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn data_dir_files(dir: &Path) -> CaFiles {
        CaFiles::resolve(None, None, dir).expect("paths")
    }

    #[test]
    fn creates_ca_with_private_key_mode_0600_and_reuses_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("nested").join("data");
        let files = data_dir_files(&data_dir);

        assert!(LocalCa::load_existing_files(&files)
            .expect("load_existing")
            .is_none());
        let first = LocalCa::load_or_create_files(&files).expect("create");
        let key_mode = fs::metadata(data_dir.join("ca/ca.key"))
            .expect("key exists")
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let cert_mode = fs::metadata(data_dir.join("ca/ca.pem"))
            .expect("cert exists")
            .permissions()
            .mode();
        assert_eq!(cert_mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(data_dir.join("ca"))
                .expect("ca dir")
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert!(first.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        // No leftover temp files.
        let names: Vec<_> = fs::read_dir(data_dir.join("ca"))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let second = LocalCa::load_or_create_files(&files).expect("reload");
        assert_eq!(first.cert_pem(), second.cert_pem());
        let existing = LocalCa::load_existing_files(&files)
            .expect("load_existing")
            .expect("exists now");
        assert_eq!(first.cert_der(), existing.cert_der());
    }

    #[test]
    fn generated_ca_is_a_ca_with_expected_fields() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let ca = LocalCa::load_or_create_files(&data_dir_files(tmp.path())).expect("create");
        let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).expect("parse");
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .filter_map(|c| c.as_str().ok())
            .collect();
        assert_eq!(cn.len(), 1);
        let id = cn[0]
            .strip_prefix("ezthrottle local CA ")
            .expect("CN prefix");
        assert_eq!(id.len(), 8, "{id}");
        assert!(cert.is_ca());
        let ku = cert.key_usage().expect("ku ext").expect("ku present").value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let v = cert.validity();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            v.not_before.timestamp() <= now - 23 * 3600,
            "backdated a day"
        );
        assert!(
            v.not_after.timestamp() >= now + 9 * 365 * 24 * 3600,
            "~10 years"
        );
        // P-256 ECDSA signature.
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2"
        );
        // Two CAs never share a name (the random id).
        let tmp2 = tempfile::tempdir().expect("tempdir");
        let other = LocalCa::load_or_create_files(&data_dir_files(tmp2.path())).expect("create");
        assert_ne!(ca.cert_pem(), other.cert_pem());
        // The Debug output never carries key material.
        let dbg = format!("{ca:?}");
        assert!(!dbg.contains("PRIVATE") && !dbg.contains("key"), "{dbg}");
    }

    #[test]
    fn uses_configured_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cert_pem, key_pem) = generate_ca().expect("generate");
        let cert = tmp.path().join("my-ca.crt");
        let key = tmp.path().join("my-ca.key");
        fs::write(&cert, &cert_pem).expect("write");
        fs::write(&key, &key_pem).expect("write");
        let data_dir = tmp.path().join("data");
        let files = CaFiles::resolve(Some(&cert), Some(&key), &data_dir).expect("paths");
        let ca = LocalCa::load_or_create_files(&files).expect("load configured");
        assert_eq!(ca.cert_pem(), cert_pem);
        assert!(
            !data_dir.exists(),
            "must not create a CA when one is configured"
        );
    }

    #[test]
    fn missing_configured_file_is_an_error_not_a_new_ca() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cert = tmp.path().join("absent.crt");
        let key = tmp.path().join("absent.key");
        let files = CaFiles::resolve(Some(&cert), Some(&key), tmp.path()).expect("paths");
        let err = LocalCa::load_or_create_files(&files).expect_err("must fail");
        assert!(err.to_string().contains("absent.crt"), "{err}");
        assert!(!tmp.path().join("ca").exists());
    }

    #[test]
    fn only_one_of_cert_and_key_configured_is_an_error() {
        let p = Path::new("/x/ca.pem");
        let e = CaFiles::resolve(Some(p), None, Path::new("/d")).err();
        assert!(e.is_some_and(|e| e.to_string().contains("ca_key")));
        let e = CaFiles::resolve(None, Some(p), Path::new("/d")).err();
        assert!(e.is_some_and(|e| e.to_string().contains("ca_cert")));
    }

    #[test]
    fn corrupt_files_give_clear_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = data_dir_files(tmp.path());
        LocalCa::load_or_create_files(&files).expect("create");

        // Corrupt certificate: error names the cert file.
        let good_cert = fs::read_to_string(&files.cert).expect("read");
        fs::write(&files.cert, "garbage, not PEM\n").expect("write");
        let err = LocalCa::load_or_create_files(&files).expect_err("corrupt cert");
        let msg = err.to_string();
        assert!(msg.contains("ca.pem"), "{msg}");
        // It did not silently replace the CA.
        assert_eq!(
            fs::read_to_string(&files.cert).expect("read"),
            "garbage, not PEM\n"
        );
        fs::write(&files.cert, &good_cert).expect("restore");

        // Corrupt key: error names the key file and does not echo its contents.
        fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let err = LocalCa::load_or_create_files(&files).expect_err("corrupt key");
        let msg = err.to_string();
        assert!(msg.contains("ca.key"), "{msg}");
        assert!(!msg.contains("c2VjcmV0"), "{msg}");
    }

    #[test]
    fn key_of_another_ca_is_rejected() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (cert_a, _) = generate_ca().expect("a");
        let (_, key_b) = generate_ca().expect("b");
        let cert = tmp.path().join("a.crt");
        let key = tmp.path().join("b.key");
        fs::write(&cert, cert_a).expect("write");
        fs::write(&key, key_b).expect("write");
        let files = CaFiles::resolve(Some(&cert), Some(&key), tmp.path()).expect("paths");
        let err = LocalCa::load_or_create_files(&files).expect_err("mismatch");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn half_present_data_dir_ca_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = data_dir_files(tmp.path());
        LocalCa::load_or_create_files(&files).expect("create");
        fs::remove_file(&files.cert).expect("rm");
        let err = LocalCa::load_or_create_files(&files).expect_err("half present");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        assert!(
            !files.cert.exists(),
            "must not regenerate over an existing key"
        );
    }
}
