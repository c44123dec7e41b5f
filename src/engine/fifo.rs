//! FIFO queues: one lane per message group. SQS hands out a group's messages in order, and no
//! more of the group while one of them is in flight; a lane keeps that order on this side. A
//! group's messages are handled one after another, each one's outcome applied before the next
//! starts, while different groups run side by side within the queue's `max_in_flight`.
//!
//! When a message is coming back (retried after its backoff, which on FIFO is its visibility;
//! released; its lease lost), the group's later messages already received are handed back at
//! once, unhandled, so that SQS hands the group back in order, starting with that message. They
//! get the same visibility as the retried message: SQS would hold them behind it anyway (an
//! in-flight message blocks its group), and an emulator that does not (LocalStack unblocks a
//! group as soon as any received message of it is visible again) cannot hand them out ahead of
//! it either. A dead-lettered message does not stop its group.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio_util::task::TaskTracker;

use super::Queue;
use super::message::{self, Leased, Next};
use crate::telemetry::FifoMetrics;

/// The lanes of one FIFO queue: for each group with a lane running, its messages received and
/// not yet taken up, in the order SQS sent them.
pub(super) struct Lanes {
    waiting: Mutex<HashMap<String, VecDeque<Leased>>>,
    metrics: FifoMetrics,
}

impl Lanes {
    pub(super) fn new(queue: &str) -> Self {
        Self {
            waiting: Mutex::default(),
            metrics: FifoMetrics::new(queue),
        }
    }

    /// Puts one receive's messages on their groups' lanes, in the order received, and starts a
    /// lane for each group that has none running.
    pub(super) fn admit(queue: &Arc<Queue>, work: &TaskTracker, messages: Vec<Leased>) {
        let lanes = queue
            .lanes
            .as_ref()
            .expect("admit is only called for FIFO queues");
        let mut waiting = lanes.lock();
        for leased in messages {
            // SQS sends every FIFO message with its group id.
            let group = leased.group_id().unwrap_or_default().to_owned();
            match waiting.entry(group) {
                Entry::Occupied(mut lane) => lane.get_mut().push_back(leased),
                Entry::Vacant(slot) => {
                    let group = slot.key().clone();
                    slot.insert(VecDeque::from([leased]));
                    lanes.metrics.group_active(true);
                    work.spawn(run(queue.clone(), group));
                }
            }
        }
    }

    /// The group's next message; `None` ends the lane (it is removed under the same lock that
    /// [`Lanes::admit`] takes, so a message is never left on a lane that has stopped).
    fn next(&self, group: &str) -> Option<Leased> {
        let mut waiting = self.lock();
        let lane = waiting.get_mut(group)?;
        let next = lane.pop_front();
        if next.is_none() {
            waiting.remove(group);
            self.metrics.group_active(false);
        }
        next
    }

    /// Takes every message waiting on the group's lane (the lane keeps running).
    fn take_waiting(&self, group: &str) -> Vec<Leased> {
        self.lock()
            .get_mut(group)
            .map(|lane| lane.drain(..).collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Leased>>> {
        // No invariant spans a panic in the few lines that hold the lock.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One group's lane: its messages one at a time until none is waiting.
async fn run(queue: Arc<Queue>, group: String) {
    let lanes = queue
        .lanes
        .as_ref()
        .expect("lanes run only for FIFO queues");
    while let Some(leased) = lanes.next(&group) {
        // Once shutdown begins, a lane finishes the message it is on and hands the rest back
        // (in order, for whichever instance takes the group next) rather than starting more.
        if queue.draining.is_cancelled() {
            let mut rest = lanes.take_waiting(&group);
            rest.insert(0, leased);
            hand_back_all(&queue, rest, queue.release_visibility_secs()).await;
            continue;
        }
        let Next::Stop { come_back_in_secs } = message::process(queue.clone(), leased).await else {
            continue;
        };
        let rest = lanes.take_waiting(&group);
        if rest.is_empty() {
            continue;
        }
        let come_back_in_secs = come_back_in_secs.max(queue.release_visibility_secs());
        if !queue.draining.is_cancelled() {
            lanes.metrics.released_after_failure(rest.len());
            tracing::info!(queue = %queue.name, released = rest.len(), come_back_in_secs, "a message of a FIFO group is coming back: its group's later messages are handed back unhandled, to come back in order after it");
        }
        hand_back_all(&queue, rest, come_back_in_secs).await;
    }
}

/// Hands messages back together, so that they go out in as few batch calls as possible.
async fn hand_back_all(queue: &Queue, messages: Vec<Leased>, visibility_secs: u32) {
    futures::future::join_all(
        messages
            .into_iter()
            .map(|leased| message::hand_back(queue, leased, visibility_secs)),
    )
    .await;
}
