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
pub fn check_shared_ca(
    redis: &std::sync::Arc<Redis>,
    ca: &crate::tls::LocalCa,
) -> Result<(), String> {
    use sha2::{Digest, Sha256};
    let fingerprint = hex::encode(Sha256::digest(ca.cert_der().as_ref()));
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

/// Every script and command the backend sends, against a real three-node
/// Redis Cluster: each script's keys share one hash tag (one slot), and
/// what spans domains is sent key by key.
#[cfg(test)]
mod cluster_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::conn::testing::Cluster;
    use super::*;
    use crate::admission::shared::{Limits, SharedSlots};
    use crate::store::{JobEnd, JobRecord, JobStatus, LearnedLimit, NewDelivery, Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_backend_works_on_a_redis_cluster() {
        let cluster = Cluster::start()
            .expect("a redis cluster (redis-server and redis-cli; scripts/test installs them)");
        let redis = Redis::open(&cluster.config("c")).expect("open");
        let store = RedisStore::new(redis.clone(), None);

        // Admission on several domains (different slots).
        let slots = SharedSlots::new(redis.clone());
        let limits = Limits {
            rps: 1000.0,
            max_concurrent: 2,
            burst: 1,
            pinned: false,
            stated: true,
            rps_ceiling: 10_000.0,
            concurrency_ceiling: 100,
            queue_capacity: 100,
        };
        for d in ["a.test", "b.test", "c.test", "d.test"] {
            let p = slots
                .acquire(d, &limits, Duration::from_secs(5))
                .await
                .expect("redis answers")
                .expect("admitted");
            drop(p);
            slots
                .pause(d, Duration::from_millis(1))
                .await
                .expect("pause");
        }

        // Learned limits across domains.
        for (d, rps) in [("a.test", 3.0), ("b.test", 4.0), ("c.test", 5.0)] {
            store
                .save_learned_limit(LearnedLimit {
                    domain: d.into(),
                    rps: Some(rps),
                    max_concurrent: None,
                    updated_at: 1,
                })
                .await
                .expect("save");
        }
        let learned = store.learned_limits().await.expect("learned");
        assert_eq!(learned.len(), 3, "{learned:?}");

        // The job queue: insert, claim, finish with a delivery and a child.
        let job = |id: &str| JobRecord {
            id: id.into(),
            workspace: "w".into(),
            idempotent_key: format!("k-{id}"),
            status: JobStatus::Queued,
            spec: "{}".into(),
            attempts: 0,
            claims: 0,
            next_attempt_at: 1,
            lease_until: 0,
            created_at: 1,
            updated_at: 1,
            result: None,
        };
        assert!(store.job_insert(job("j1")).await.expect("insert").is_none());
        let claimed = store.jobs_claim(10, 60_000, 5).await.expect("claim");
        assert_eq!(claimed.len(), 1);
        let end = JobEnd {
            status: JobStatus::Success,
            result: "{}".into(),
            payload: b"{}".to_vec(),
            deliveries: vec![NewDelivery {
                url: "http://sink.test/".into(),
                has_quorum_vote: true,
            }],
            calls: 1,
            children: vec![job("j2")],
        };
        assert!(store.job_finish("j1", Some(1), end).await.expect("finish"));
        assert_eq!(
            store
                .deliveries_for_job("j1")
                .await
                .expect("deliveries")
                .len(),
            1
        );
        assert!(store.jobs_next_due().await.expect("next due").is_some());
        let listed = store.jobs_list("w", None, 10, None).await.expect("list");
        assert_eq!(listed.len(), 2);

        // Idempotency claims and records.
        let idem = crate::idempotency::Idempotency::with_redis(
            Arc::new(RedisStore::new(redis.clone(), None)) as Arc<dyn Store>,
            Arc::new(crate::metrics::Metrics::new(10)),
            crate::config::Config::from_toml_str("", "t.toml")
                .expect("config")
                .idempotency
                .clone(),
            Some(redis.clone()),
        );
        let scope = crate::idempotency::scope("w", "key-1", "POST", "a.test", "/x");
        match idem
            .begin(&scope, &"f".repeat(64), Duration::from_secs(1))
            .await
            .expect("begin")
        {
            crate::idempotency::Begin::Proceed(claim) => idem.release(claim, "not_stored_status"),
            crate::idempotency::Begin::Replay(_) => panic!("nothing stored yet"),
        }
        assert!(redis.is_up());
    }
}
