//! SQS facts conveyor reads about a queue before consuming it.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use serde::Deserialize;

use crate::config::QueueConfig;

/// What conveyor needs to know about a queue, read once at startup.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub url: String,
    pub arn: String,
    /// From the queue's RedrivePolicy; `None` when the queue has none.
    pub redrive: Option<RedrivePolicy>,
    pub approximate_visible: u64,
    pub approximate_in_flight: u64,
    /// MaximumMessageSize: the largest body plus attributes the queue accepts.
    pub max_message_bytes: usize,
    /// KmsMasterKeyId: the KMS key of an SSE-KMS queue (a key id, ARN or alias).
    pub kms_key: Option<String>,
    /// A FIFO queue (`FifoQueue`): ordered per message group.
    pub fifo: bool,
}

/// The queue's native redrive policy (a JSON string attribute).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedrivePolicy {
    pub dead_letter_target_arn: String,
    #[serde(deserialize_with = "number_or_string")]
    pub max_receive_count: u32,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    // SQS writes maxReceiveCount as a number; some tools and emulators write a string. Read
    // as a JSON value (an untagged enum cannot see numbers under serde_json's
    // arbitrary_precision, which keeps drops' numbers intact).
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| serde::de::Error::custom("maxReceiveCount out of range")),
        serde_json::Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        _ => Err(serde::de::Error::custom(
            "maxReceiveCount is neither a number nor a string",
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueLookupError {
    #[error("queue {name:?} not found or not accessible: {source}")]
    Resolve {
        name: String,
        #[source]
        source: aws_sdk_sqs::Error,
        /// A network error, a timeout, throttling or a 5xx: trying again may work.
        transient: bool,
    },
    #[error("reading attributes of {url}: {source}")]
    Attributes {
        url: String,
        #[source]
        source: aws_sdk_sqs::Error,
        transient: bool,
    },
    #[error("queue {url} has an unreadable RedrivePolicy: {reason}")]
    Redrive { url: String, reason: String },
    #[error("the queue has neither url nor name configured")]
    Unnamed,
    /// No such queue (the in-memory queues answer this; SQS answers with `Resolve`).
    #[error("{0}")]
    NotFound(String),
    #[error("shutdown requested before the queue could be reached")]
    Stopped,
    /// A FIFO queue with a standard DLQ, or the reverse: SQS refuses every dead letter sent
    /// across (a FIFO queue needs a group id, a standard one takes none).
    #[error(
        "queue {queue} is {} but its DLQ {dlq} is {}",
        kind(*queue_fifo),
        kind(!*queue_fifo)
    )]
    DeadLetterKind {
        queue: String,
        dlq: String,
        queue_fifo: bool,
    },
}

fn kind(fifo: bool) -> &'static str {
    if fifo { "FIFO" } else { "a standard queue" }
}

impl QueueLookupError {
    /// Whether the same lookup may succeed later (SQS or the network is having a blip), as
    /// opposed to an answer no retry changes (no such queue, access denied, bad region).
    pub fn is_transient(&self) -> bool {
        match self {
            QueueLookupError::Resolve { transient, .. }
            | QueueLookupError::Attributes { transient, .. } => *transient,
            QueueLookupError::Redrive { .. }
            | QueueLookupError::Unnamed
            | QueueLookupError::NotFound(_)
            | QueueLookupError::Stopped
            | QueueLookupError::DeadLetterKind { .. } => false,
        }
    }

    /// What an operator can do about it.
    pub fn fix(&self) -> &'static str {
        match self {
            QueueLookupError::Resolve { .. } | QueueLookupError::Attributes { .. } => {
                "check the queue's name or URL, the region (AWS_REGION) and that the credentials \
                 allow sqs:GetQueueUrl and sqs:GetQueueAttributes (`conveyor policy` prints what \
                 is needed); `conveyor infra up` creates the queue"
            }
            QueueLookupError::Redrive { .. } => {
                "fix the queue's RedrivePolicy (`conveyor infra up` writes a valid one)"
            }
            QueueLookupError::Unnamed => "set queues.<key>.url or queues.<key>.name",
            QueueLookupError::NotFound(_) => "create the queue first",
            QueueLookupError::Stopped => "nothing: shutdown was requested",
            QueueLookupError::DeadLetterKind { .. } => {
                "a FIFO queue needs a FIFO DLQ (its name ends in .fifo) and a standard queue a \
                 standard one: point queues.<key>.dlq_url or the queue's RedrivePolicy at a DLQ of \
                 the same kind (`conveyor infra up` with infra.fifo = true creates both)"
            }
        }
    }
}

/// 256 KiB was SQS's long-standing MaximumMessageSize; assumed if the attribute is missing.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 262_144;

