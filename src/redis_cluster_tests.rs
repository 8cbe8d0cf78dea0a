//! The Redis backend on a real three-node Redis Cluster, across the
//! modules that keep state in it (store, shared admission, shared
//! idempotency claims). It lives at the crate root because it spans them:
//! `store` imports nothing from the layers above it (`layering.rs`).

use std::sync::Arc;
use std::time::Duration;

use crate::admission::shared::{Limits, SharedSlots};
use crate::store::redis::conn::testing::Cluster;
use crate::store::redis::{Redis, RedisStore};
use crate::store::{JobEnd, JobRecord, JobStatus, LearnedLimit, NewDelivery, Store};

/// Every script and command the backend sends, against a real three-node
/// Redis Cluster: each script's keys share one hash tag (one slot), and
/// what spans domains is sent key by key.
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
