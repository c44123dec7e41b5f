//! A poller: the loop that asks a queue for as many messages as it has free in-flight slots
//! (and no more than its dependencies admit), then hands each one over to be leased and
//! handled. A poller with no free slot does not poll.

use super::backoff::CallBackoff;
use super::{Queue, message};
use crate::breaker::Admission;
use crate::ops::Readiness;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, SqsOp};
use aws_sdk_sqs::types::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// How long a poller with some free in-flight slots waits for a whole batch's worth before it
/// receives fewer: short beside any handler worth a queue, long beside freeing slots.
const GATHER: Duration = Duration::from_millis(20);

/// One poller: wait for a free in-flight slot, receive up to that many messages, hand each to
/// its own task at once (a message never waits for its batch-mates) or, on a FIFO queue, to its
/// group's lane; repeat.
pub(super) async fn poll(
    index: usize,
    queue: Arc<Queue>,
    permits: Arc<Semaphore>,
    work: TaskTracker,
    shutdown: Shutdown,
    readiness: Readiness,
) {
    let mut backoff = CallBackoff::default();
    // Unready until a receive answers (set so by the daemon before anything else, see
    // `awaiting_first_receive`).
    let readiness_key = format!("sqs:{}:receive", queue.name);
    // A long poll answers within its wait time; allow a margin for the network before
    // calling SQS unresponsive.
    let answer_within = Duration::from_secs(u64::from(queue.config.wait_time_secs) + 5);
    // A FIFO receive's ReceiveRequestAttemptId, kept for the retry after a receive whose answer
    // was lost (see `queue::ReceiveError`).
    let mut attempt: Option<String> = None;
    // The first receive does not wait: it answers at once, so `/readyz` turns ready as soon as
    // SQS has answered, not a long poll later on an idle queue.
    let mut wait_secs = 0;
    loop {
        // A poller with no free slot does not poll.
        let mut held = tokio::select! {
            biased;
            () = shutdown.graceful.cancelled() => return,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        // Nor does one whose handler's dependencies are down.
        let Some(limit) = admitted(&queue, &shutdown).await else {
            return;
        };
        // Slots come free one message at a time; a receive the moment the first one does would
        // ask for one message per call. Wait a moment for a whole batch, then take what is free.
        let limit = limit.min(queue.config.max_in_flight as usize);
        let wanted = limit.saturating_sub(held.num_permits());
        if wanted > 0 {
            tokio::select! {
                biased;
                () = shutdown.graceful.cancelled() => return,
                more = tokio::time::timeout(GATHER, permits.clone().acquire_many_owned(wanted as u32)) => {
                    if let Ok(more) = more {
                        held.merge(more.expect("the semaphore is never closed"));
                    }
                }
            }
        }
        while held.num_permits() < limit {
            match permits.clone().try_acquire_owned() {
                Ok(permit) => held.merge(permit),
                Err(_) => break,
            }
        }
        let sent_at = Instant::now();
        let call = queue.endpoint.call(answer_within);
        // A receive in flight at SIGTERM is aborted: an idle long poll would otherwise hold
        // the shutdown for up to 20 s, and rolling deploys wait for it. SQS does not cancel
        // the receive on its side: messages arriving during the rest of its wait may still be
        // assigned to it and come back only after their visibility timeout (measured and
        // documented in the README's Shutdown section).
        if queue.fifo && attempt.is_none() {
            attempt = Some(uuid::Uuid::new_v4().to_string());
        }
        // SQS may assign messages to a receive until its wait ends, plus a margin for the
        // request's way there.
        let open_until = sent_at + Duration::from_secs(u64::from(queue.config.wait_time_secs) + 1);
        queue.receive_open(index, Some(open_until));
        let received = tokio::select! {
            // An answer already here is taken (its messages are handed back, not left hidden
            // for the visibility timeout).
            biased;
            received = receive(&queue, held.num_permits(), wait_secs, attempt.as_deref()) => received,
            // Left open: see `Queue::release_visibility_secs`.
            () = shutdown.graceful.cancelled() => return,
        };
        queue.receive_open(index, None);
        drop(call);
        match received {
            Ok(messages) => {
                attempt = None;
                wait_secs = queue.config.wait_time_secs;
                if backoff.failures() > 0 {
                    tracing::info!(queue = %queue.name, "SQS reachable again");
                }
                readiness.set(readiness_key.clone(), true);
                backoff.reset();
                queue.endpoint.metrics.received(messages.len());
                hand_over(&queue, &work, &shutdown, messages, sent_at, held);
            }
            Err(error) => {
                if !error.retry_same_attempt {
                    attempt = None;
                }
                drop(held);
                readiness.set_detail(
                    readiness_key.clone(),
                    false,
                    Some(format!(
                        "receive failing: {}",
                        crate::safe::one_line(&error.to_string(), 200)
                    )),
                );
                let delay = backoff.next_delay(&mut rand::rng());
                tracing::warn!(queue = %queue.name, error = %error, failures = backoff.failures(), retry_in_ms = delay.as_millis() as u64, "receive failed");
                tokio::select! {
                    () = shutdown.graceful.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Waits while the handler pauses the queue (a dependency it needs is down); returns how
/// many messages to ask for — one while a dependency is on trial — or `None` on shutdown.
pub(super) async fn admitted(queue: &Queue, shutdown: &Shutdown) -> Option<usize> {
    use std::sync::atomic::Ordering;
    loop {
        let wake = match queue.handler.admission() {
            Admission::Go => {
                if queue.paused.swap(false, Ordering::Relaxed) {
                    telemetry::queue_paused(&queue.name, false);
                    tracing::info!(queue = %queue.name, "receiving again");
                }
                return Some(queue.config.receive_batch_size as usize);
            }
            // Still paused: one message goes out as the trial.
            Admission::Trial => return Some(1),
            Admission::Wait { dependency, wake } => {
                if !queue.paused.swap(true, Ordering::Relaxed) {
                    telemetry::queue_paused(&queue.name, true);
                    tracing::warn!(queue = %queue.name, dependency = %dependency, "receiving paused: a dependency this queue needs is unavailable");
                }
                wake
            }
        };
        tokio::select! {
            () = shutdown.graceful.cancelled() => return None,
            () = wake => {}
        }
    }
}

/// Starts the work on one receive's messages: each leased at once and handled in its own task
/// (a message never waits for its batch-mates), or on a FIFO queue put on its group's lane.
pub(super) fn hand_over(
    queue: &Arc<Queue>,
    work: &TaskTracker,
    shutdown: &Shutdown,
    messages: Vec<Message>,
    sent_at: Instant,
    mut held: OwnedSemaphorePermit,
) {
    let mut leased = Vec::with_capacity(messages.len());
    let receive_span = crate::telemetry::otel::receive(&queue.name, messages.len(), sent_at);
    for message in messages {
        match held.split(1) {
            Some(permit) if !shutdown.graceful.is_cancelled() => {
                leased.extend(message::lease(
                    queue,
                    message,
                    sent_at,
                    permit,
                    receive_span.clone(),
                ));
            }
            // Received while stopping (or beyond the in-flight bound, which SQS never
            // returns): hand it straight back.
            _ => {
                work.spawn(message::release_unprocessed(queue.clone(), message));
            }
        }
    }
    if queue.lanes.is_some() {
        super::fifo::Lanes::admit(queue, work, leased);
    } else {
        for leased in leased {
            work.spawn(message::process(queue.clone(), leased));
        }
    }
}

pub(super) async fn receive(
    queue: &Queue,
    max: usize,
    wait_secs: u32,
    attempt: Option<&str>,
) -> Result<Vec<Message>, super::queue::ReceiveError> {
    queue.endpoint.metrics.request(SqsOp::ReceiveMessage);
    queue
        .api
        .receive(
            &queue.url,
            max,
            wait_secs,
            queue.config.visibility_timeout_secs,
            attempt,
        )
        .await
        .inspect_err(|_| queue.endpoint.metrics.error(SqsOp::ReceiveMessage))
}

/// Marks each of `queues` unready in `readiness` until its first receive answers: a daemon is
/// not ready before it has heard from every queue it consumes (set before `/readyz` answers).
pub fn awaiting_first_receive<'a>(readiness: &Readiness, queues: impl Iterator<Item = &'a str>) {
    for name in queues {
        readiness.set_detail(
            format!("sqs:{name}:receive"),
            false,
            Some("no receive has answered yet".to_owned()),
        );
    }
}
