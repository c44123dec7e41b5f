//! Dead-lettering: the original body and attributes plus `conveyor.error`,
//! `conveyor.pipeline`, `conveyor.receive_count` and `conveyor.first_received_at`, sent to the
//! DLQ and then deleted from the queue. SQS's limits (10 attributes, 1 MiB) are met by folding
//! attributes and shortening the reason, never by dropping the message.

use std::collections::HashMap;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};

use super::queue::SendIds;
use super::settle::{
    Applied, MAX_ATTRIBUTES, Original, delete, number, release, retry, send_ids, string,
    system_attribute,
};
use super::{Queue, Received};
use crate::telemetry::{self, SqsOp};

/// Longest `conveyor.error` written to the DLQ; reasons are one line, but a pipeline may
/// produce a long one.
pub(super) const MAX_REASON_CHARS: usize = 1024;

pub(super) async fn dead_letter(
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
    let receive_count = received.receive_count;
    let sent = tokio::select! {
        // Past shutdown's grace period the send is cancelled and the message released: it
        // is dead-lettered again by whoever receives it next (the DLQ may then hold two
        // copies; nothing is lost).
        () = queue.abandon.cancelled() => return release(queue, receipt).await,
        sent = send_to_dlq(queue, message, received, &received.body, reason, pipeline, None) => sent,
    };
    if sent.is_err() {
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

/// Why a dead letter was not sent (logged here; the message is retried instead).
#[derive(Debug)]
pub(super) struct NotSent;

/// Sends `body` — the message's, or a part of it — to the DLQ with the message's attributes
/// and the reason. A FIFO DLQ gets the message's group, and as deduplication id the message's
/// id, or `part_id` for a part of it.
pub(super) async fn send_to_dlq(
    queue: &Queue,
    message: &Message,
    received: &Received,
    body: &str,
    reason: &str,
    pipeline: Option<&str>,
    part_id: Option<&str>,
) -> Result<(), NotSent> {
    let receive_count = received.receive_count;
    let Some(dlq) = &queue.dlq else {
        tracing::error!(queue = %queue.name, reason, "no dead-letter queue: retrying with backoff instead");
        return Err(NotSent);
    };
    let full = dead_letter_attributes(message, &queue.url, receive_count, reason, pipeline);
    let Some(minimal) = minimal_dead_letter_attributes(reason, body.len(), dlq.max_message_bytes)
    else {
        // Only when the DLQ's MaximumMessageSize is below its queue's (flagged at startup).
        telemetry::dead_letter_refused(&queue.name);
        tracing::error!(queue = %queue.name, body_bytes = body.len(), dlq_max_message_bytes = dlq.max_message_bytes, "CANNOT DEAD-LETTER: the body alone is larger than the DLQ accepts; the message stays on the queue's redrive path (native redrive, else retried with backoff). Raise the DLQ's MaximumMessageSize to the queue's");
        return Err(NotSent);
    };
    // Everything attached if it fits; else only the reason, shortened to fit. If SQS refuses
    // the full copy's attributes as invalid, the minimal one is tried too.
    let mut copies = Vec::new();
    if body.len() + attributes_size(&full) <= dlq.max_message_bytes {
        copies.push(full);
    }
    copies.push(minimal);
    let mut last_error = String::new();
    for attributes in copies {
        queue.endpoint.metrics.request(SqsOp::SendMessage);
        let mut ids = send_ids(queue, received);
        if let (SendIds::Fifo(fifo), Some(id)) = (&mut ids, part_id) {
            fifo.deduplication_id = id;
        }
        match queue
            .api
            .send(
                &dlq.url,
                body,
                attributes,
                received.trace_header.as_deref(),
                0,
                ids,
            )
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                queue.endpoint.metrics.error(SqsOp::SendMessage);
                last_error = e.message;
                if e.transient {
                    break;
                }
            }
        }
    }
    tracing::error!(queue = %queue.name, error = %last_error, "sending to the DLQ failed; the message will come back");
    Err(NotSent)
}

/// Only `conveyor.error`, its reason shortened so that body and attribute fit in `max_bytes`;
/// `None` when not even a short reason fits beside the body.
pub(super) fn minimal_dead_letter_attributes(
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
pub(super) fn dead_letter_attributes(
    message: &Message,
    source_queue: &str,
    receive_count: u32,
    reason: &str,
    pipeline: Option<&str>,
) -> HashMap<String, MessageAttributeValue> {
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
        // The engine's counters start afresh; a batch stays a batch (its body is an array),
        // and a pipeline's routing attributes stay (`conveyor.drop_key`).
        .filter(|(name, _)| !super::ENGINE_ATTRIBUTES.contains(&name.as_str()))
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
pub(super) fn attributes_size(attributes: &HashMap<String, MessageAttributeValue>) -> usize {
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
