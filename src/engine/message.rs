//! The life of one message, top to bottom: it was received by a poller; here it is leased,
//! handed to the queue's handler, and its outcome applied — deleted, made visible again after
//! a backoff, dead-lettered with its reason, or released at shutdown. Nothing leaves this
//! function without one of those, except a lost lease (another consumer owns the message).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use super::backoff;
use super::batch::Action;
use super::lease::LeaseGuard;
use super::queue::{FifoIds, SendError};
use super::{Labels, Outcome, Queue, Received};
use crate::config::SQS_MAX_VISIBILITY_SECS;
use crate::telemetry::{self, SqsOp, otel};

/// SQS allows at most 10 message attributes per message.
const MAX_ATTRIBUTES: usize = 10;
/// How often a message was sent back to its queue by [`requeue`].
const REQUEUES_ATTRIBUTE: &str = "conveyor.requeues";
/// On a deferred copy: when it may be handled (Unix milliseconds).
const DEFER_UNTIL_ATTRIBUTE: &str = "conveyor.defer_until";
/// On a deferred copy: how often a handler deferred the message.
const DEFERRALS_ATTRIBUTE: &str = "conveyor.deferrals";
/// SQS's DelaySeconds maximum.
const MAX_DELAY_SECS: u32 = 900;
/// Longest `conveyor.error` written to the DLQ; reasons are one line, but a pipeline may
/// produce a long one.
const MAX_REASON_CHARS: usize = 1024;

/// How a message's handling ended, before the outcome is applied.
enum Verdict {
    /// The handler decided, or the deadline passed.
    Decided(Outcome),
    /// Shutdown's grace period ran out first.
    Release,
    /// The lease could not be kept; another consumer may own the message now.
    LeaseLost,
    /// Failed only by a dependency outage, with its receives spent: send it back as a fresh
    /// copy (see [`requeue`]).
    Requeue {
        reason: String,
        after: Option<Duration>,
    },
    /// A deferred copy back before its time: deferred again, unhandled.
    Hop { until: std::time::SystemTime },
}

/// What was applied, for the message's log line.
#[derive(Debug, Clone, Copy)]
enum Applied {
    Deleted,
    Retried {
        delay_secs: u32,
    },
    DeadLettered,
    Released,
    Requeued {
        delay_secs: u32,
    },
    Deferred {
        delay_secs: u32,
    },
    LeaseLost,
    /// The action did not get through; the message reappears when its visibility runs out.
    Failed,
}

/// A received message, leased (its visibility is kept from here until its outcome is applied)
/// and holding its in-flight slot, waiting to be handled.
pub(super) struct Leased {
    message: Message,
    receipt: String,
    lease: LeaseGuard,
    /// When the receive call was sent.
    received_at: Instant,
    group_id: Option<String>,
    /// The receive's span, the parent of this message's process span (while tracing).
    receive_span: Option<opentelemetry::Context>,
    _in_flight: telemetry::InFlight,
    _permit: OwnedSemaphorePermit,
}

impl Leased {
    /// `MessageGroupId`, on FIFO queues.
    pub(super) fn group_id(&self) -> Option<&str> {
        self.group_id.as_deref()
    }
}

/// Starts tracking a message just received by a call sent at `received_at`; `None` (logged)
/// for a message SQS sent without a receipt handle, which cannot be acted on at all.
pub(super) fn lease(
    queue: &Queue,
    message: Message,
    received_at: Instant,
    permit: OwnedSemaphorePermit,
    receive_span: Option<opentelemetry::Context>,
) -> Option<Leased> {
    let Some(receipt) = message.receipt_handle.clone() else {
        // SQS always sends one.
        tracing::error!(queue = %queue.name, message_id = message.message_id().unwrap_or_default(), "message without a receipt handle; it will reappear after its visibility timeout");
        return None;
    };
    Some(Leased {
        _in_flight: queue.endpoint.metrics.in_flight(),
        lease: queue.leases.register(receipt.clone(), received_at),
        group_id: system_attribute(&message, MessageSystemAttributeName::MessageGroupId)
            .map(str::to_owned),
        receipt,
        received_at,
        receive_span,
        message,
        _permit: permit,
    })
}

