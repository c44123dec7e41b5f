//! Batched DeleteMessageBatch and ChangeMessageVisibilityBatch calls.
//!
//! Message tasks ask for a delete or a visibility change and await its result; one task per
//! queue gathers the requests into batches of up to 10 (SQS's batch limit) and sends a batch
//! when it is full or when its oldest request has waited `flush` — so a saturated queue costs
//! one call per 10 messages and an idle one adds at most `flush` of latency.
//!
//! Failures: an entry SQS rejects as the sender's fault (e.g. `ReceiptHandleIsInvalid`: another
//! consumer owns the message now) is final; other entry failures and whole-call failures are
//! retried with backoff for a bounded time, then reported to the requester.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::backoff::CallBackoff;
use super::queue::EntryFailure;
use super::{Endpoint, Receipt};
use crate::telemetry::{SqsOp, otel};

/// SQS takes at most 10 entries per batch call.
const MAX_ENTRIES: usize = 10;
/// Batch calls in flight at once per queue; enough to keep up with LocalStack's ceiling and
/// real SQS's latency without unbounded fan-out.
const MAX_CONCURRENT_CALLS: usize = 8;
/// Attempts for a batch (or a batch entry) that fails for a reason that may pass.
const MAX_ATTEMPTS: u32 = 6;

/// What to do with a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Delete,
    /// Make it visible again after this many seconds (0 = now).
    SetVisibility(u32),
}

/// Why a batched action did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActionError {
    /// SQS refused the entry as the sender's fault; retrying cannot help.
    #[error("rejected by SQS: {code}")]
    Rejected { code: String },
    /// Still failing after retries (endpoint down, throttled).
    #[error("gave up after {attempts} attempts: {reason}")]
    GaveUp { attempts: u32, reason: String },
    /// The batcher stopped before the request was sent (only at the very end of shutdown).
    #[error("batcher stopped")]
    Stopped,
}

struct Request {
    receipt_handle: Receipt,
    action: Action,
    reply: oneshot::Sender<Result<(), ActionError>>,
    /// The requester's span (a message's process span), which the batch's settle span links
    /// to; only while tracing.
    link: Option<opentelemetry::trace::SpanContext>,
}

/// A handle to the queue's batcher. Cloned into every message task; when the last clone is
/// dropped, the batcher sends what is pending and stops.
#[derive(Clone)]
pub struct Batcher {
    requests: mpsc::UnboundedSender<Request>,
}

impl Batcher {
    /// Starts the batcher task for `queue_url`; await the returned handle after dropping every
    /// `Batcher` clone to know that all pending actions were sent.
    pub(super) fn spawn(sqs: Endpoint, flush: Duration) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(sqs, flush, rx));
        (Batcher { requests: tx }, task)
    }

    /// Performs `action` on the message, batched with others; resolves when SQS confirmed it.
    pub async fn perform(
        &self,
        receipt_handle: Receipt,
        action: Action,
    ) -> Result<(), ActionError> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send(Request {
                receipt_handle,
                action,
                reply,
                link: otel::current_context(),
            })
            .map_err(|_| ActionError::Stopped)?;
        result.await.unwrap_or(Err(ActionError::Stopped))
    }
}

#[derive(Default)]
struct Pending {
    requests: Vec<Request>,
    oldest: Option<Instant>,
}

impl Pending {
    fn push(&mut self, request: Request) {
        self.oldest.get_or_insert_with(Instant::now);
        self.requests.push(request);
    }

    fn take(&mut self) -> Vec<Request> {
        self.oldest = None;
        std::mem::take(&mut self.requests)
    }
}

