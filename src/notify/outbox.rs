//! Sending to the next stage's queue: one message (ranking → `priority`, delayed until its
//! `sendAfter`) or many (`notify-ingest` → `incoming`, in `SendMessageBatch` calls whose
//! partially failed entries are sent again). Failures come back as [`PipelineError`]s: SQS
//! unreachable, throttled or failing is an outage of SQS (never the message's fault); anything
//! else SQS answers is retryable with its code.
//!
//! **Fair queues.** Every message carries its tenant as its `MessageGroupId`. On a standard
//! queue that is what SQS fair queues group by: with it, SQS keeps one tenant's backlog from
//! raising the others' dwell time (docs/notifications.md, "Tenant fairness").

use std::borrow::Cow;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};

use crate::fault::Dependency;
use crate::fault::PipelineError;
use crate::telemetry::otel;

/// SQS caps DelaySeconds at 900 (15 minutes; SendMessage API reference).
pub const MAX_DELAY_SECS: u32 = 900;
/// SQS takes at most 10 entries per SendMessageBatch, and at most 256 KiB (262,144 bytes) for
/// the whole batch (SendMessageBatch API reference; 1 MiB since 2025 where the queue allows,
/// but the queue's MaximumMessageSize may still be 256 KiB).
pub const MAX_BATCH_ENTRIES: usize = 10;
pub const MAX_BATCH_BYTES: usize = 262_144;
/// Rounds of re-sending a batch's failed entries before the whole drop is retried.
const BATCH_ROUNDS: u32 = 5;