/// Whether the message's FIFO group may go on with its next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The message is done with: deleted after success, or dead-lettered.
    Continue,
    /// It is coming back (retried, released, requeued, its lease lost, its outcome not
    /// applied): the group's later messages must not be handled before it. They are handed
    /// back to come back no sooner than it does: after this many seconds (its backoff when
    /// retried, else 0).
    Stop { come_back_in_secs: u32 },
}

/// Handles one leased message from handler to applied outcome, in its `process` span.
pub(super) async fn process(queue: Arc<Queue>, leased: Leased) -> Next {
    let span = otel::process(
        &queue.name,
        leased.message.message_id().unwrap_or_default(),
        leased.receive_span.as_ref(),
        system_attribute(&leased.message, MessageSystemAttributeName::AwsTraceHeader),
    );
    handle_and_apply(queue, leased).instrument(span).await
}

async fn handle_and_apply(queue: Arc<Queue>, leased: Leased) -> Next {
    let Leased {
        mut message,
        receipt,
        lease,
        received_at,
        group_id,
        receive_span: _,
        _in_flight,
        _permit,
    } = leased;
    let message_id = message.message_id.clone().unwrap_or_default();
    let receive_count = system_attribute(
        &message,
        MessageSystemAttributeName::ApproximateReceiveCount,
    )
    .and_then(|v| v.parse::<u32>().ok())
    .unwrap_or(1);
    let received = Arc::new(Received {
        queue: queue.name.clone(),
        message_id: message_id.clone(),
        // Moved, not copied: the engine needs it again only to dead-letter or requeue.
        body: message.body.take().unwrap_or_default(),
        attributes: string_attributes(&message),
        trace_header: system_attribute(&message, MessageSystemAttributeName::AwsTraceHeader)
            .map(str::to_owned),
        group_id,
        receive_count,
        deferrals: number_attribute(&message, DEFERRALS_ATTRIBUTE).unwrap_or(0) as u32,
        labels: Default::default(),
    });

    // Decide. A deferred copy that came back before its time (a deferral longer than SQS's
    // 15-minute delay) is deferred again without the handler seeing it.
    let deadline = queue.config.deadline();
    let still_deferred = number_attribute(&message, DEFER_UNTIL_ATTRIBUTE)
        .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
        .filter(|until| *until > queue.clock.now());
    let verdict = if let Some(until) = still_deferred {
        Verdict::Hop { until }
    } else {
        tokio::select! {
        biased;
        () = lease.lost() => Verdict::LeaseLost,
        () = queue.abandon.cancelled() => Verdict::Release,
        // Dropping the handler's future on the deadline aborts its pipelines (and releases
        // their ledger claims): nothing of this delivery runs on.
        outcome = tokio::time::timeout(deadline, queue.handler.clone().handle(received.clone())) => {
            Verdict::Decided(outcome.unwrap_or_else(|_| {
                telemetry::deadline_exceeded(&queue.name);
                Outcome::Retry {
                    reason: format!(
                        "deadline: handling took longer than queues.{}.deadline_secs ({} s)",
                        queue.name,
                        deadline.as_secs()
                    ),
                    pipeline: None,
                    after: None,
                    outage: false,
                }
            }))
        }
        }
    };
    if still_deferred.is_none() {
        queue
            .endpoint
            .metrics
            .handler_finished(received_at.elapsed().as_secs_f64());
    }

    // A retry at the queue's maxReceiveCount is dead-lettered here, with the reason, rather
    // than left to SQS's native redrive, which would move it without one — unless only a
    // dependency outage failed it: then it goes back to the queue as a fresh copy.
    let verdict = match verdict {
        Verdict::Decided(Outcome::Retry {
            reason,
            after,
            outage: true,
            ..
        }) if receive_count >= queue.max_receive_count => Verdict::Requeue { reason, after },
        Verdict::Decided(Outcome::Retry {
            reason, pipeline, ..
        }) if receive_count >= queue.max_receive_count && queue.dlq.is_some() => {
            Verdict::Decided(Outcome::DeadLetter {
                reason: format!(
                    "retries exhausted after {receive_count} receives (maxReceiveCount {}): {reason}",
                    queue.max_receive_count
                ),
                label: "retries_exhausted",
                pipeline,
            })
        }
        other => other,
    };

    // Apply. No extension may land after the outcome (it would hide a released or retried
    // message again), so extending stops first, waiting for one already on its way.
    lease.settle().await;
    let (applied, reason) = match verdict {
        Verdict::LeaseLost => (Applied::LeaseLost, None),
        Verdict::Release => (release(&queue, &receipt).await, None),
        Verdict::Decided(Outcome::Success) => (delete(&queue, &receipt).await, None),
        Verdict::Decided(Outcome::Retry { reason, after, .. }) => (
            retry(&queue, &receipt, receive_count, after).await,
            Some(reason),
        ),
        Verdict::Requeue { reason, after } => {
            let original = Original {
                message: &message,
                received: &received,
                receipt: &receipt,
            };
            (requeue(&queue, original, after).await, Some(reason))
        }
        Verdict::Decided(Outcome::Defer { until, reason }) => {
            let original = Original {
                message: &message,
                received: &received,
                receipt: &receipt,
            };
            (defer(&queue, original, until, true).await, Some(reason))
        }
        Verdict::Hop { until } => {
            let original = Original {
                message: &message,
                received: &received,
                receipt: &receipt,
            };
            (defer(&queue, original, until, false).await, None)
        }
        Verdict::Decided(Outcome::DeadLetter {
            reason,
            label,
            pipeline,
        }) => {
            let original = Original {
                message: &message,
                received: &received,
                receipt: &receipt,
            };
            let applied = dead_letter(&queue, original, &reason, pipeline.as_deref(), label).await;
            (applied, Some(reason))
        }
    };
    drop(lease);

    let latency_ms = received_at.elapsed().as_millis() as u64;
    let (outcome, error) = match applied {
        Applied::Deleted => ("deleted", false),
        Applied::Retried { .. } => ("retry", true),
        Applied::DeadLettered => ("dead_lettered", true),
        Applied::Requeued { .. } => ("requeued", true),
        Applied::Deferred { .. } => ("deferred", false),
        Applied::Released => ("released", false),
        Applied::LeaseLost => ("lease_lost", true),
        Applied::Failed => ("action_failed", true),
    };
    otel::outcome(&tracing::Span::current(), outcome, error);
    let labels = received.labels.get().unwrap_or(&Labels::NONE);
    let (event_id, tenant_id, kind) = (
        labels.event_id.as_deref().unwrap_or("-"),
        labels.tenant_id.as_deref().unwrap_or("-"),
        labels.kind,
    );
    match applied {
        Applied::Deleted => {
            tracing::debug!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "deleted", latency_ms, "message done")
        }
        Applied::Retried { delay_secs } => {
            tracing::info!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "retry", delay_secs, latency_ms, reason = reason.as_deref().unwrap_or_default(), "message will be retried")
        }
        Applied::DeadLettered => {
            tracing::warn!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "dead_lettered", latency_ms, reason = reason.as_deref().unwrap_or_default(), "message dead-lettered")
        }
        Applied::Requeued { delay_secs } => {
            tracing::warn!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "requeued", delay_secs, latency_ms, reason = reason.as_deref().unwrap_or_default(), "a dependency outage spent the message's receives: sent back to the queue as a fresh copy, not dead-lettered")
        }
        Applied::Deferred { delay_secs } => match &reason {
            Some(reason) => {
                tracing::info!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "deferred", delay_secs, latency_ms, reason, "message deferred")
            }
            None => {
                tracing::debug!(queue = %queue.name, message_id, outcome = "deferred", delay_secs, "deferred message not due yet: deferred again")
            }
        },
        Applied::Released => {
            tracing::info!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "released", latency_ms, "message released at shutdown")
        }
        Applied::LeaseLost => {
            tracing::warn!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "lease_lost", latency_ms, "work abandoned: lease lost")
        }
        Applied::Failed => {
            tracing::warn!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "action_failed", latency_ms, "outcome could not be applied; the message reappears when its visibility runs out")
        }
    }
    match applied {
        Applied::Deleted | Applied::DeadLettered => Next::Continue,
        Applied::Retried { delay_secs } | Applied::Deferred { delay_secs } => Next::Stop {
            come_back_in_secs: delay_secs,
        },
        _ => Next::Stop {
            come_back_in_secs: 0,
        },
    }
}