async fn run(sqs: Endpoint, flush: Duration, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut deletes = Pending::default();
    let mut visibility = Pending::default();
    let mut calls = JoinSet::new();
    loop {
        let deadline = [deletes.oldest, visibility.oldest]
            .into_iter()
            .flatten()
            .min()
            .map(|oldest| oldest + flush);
        let request = tokio::select! {
            request = rx.recv() => request,
            () = sleep_until_opt(deadline) => {
                let now = Instant::now();
                for pending in [&mut deletes, &mut visibility] {
                    if pending.oldest.is_some_and(|o| o + flush <= now) {
                        send(&mut calls, &sqs, pending.take()).await;
                    }
                }
                continue;
            }
        };
        let Some(request) = request else { break };
        let pending = match request.action {
            Action::Delete => &mut deletes,
            Action::SetVisibility(_) => &mut visibility,
        };
        pending.push(request);
        if pending.requests.len() >= MAX_ENTRIES {
            let batch = pending.take();
            send(&mut calls, &sqs, batch).await;
        }
    }
    // Every sender is gone: flush what is left and wait for the calls in flight.
    for pending in [&mut deletes, &mut visibility] {
        if !pending.requests.is_empty() {
            send(&mut calls, &sqs, pending.take()).await;
        }
    }
    while calls.join_next().await.is_some() {}
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Spawns the call for one batch, waiting for a free slot first (back-pressure on the loop).
async fn send(calls: &mut JoinSet<()>, sqs: &Endpoint, batch: Vec<Request>) {
    while calls.len() >= MAX_CONCURRENT_CALLS {
        calls.join_next().await;
    }
    let sqs = sqs.clone();
    // Traced when one of the messages it settles is (head sampling leaves the others out).
    let links: Vec<_> = batch.iter().filter_map(|r| r.link.clone()).collect();
    let span = if links.is_empty() {
        tracing::Span::none()
    } else {
        let operation = match batch[0].action {
            Action::Delete => "DeleteMessageBatch",
            Action::SetVisibility(_) => "ChangeMessageVisibilityBatch",
        };
        otel::settle(&sqs.queue, operation, batch.len(), &links)
    };
    calls.spawn(async move { send_with_retries(&sqs, batch).await }.instrument(span));
}

async fn send_with_retries(sqs: &Endpoint, mut batch: Vec<Request>) {
    let queue = &*sqs.queue;
    let mut backoff = CallBackoff::default();
    let mut last_reason = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        let answer = sqs.call(sqs.call_timeout);
        let result = call(sqs, &batch).await;
        drop(answer);
        match result {
            Ok(failures) => {
                let mut retry = Vec::new();
                for (request, failure) in batch.into_iter().zip(failures) {
                    match failure {
                        None => {
                            let _ = request.reply.send(Ok(()));
                        }
                        Some((code, true)) => {
                            let _ = request.reply.send(Err(ActionError::Rejected { code }));
                        }
                        Some((code, false)) => {
                            last_reason = code;
                            retry.push(request);
                        }
                    }
                }
                if retry.is_empty() {
                    return;
                }
                batch = retry;
            }
            Err(reason) => last_reason = reason,
        }
        if attempt < MAX_ATTEMPTS {
            let delay = backoff.next_delay(&mut rand::rng());
            tokio::time::sleep(delay).await;
        }
    }
    otel::failed(&tracing::Span::current());
    tracing::warn!(queue, entries = batch.len(), error = %last_reason, "batch action failed after retries");
    for request in batch {
        let _ = request.reply.send(Err(ActionError::GaveUp {
            attempts: MAX_ATTEMPTS,
            reason: last_reason.clone(),
        }));
    }
}

/// Sends one batch call; one result per entry of `batch`, in order.
async fn call(sqs: &Endpoint, batch: &[Request]) -> Result<Vec<Option<EntryFailure>>, String> {
    match batch[0].action {
        Action::Delete => {
            sqs.metrics.request(SqsOp::DeleteMessageBatch);
            let receipts = batch.iter().map(|r| &*r.receipt_handle).collect();
            sqs.api
                .delete_batch(&sqs.url, receipts)
                .await
                .inspect_err(|_| sqs.metrics.error(SqsOp::DeleteMessageBatch))
        }
        Action::SetVisibility(_) => {
            let entries = batch
                .iter()
                .map(|r| {
                    let Action::SetVisibility(secs) = r.action else {
                        unreachable!("visibility batches hold only visibility changes")
                    };
                    (&*r.receipt_handle, secs)
                })
                .collect();
            sqs.metrics.request(SqsOp::ChangeMessageVisibilityBatch);
            sqs.api
                .change_visibility_batch(&sqs.url, entries)
                .await
                .inspect_err(|_| sqs.metrics.error(SqsOp::ChangeMessageVisibilityBatch))
        }
    }
}
