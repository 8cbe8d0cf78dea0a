//! Backend conformance: the scenarios every [`Store`] must pass the same way,
//! called from the test modules of the embedded and the Redis backend. What
//! the backends do differently on purpose (docs/distributed.md, "Differences
//! from the embedded backend") stays in each backend's own tests.

use super::{
    DeliveryState, IdempotencyRecord, JobEnd, JobRecord, JobStatus, LearnedLimit, NewDelivery,
    Store, WebhookSecrets,
};

pub(crate) fn job(id: &str, key: &str, next: u64) -> JobRecord {
    JobRecord {
        id: id.into(),
        workspace: "default".into(),
        idempotent_key: key.into(),
        status: JobStatus::Queued,
        spec: "{}".into(),
        attempts: 0,
        claims: 0,
        next_attempt_at: next,
        lease_until: 0,
        created_at: 1,
        updated_at: 1,
        result: None,
    }
}

pub(crate) fn end(status: JobStatus, payload: &[u8], deliveries: Vec<NewDelivery>) -> JobEnd {
    JobEnd {
        status,
        result: "{}".into(),
        payload: payload.to_vec(),
        deliveries,
        calls: 1,
        children: vec![],
    }
}

pub(crate) fn record(scope: &str, expires_at: u64) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: scope.into(),
        fingerprint: "f".repeat(64),
        status: 201,
        reason: Some("Created".into()),
        headers: b"Content-Type: application/json\r\nX-A: 1\r\n".to_vec(),
        body: vec![0, 1, 2, 255],
        created_at: 10,
        expires_at,
    }
}

fn ids(v: Vec<JobRecord>) -> Vec<String> {
    v.into_iter().map(|j| j.id).collect()
}

/// A claim takes due jobs only, in due order, no more than its limit.
pub(crate) async fn a_claim_takes_due_jobs_in_due_order_up_to_its_limit(s: &dyn Store) {
    for (id, next) in [("a", 30), ("b", 10), ("c", 20), ("d", 500)] {
        assert_eq!(s.job_insert(job(id, id, next)).await.unwrap(), None);
    }
    assert!(s.jobs_claim(5, 1000, 10).await.unwrap().is_empty());
    assert_eq!(ids(s.jobs_claim(100, 1000, 2).await.unwrap()), ["b", "c"]);
    assert_eq!(ids(s.jobs_claim(100, 1000, 10).await.unwrap()), ["a"]);
    assert_eq!(ids(s.jobs_claim(500, 1000, 10).await.unwrap()), ["d"]);
}

/// Dedupe by key, then claims in due order under a lease; what the backend
/// does when the lease holder is gone (a crash) is the caller's, between
/// this and [`jobs_fence_finish_deliver_and_sweep`].
pub(crate) async fn jobs_dedupe_and_claim_under_a_lease(s: &dyn Store) {
    assert_eq!(s.job_insert(job("j1", "k1", 20)).await.unwrap(), None);
    assert_eq!(s.job_insert(job("j2", "k2", 10)).await.unwrap(), None);
    let dup = s.job_insert(job("j3", "k1", 5)).await.unwrap();
    assert_eq!(dup.map(|j| j.id), Some("j1".to_string()));
    assert_eq!(s.job_get("j3").await.unwrap(), None);
    assert_eq!(s.jobs_next_due().await.unwrap(), Some(10));

    // Not yet due.
    assert!(s.jobs_claim(5, 1000, 10).await.unwrap().is_empty());
    // Limit, then due order.
    let first = s.jobs_claim(100, 1000, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, "j2");
    let claimed = s.jobs_claim(100, 1000, 10).await.unwrap();
    let ids: Vec<_> = claimed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["j1"]);
    assert!(first
        .iter()
        .chain(&claimed)
        .all(|j| j.status == JobStatus::InFlight
            && j.claims == 1
            && j.attempts == 0
            && j.lease_until == 1100));
    // Leased: not claimable again until the lease lapses.
    assert!(s.jobs_claim(500, 1000, 10).await.unwrap().is_empty());
    assert_eq!(s.jobs_next_due().await.unwrap(), Some(1100));
}

