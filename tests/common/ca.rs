//! A throwaway test CA (made with rcgen) and the origin's leaf certificate.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Common name of the origin's test CA (what a client sees as the issuer in
/// tunnel mode).
pub const TEST_CA_CN: &str = "ezthrottle-tests origin CA";

/// Names the origin's certificate covers.
pub const ORIGIN_NAMES: &[&str] = &[
    "origin.test",
    "tunnel.test",
    "other.test",
    "localhost",
    "127.0.0.1",
];

pub struct TestPki {
    /// PEM of the test CA certificate.
    pub ca_pem: String,
    /// The same PEM, written to a file (for `upstream_ca_file`, `--cacert`).
    pub ca_path: PathBuf,
    pub leaf_der: CertificateDer<'static>,
    leaf_key_der: Vec<u8>,
    /// The leaf and its key as PEM (servers that load files: grpcio).
    pub leaf_pem: String,
    pub leaf_key_pem: String,
}

impl TestPki {
    /// Make a CA and a server leaf for `ORIGIN_NAMES`; write the CA PEM into `dir`.
    pub fn new(dir: &Path) -> TestPki {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, TEST_CA_CN);
        dn.push(DnType::OrganizationName, "ezthrottle tests");
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, &ca_key);

        let leaf_key = KeyPair::generate().expect("generate leaf key");
        let names: Vec<String> = ORIGIN_NAMES.iter().map(|s| s.to_string()).collect();
        let mut leaf_params = CertificateParams::new(names).expect("leaf params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "origin.test");
        leaf_params.distinguished_name = dn;
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("sign origin leaf");

        let ca_pem = ca_cert.pem();
        let ca_path = dir.join("origin-test-ca.pem");
        std::fs::write(&ca_path, &ca_pem).expect("write test CA pem");
        TestPki {
            ca_pem,
            ca_path,
            leaf_der: leaf.der().clone(),
            leaf_key_der: leaf_key.serialize_der(),
            leaf_pem: leaf.pem(),
            leaf_key_pem: leaf_key.serialize_pem(),
        }
    }

    pub fn leaf_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone()))
    }

    /// A loopback listener that speaks TLS with this leaf (`serve.rs`).
    pub fn listen_tls(&self) -> super::serve::Listen {
        super::serve::Listen::tls(self.leaf_der.clone(), self.leaf_key())
    }
}