/// Hands a leased message back unhandled, visible again in `visibility_secs`: a FIFO group's
/// later message after an earlier one stopped the group, or one still waiting when shutdown
/// began.
pub(super) async fn hand_back(queue: &Queue, leased: Leased, visibility_secs: u32) {
    leased.lease.settle().await;
    let applied = apply(
        queue,
        &leased.receipt,
        Action::SetVisibility(visibility_secs),
        Applied::Released,
    )
    .await;
    let message_id = leased.message.message_id().unwrap_or_default();
    match applied {
        Applied::Released => {
            tracing::debug!(queue = %queue.name, message_id, outcome = "released", visibility_secs, "handed back unhandled: its group comes back in order")
        }
        _ => {
            tracing::warn!(queue = %queue.name, message_id, outcome = "action_failed", "could not hand back a waiting message; it reappears when its visibility runs out")
        }
    }
}

async fn delete(queue: &Queue, receipt: &str) -> Applied {
    apply(queue, receipt, Action::Delete, Applied::Deleted).await
}

async fn retry(
    queue: &Queue,
    receipt: &str,
    receive_count: u32,
    after: Option<Duration>,
) -> Applied {
    let backoff = backoff::retry_delay_secs(&queue.config.retry, receive_count, &mut rand::rng());
    // Visibility is capped at 12 h (SQS).
    let delay_secs = match after {
        Some(after) => (after.as_secs_f64().ceil() as u64)
            .max(u64::from(backoff))
            .min(u64::from(SQS_MAX_VISIBILITY_SECS)) as u32,
        None => backoff,
    };
    apply(
        queue,
        receipt,
        Action::SetVisibility(delay_secs),
        Applied::Retried { delay_secs },
    )
    .await
}

