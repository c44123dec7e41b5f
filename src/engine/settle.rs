//! Applying a message's outcome to SQS: delete it, make it visible again after a backoff,
//! send it back as a fresh copy (requeue, defer), or release it at shutdown. Each returns what
//! was [`Applied`] for the message's log line; dead-lettering is in [`super::dead_letter`]. Also
//! what every step reads of the received message: its attributes and FIFO ids.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};

use super::backoff;
use super::batch::Action;
use super::queue::{FifoIds, SendError, SendIds};
use super::{Queue, Receipt, Received};
use crate::config::SQS_MAX_VISIBILITY_SECS;
use crate::telemetry::{self, SqsOp};

/// SQS allows at most 10 message attributes per message.
pub(super) const MAX_ATTRIBUTES: usize = 10;

/// How often a message was sent back to its queue by [`requeue`].
pub(super) const REQUEUES_ATTRIBUTE: &str = "conveyor.requeues";

/// On a deferred copy: when it may be handled (Unix milliseconds).
pub(super) const DEFER_UNTIL_ATTRIBUTE: &str = "conveyor.defer_until";

/// On a deferred copy: how often a handler deferred the message.
pub(super) const DEFERRALS_ATTRIBUTE: &str = "conveyor.deferrals";

/// On a message holding several events: how many. Its body is a JSON array of bodies in the
/// queue's format, one per event (see `split`).
pub const BATCH_ATTRIBUTE: &str = "conveyor.batch";

/// On a part split off a batch: the message id of the batch it came from, so its events keep
/// the identity they had there (see `dispatch`).
pub const BATCH_ID_ATTRIBUTE: &str = "conveyor.batch_id";

/// On a part split off a batch: the receives its events spent before, as parts of earlier
/// messages.
pub const ATTEMPTS_ATTRIBUTE: &str = "conveyor.attempts";

/// The engine's own attributes: counters and a dead letter's facts, which start afresh when a
/// message is dead-lettered or redriven. Other `conveyor.` attributes (`conveyor.batch`, a
/// pipeline's routing attributes such as `conveyor.drop_key`) travel with the message.
pub const ENGINE_ATTRIBUTES: &[&str] = &[
    REQUEUES_ATTRIBUTE,
    DEFER_UNTIL_ATTRIBUTE,
    DEFERRALS_ATTRIBUTE,
    ATTEMPTS_ATTRIBUTE,
    "conveyor.error",
    "conveyor.pipeline",
    "conveyor.receive_count",
    "conveyor.first_received_at",
    "conveyor.source_queue",
    "conveyor.original_attributes",
];

/// SQS's DelaySeconds maximum.
pub(super) const MAX_DELAY_SECS: u32 = 900;

/// What was applied, for the message's log line.
#[derive(Debug, Clone, Copy)]
pub(super) enum Applied {
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
    /// A batch split into `parts` messages of its own (the events that succeeded are done).
    Split {
        parts: usize,
    },
    LeaseLost,
    /// The action did not get through; the message reappears when its visibility runs out.
    Failed,
}

pub(super) async fn delete(queue: &Queue, receipt: &Receipt) -> Applied {
    apply(queue, receipt, Action::Delete, Applied::Deleted).await
}