/// After [`jobs_dedupe_and_claim_under_a_lease`] and a crash: `new` takes the
/// lapsed leases, `old` (the crashed runner's store, or the same one) is
/// fenced; then the end, its deliveries, cancel and retention.
pub(crate) async fn jobs_fence_finish_deliver_and_sweep(old: &dyn Store, new: &dyn Store) {
    let (s, other) = (old, new);
    let again = other.jobs_claim(1100, 1000, 10).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|j| j.claims == 2));

    // Fencing: the first claim's runner writes nothing any more.
    assert!(!s.job_renew("j2", 1, 9000).await.unwrap());
    assert!(!s
        .job_reschedule("j2", 1, JobStatus::Retrying, 5000, 3)
        .await
        .unwrap());
    // A stale claim cannot end it.
    assert!(!s
        .job_finish("j1", Some(1), end(JobStatus::Failed, b"", vec![]))
        .await
        .unwrap());
    let j2 = s.job_get("j2").await.unwrap().unwrap();
    assert_eq!(
        (j2.status, j2.lease_until, j2.attempts),
        (JobStatus::InFlight, 2100, 0)
    );
    assert!(other.job_renew("j2", 2, 9000).await.unwrap());
    assert_eq!(s.jobs_next_due().await.unwrap(), Some(2100), "j1's lease");
    assert!(other
        .job_reschedule("j2", 2, JobStatus::Retrying, 5000, 3)
        .await
        .unwrap());
    let j2 = s.job_get("j2").await.unwrap().unwrap();
    assert_eq!(
        (j2.status, j2.attempts, j2.next_attempt_at, j2.lease_until),
        (JobStatus::Retrying, 3, 5000, 0)
    );
    // Rescheduled once only.
    assert!(!other
        .job_reschedule("j2", 2, JobStatus::Retrying, 6000, 3)
        .await
        .unwrap());

    let deliveries = vec![
        NewDelivery {
            url: "http://127.0.0.1:1/a".into(),
            has_quorum_vote: true,
        },
        NewDelivery {
            url: "http://127.0.0.1:1/b".into(),
            has_quorum_vote: false,
        },
    ];
    let mut done = end(JobStatus::Success, b"{\"x\":1}", deliveries.clone());
    done.children = vec![job("j1-next", "k1:on_success", 1), job("dup", "k2", 1)];
    assert!(other.job_finish("j1", Some(2), done).await.unwrap());
    // The follow-up was inserted with the end; a known key was skipped.
    assert!(s.job_get("j1-next").await.unwrap().is_some());
    assert!(s.job_get("dup").await.unwrap().is_none());
    let j1 = s.job_get("j1").await.unwrap().unwrap();
    assert_eq!(
        (j1.status, j1.attempts, j1.lease_until, j1.result.as_deref()),
        (JobStatus::Success, 1, 0, Some("{}"))
    );
    // Finished once only.
    assert!(!s
        .job_finish("j1", None, end(JobStatus::Failed, b"", deliveries))
        .await
        .unwrap());
    let ds = s.deliveries_for_job("j1").await.unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0].payload, b"{\"x\":1}");
    assert!(ds[0].has_quorum_vote && !ds[1].has_quorum_vote);
    assert!(ds[0].id < ds[1].id);
    assert!(ds
        .iter()
        .all(|d| d.state == DeliveryState::Pending && d.job_id == "j1" && d.attempts == 0));
    let page = s
        .deliveries_for_jobs(&["j2".into(), "j1".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(page, ds, "one call for a page, by job then id");
    assert_eq!(s.deliveries_due(u64::MAX / 2, 10).await.unwrap(), ds);
    assert_eq!(
        s.deliveries_next_due().await.unwrap(),
        Some(ds[0].next_attempt_at)
    );

    let mut d = ds[0].clone();
    d.state = DeliveryState::Delivered;
    d.attempts = 1;
    d.last_status = Some(200);
    s.delivery_update(&d).await.unwrap();
    assert_eq!(s.deliveries_due(u64::MAX / 2, 10).await.unwrap().len(), 1);
    assert_eq!(s.deliveries_for_job("j1").await.unwrap()[0], d);

    assert!(s.job_cancel("j2").await.unwrap());
    assert!(!s.job_cancel("j2").await.unwrap());
    assert!(!s.job_cancel("j1").await.unwrap());
    assert!(!s.job_cancel("nope").await.unwrap());

    // Retention: j1 still has a pending delivery, so it stays.
    assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), 1, "only j2");
    assert!(s.job_get("j2").await.unwrap().is_none());
    assert!(s.job_get("j1").await.unwrap().is_some());
    let mut d2 = s.deliveries_for_job("j1").await.unwrap()[1].clone();
    d2.state = DeliveryState::Failed;
    d2.last_error = Some("connection refused".into());
    s.delivery_update(&d2).await.unwrap();
    assert_eq!(s.deliveries_next_due().await.unwrap(), None);
    assert_eq!(s.jobs_sweep(0).await.unwrap(), 0, "not old enough");
    assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), 1);
    assert!(s.deliveries_for_job("j1").await.unwrap().is_empty());
    // The key is free again.
    assert_eq!(s.job_insert(job("j9", "k1", 1)).await.unwrap(), None);
    s.job_cancel("j9").await.unwrap();
    // j9 and the follow-up j1 spawned.
    assert_eq!(
        s.job_counts().await.unwrap(),
        vec![(JobStatus::Cancelled, 1), (JobStatus::Queued, 1)]
    );
}

