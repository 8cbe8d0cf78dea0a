//! The Redis backend (`[storage] backend = "redis"`): the state N replicas
//! share so they behave as one proxy (docs/distributed.md).

pub mod conn;
pub mod store;

pub use conn::Redis;
pub use store::RedisStore;

/// Every replica must mint leaves from the same CA, or a client that trusts
/// one replica's CA rejects the others'. The first replica records its CA's
/// fingerprint in Redis; one whose CA differs refuses to start. With Redis
/// unreachable at start the check runs when it connects (and `/readyz`
/// reports a mismatch), rather than blocking the start.
/// `ca_cert_der`: this replica's CA certificate (DER).
pub fn check_shared_ca(redis: &std::sync::Arc<Redis>, ca_cert_der: &[u8]) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    let fingerprint = hex::encode(Sha256::digest(ca_cert_der));
    let r = redis.clone();
    let fp = fingerprint.clone();
    match redis.block_on(async move { r.check_ca(&fp).await }) {
        Some(Ok(conn::CaCheck::Differs(theirs))) => Err(format!(
            "this replica's CA (sha256 {fingerprint}) differs from the CA the other replicas on {} mint from (sha256 {theirs}): give every replica the same [tls] ca_cert and ca_key (docs/distributed.md)",
            redis.shown_url()
        )),
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot compare this replica's CA with its peers' now (redis unreachable); checking when it connects");
            Ok(())
        }
        None => Ok(()),
    }
}
