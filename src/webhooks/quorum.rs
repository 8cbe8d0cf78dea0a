//! The webhook phase of a job (SPEC §8): met once `webhook_quorum` voting
//! webhooks (`has_quorum_vote`, default true) got a 2xx; impossible once so
//! many voting deliveries failed for good that the rest cannot reach it.

use serde::Serialize;

use crate::store::{Delivery, DeliveryState, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QuorumState {
    /// The quorum asked for.
    pub required: u32,
    /// Deliveries with a vote.
    pub voting: u32,
    pub delivered_votes: u32,
    pub pending_votes: u32,
    pub failed_votes: u32,
    /// `delivered_votes >= required` (always true for `required == 0`).
    pub met: bool,
    /// Not met, and `delivered_votes + pending_votes < required`: it never
    /// will be (also when the job has fewer voting webhooks than `required`).
    pub impossible: bool,
}

impl QuorumState {
    /// The state over a job's deliveries.
    pub fn of(deliveries: &[Delivery], required: u32) -> QuorumState {
        let mut s = QuorumState {
            required,
            voting: 0,
            delivered_votes: 0,
            pending_votes: 0,
            failed_votes: 0,
            met: false,
            impossible: false,
        };
        for d in deliveries.iter().filter(|d| d.has_quorum_vote) {
            s.voting += 1;
            match d.state {
                DeliveryState::Delivered => s.delivered_votes += 1,
                DeliveryState::Pending => s.pending_votes += 1,
                DeliveryState::Failed => s.failed_votes += 1,
            }
        }
        s.met = s.delivered_votes >= required;
        s.impossible = !s.met && s.delivered_votes + s.pending_votes < required;
        s
    }

    /// Met or impossible: nothing pending can change the outcome.
    pub fn settled(&self) -> bool {
        self.met || self.impossible
    }
}

/// The quorum state of job `job_id` as stored now.
pub async fn quorum(
    store: &dyn Store,
    job_id: &str,
    required: u32,
) -> Result<QuorumState, StoreError> {
    let deliveries = store.deliveries_for_job(job_id).await?;
    Ok(QuorumState::of(&deliveries, required))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(state: DeliveryState, vote: bool) -> Delivery {
        Delivery {
            id: 0,
            job_id: "j".into(),
            workspace: "default".into(),
            url: "http://127.0.0.1:1/".into(),
            has_quorum_vote: vote,
            payload: vec![],
            state,
            attempts: 0,
            next_attempt_at: 0,
            last_status: None,
            last_error: None,
            updated_at: 0,
        }
    }

    use DeliveryState::*;

    #[test]
    fn met_pending_and_impossible() {
        let ds = [
            d(Delivered, true),
            d(Pending, true),
            d(Failed, true),
            d(Delivered, false),
        ];
        let q = QuorumState::of(&ds, 1);
        assert!(q.met && !q.impossible && q.settled());
        assert_eq!(
            (q.voting, q.delivered_votes, q.pending_votes, q.failed_votes),
            (3, 1, 1, 1)
        );

        let q = QuorumState::of(&ds, 2);
        assert!(!q.met && !q.impossible && !q.settled(), "{q:?}");

        let q = QuorumState::of(&ds, 3);
        assert!(
            !q.met && q.impossible,
            "one voter failed: 3 of 3 is out of reach"
        );

        // A non-voting success does not count.
        let q = QuorumState::of(&[d(Delivered, false), d(Failed, true)], 1);
        assert!(!q.met && q.impossible);

        // Quorum 0 is met at once; no webhooks and quorum 1 is impossible.
        assert!(QuorumState::of(&[], 0).met);
        assert!(QuorumState::of(&[], 1).impossible);
    }
}