/// Kept counts against `check` (the backend's count from the jobs
/// themselves) after every kind of status change up to a requeue; the
/// backend goes on from there (`jobs_release_leases` differs on purpose).
pub(crate) async fn counts_stay_right_through_requeue(s: &dyn Store, check: impl AsyncFn(&str)) {
    assert_eq!(s.job_counts().await.unwrap(), vec![]);
    for i in 0..6 {
        s.job_insert(job(&format!("j{i}"), &format!("k{i}"), 1))
            .await
            .unwrap();
    }
    // A duplicate key inserts nothing.
    s.job_insert(job("dup", "k0", 1)).await.unwrap();
    assert_eq!(s.job_counts().await.unwrap(), vec![(JobStatus::Queued, 6)]);
    check("insert").await;
    assert_eq!(s.jobs_claim(10, 1000, 4).await.unwrap().len(), 4);
    check("claim").await;
    assert!(s
        .job_reschedule("j0", 1, JobStatus::Retrying, 50, 1)
        .await
        .unwrap());
    // A stale claim writes nothing and counts nothing.
    assert!(!s
        .job_reschedule("j1", 7, JobStatus::Retrying, 50, 1)
        .await
        .unwrap());
    check("reschedule").await;
    let mut done = end(JobStatus::Success, b"{}", vec![]);
    done.children = vec![job("child", "k-child", 1)];
    assert!(s.job_finish("j1", Some(1), done).await.unwrap());
    assert!(s
        .job_finish("j2", Some(1), end(JobStatus::Failed, b"", vec![]))
        .await
        .unwrap());
    check("finish with a follow-up").await;
    assert!(s.job_cancel("j4").await.unwrap());
    assert!(!s.job_cancel("j1").await.unwrap());
    check("cancel").await;
    // Requeue: only failed or cancelled jobs; attempts start again.
    assert!(s.job_requeue("j2", 20).await.unwrap());
    assert!(s.job_requeue("j4", 20).await.unwrap());
    assert!(!s.job_requeue("j1", 20).await.unwrap(), "success stays");
    assert!(!s.job_requeue("j5", 20).await.unwrap(), "queued stays");
    let j2 = s.job_get("j2").await.unwrap().unwrap();
    assert_eq!(
        (j2.status, j2.attempts, j2.next_attempt_at, j2.updated_at),
        (JobStatus::Queued, 0, 20, 20)
    );
    assert!(j2.result.is_some(), "the old result is kept");
    check("requeue").await;
}