/// SQS counts every receive toward the queue's maxReceiveCount, outage or not; a message that
/// failed only because a dependency was down would be moved to the DLQ by native redrive on
/// its next receive although nothing is wrong with it. So it is sent to its own queue again —
/// same body and attributes, `conveyor.requeues` counting how often, delayed by the backoff
/// (at most SQS's 900 s DelaySeconds) — and the original deleted. If the send fails, it is
/// retried as usual (and native redrive may then move it: nothing is lost either way).
async fn requeue(queue: &Queue, original: Original<'_>, after: Option<Duration>) -> Applied {
    let Original {
        message,
        received,
        receipt,
    } = original;
    let receive_count = received.receive_count;
    let backoff = backoff::retry_delay_secs(&queue.config.retry, receive_count, &mut rand::rng());
    // A FIFO queue takes no per-message delay: the copy joins the back of its group at once.
    let delay_secs = if queue.fifo {
        0
    } else {
        after
            .map_or(backoff, |a| (a.as_secs() as u32).max(backoff))
            .min(MAX_DELAY_SECS)
    };
    let mut attributes = message.message_attributes.clone().unwrap_or_default();
    let requeues = take_counter(&mut attributes, REQUEUES_ATTRIBUTE) + 1;
    if attributes.len() < MAX_ATTRIBUTES {
        attributes.insert(REQUEUES_ATTRIBUTE.to_owned(), number(requeues));
    }
    match replace_with_copy(queue, receipt, received, attributes, delay_secs).await {
        Ok(applied) => {
            telemetry::message_requeued(&queue.name);
            match applied {
                Applied::Deleted => Applied::Requeued { delay_secs },
                other => other,
            }
        }
        Err(NotReplaced::Abandoned(applied)) => applied,
        Err(NotReplaced::Failed(error)) => {
            tracing::error!(queue = %queue.name, %error, "sending the fresh copy failed; retrying the original instead");
            retry(queue, receipt, receive_count, after).await
        }
    }
}

