//! The seam between the engine and SQS: the few calls the engine makes, implemented over
//! aws-sdk-sqs here and in memory in [`super::memory`] (for the engine's unit tests and its
//! benchmark). Metrics and retries stay in the engine; this layer only calls.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName,
};
use futures::future::BoxFuture;

use super::DeadLetterQueue;
use crate::config::{QueueConfig, SQS_MAX_WAIT_SECS};
use crate::sqs::{self, QueueInfo, QueueLookupError};

/// One entry's failure in a batch call: SQS's error code, and whether it is the sender's
/// fault (retrying cannot help).
pub type EntryFailure = (String, bool);

/// A failed ReceiveMessage.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ReceiveError {
    pub message: String,
    /// No answer came (a network error or timeout) or SQS failed internally: the receive may
    /// have taken messages whose answer was lost, so a FIFO receive is retried with the same
    /// `ReceiveRequestAttemptId` to get them back. After any other error (throttling above
    /// all) SQS refuses the old id: the retry takes a new one.
    pub retry_same_attempt: bool,
}

/// What a send carries besides the body: on a FIFO queue its group and deduplication ids; on a
/// standard queue the message group SQS fair queues use (a tenant), when the original had one.
#[derive(Debug, Clone, Copy)]
pub enum SendIds<'a> {
    Standard { group_id: Option<&'a str> },
    Fifo(FifoIds<'a>),
}

/// What a send to a FIFO queue carries besides the body.
#[derive(Debug, Clone, Copy)]
pub struct FifoIds<'a> {
    pub group_id: &'a str,
    /// Stable across retries of the same send, so SQS keeps one copy (within its 5-minute
    /// deduplication window) if an earlier attempt got through unseen.
    pub deduplication_id: &'a str,
}

/// A failed SendMessage.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// A blip (network, throttling, 5xx) rather than a refusal.
    pub transient: bool,
}

/// The SQS calls the engine makes. Batch calls take at most 10 entries and answer one
/// `Option<EntryFailure>` per entry, in order.
pub trait QueueApi: Send + Sync + 'static {
    /// The queue's facts and its dead-letter queue, read once at startup.
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        config: &'a QueueConfig,
    ) -> BoxFuture<'a, Result<(QueueInfo, Option<DeadLetterQueue>), QueueLookupError>>;

    /// Long-polls for up to `max` messages (all attributes), hiding them for `visibility_secs`.
    /// `attempt` is a FIFO queue's `ReceiveRequestAttemptId` (see [`ReceiveError`]).
    fn receive<'a>(
        &'a self,
        url: &'a str,
        max: usize,
        wait_secs: u32,
        visibility_secs: u32,
        attempt: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Message>, ReceiveError>>;

    fn delete_batch<'a>(
        &'a self,
        url: &'a str,
        receipts: Vec<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>>;

    /// Sets each message's visibility timeout to its seconds from now.
    fn change_visibility_batch<'a>(
        &'a self,
        url: &'a str,
        entries: Vec<(&'a str, u32)>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>>;

    /// Sends a message, with `trace_header` as its `AWSTraceHeader` (a copy keeps its
    /// producer's); `ids` are [`SendIds::Fifo`] exactly when `url` is a FIFO queue (which
    /// takes no per-message delay).
    fn send<'a>(
        &'a self,
        url: &'a str,
        body: &'a str,
        attributes: HashMap<String, MessageAttributeValue>,
        trace_header: Option<&'a str>,
        delay_secs: u32,
        ids: SendIds<'a>,
    ) -> BoxFuture<'a, Result<(), SendError>>;
}

/// The real thing.
#[derive(Clone)]
pub struct Sqs(pub Client);