pub(super) async fn retry(
    queue: &Queue,
    receipt: &Receipt,
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
pub(super) async fn requeue(
    queue: &Queue,
    original: Original<'_>,
    after: Option<Duration>,
) -> Applied {
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
pub(super) async fn defer(
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
    if !mark_deferred(&mut attributes, until, by_handler) {
        return hide(Some(
            "no room for conveyor's two deferral attributes (SQS allows 10)",
        ))
        .await;
    }
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

/// Marks a copy's `attributes` as deferred until `until` (`conveyor.defer_until`, and
/// `conveyor.deferrals` counting a handler's deferral); `false`, and neither set, when SQS's 10
/// attributes leave no room for them.
pub(super) fn mark_deferred(
    attributes: &mut HashMap<String, MessageAttributeValue>,
    until: std::time::SystemTime,
    by_handler: bool,
) -> bool {
    attributes.remove(DEFER_UNTIL_ATTRIBUTE);
    let deferrals = take_counter(attributes, DEFERRALS_ATTRIBUTE) + u64::from(by_handler);
    if attributes.len() + 2 > MAX_ATTRIBUTES {
        return false;
    }
    let until_ms = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    attributes.insert(DEFER_UNTIL_ATTRIBUTE.to_owned(), number(until_ms));
    attributes.insert(DEFERRALS_ATTRIBUTE.to_owned(), number(deferrals));
    true
}

/// Why a copy did not replace the original.
pub(super) enum NotReplaced {
    /// Shutdown's grace period ran out first: the original was released instead (applied).
    Abandoned(Applied),
    Failed(SendError),
}

/// Sends a copy of the message — its body as received, `attributes` — to its own queue,
/// delayed by `delay_secs`, then deletes the original; returns what the delete applied. A
/// failed delete leaves the original to come back too, deduplicated by the ledger like any
/// redelivery.
pub(super) async fn replace_with_copy(
    queue: &Queue,
    receipt: &Receipt,
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
        send_ids(queue, received),
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
pub(super) fn take_counter(
    attributes: &mut HashMap<String, MessageAttributeValue>,
    name: &str,
) -> u64 {
    attributes
        .remove(name)
        .and_then(|v| v.string_value?.parse().ok())
        .unwrap_or(0)
}

/// A `Number` message attribute.
pub(super) fn number(value: impl ToString) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .expect("data type is set")
}

/// A `String` message attribute.
pub(super) fn string(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// Hands the message back at shutdown: visible to any consumer at once (on FIFO queues, once
/// the receives aborted at shutdown are over; see `Queue::release_visibility_secs`).
pub(super) async fn release(queue: &Queue, receipt: &Receipt) -> Applied {
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
pub(super) async fn apply(
    queue: &Queue,
    receipt: &Receipt,
    action: Action,
    applied: Applied,
) -> Applied {
    match queue.batcher.perform(receipt.clone(), action).await {
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
pub(super) struct Original<'a> {
    pub(super) message: &'a Message,
    pub(super) received: &'a Received,
    pub(super) receipt: &'a Receipt,
}

/// A copy keeps its message's group: on a FIFO queue with a deduplication id that is the
/// original's message id, so a send repeated after an unseen success leaves one copy; on a
/// standard queue (a tenant, for SQS fair queues) when it had one.
pub(super) fn send_ids<'a>(queue: &Queue, received: &'a Received) -> SendIds<'a> {
    if !queue.fifo {
        return SendIds::Standard {
            group_id: received.group_id.as_deref(),
        };
    }
    SendIds::Fifo(FifoIds {
        // SQS sends every FIFO message with its group id.
        group_id: received.group_id.as_deref().unwrap_or("ungrouped"),
        deduplication_id: &received.message_id,
    })
}

/// The message attributes with a string value (`String` and `Number` types, custom subtypes
/// included); binary ones are left out.
pub(super) fn string_attributes(message: &Message) -> std::collections::BTreeMap<String, String> {
    message
        .message_attributes
        .iter()
        .flatten()
        .filter_map(|(name, v)| Some((name.clone(), v.string_value.clone()?)))
        .collect()
}

/// A message attribute holding a whole number (conveyor's own counters and instants).
pub(super) fn number_attribute(message: &Message, name: &str) -> Option<u64> {
    message
        .message_attributes
        .as_ref()?
        .get(name)?
        .string_value()?
        .parse()
        .ok()
}

pub(super) fn system_attribute(
    message: &Message,
    name: MessageSystemAttributeName,
) -> Option<&str> {
    message.attributes.as_ref()?.get(&name).map(String::as_str)
}