/// Resolves the configured queue (by URL or name) and reads its attributes.
pub async fn describe_queue(
    client: &Client,
    queue: &QueueConfig,
) -> Result<QueueInfo, QueueLookupError> {
    let url = match (&queue.url, &queue.name) {
        (Some(url), _) => url.clone(),
        (None, Some(name)) => client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| QueueLookupError::Resolve {
                name: name.clone(),
                transient: crate::fault::classify::is_transient(&e),
                source: e.into(),
            })?
            .queue_url
            .unwrap_or_default(),
        (None, None) => return Err(QueueLookupError::Unnamed),
    };
    let attributes = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| QueueLookupError::Attributes {
            url: url.clone(),
            transient: crate::fault::classify::is_transient(&e),
            source: e.into(),
        })?
        .attributes
        .unwrap_or_default();
    let number = |name: QueueAttributeName| {
        attributes
            .get(&name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let redrive = attributes
        .get(&QueueAttributeName::RedrivePolicy)
        .filter(|policy| !policy.is_empty())
        .map(|policy| serde_json::from_str::<RedrivePolicy>(policy))
        .transpose()
        .map_err(|e| QueueLookupError::Redrive {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    Ok(QueueInfo {
        arn: attributes
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .unwrap_or_default(),
        redrive,
        approximate_visible: number(QueueAttributeName::ApproximateNumberOfMessages),
        approximate_in_flight: number(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        kms_key: attributes
            .get(&QueueAttributeName::KmsMasterKeyId)
            .filter(|k| !k.is_empty())
            .cloned(),
        max_message_bytes: attributes
            .get(&QueueAttributeName::MaximumMessageSize)
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        fifo: is_fifo(&attributes, &url),
        url,
    })
}

/// Whether a queue is FIFO: its `FifoQueue` attribute, or (when the attribute was not read)
/// its name, which SQS requires to end in `.fifo` for exactly those queues.
fn is_fifo(attributes: &std::collections::HashMap<QueueAttributeName, String>, url: &str) -> bool {
    attributes
        .get(&QueueAttributeName::FifoQueue)
        .map_or_else(|| url.ends_with(".fifo"), |v| v == "true")
}

/// What dead-lettering into a queue needs to know: its MaximumMessageSize in bytes (body plus
/// attributes) and whether it is FIFO.
pub async fn dlq_facts(client: &Client, url: &str) -> Result<(usize, bool), QueueLookupError> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::MaximumMessageSize)
        .attribute_names(QueueAttributeName::FifoQueue)
        .send()
        .await
        .map_err(|e| QueueLookupError::Attributes {
            url: url.to_owned(),
            transient: crate::fault::classify::is_transient(&e),
            source: e.into(),
        })?
        .attributes
        .unwrap_or_default();
    let max_message_bytes = attributes
        .get(&QueueAttributeName::MaximumMessageSize)
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    Ok((max_message_bytes, is_fifo(&attributes, url)))
}

/// The URL of a queue given its ARN (`arn:aws:sqs:<region>:<account>:<name>`).
pub async fn url_for_arn(client: &Client, arn: &str) -> Result<String, QueueLookupError> {
    let mut parts = arn.splitn(6, ':');
    let (account, name) = (
        parts.nth(4).unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    Ok(client
        .get_queue_url()
        .queue_name(name)
        .queue_owner_aws_account_id(account)
        .send()
        .await
        .map_err(|e| QueueLookupError::Resolve {
            name: arn.to_owned(),
            transient: crate::fault::classify::is_transient(&e),
            source: e.into(),
        })?
        .queue_url
        .unwrap_or_default())
}

/// The `AWSTraceHeader` system attribute carrying `header` (X-Ray format), for a send.
pub fn trace_header_attribute(
    header: Option<String>,
) -> Option<
    std::collections::HashMap<
        aws_sdk_sqs::types::MessageSystemAttributeNameForSends,
        aws_sdk_sqs::types::MessageSystemAttributeValue,
    >,
> {
    let value = aws_sdk_sqs::types::MessageSystemAttributeValue::builder()
        .data_type("String")
        .string_value(header?)
        .build()
        .ok()?;
    Some(std::collections::HashMap::from([(
        aws_sdk_sqs::types::MessageSystemAttributeNameForSends::AwsTraceHeader,
        value,
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redrive_policy_accepts_number_and_string_counts() {
        for json in [
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:dlq","maxReceiveCount":3}"#,
            r#"{"deadLetterTargetArn":"arn:aws:sqs:us-east-1:1:dlq","maxReceiveCount":"3"}"#,
        ] {
            let p: RedrivePolicy = serde_json::from_str(json).unwrap();
            assert_eq!(p.max_receive_count, 3);
            assert_eq!(p.dead_letter_target_arn, "arn:aws:sqs:us-east-1:1:dlq");
        }
    }
}