/// Defers the message until `until` without spending a receive: a copy delayed by at most
/// SQS's 15 minutes, carrying `conveyor.defer_until` (so that a copy back before its time is
/// deferred again) and `conveyor.deferrals` (counted when a handler deferred, not on the
/// engine's own hops), then the original deleted. On a FIFO queue (no per-message delay), or
/// when the copy cannot be sent or has no room for its two attributes, the message is hidden
/// until then instead (at most 12 hours; a receive is spent).
async fn defer(
    queue: &Queue,
    original: Original<'_>,
    until: std::time::SystemTime,
    by_handler: bool,
) -> Applied {
    let Original {
        message,
        received,
        receipt,
    } = original;
    telemetry::message_deferred(&queue.name);
    let remaining_secs = until
        .duration_since(queue.clock.now())
        .unwrap_or_default()
        .as_secs_f64()
        .ceil() as u64;
    // By visibility: on FIFO by design; otherwise a fallback, said why.
    let hide = |fallback: Option<&str>| {
        if let Some(why) = fallback {
            tracing::warn!(queue = %queue.name, message_id = %received.message_id, why, "deferring by visibility instead of a delayed copy: the message counts a receive");
        }
        let secs = remaining_secs.min(u64::from(SQS_MAX_VISIBILITY_SECS)) as u32;
        let applied = Applied::Deferred { delay_secs: secs };
        apply(queue, receipt, Action::SetVisibility(secs), applied)
    };
    if queue.fifo {
        return hide(None).await;
    }
    let mut attributes = message.message_attributes.clone().unwrap_or_default();
    attributes.remove(DEFER_UNTIL_ATTRIBUTE);
    let deferrals = take_counter(&mut attributes, DEFERRALS_ATTRIBUTE) + u64::from(by_handler);
    if attributes.len() + 2 > MAX_ATTRIBUTES {
        return hide(Some(
            "no room for conveyor's two deferral attributes (SQS allows 10)",
        ))
        .await;
    }
    let until_ms = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    attributes.insert(DEFER_UNTIL_ATTRIBUTE.to_owned(), number(until_ms));
    attributes.insert(DEFERRALS_ATTRIBUTE.to_owned(), number(deferrals));
    let delay_secs = remaining_secs.min(u64::from(MAX_DELAY_SECS)) as u32;
    match replace_with_copy(queue, receipt, received, attributes, delay_secs).await {
        Ok(Applied::Deleted) => Applied::Deferred { delay_secs },
        Ok(other) | Err(NotReplaced::Abandoned(other)) => other,
        Err(NotReplaced::Failed(error)) => {
            tracing::error!(queue = %queue.name, %error, "sending the deferred copy failed");
            hide(Some("the delayed copy could not be sent")).await
        }
    }
}

/// Why a copy did not replace the original.
enum NotReplaced {
    /// Shutdown's grace period ran out first: the original was released instead (applied).
    Abandoned(Applied),
    Failed(SendError),
}

/// Sends a copy of the message — its body as received, `attributes` — to its own queue,
/// delayed by `delay_secs`, then deletes the original; returns what the delete applied. A
/// failed delete leaves the original to come back too, deduplicated by the ledger like any
/// redelivery.
async fn replace_with_copy(
    queue: &Queue,
    receipt: &str,
    received: &Received,
    attributes: HashMap<String, MessageAttributeValue>,
    delay_secs: u32,
) -> Result<Applied, NotReplaced> {
    queue.endpoint.metrics.request(SqsOp::SendMessage);
    let send = queue.api.send(
        &queue.url,
        &received.body,
        attributes,
        received.trace_header.as_deref(),
        delay_secs,
        fifo_ids(queue, received),
    );
    let sent = tokio::select! {
        () = queue.abandon.cancelled() => return Err(NotReplaced::Abandoned(release(queue, receipt).await)),
        sent = send => sent,
    };
    if let Err(error) = sent {
        queue.endpoint.metrics.error(SqsOp::SendMessage);
        return Err(NotReplaced::Failed(error));
    }
    Ok(delete(queue, receipt).await)
}

/// Removes one of conveyor's counters from `attributes`, returning its value (0 when absent).
fn take_counter(attributes: &mut HashMap<String, MessageAttributeValue>, name: &str) -> u64 {
    attributes
        .remove(name)
        .and_then(|v| v.string_value?.parse().ok())
        .unwrap_or(0)
}

/// A `Number` message attribute.
fn number(value: impl ToString) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .expect("data type is set")
}

