//! The life of one message, top to bottom: it was received by a poller; here it is leased,
//! handed to the queue's handler, and its outcome applied — deleted, made visible again after
//! a backoff, dead-lettered with its reason, or released at shutdown. Nothing leaves this
//! function without one of those, except a lost lease (another consumer owns the message).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use super::batch::Action;
use super::dead_letter::dead_letter;
use super::lease::LeaseGuard;
use super::settle::{
    ATTEMPTS_ATTRIBUTE, Applied, DEFER_UNTIL_ATTRIBUTE, DEFERRALS_ATTRIBUTE, Original, apply,
    defer, delete, number_attribute, release, requeue, retry, string_attributes, system_attribute,
};
use super::split::split;
use super::{Labels, Outcome, Queue, Receipt, Received};
use crate::telemetry::{self, otel};

/// How a message's handling ended, before the outcome is applied.
pub(super) enum Verdict {
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

/// A received message, leased (its visibility is kept from here until its outcome is applied)
/// and holding its in-flight slot, waiting to be handled.
pub(super) struct Leased {
    message: Message,
    receipt: Receipt,
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
    let Some(receipt) = message.receipt_handle.as_deref().map(Receipt::from) else {
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

pub(super) async fn handle_and_apply(queue: Arc<Queue>, leased: Leased) -> Next {
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
    // A part split off a batch counts the receives its events spent before it (`split`).
    let receive_count = system_attribute(
        &message,
        MessageSystemAttributeName::ApproximateReceiveCount,
    )
    .and_then(|v| v.parse::<u32>().ok())
    .unwrap_or(1)
    .saturating_add(number_attribute(&message, ATTEMPTS_ATTRIBUTE).unwrap_or(0) as u32);
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
    // dependency's outage or configuration fault failed it: then the receive budget is not
    // the message's to spend, and one receive before it runs out the message goes back to
    // the queue as a fresh copy (a new message, its count at 0), so its count never reaches
    // maxReceiveCount however long the outage lasts.
    let verdict = match verdict {
        Verdict::Decided(Outcome::Retry {
            reason,
            after,
            outage: true,
            ..
        }) if receive_count.saturating_add(1) >= queue.max_receive_count => {
            Verdict::Requeue { reason, after }
        }
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
        Verdict::Decided(Outcome::Split(parts)) => {
            let original = Original {
                message: &message,
                received: &received,
                receipt: &receipt,
            };
            let reasons = parts
                .iter()
                .filter_map(|p| match &p.outcome {
                    Outcome::Retry { reason, .. }
                    | Outcome::Defer { reason, .. }
                    | Outcome::DeadLetter { reason, .. } => Some(reason.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("; ");
            (split(&queue, original, parts).await, Some(reasons))
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
        Applied::Split { .. } => ("split", false),
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
        Applied::Split { parts } => {
            tracing::info!(queue = %queue.name, message_id, event_id, tenant_id, kind, receive_count, outcome = "split", parts, latency_ms, reason = crate::safe::one_line(reason.as_deref().unwrap_or_default(), 1024), "batch split: its events that succeeded are done, the rest sent on as messages of their own")
        }
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
        Applied::Deleted | Applied::DeadLettered | Applied::Split { .. } => Next::Continue,
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

/// A message received after shutdown began: hand it straight back, unprocessed.
pub(super) async fn release_unprocessed(queue: Arc<Queue>, message: Message) {
    if let Some(receipt) = message.receipt_handle {
        release(&queue, &Receipt::from(receipt)).await;
    }
}