pub(crate) async fn job_list_pages_through_equal_times_with_a_status_filter(s: &dyn Store) {
    for i in 0..5 {
        let mut j = job(&format!("j{i}"), &format!("k{i}"), 1);
        j.created_at = if i < 4 { 7 } else { 8 };
        if i % 2 == 0 {
            j.status = JobStatus::Failed;
        }
        s.job_insert(j).await.unwrap();
    }
    let mut other = job("x", "kx", 1);
    other.workspace = "default2".into();
    s.job_insert(other).await.unwrap();
    let p1 = s.jobs_list("default", None, 2, None).await.unwrap();
    assert_eq!(ids(p1), ["j4", "j3"]);
    let p2 = s
        .jobs_list("default", None, 2, Some((7, "j3".into())))
        .await
        .unwrap();
    assert_eq!(ids(p2), ["j2", "j1"]);
    let p3 = s
        .jobs_list("default", None, 2, Some((7, "j1".into())))
        .await
        .unwrap();
    assert_eq!(ids(p3), ["j0"]);
    let t_only = s
        .jobs_list("default", None, 10, Some((7, String::new())))
        .await
        .unwrap();
    assert_eq!(ids(t_only), ["j3", "j2", "j1", "j0"]);
    let failed = s
        .jobs_list(
            "default",
            Some(JobStatus::Failed),
            10,
            Some((8, "j4".into())),
        )
        .await
        .unwrap();
    assert_eq!(ids(failed), ["j2", "j0"]);
    let failed = s
        .jobs_list("default", Some(JobStatus::Failed), 2, None)
        .await
        .unwrap();
    assert_eq!(ids(failed), ["j4", "j2"]);
    // The status lists follow status changes.
    assert!(s.job_requeue("j2", 9).await.unwrap());
    let queued = s
        .jobs_list("default", Some(JobStatus::Queued), 10, None)
        .await
        .unwrap();
    assert_eq!(ids(queued), ["j3", "j2", "j1"]);
    assert!(s
        .jobs_list("other", None, 10, None)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(s.jobs_list("default2", None, 10, None).await.unwrap()),
        ["x"]
    );
}

/// The oldest ended jobs wait for a webhook: every sweep batch (`batch`
/// jobs, the backend's) skips them, and the sweep still reaches the rest.
pub(crate) async fn sweeps_page_past_jobs_kept_for_pending_deliveries(s: &dyn Store, batch: usize) {
    let n_kept = batch + 3;
    for i in 0..n_kept {
        s.job_insert(job(&format!("p{i}"), &format!("pk{i}"), 1))
            .await
            .unwrap();
    }
    assert_eq!(s.jobs_claim(5, 1000, n_kept).await.unwrap().len(), n_kept);
    let hook = || {
        vec![NewDelivery {
            url: "http://127.0.0.1:1/h".into(),
            has_quorum_vote: false,
        }]
    };
    for i in 0..n_kept {
        let id = format!("p{i}");
        assert!(s
            .job_finish(&id, Some(1), end(JobStatus::Success, b"{}", hook()))
            .await
            .unwrap());
    }
    let n_old = batch + 7;
    for i in 0..n_old {
        let mut j = job(&format!("o{i}"), &format!("ok{i}"), 1);
        j.status = JobStatus::Success;
        j.updated_at = super::now_ms() + 10_000;
        s.job_insert(j).await.unwrap();
    }
    s.job_insert(job("live", "live", 1)).await.unwrap();
    assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), n_old as u64);
    assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), 0);
    assert_eq!(
        s.job_counts().await.unwrap(),
        vec![(JobStatus::Queued, 1), (JobStatus::Success, n_kept as u64)]
    );
    assert_eq!(
        s.deliveries_due(u64::MAX / 2, 10_000).await.unwrap().len(),
        n_kept
    );
}

pub(crate) async fn secrets_round_trip_and_never_debug_print(s: &dyn Store) {
    assert_eq!(s.secrets_get("w").await.unwrap(), None);
    let secrets = WebhookSecrets {
        workspace: "w".into(),
        primary: "primary-secret-0123".into(),
        secondary: Some("secondary-secret-0123".into()),
    };
    assert!(!format!("{secrets:?}").contains("secret-0123"));
    s.secrets_put(secrets.clone()).await.unwrap();
    assert_eq!(s.secrets_get("w").await.unwrap(), Some(secrets));
    // Replaced whole: no secondary left over.
    let rotated = WebhookSecrets {
        workspace: "w".into(),
        primary: "p2".into(),
        secondary: None,
    };
    s.secrets_put(rotated.clone()).await.unwrap();
    assert_eq!(s.secrets_get("w").await.unwrap(), Some(rotated));
    assert!(s.secrets_delete("w").await.unwrap());
    assert!(!s.secrets_delete("w").await.unwrap());
    assert_eq!(s.secrets_get("w").await.unwrap(), None);
}