/// A copy of a FIFO queue's message keeps its group; its deduplication id is the original's
/// message id, so a send repeated after an unseen success leaves one copy.
fn fifo_ids<'a>(queue: &Queue, received: &'a Received) -> Option<FifoIds<'a>> {
    queue.fifo.then(|| FifoIds {
        // SQS sends every FIFO message with its group id.
        group_id: received.group_id.as_deref().unwrap_or("ungrouped"),
        deduplication_id: &received.message_id,
    })
}

/// A message received after shutdown began: hand it straight back, unprocessed.
pub(super) async fn release_unprocessed(queue: Arc<Queue>, message: Message) {
    if let Some(receipt) = message.receipt_handle {
        release(&queue, &receipt).await;
    }
}

/// Hands the message back at shutdown: visible to any consumer at once (on FIFO queues, once
/// the receives aborted at shutdown are over; see `Queue::release_visibility_secs`).
async fn release(queue: &Queue, receipt: &str) -> Applied {
    let visibility = queue.release_visibility_secs();
    apply(
        queue,
        receipt,
        Action::SetVisibility(visibility),
        Applied::Released,
    )
    .await
}

/// Performs a batched action and counts it as `applied`, or reports that it did not get through.
async fn apply(queue: &Queue, receipt: &str, action: Action, applied: Applied) -> Applied {
    match queue.batcher.perform(receipt.to_owned(), action).await {
        Ok(()) => {
            match applied {
                Applied::Deleted => queue.endpoint.metrics.deleted(),
                Applied::Retried { .. } => queue.endpoint.metrics.retried(),
                Applied::Released => queue.endpoint.metrics.released(),
                _ => {}
            }
            applied
        }
        Err(e) => {
            tracing::warn!(queue = %queue.name, error = %e, ?action, "SQS action failed");
            Applied::Failed
        }
    }
}

/// Copies the message to the DLQ with the reason attached, then deletes the original. The
/// original is never deleted without a DLQ copy: if the copy fails, it comes back after a
/// backoff instead (and the queue's native redrive remains the backstop).
/// The received message as it is dead-lettered or requeued: its body travels as received (a
/// claim check's pointer, not the payload it points to).
struct Original<'a> {
    message: &'a Message,
    received: &'a Received,
    receipt: &'a str,
}

async fn dead_letter(
    queue: &Queue,
    original: Original<'_>,
    reason: &str,
    pipeline: Option<&str>,
    label: &'static str,
) -> Applied {
    let Original {
        message,
        received,
        receipt,
    } = original;
    let (body, receive_count) = (received.body.as_str(), received.receive_count);
    let Some(dlq) = &queue.dlq else {
        tracing::error!(queue = %queue.name, reason, "no dead-letter queue: retrying with backoff instead");
        return retry(queue, receipt, receive_count, None).await;
    };
    let full = dead_letter_attributes(message, &queue.url, receive_count, reason, pipeline);
    let Some(minimal) = minimal_dead_letter_attributes(reason, body.len(), dlq.max_message_bytes)
    else {
        // Only when the DLQ's MaximumMessageSize is below its queue's (flagged at startup).
        telemetry::dead_letter_refused(&queue.name);
        tracing::error!(queue = %queue.name, body_bytes = body.len(), dlq_max_message_bytes = dlq.max_message_bytes, "CANNOT DEAD-LETTER: the body alone is larger than the DLQ accepts; the message stays on the queue's redrive path (native redrive, else retried with backoff). Raise the DLQ's MaximumMessageSize to the queue's");
        return retry(queue, receipt, receive_count, None).await;
    };
    // Everything attached if it fits; else only the reason, shortened to fit. If SQS refuses
    // the full copy's attributes as invalid, the minimal one is tried too.
    let mut copies = Vec::new();
    if body.len() + attributes_size(&full) <= dlq.max_message_bytes {
        copies.push(full);
    }
    copies.push(minimal);
    let mut last_error = String::new();
    let mut sent = false;
    for attributes in copies {
        queue.endpoint.metrics.request(SqsOp::SendMessage);
        // A FIFO DLQ (the only kind a FIFO queue may have, checked at startup) gets the
        // group id and a deduplication id that is the same for the full and the minimal copy.
        let send = queue.api.send(
            &dlq.url,
            body,
            attributes,
            received.trace_header.as_deref(),
            0,
            fifo_ids(queue, received),
        );
        // Past shutdown's grace period the send is cancelled and the message released: it
        // is dead-lettered again by whoever receives it next (the DLQ may then hold two
        // copies; nothing is lost).
        let result = tokio::select! {
            () = queue.abandon.cancelled() => return release(queue, receipt).await,
            result = send => result,
        };
        match result {
            Ok(()) => {
                sent = true;
                break;
            }
            Err(e) => {
                queue.endpoint.metrics.error(SqsOp::SendMessage);
                last_error = e.message;
                if e.transient {
                    break;
                }
            }
        }
    }
    if !sent {
        tracing::error!(queue = %queue.name, error = %last_error, "sending to the DLQ failed; the message will come back");
        return retry(queue, receipt, receive_count, None).await;
    }
    telemetry::message_dead_lettered(&queue.name, label);
    match delete(queue, receipt).await {
        Applied::Deleted => Applied::DeadLettered,
        // The DLQ has its copy; the original will be redelivered and dead-lettered again, so
        // the DLQ may hold a duplicate but nothing is lost.
        other => other,
    }
}