/// A JSON text SQS accepts: SQS refuses characters outside XML 1.0's (`#x9 | #xA | #xD |
/// #x20-#xD7FF | #xE000-#xFFFD | #x10000-#x10FFFF`), and valid JSON can only hold the others
/// inside strings (U+FFFE, U+FFFF raw; control characters only escaped already), so each is
/// written as its `\uXXXX` escape: the same string to any JSON reader, never dropped.
pub fn sqs_safe(json: &str) -> Cow<'_, str> {
    let refused = |c: char| !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..);
    if !json.chars().any(refused) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 12);
    for c in json.chars() {
        if refused(c) {
            out.push_str(&format!("\\u{:04X}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A queue conveyor sends to.
#[derive(Clone)]
pub struct Outbox {
    sqs: Client,
    url: String,
    /// The queue's name, for errors and logs.
    name: String,
}

/// One message of a batch: its body, string attributes and message group (its tenant).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub body: String,
    pub attributes: Vec<(&'static str, String)>,
    /// The `MessageGroupId`: the tenant, for SQS fair queues.
    pub group: Option<String>,
}

impl Outgoing {
    /// Bytes SQS counts toward the batch limit: the body and every attribute's name, type
    /// and value.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .attributes
                .iter()
                .map(|(name, value)| name.len() + "String".len() + value.len())
                .sum::<usize>()
            + self.group.as_ref().map_or(0, String::len)
    }
}

/// Messages gathered into SendMessageBatch calls: at most [`MAX_BATCH_ENTRIES`] and
/// [`MAX_BATCH_BYTES`] each.
#[derive(Default)]
pub struct Calls {
    batch: Vec<Outgoing>,
    bytes: usize,
}

impl Calls {
    /// Adds a message; returns the call it filled, when it did.
    pub fn add(&mut self, message: Outgoing) -> Option<Vec<Outgoing>> {
        let full = (self.batch.len() == MAX_BATCH_ENTRIES
            || self.bytes + message.size() > MAX_BATCH_BYTES)
            .then(|| {
                self.bytes = 0;
                std::mem::take(&mut self.batch)
            });
        self.bytes += message.size();
        self.batch.push(message);
        full.filter(|call| !call.is_empty())
    }

    /// The last call, if any message is left.
    pub fn rest(self) -> Option<Vec<Outgoing>> {
        (!self.batch.is_empty()).then_some(self.batch)
    }
}

impl Outbox {
    /// The queue named `name` (GetQueueUrl). A queue that does not exist is a deployment
    /// mistake reported at startup, naming the key that names it.
    pub async fn resolve(sqs: Client, name: &str, key: &str) -> anyhow::Result<Self> {
        let url = sqs
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{key} = {name:?}: cannot find the queue ({}); run `conveyor infra up` or fix the name",
                    crate::safe::error_chain(&e)
                )
            })?
            .queue_url
            .ok_or_else(|| anyhow::anyhow!("{key} = {name:?}: GetQueueUrl returned no URL"))?;
        Ok(Self {
            sqs,
            url,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one message, visible after `delay_secs` (at most [`MAX_DELAY_SECS`]).
    pub async fn send(&self, message: Outgoing, delay_secs: u32) -> Result<(), PipelineError> {
        let span = otel::send("aws_sqs", &self.name, 1);
        let sent = self
            .sqs
            .send_message()
            .queue_url(&self.url)
            .message_body(message.body)
            .set_message_group_id(message.group)
            .delay_seconds(delay_secs.min(MAX_DELAY_SECS) as i32)
            .set_message_attributes(Some(attributes(message.attributes)))
            .set_message_system_attributes(crate::sqs::trace_header_attribute(otel::header_of(
                &span,
            )))
            .send();
        let sent = otel::traced(span, sent).await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed("sqs:SendMessage", &e)),
        }
    }

    /// Sends up to [`MAX_BATCH_ENTRIES`] messages in one call; entries SQS failed (throttled,
    /// an internal error) are sent again, up to five rounds with growing pauses.
    pub async fn send_batch(&self, messages: Vec<Outgoing>) -> Result<(), PipelineError> {
        let mut pending: Vec<(String, Outgoing)> = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m))
            .collect();
        let mut pause = Duration::from_millis(100);
        let span = otel::send("aws_sqs", &self.name, pending.len());
        let trace = crate::sqs::trace_header_attribute(otel::header_of(&span));
        for round in 1..=BATCH_ROUNDS {
            let entries = pending
                .iter()
                .map(|(id, m)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(id)
                        .message_body(&m.body)
                        .set_message_group_id(m.group.clone())
                        .set_message_attributes(Some(attributes(m.attributes.clone())))
                        .set_message_system_attributes(trace.clone())
                        .build()
                        .map_err(|e| PipelineError::Permanent(format!("building a batch: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let sent = self
                .sqs
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send();
            let out = match otel::traced(span.clone(), sent).await {
                Ok(out) => out,
                Err(e) => return Err(self.failed("sqs:SendMessage", &e)),
            };
            let failed = out.failed();
            if failed.is_empty() {
                return Ok(());
            }
            if let Some(refused) = failed.iter().find(|f| f.sender_fault()) {
                // conveyor checked sizes and attributes before sending: SQS refusing an entry
                // as the sender's fault is a bug or a queue limit lowered under us.
                return Err(PipelineError::Retryable(format!(
                    "SendMessageBatch to {} refused an entry: {}",
                    self.name,
                    refused.code()
                )));
            }
            let codes: Vec<&str> = failed.iter().map(|f| f.code()).collect();
            tracing::warn!(
                queue = %self.name,
                failed = failed.len(),
                round,
                codes = ?codes,
                "SendMessageBatch failed some entries; sending them again"
            );
            let again: std::collections::HashSet<&str> = failed.iter().map(|f| f.id()).collect();
            pending.retain(|(id, _)| again.contains(id.as_str()));
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        Err(PipelineError::Retryable(format!(
            "SendMessageBatch to {}: {} entries still failing after {BATCH_ROUNDS} rounds",
            self.name,
            pending.len()
        )))
    }

    fn failed<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        action: &str,
        e: &aws_sdk_sqs::error::SdkError<E>,
    ) -> PipelineError {
        crate::fault::classify::aws_failure(Dependency::Sqs, action, &self.name, e)
    }
}

fn attributes(
    list: Vec<(&'static str, String)>,
) -> std::collections::HashMap<String, MessageAttributeValue> {
    list.into_iter()
        .filter_map(|(name, value)| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(value)
                .build()
                .ok()
                .map(|v| (name.to_owned(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! SendMessageBatch's partial failures cannot be provoked on LocalStack (it fails a batch
    //! whole or not at all), so this speaks SQS's JSON protocol from a local server that fails
    //! chosen entries, to prove which entries are sent again.

    use std::sync::{Arc, Mutex};

    use axum::http::HeaderMap;
    use serde_json::{Value, json};

    use super::*;

    /// Answers SendMessageBatch with the next scripted failures (entry id, sender fault), and
    /// records the entry ids of every call.
    async fn fake_sqs(
        script: Vec<Vec<(&'static str, bool)>>,
    ) -> (String, Arc<Mutex<Vec<Vec<String>>>>) {
        let calls: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let seen = calls.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let (seen, script) = (seen.clone(), script.clone());
                async move {
                    assert_eq!(headers["x-amz-target"], "AmazonSQS.SendMessageBatch");
                    let request: Value = serde_json::from_str(&body).unwrap();
                    let ids: Vec<String> = request["Entries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["Id"].as_str().unwrap().to_owned())
                        .collect();
                    seen.lock().unwrap().push(ids.clone());
                    let failing = script.lock().unwrap().pop_front().unwrap_or_default();
                    let failed: Vec<Value> = failing
                        .iter()
                        .map(|(id, sender)| json!({"Id": id, "SenderFault": sender, "Code": if *sender { "InvalidParameterValue" } else { "InternalError" }, "Message": "scripted"}))
                        .collect();
                    let successful: Vec<Value> = ids
                        .iter()
                        .filter(|id| !failing.iter().any(|(f, _)| f == id))
                        .map(|id| json!({"Id": id, "MessageId": format!("m-{id}"), "MD5OfMessageBody": "0"}))
                        .collect();
                    (
                        [("content-type", "application/x-amz-json-1.0")],
                        json!({"Successful": successful, "Failed": failed}).to_string(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, calls)
    }

    fn outbox(endpoint: &str) -> Outbox {
        crate::install_crypto_provider();
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_sqs::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .build();
        Outbox {
            sqs: Client::from_conf(config),
            url: format!("{endpoint}/000000000000/incoming"),
            name: "incoming".into(),
        }
    }

    fn messages(n: usize) -> Vec<Outgoing> {
        (0..n)
            .map(|i| Outgoing {
                body: format!("{{\"n\":{i}}}"),
                attributes: vec![],
                group: None,
            })
            .collect()
    }

    #[tokio::test]
    async fn entries_a_batch_failed_are_sent_again_and_only_those() {
        let (endpoint, calls) =
            fake_sqs(vec![vec![("1", false), ("3", false)], vec![("3", false)]]).await;
        outbox(&endpoint).send_batch(messages(5)).await.unwrap();
        assert_eq!(
            *calls.lock().unwrap(),
            vec![vec!["0", "1", "2", "3", "4"], vec!["1", "3"], vec!["3"],]
        );
    }

    #[tokio::test]
    async fn an_entry_refused_as_the_senders_fault_fails_the_batch_naming_the_code() {
        let (endpoint, calls) = fake_sqs(vec![vec![("2", true)]]).await;
        let e = outbox(&endpoint).send_batch(messages(3)).await.unwrap_err();
        assert_eq!(
            e,
            PipelineError::Retryable(
                "SendMessageBatch to incoming refused an entry: InvalidParameterValue".into()
            )
        );
        assert_eq!(calls.lock().unwrap().len(), 1, "not sent again");
    }

    #[tokio::test]
    async fn entries_still_failing_after_five_rounds_fail_the_batch() {
        let (endpoint, calls) = fake_sqs(vec![vec![("0", false)]; 5]).await;
        let e = outbox(&endpoint).send_batch(messages(2)).await.unwrap_err();
        assert!(
            matches!(e, PipelineError::Retryable(ref r) if r.contains("1 entries still failing after 5 rounds")),
            "{e:?}"
        );
        assert_eq!(calls.lock().unwrap().len(), 5);
    }
}