/// Put, read, expiry hides, replace; at `now` (the wall clock for a
/// backend that expires on its own clock).
pub(crate) async fn idempotency_records_round_trip_and_hide_when_expired(s: &dyn Store, now: u64) {
    let live = record("live", now + 60_000);
    s.idempotency_put(live.clone()).await.unwrap();
    assert_eq!(s.idempotency_get("live", now).await.unwrap(), Some(live));
    // Past its expiry it is invisible, whatever is still stored.
    assert_eq!(s.idempotency_get("live", now + 60_000).await.unwrap(), None);
    assert_eq!(s.idempotency_get("nope", now).await.unwrap(), None);
    // Replaced, not merged.
    let mut other = record("live", now + 60_000);
    other.reason = None;
    other.body = Vec::new();
    s.idempotency_put(other.clone()).await.unwrap();
    assert_eq!(s.idempotency_get("live", now).await.unwrap(), Some(other));
    s.idempotency_put(record("old", now.saturating_sub(1)))
        .await
        .unwrap();
    assert_eq!(s.idempotency_get("old", now).await.unwrap(), None);
    // A record that never expires.
    s.idempotency_put(record("forever", u64::MAX))
        .await
        .unwrap();
    assert!(s.idempotency_get("forever", now).await.unwrap().is_some());
}

/// Saves limits the way the learner does: two partial updates of one
/// domain and one of another. [`learned_limits_merged`] reads them back.
pub(crate) async fn save_learned_limits(s: &dyn Store) {
    assert!(s.learned_limits().await.unwrap().is_empty());
    s.save_learned_limit(LearnedLimit {
        domain: "a.test".into(),
        rps: Some(0.5),
        max_concurrent: None,
        updated_at: 1,
    })
    .await
    .unwrap();
    s.save_learned_limit(LearnedLimit {
        domain: "a.test".into(),
        rps: None,
        max_concurrent: Some(3),
        updated_at: 2,
    })
    .await
    .unwrap();
    s.save_learned_limit(LearnedLimit {
        domain: "b.test".into(),
        rps: Some(12.25),
        max_concurrent: None,
        updated_at: 5,
    })
    .await
    .unwrap();
}

/// What [`save_learned_limits`] saved, merged field by field.
pub(crate) async fn learned_limits_merged(s: &dyn Store) {
    assert_eq!(
        s.learned_limits().await.unwrap(),
        vec![
            LearnedLimit {
                domain: "a.test".into(),
                rps: Some(0.5),
                max_concurrent: Some(3),
                updated_at: 2
            },
            LearnedLimit {
                domain: "b.test".into(),
                rps: Some(12.25),
                max_concurrent: None,
                updated_at: 5
            }
        ]
    );
}

/// A secret planted in every sensitive field, for the sealing tests.
pub(crate) const PLANTED: &str = "sk_live_PLANTED_0123456789";

pub(crate) fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