/// Only `conveyor.error`, its reason shortened so that body and attribute fit in `max_bytes`;
/// `None` when not even a short reason fits beside the body.
fn minimal_dead_letter_attributes(
    reason: &str,
    body_bytes: usize,
    max_bytes: usize,
) -> Option<HashMap<String, MessageAttributeValue>> {
    /// A reason shorter than this says too little to be worth a dead letter without one.
    const MIN_REASON_BYTES: usize = 32;
    const NAME: &str = "conveyor.error";
    let overhead = NAME.len() + "String".len();
    let room = max_bytes.checked_sub(body_bytes + overhead)?;
    if room < MIN_REASON_BYTES {
        return None;
    }
    let mut reason = crate::safe::one_line(reason, MAX_REASON_CHARS);
    if reason.len() > room {
        let mut cut = room.saturating_sub('…'.len_utf8());
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push('…');
    }
    let value = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(reason)
        .build()
        .expect("data type is set");
    Some(HashMap::from([(NAME.to_owned(), value)]))
}

/// The original message attributes plus conveyor's. If they would pass SQS's limit of 10, the
/// originals are folded into one JSON attribute, `conveyor.original_attributes`.
fn dead_letter_attributes(
    message: &Message,
    source_queue: &str,
    receive_count: u32,
    reason: &str,
    pipeline: Option<&str>,
) -> HashMap<String, MessageAttributeValue> {
    let string = |value: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(value)
            .build()
            .expect("data type is set")
    };
    let first_received_at = system_attribute(
        message,
        MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
    )
    .and_then(|ms| ms.parse::<i64>().ok())
    .and_then(chrono::DateTime::from_timestamp_millis)
    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    .unwrap_or_else(|| "unknown".to_owned());
    // One line of characters SQS accepts: a reason it refused would fail the DLQ send.
    let reason = crate::safe::one_line(reason, MAX_REASON_CHARS);
    let ours = [
        ("conveyor.error", string(&reason)),
        // SQS rejects empty attribute values.
        ("conveyor.pipeline", string(pipeline.unwrap_or("none"))),
        ("conveyor.receive_count", number(receive_count)),
        ("conveyor.first_received_at", string(&first_received_at)),
        ("conveyor.source_queue", string(source_queue)),
    ];
    let originals: HashMap<String, MessageAttributeValue> = message
        .message_attributes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("conveyor."))
        .collect();
    let mut attributes: HashMap<String, MessageAttributeValue> =
        ours.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    if originals.len() + attributes.len() <= MAX_ATTRIBUTES {
        attributes.extend(originals);
    } else {
        let folded: serde_json::Map<String, serde_json::Value> = originals
            .iter()
            .map(|(name, v)| {
                let value = match (v.string_value(), v.binary_value()) {
                    (Some(s), _) => serde_json::json!({"DataType": v.data_type(), "StringValue": s}),
                    (None, Some(b)) => serde_json::json!({"DataType": v.data_type(), "BinaryValue": aws_smithy_types::base64::encode(b.as_ref())}),
                    _ => serde_json::json!({"DataType": v.data_type()}),
                };
                (name.clone(), value)
            })
            .collect();
        attributes.insert(
            "conveyor.original_attributes".to_owned(),
            string(&serde_json::Value::Object(folded).to_string()),
        );
    }
    attributes
}

