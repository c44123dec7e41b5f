//! Splitting a batch whose events ended differently ([`Outcome::Split`]): each part — the
//! events that ended alike — is sent on as a message of its own, and the original deleted once
//! every part is sent. Nothing that succeeded is handled again, and each event keeps its own
//! retries:
//!
//! - a **retry** part goes back to the queue delayed by the backoff, carrying
//!   `conveyor.attempts`, the receives its events have spent (the copy's own receives count on
//!   top: see `Received::receive_count`). At the queue's maxReceiveCount it is dead-lettered
//!   with the reason instead. A retry only a dependency's outage caused spends nothing.
//! - a **deferred** part is sent delayed until its time, as a deferred message is.
//! - a **dead-letter** part goes to the DLQ with its reason: one event, one dead letter.
//!
//! A part that cannot be sent leaves the original to be retried whole: the parts sent already
//! may then be sent twice, and the events that succeeded run again — where the ledger or the
//! pipeline's own record skips them.

use std::collections::HashMap;

use aws_sdk_sqs::types::MessageAttributeValue;
use sha2::{Digest, Sha256};

use super::backoff;
use super::dead_letter::send_to_dlq;
use super::queue::SendIds;
use super::settle::{
    ATTEMPTS_ATTRIBUTE, Applied, BATCH_ATTRIBUTE, BATCH_ID_ATTRIBUTE, MAX_ATTRIBUTES,
    MAX_DELAY_SECS, Original, delete, mark_deferred, number, release, retry, send_ids, string,
    take_counter,
};
use super::{Outcome, Part, Queue};
use crate::telemetry::{self, SqsOp};

/// Sends each part on, then deletes the original.
pub(super) async fn split(queue: &Queue, original: Original<'_>, parts: Vec<Part>) -> Applied {
    let Original {
        message,
        received,
        receipt,
    } = original;
    let count = parts.len();
    for part in parts {
        let sent = tokio::select! {
            // Past shutdown's grace period: released, and split again by whoever receives it.
            () = queue.abandon.cancelled() => return release(queue, receipt).await,
            sent = send_part(queue, message, received, part) => sent,
        };
        if !sent {
            tracing::error!(queue = %queue.name, message_id = %received.message_id, "a part of a split batch could not be sent; the batch will be retried whole");
            return retry(queue, receipt, received.receive_count, None).await;
        }
    }
    telemetry::message_split(&queue.name);
    match delete(queue, receipt).await {
        Applied::Deleted => Applied::Split { parts: count },
        other => other,
    }
}

/// A part's deduplication id on a FIFO queue: the original's message id and the part's body,
/// so a send repeated after an unseen success leaves one copy, and two parts never collide.
fn part_id(message_id: &str, body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    format!("{message_id}-{}", hex::encode(&digest[..8]))
}

/// Sends one part on; `false` when it did not get through.
async fn send_part(
    queue: &Queue,
    message: &aws_sdk_sqs::types::Message,
    received: &super::Received,
    part: Part,
) -> bool {
    let id = part_id(&received.message_id, &part.body);
    let mut attributes = message.message_attributes.clone().unwrap_or_default();
    attributes.remove(BATCH_ATTRIBUTE);
    if part.events > 1 {
        attributes.insert(BATCH_ATTRIBUTE.to_owned(), number(part.events));
    }
    // Its events keep the identity they had in the batch they first came in.
    if !attributes.contains_key(BATCH_ID_ATTRIBUTE) && attributes.len() < MAX_ATTRIBUTES {
        attributes.insert(BATCH_ID_ATTRIBUTE.to_owned(), string(&received.message_id));
    }
    let count = received.receive_count;
    // The part as a message: the original's attributes with the part's `conveyor.batch`.
    let mut part_message = message.clone();
    part_message.message_attributes = Some(attributes.clone());
    let dead_letter = async |reason: &str, pipeline: Option<&str>, label: &'static str| {
        let sent = send_to_dlq(
            queue,
            &part_message,
            received,
            &part.body,
            reason,
            pipeline,
            Some(&id),
        )
        .await
        .is_ok();
        if sent {
            telemetry::message_dead_lettered(&queue.name, label);
        }
        sent
    };
    match part.outcome {
        Outcome::Retry {
            reason,
            pipeline,
            after,
            outage,
        } => {
            if !outage && count >= queue.max_receive_count && queue.dlq.is_some() {
                let reason = format!(
                    "retries exhausted after {count} receives (maxReceiveCount {}): {reason}",
                    queue.max_receive_count
                );
                return dead_letter(&reason, pipeline.as_deref(), "retries_exhausted").await;
            }
            // An outage is not the events' fault: this receive is not counted.
            let spent = if outage {
                count.saturating_sub(1)
            } else {
                count
            };
            take_counter(&mut attributes, ATTEMPTS_ATTRIBUTE);
            if attributes.len() < MAX_ATTRIBUTES {
                attributes.insert(ATTEMPTS_ATTRIBUTE.to_owned(), number(spent));
            }
            let backoff = backoff::retry_delay_secs(&queue.config.retry, count, &mut rand::rng());
            let delay_secs = after
                .map_or(backoff, |a| (a.as_secs() as u32).max(backoff))
                .min(MAX_DELAY_SECS);
            let sent = send_copy(queue, received, &part.body, attributes, delay_secs, &id).await;
            if sent {
                queue.endpoint.metrics.retried();
            }
            sent
        }
        Outcome::Defer { until, .. } => {
            // Without room for the deferral's attributes the part is only delayed (at most
            // 15 minutes), and deferred again by its handler if it comes back early.
            mark_deferred(&mut attributes, until, true);
            let remaining = until
                .duration_since(queue.clock.now())
                .unwrap_or_default()
                .as_secs_f64()
                .ceil() as u64;
            let delay_secs = remaining.min(u64::from(MAX_DELAY_SECS)) as u32;
            telemetry::message_deferred(&queue.name);
            send_copy(queue, received, &part.body, attributes, delay_secs, &id).await
        }
        Outcome::DeadLetter {
            reason,
            label,
            pipeline,
        } => dead_letter(&reason, pipeline.as_deref(), label).await,
        // Nothing to send on.
        Outcome::Success | Outcome::Split(_) => true,
    }
}

/// Sends `body` to the message's own queue, delayed by `delay_secs` (none on a FIFO queue,
/// which takes no per-message delay).
async fn send_copy(
    queue: &Queue,
    received: &super::Received,
    body: &str,
    attributes: HashMap<String, MessageAttributeValue>,
    delay_secs: u32,
    part_id: &str,
) -> bool {
    let mut ids = send_ids(queue, received);
    if let SendIds::Fifo(fifo) = &mut ids {
        fifo.deduplication_id = part_id;
    }
    let delay_secs = if queue.fifo { 0 } else { delay_secs };
    queue.endpoint.metrics.request(SqsOp::SendMessage);
    match queue
        .api
        .send(
            &queue.url,
            body,
            attributes,
            received.trace_header.as_deref(),
            delay_secs,
            ids,
        )
        .await
    {
        Ok(()) => true,
        Err(e) => {
            queue.endpoint.metrics.error(SqsOp::SendMessage);
            tracing::warn!(queue = %queue.name, error = %e.message, "sending a part of a split batch failed");
            false
        }
    }
}