pub(crate) fn secret_job(id: &str, key: &str) -> JobRecord {
    let mut j = job(id, key, 1);
    j.spec = format!(r#"{{"headers":[["Authorization","Bearer {PLANTED}"]],"body":"{PLANTED}"}}"#);
    j
}

/// [`PLANTED`] in every sealed field: specs, a result, a follow-up's result,
/// a delivery's URL and payload, webhook secrets, an idempotency record.
pub(crate) async fn fill(s: &dyn Store) {
    s.job_insert(secret_job("j1", "k1")).await.unwrap();
    s.job_insert(secret_job("j2", "k2")).await.unwrap();
    s.jobs_claim(10, 1000, 10).await.unwrap();
    let mut done = JobEnd {
        status: JobStatus::Success,
        result: format!(r#"{{"body":"{PLANTED}"}}"#),
        payload: PLANTED.as_bytes().to_vec(),
        deliveries: vec![NewDelivery {
            url: format!("https://hooks.test/h?token={PLANTED}"),
            has_quorum_vote: true,
        }],
        calls: 1,
        children: vec![secret_job("j3", "k3")],
    };
    done.children[0].result = Some(PLANTED.into());
    assert!(s.job_finish("j2", None, done).await.unwrap());
    s.secrets_put(WebhookSecrets {
        workspace: "w".into(),
        primary: format!("p_{PLANTED}"),
        secondary: Some(format!("s_{PLANTED}")),
    })
    .await
    .unwrap();
    let mut r = record("scope", u64::MAX / 2);
    r.headers = format!("Set-Cookie: session={PLANTED}\r\n").into_bytes();
    r.body = PLANTED.as_bytes().to_vec();
    s.idempotency_put(r).await.unwrap();
}

/// Everything [`fill`] wrote reads back as written.
pub(crate) async fn read_back(s: &dyn Store) {
    let j1 = s.job_get("j1").await.unwrap().unwrap();
    assert_eq!(j1.spec, secret_job("j1", "k1").spec);
    assert_eq!(
        s.jobs_list("default", None, 10, None).await.unwrap().len(),
        3
    );
    let j2 = s.job_get("j2").await.unwrap().unwrap();
    assert!(j2.result.unwrap().contains(PLANTED));
    let j3 = s.job_get("j3").await.unwrap().unwrap();
    assert_eq!(j3.result.as_deref(), Some(PLANTED));
    let d = &s.deliveries_for_job("j2").await.unwrap()[0];
    assert!(d.url.ends_with(PLANTED) && d.payload == PLANTED.as_bytes());
    assert_eq!(s.deliveries_due(u64::MAX / 2, 10).await.unwrap().len(), 1);
    let sec = s.secrets_get("w").await.unwrap().unwrap();
    assert_eq!(sec.primary, format!("p_{PLANTED}"));
    assert_eq!(sec.secondary, Some(format!("s_{PLANTED}")));
    let r = s.idempotency_get("scope", 1).await.unwrap().unwrap();
    assert_eq!(r.body, PLANTED.as_bytes());
    assert!(contains(&r.headers, PLANTED));
}

/// A job to `url` (`None`: a spec without one), created at `created`,
/// spawned by `parent` if given.
fn job_to(id: &str, url: Option<&str>, created: u64, parent: Option<&str>) -> JobRecord {
    let mut j = job(id, &format!("key-{id}"), 1);
    let mut spec = serde_json::json!({"method": "GET", "body": "x"});
    if let Some(u) = url {
        spec["url"] = u.into();
    }
    if let Some(p) = parent {
        spec["metadata"] = serde_json::json!({"parent_job_id": p, "team": "a"});
    }
    j.spec = spec.to_string();
    j.created_at = created;
    j.updated_at = created;
    j
}

/// The domain list: the lower-cased host of each job's URL, paged by the
/// same cursor as the whole list, with and without a status, kept through
/// status changes and the retention sweep; other domains and workspaces
/// never show.
pub(crate) async fn job_list_by_domain_pages_follows_status_and_sweep(s: &dyn Store) {
    let specs: [(&str, Option<&str>, u64); 7] = [
        ("a1", Some("https://API.a.test/v1?x=1"), 7),
        ("b1", Some("https://b.test/"), 7),
        ("a2", Some("http://api.a.test:8080/v2"), 7),
        ("a3", Some("https://api.a.test/v3"), 8),
        ("n1", None, 8),
        ("a4", Some("https://api.a.test.evil.test/"), 9),
        ("a5", Some("https://api.a.test/v5"), 9),
    ];
    for (id, url, created) in specs {
        assert_eq!(
            s.job_insert(job_to(id, url, created, None)).await.unwrap(),
            None
        );
    }
    let mut elsewhere = job_to("w1", Some("https://api.a.test/"), 9, None);
    elsewhere.workspace = "default2".into();
    s.job_insert(elsewhere).await.unwrap();

    let dom = "api.a.test";
    let all = s
        .jobs_list_by_domain("default", dom, None, 10, None)
        .await
        .unwrap();
    assert_eq!(ids(all), ["a5", "a3", "a2", "a1"]);
    // Pages chained by the cursor of the last job, through equal times.
    let p1 = s
        .jobs_list_by_domain("default", dom, None, 2, None)
        .await
        .unwrap();
    assert_eq!(ids(p1), ["a5", "a3"]);
    let p2 = s
        .jobs_list_by_domain("default", dom, None, 2, Some((8, "a3".into())))
        .await
        .unwrap();
    assert_eq!(ids(p2), ["a2", "a1"]);
    let p3 = s
        .jobs_list_by_domain("default", dom, None, 2, Some((7, "a1".into())))
        .await
        .unwrap();
    assert!(p3.is_empty());
    // A time-only cursor (the console's `until`).
    let t = s
        .jobs_list_by_domain("default", dom, None, 10, Some((8, String::new())))
        .await
        .unwrap();
    assert_eq!(ids(t), ["a3", "a2", "a1"]);
    assert_eq!(
        ids(s
            .jobs_list_by_domain("default", "b.test", None, 10, None)
            .await
            .unwrap()),
        ["b1"]
    );
    assert!(s
        .jobs_list_by_domain("default", "nowhere.test", None, 10, None)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ids(s
            .jobs_list_by_domain("default2", dom, None, 10, None)
            .await
            .unwrap()),
        ["w1"]
    );

    // With a status, following status changes: a3 and a1 end (failed),
    // then a1 is queued again.
    s.jobs_claim(100, 1000, 100).await.unwrap();
    for id in ["a3", "a1"] {
        assert!(s
            .job_finish(id, None, end(JobStatus::Failed, b"", vec![]))
            .await
            .unwrap());
    }
    let failed = s
        .jobs_list_by_domain("default", dom, Some(JobStatus::Failed), 10, None)
        .await
        .unwrap();
    assert_eq!(ids(failed), ["a3", "a1"]);
    let in_flight = s
        .jobs_list_by_domain("default", dom, Some(JobStatus::InFlight), 1, None)
        .await
        .unwrap();
    assert_eq!(ids(in_flight), ["a5"]);
    assert!(s.job_requeue("a1", 10).await.unwrap());
    let failed = s
        .jobs_list_by_domain("default", dom, Some(JobStatus::Failed), 10, None)
        .await
        .unwrap();
    assert_eq!(ids(failed), ["a3"]);
    let queued = s
        .jobs_list_by_domain("default", dom, Some(JobStatus::Queued), 10, None)
        .await
        .unwrap();
    assert_eq!(ids(queued), ["a1"]);

    // The sweep takes the ended job out of every domain list.
    assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), 1);
    assert_eq!(
        ids(s
            .jobs_list_by_domain("default", dom, None, 10, None)
            .await
            .unwrap()),
        ["a5", "a2", "a1"]
    );
    assert!(s
        .jobs_list_by_domain("default", dom, Some(JobStatus::Failed), 10, None)
        .await
        .unwrap()
        .is_empty());
}