/// Bytes SQS counts for message attributes: name, type and value of each.
fn attributes_size(attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    attributes
        .iter()
        .map(|(name, v)| {
            name.len()
                + v.data_type().len()
                + v.string_value().map_or(0, str::len)
                + v.binary_value().map_or(0, |b| b.as_ref().len())
        })
        .sum()
}

/// The message attributes with a string value (`String` and `Number` types, custom subtypes
/// included); binary ones are left out.
fn string_attributes(message: &Message) -> std::collections::BTreeMap<String, String> {
    message
        .message_attributes
        .iter()
        .flatten()
        .filter_map(|(name, v)| Some((name.clone(), v.string_value.clone()?)))
        .collect()
}

/// A message attribute holding a whole number (conveyor's own counters and instants).
fn number_attribute(message: &Message, name: &str) -> Option<u64> {
    message
        .message_attributes
        .as_ref()?
        .get(name)?
        .string_value()?
        .parse()
        .ok()
}

fn system_attribute(message: &Message, name: MessageSystemAttributeName) -> Option<&str> {
    message.attributes.as_ref()?.get(&name).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_with(attributes: usize) -> Message {
        let mut builder = Message::builder().body("{}").attributes(
            MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
            "1700000000123",
        );
        for i in 0..attributes {
            builder = builder.message_attributes(
                format!("orig{i}"),
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(format!("v{i}"))
                    .build()
                    .unwrap(),
            );
        }
        builder.build()
    }

    #[test]
    fn dead_letter_attributes_keep_originals_and_add_the_reason() {
        let a = dead_letter_attributes(&message_with(2), "https://q", 3, "boom", Some("graph"));
        assert_eq!(a.len(), 7);
        assert_eq!(a["conveyor.error"].string_value(), Some("boom"));
        assert_eq!(a["conveyor.pipeline"].string_value(), Some("graph"));
        assert_eq!(a["conveyor.receive_count"].string_value(), Some("3"));
        assert_eq!(a["conveyor.receive_count"].data_type(), "Number");
        assert_eq!(
            a["conveyor.first_received_at"].string_value(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(a["conveyor.source_queue"].string_value(), Some("https://q"));
        assert_eq!(a["orig1"].string_value(), Some("v1"));
    }

    #[test]
    fn too_many_attributes_are_folded_not_dropped() {
        let a = dead_letter_attributes(&message_with(8), "https://q", 1, "boom", None);
        assert!(a.len() <= MAX_ATTRIBUTES);
        let folded: serde_json::Value =
            serde_json::from_str(a["conveyor.original_attributes"].string_value().unwrap())
                .unwrap();
        assert_eq!(folded.as_object().unwrap().len(), 8);
        assert_eq!(folded["orig7"]["StringValue"], "v7");
        assert_eq!(a["conveyor.pipeline"].string_value(), Some("none"));
    }

    #[test]
    fn a_dead_letter_near_the_size_limit_keeps_a_shortened_reason() {
        let reason = "x".repeat(900);
        let fits = minimal_dead_letter_attributes(&reason, 1000, 1000 + 20 + 200).unwrap();
        let kept = fits["conveyor.error"].string_value().unwrap();
        assert!(1000 + attributes_size(&fits) <= 1220, "fits");
        assert!(kept.ends_with('…') && kept.len() > 100);
        assert!(
            minimal_dead_letter_attributes(&reason, 1000, 1000 + 20 + 10).is_none(),
            "no room for a useful reason"
        );
        assert!(minimal_dead_letter_attributes(&reason, 2000, 1000).is_none());
        let short = minimal_dead_letter_attributes("boom", 10, 1000).unwrap();
        assert_eq!(short["conveyor.error"].string_value(), Some("boom"));
    }

    #[test]
    fn long_reasons_are_truncated() {
        let a = dead_letter_attributes(&message_with(0), "q", 1, &"x".repeat(5000), None);
        assert_eq!(
            a["conveyor.error"].string_value().unwrap().len(),
            MAX_REASON_CHARS
        );
    }
}