impl QueueApi for Sqs {
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        config: &'a QueueConfig,
    ) -> BoxFuture<'a, Result<(QueueInfo, Option<DeadLetterQueue>), QueueLookupError>> {
        Box::pin(lookup(&self.0, name, config))
    }

    fn receive<'a>(
        &'a self,
        url: &'a str,
        max: usize,
        wait_secs: u32,
        visibility_secs: u32,
        attempt: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Message>, ReceiveError>> {
        Box::pin(async move {
            let mut receive = self
                .0
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(max as i32)
                .wait_time_seconds(wait_secs as i32)
                .visibility_timeout(visibility_secs as i32)
                // Only what the engine and handlers use: every attribute asked for is parsed
                // and allocated per message.
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(
                    MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
                )
                .message_system_attribute_names(MessageSystemAttributeName::AwsTraceHeader)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .message_attribute_names("All");
            // An attempt is given this queue's own wait plus the call budget (the client's
            // default allows SQS's longest wait, 20 s): a stale pooled connection behind a
            // proxy that swallows the close then costs `wait + budget`, not 20 s more. A
            // receive that waits the longest (the default) needs no override: overriding costs
            // the SDK a config layer per call.
            let mut overrides = None;
            if wait_secs < SQS_MAX_WAIT_SECS {
                let budget = self
                    .0
                    .config()
                    .timeout_config()
                    .and_then(|t| t.operation_attempt_timeout())
                    .map_or(Duration::from_secs(10), |t| {
                        t.saturating_sub(Duration::from_secs(u64::from(SQS_MAX_WAIT_SECS)))
                    });
                let attempt_timeout = Duration::from_secs(u64::from(wait_secs)) + budget;
                overrides = Some(
                    aws_sdk_sqs::config::Config::builder().timeout_config(
                        aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
                            .operation_attempt_timeout(attempt_timeout)
                            .build(),
                    ),
                );
            }
            // The SDK's own retries would resend the same attempt id after throttling too,
            // which SQS refuses; the engine's poller retries instead, choosing the id by the
            // error (see ReceiveError).
            if let Some(attempt) = attempt {
                overrides = Some(
                    overrides
                        .unwrap_or_default()
                        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled()),
                );
                receive = receive.receive_request_attempt_id(attempt);
            }
            let sent = match overrides {
                Some(overrides) => receive.customize().config_override(overrides).send().await,
                None => receive.send().await,
            };
            sent.map(|out| out.messages.unwrap_or_default())
                .map_err(|e| ReceiveError {
                    retry_same_attempt: answer_lost(&e),
                    message: crate::safe::error_chain(&aws_sdk_sqs::Error::from(e)),
                })
        })
    }

    fn delete_batch<'a>(
        &'a self,
        url: &'a str,
        receipts: Vec<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>> {
        Box::pin(async move {
            let len = receipts.len();
            let entries = receipts.into_iter().enumerate().map(|(i, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .expect("id and receipt handle are set")
            });
            let out = self
                .0
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map_err(|e| crate::safe::error_chain(&aws_sdk_sqs::Error::from(e)))?;
            Ok(entry_failures(out.failed, len))
        })
    }

    fn change_visibility_batch<'a>(
        &'a self,
        url: &'a str,
        entries: Vec<(&'a str, u32)>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>> {
        Box::pin(async move {
            let len = entries.len();
            let entries = entries.into_iter().enumerate().map(|(i, (receipt, secs))| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(secs as i32)
                    .build()
                    .expect("id and receipt handle are set")
            });
            let out = self
                .0
                .change_message_visibility_batch()
                .queue_url(url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .map_err(|e| crate::safe::error_chain(&aws_sdk_sqs::Error::from(e)))?;
            Ok(entry_failures(out.failed, len))
        })
    }

    fn send<'a>(
        &'a self,
        url: &'a str,
        body: &'a str,
        attributes: HashMap<String, MessageAttributeValue>,
        trace_header: Option<&'a str>,
        delay_secs: u32,
        ids: SendIds<'a>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let mut send = self
                .0
                .send_message()
                .queue_url(url)
                .message_body(body)
                .set_message_attributes(Some(attributes))
                .set_message_system_attributes(crate::sqs::trace_header_attribute(
                    trace_header.map(str::to_owned),
                ));
            match ids {
                SendIds::Fifo(ids) => {
                    send = send
                        .message_group_id(ids.group_id)
                        .message_deduplication_id(ids.deduplication_id);
                }
                SendIds::Standard { group_id } => {
                    send = send.set_message_group_id(group_id.map(str::to_owned));
                    if delay_secs > 0 {
                        send = send.delay_seconds(delay_secs as i32);
                    }
                }
            }
            send.send().await.map(|_| ()).map_err(|e| SendError {
                transient: crate::fault::classify::is_transient(&e),
                message: crate::safe::error_chain(&aws_sdk_sqs::Error::from(e)),
            })
        })
    }
}

/// Whether a failed receive may have taken messages whose answer never arrived: no answer at
/// all, or SQS failing internally — not throttling, nor any other answer.
fn answer_lost<E: aws_sdk_sqs::error::ProvideErrorMetadata>(
    error: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
) -> bool {
    use aws_sdk_sqs::error::SdkError;
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(e) => {
            e.raw().status().is_server_error()
                && !crate::fault::classify::is_throttling(e.err().code())
        }
        _ => false,
    }
}

/// Spreads a batch call's failed entries over its `len` entries, whose ids are their indexes.
fn entry_failures(
    failed: Vec<aws_sdk_sqs::types::BatchResultErrorEntry>,
    len: usize,
) -> Vec<Option<EntryFailure>> {
    let mut results = vec![None; len];
    for entry in failed {
        if let Some(slot) = entry
            .id
            .parse::<usize>()
            .ok()
            .and_then(|i| results.get_mut(i))
        {
            *slot = Some((entry.code, entry.sender_fault));
        }
    }
    results
}

/// The queue's facts and its dead-letter queue.
async fn lookup(
    client: &Client,
    name: &str,
    config: &QueueConfig,
) -> Result<(QueueInfo, Option<DeadLetterQueue>), QueueLookupError> {
    let info = sqs::describe_queue(client, config).await?;
    let dlq_url = match (&config.dlq_url, &info.redrive) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(redrive)) => {
            Some(sqs::url_for_arn(client, &redrive.dead_letter_target_arn).await?)
        }
        (None, None) => None,
    };
    let dlq = match dlq_url {
        Some(url) => {
            let (max_message_bytes, fifo) = sqs::dlq_facts(client, &url).await?;
            if fifo != info.fifo {
                return Err(QueueLookupError::DeadLetterKind {
                    queue: info.url,
                    dlq: url,
                    queue_fifo: info.fifo,
                });
            }
            if max_message_bytes < info.max_message_bytes {
                tracing::error!(
                    queue = name,
                    url = %info.url,
                    dlq = %url,
                    queue_max_message_bytes = info.max_message_bytes,
                    dlq_max_message_bytes = max_message_bytes,
                    "the DLQ's MaximumMessageSize is smaller than its queue's: the largest messages \
                     cannot be dead-lettered and stay in the queue until its native redrive; set \
                     the DLQ's MaximumMessageSize to at least the queue's"
                );
            }
            Some(DeadLetterQueue {
                max_message_bytes,
                url,
            })
        }
        None => None,
    };
    Ok((info, dlq))
}