/// A parent finds the jobs it spawned, whether inserted on their own (the
/// engine's `submit`) or with the parent's end (`JobEnd::children`); a
/// child swept by retention leaves the list.
pub(crate) async fn job_children_are_found_from_the_parent(s: &dyn Store) {
    s.job_insert(job_to("p", Some("https://a.test/"), 5, None))
        .await
        .unwrap();
    s.job_insert(job_to("other", Some("https://a.test/"), 5, Some("q")))
        .await
        .unwrap();
    s.job_insert(job_to("c1", Some("https://alert.test/"), 6, Some("p")))
        .await
        .unwrap();
    assert_eq!(ids(s.job_children("p", 10).await.unwrap()), ["c1"]);
    // The second child arrives with the parent's end.
    s.jobs_claim(100, 1000, 100).await.unwrap();
    let mut done = end(JobStatus::Success, b"", vec![]);
    done.children = vec![job_to("c2", Some("https://b.test/"), 7, Some("p"))];
    assert!(s.job_finish("p", None, done).await.unwrap());
    let children = s.job_children("p", 10).await.unwrap();
    assert_eq!(ids(children.clone()), ["c1", "c2"]);
    assert_eq!(children[1].status, JobStatus::Queued);
    assert_eq!(ids(s.job_children("p", 1).await.unwrap()), ["c1"]);
    assert!(s.job_children("c1", 10).await.unwrap().is_empty());
    assert!(s.job_children("nobody", 10).await.unwrap().is_empty());
    // c1 ends and is swept; the parent (ended too) goes with it, c2 stays.
    s.jobs_claim(100, 1000, 100).await.unwrap();
    assert!(s.job_cancel("c1").await.unwrap());
    assert_eq!(s.jobs_sweep(u64::MAX / 2).await.unwrap(), 2, "p and c1");
    assert_eq!(ids(s.job_children("p", 10).await.unwrap()), ["c2"]);
}
