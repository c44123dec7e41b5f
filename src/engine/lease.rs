//! Leases: every received message is tracked from receive to outcome, and its visibility is
//! extended before it runs out, in batches (ChangeMessageVisibilityBatch, ≤ 10 entries per
//! call), only for messages close to expiry, and never past SQS's 12-hour cap.
//!
//! A lease that cannot be kept is *lost*: SQS refused the extension (the receipt handle is no
//! longer valid), or it ran out before an extension got through. The message may then belong
//! to another consumer, so its work is cancelled and it is not deleted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, Receipt};
use crate::config::SQS_MAX_VISIBILITY_SECS;
use crate::telemetry::{self, SqsOp};

/// SQS takes at most 10 entries per ChangeMessageVisibilityBatch.
const MAX_ENTRIES: usize = 10;
/// The keeper looks for leases due for renewal several times per renewal window, so a lease
/// cannot slip between two looks; at most every second, at least every 50 ms.
fn tick_period(renew_before: Duration) -> Duration {
    (renew_before / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}
/// Stop short of the 12-hour cap by this much: an extension that would reach past it fails.
const CAP_MARGIN: Duration = Duration::from_secs(5);

struct Lease {
    receipt_handle: Receipt,
    /// When the receive that produced this lease was sent: SQS's clock starts no earlier.
    received_at: Instant,
    /// When the message becomes visible again unless extended.
    expires_at: Instant,
    /// Cancelled when the lease is lost.
    lost: CancellationToken,
    /// An extension call for this lease is in flight.
    renewing: bool,
    /// The outcome is about to be applied: extend no more.
    settling: bool,
    /// Told when an extension in flight for a settling lease has landed (or failed); made
    /// only for a lease that settles with an extension in flight.
    settled: Option<Arc<tokio::sync::Notify>>,
}

impl Lease {
    fn notify_if_settling(&self) {
        if let Some(settled) = &self.settled {
            settled.notify_one();
        }
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    leases: HashMap<u64, Lease>,
}

/// The leases of one queue's messages.
#[derive(Clone)]
pub struct Leases {
    table: Arc<Mutex<Table>>,
    /// Lease length set on receive and on each extension.
    visibility: Duration,
    /// Extend when less than this remains.
    renew_before: Duration,
}

/// A registered lease; dropping it ends tracking (the message's outcome has been applied).
pub struct LeaseGuard {
    id: u64,
    lost: CancellationToken,
    table: Arc<Mutex<Table>>,
}

impl LeaseGuard {
    /// Stops extending the lease and waits for an extension already sent to land, so that no
    /// extension can reach SQS after the outcome's own visibility change or delete.
    pub async fn settle(&self) {
        let settled = {
            let mut table = lock(&self.table);
            let Some(lease) = table.leases.get_mut(&self.id) else {
                return;
            };
            lease.settling = true;
            if !lease.renewing {
                return;
            }
            lease.settled.get_or_insert_default().clone()
        };
        // The keeper's call is bounded by the SQS call timeout; its result (landed, failed,
        // refused) notifies. A permit stored before this wait begins is not missed.
        settled.notified().await;
    }

    /// Resolves when the lease is lost.
    pub fn lost(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }

    #[cfg(test)]
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        lock(&self.table).leases.remove(&self.id);
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    // The table holds no invariant a panicking holder could break halfway.
    table.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the keeper should do at one instant.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// (lease id, receipt handle, new visibility in seconds)
    renew: Vec<(u64, Receipt, u32)>,
    /// Leases that ran out without an extension.
    expired: Vec<u64>,
}

impl Leases {
    pub fn new(visibility: Duration, renew_before: Duration) -> Self {
        Self {
            table: Arc::default(),
            visibility,
            renew_before,
        }
    }

    /// Starts tracking a message received by a request sent at `received_at`.
    pub fn register(&self, receipt_handle: Receipt, received_at: Instant) -> LeaseGuard {
        let lost = CancellationToken::new();
        let mut table = lock(&self.table);
        let id = table.next_id;
        table.next_id += 1;
        table.leases.insert(
            id,
            Lease {
                receipt_handle,
                received_at,
                expires_at: received_at + self.visibility,
                lost: lost.clone(),
                renewing: false,
                settling: false,
                settled: None,
            },
        );
        LeaseGuard {
            id,
            lost,
            table: self.table.clone(),
        }
    }

    /// Messages currently leased.
    pub fn count(&self) -> usize {
        lock(&self.table).leases.len()
    }

    /// Decides which leases to extend now, by how much, and which are gone.
    fn plan(&self, now: Instant) -> Plan {
        let mut plan = Plan::default();
        let mut table = lock(&self.table);
        for (id, lease) in table.leases.iter_mut() {
            if lease.expires_at <= now {
                plan.expired.push(*id);
                continue;
            }
            if lease.renewing
                || lease.settling
                || lease.expires_at.saturating_duration_since(now) > self.renew_before
            {
                continue;
            }
            // Visibility counts from now; the whole lease may not pass 12 h from the receive.
            let cap = Duration::from_secs(SQS_MAX_VISIBILITY_SECS.into()) - CAP_MARGIN;
            let left = cap.saturating_sub(now.saturating_duration_since(lease.received_at));
            let secs = self.visibility.min(left).as_secs() as u32;
            // Extending to no later than it already expires gains nothing: leave it to run out.
            if now + Duration::from_secs(secs.into()) <= lease.expires_at {
                continue;
            }
            lease.renewing = true;
            plan.renew.push((*id, lease.receipt_handle.clone(), secs));
        }
        for id in &plan.expired {
            if let Some(lease) = table.leases.remove(id) {
                lease.lost.cancel();
                lease.notify_if_settling();
            }
        }
        plan.renew.sort_by_key(|(id, ..)| *id);
        plan
    }

    /// Records the result of an extension sent at `sent_at`.
    fn renewed(&self, id: u64, sent_at: Instant, secs: u32) {
        if let Some(lease) = lock(&self.table).leases.get_mut(&id) {
            lease.renewing = false;
            lease.expires_at = sent_at + Duration::from_secs(secs.into());
            lease.notify_if_settling();
        }
    }

    /// An extension failed for a reason that may pass; try again on the next tick.
    fn renewal_failed(&self, id: u64) {
        if let Some(lease) = lock(&self.table).leases.get_mut(&id) {
            lease.renewing = false;
            lease.notify_if_settling();
        }
    }

    /// SQS says the receipt handle is no longer ours.
    fn lose(&self, id: u64) {
        if let Some(lease) = lock(&self.table).leases.remove(&id) {
            lease.lost.cancel();
            lease.notify_if_settling();
        }
    }
}

/// Runs the lease keeper for one queue until `stop` is cancelled.
pub(super) async fn keep(leases: Leases, sqs: Endpoint, stop: CancellationToken) {
    let queue = &sqs.queue;
    let mut tick = tokio::time::interval(tick_period(leases.renew_before));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let plan = leases.plan(Instant::now());
        for _ in &plan.expired {
            telemetry::lease_lost(queue, "expired before it could be extended");
        }
        // Chunks are sent concurrently: a slow call must not delay the others past expiry.
        let calls = plan.renew.chunks(MAX_ENTRIES).map(|chunk| async {
            let _answer = sqs.call(sqs.call_timeout);
            extend(&leases, &sqs, chunk).await
        });
        futures::future::join_all(calls).await;
    }
}

async fn extend(leases: &Leases, sqs: &Endpoint, chunk: &[(u64, Receipt, u32)]) {
    let (queue, call_timeout) = (&*sqs.queue, sqs.call_timeout);
    let entries = chunk
        .iter()
        .map(|(_, receipt, secs)| (&**receipt, *secs))
        .collect();
    let sent_at = Instant::now();
    sqs.metrics.request(SqsOp::ChangeMessageVisibilityBatch);
    let call = sqs.api.change_visibility_batch(&sqs.url, entries);
    let outcome = match tokio::time::timeout(call_timeout, call).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => {
            sqs.metrics.error(SqsOp::ChangeMessageVisibilityBatch);
            tracing::warn!(queue, %error, "lease extension call failed; retrying next tick");
            chunk.iter().for_each(|(id, ..)| leases.renewal_failed(*id));
            return;
        }
        Err(_) => {
            sqs.metrics.error(SqsOp::ChangeMessageVisibilityBatch);
            tracing::warn!(queue, timeout = ?call_timeout, "lease extension call timed out; retrying next tick");
            chunk.iter().for_each(|(id, ..)| leases.renewal_failed(*id));
            return;
        }
    };
    for ((id, _, secs), failure) in chunk.iter().zip(outcome) {
        match failure {
            None => {
                leases.renewed(*id, sent_at, *secs);
                telemetry::lease_extended(queue);
            }
            Some((code, true)) => {
                leases.lose(*id);
                telemetry::lease_lost(queue, &code);
            }
            Some(_) => leases.renewal_failed(*id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_keeper_looks_several_times_per_renewal_window() {
        assert_eq!(tick_period(secs(20)), secs(1));
        assert_eq!(tick_period(secs(1)), Duration::from_millis(250));
        assert_eq!(
            tick_period(Duration::from_millis(100)),
            Duration::from_millis(50)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn leases_are_renewed_only_when_close_to_expiry() {
        let leases = Leases::new(secs(60), secs(20));
        let start = Instant::now();
        let a = leases.register("a".into(), start);
        tokio::time::advance(secs(30)).await;
        let b = leases.register("b".into(), Instant::now());
        assert_eq!(
            leases.plan(Instant::now()),
            Plan::default(),
            "40 s left: not yet"
        );

        tokio::time::advance(secs(11)).await; // a has 19 s left, b 49 s
        let plan = leases.plan(Instant::now());
        assert_eq!(plan.renew, vec![(0, Receipt::from("a"), 60)]);
        assert!(plan.expired.is_empty());
        assert_eq!(
            leases.plan(Instant::now()),
            Plan::default(),
            "in flight: not twice"
        );

        leases.renewed(0, Instant::now(), 60);
        tokio::time::advance(secs(30)).await; // a: 30 s left; b: 19 s left
        let plan = leases.plan(Instant::now());
        assert_eq!(plan.renew, vec![(1, Receipt::from("b"), 60)]);
        drop((a, b));
        assert_eq!(leases.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_runs_out_is_lost_and_its_work_cancelled() {
        let leases = Leases::new(secs(10), secs(5));
        let guard = leases.register("a".into(), Instant::now());
        tokio::time::advance(secs(6)).await;
        let plan = leases.plan(Instant::now());
        assert_eq!(plan.renew.len(), 1);
        leases.renewal_failed(0); // e.g. the endpoint is down
        tokio::time::advance(secs(4)).await;
        let plan = leases.plan(Instant::now());
        assert_eq!(plan.expired, vec![0]);
        assert!(guard.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn a_settling_lease_is_not_extended_and_settle_waits_for_an_extension_in_flight() {
        let leases = Leases::new(secs(10), secs(5));
        let a = leases.register("a".into(), Instant::now());
        let b = leases.register("b".into(), Instant::now());
        tokio::time::advance(secs(6)).await;
        let plan = leases.plan(Instant::now());
        assert_eq!(plan.renew.len(), 2, "both due and sent");

        // b's outcome is ready while its extension is on its way: settle waits for it.
        let settling = tokio::spawn(async move {
            b.settle().await;
            b
        });
        tokio::task::yield_now().await;
        assert!(!settling.is_finished(), "waits for the extension in flight");
        leases.renewed(1, Instant::now(), 10);
        let b = settling.await.unwrap();

        // a settles with nothing in flight: at once; neither is planned again.
        leases.renewed(0, Instant::now(), 10);
        a.settle().await;
        tokio::time::advance(secs(6)).await;
        assert!(
            leases.plan(Instant::now()).renew.is_empty(),
            "settled leases are left alone"
        );
        drop((a, b));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_extensions_lose_the_lease() {
        let leases = Leases::new(secs(10), secs(5));
        let guard = leases.register("a".into(), Instant::now());
        leases.lose(0);
        assert!(guard.is_lost());
        assert_eq!(leases.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn extensions_never_pass_twelve_hours_from_the_receive() {
        let leases = Leases::new(secs(600), secs(120));
        let received = Instant::now();
        let guard = leases.register("a".into(), received);
        let mut now = received;
        let mut last_expiry = received + secs(600);
        loop {
            // Jump to just inside the renewal window each time, as the keeper would.
            tokio::time::advance(last_expiry.saturating_duration_since(now) - secs(60)).await;
            now = Instant::now();
            let plan = leases.plan(now);
            if !plan.expired.is_empty() {
                break;
            }
            let Some((_, _, s)) = plan.renew.first().cloned() else {
                // Nothing left to gain: wait for it to run out.
                tokio::time::advance(secs(61)).await;
                assert_eq!(leases.plan(Instant::now()).expired, vec![0]);
                break;
            };
            leases.renewed(0, now, s);
            last_expiry = now + secs(s.into());
            assert!(
                last_expiry - received <= secs(43_200),
                "extended to {:?} after receive",
                last_expiry - received
            );
        }
        assert!(guard.is_lost());
        assert!(
            last_expiry - received > secs(43_200 - 700),
            "used most of the 12 h"
        );
    }
}
