//! `conveyor dlq stats|peek|redrive`: inspect a queue's dead-letter queue and move messages
//! back. Inspection never consumes: messages are received with a short visibility and
//! released at once. Redrive is receive → send to the source queue (with the engine's own
//! attributes removed: `engine::ENGINE_ATTRIBUTES`) → delete, and never deletes before the
//! send succeeded.
//!
//! Why not StartMessageMoveTask: it cannot remove attributes, and it routes by
//! `DeadLetterQueueSourceArn`, which SQS sets only on its own (native) redrives — conveyor's
//! dead letters are SendMessage copies that carry `conveyor.source_queue` instead.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    Message, MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
};
use serde_json::json;

use super::progress::{Progress, Unit};
use crate::config::Config;

/// How long inspected messages stay hidden before they are released (they are released at
/// once; this only bounds a crash between receive and release).
pub(crate) const INSPECT_VISIBILITY_SECS: i32 = 30;
/// Attribute conveyor adds when a message's own attributes would pass SQS's limit of 10.
const FOLDED: &str = "conveyor.original_attributes";

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// Depth, age of the oldest sampled message, and counts by failure reason (sampled
    /// without consuming).
    Stats {
        /// Most messages to sample for ages and reasons.
        #[arg(long, default_value_t = 100)]
        sample: usize,
    },
    /// Show dead-lettered messages: id, receive count, first received, source queue, reason,
    /// pipeline, body size. Nothing is consumed.
    Peek {
        #[arg(long, default_value_t = 10)]
        max: usize,
        /// Also print each body (message content: only where you may see it).
        #[arg(long)]
        show_body: bool,
    },
    /// Move messages back to the queue they failed on, conveyor's attributes removed.
    Redrive {
        /// Most messages to move (default: all).
        #[arg(long)]
        max: Option<usize>,
        /// Most messages per second.
        #[arg(long)]
        rate: Option<f64>,
    },
}

/// `conveyor dlq …`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configured queue (key under [queues]) whose DLQ to work on; default: the only one.
    #[arg(long, global = true)]
    pub queue: Option<String>,
    #[command(subcommand)]
    pub command: DlqCommand,
}

/// A dead-lettered message as conveyor recorded it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub receive_count: Option<String>,
    pub first_received_at: Option<String>,
    pub source_queue: Option<String>,
    pub reason: Option<String>,
    pub pipeline: Option<String>,
    pub body_bytes: usize,
    pub sent_at_ms: Option<i64>,
}

impl DeadLetter {
    pub(crate) fn of(m: &Message) -> Self {
        let attr = |name: &str| {
            m.message_attributes
                .as_ref()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value())
                .map(str::to_owned)
        };
        Self {
            message_id: m.message_id.clone().unwrap_or_default(),
            receive_count: attr("conveyor.receive_count"),
            first_received_at: attr("conveyor.first_received_at"),
            source_queue: attr("conveyor.source_queue"),
            reason: attr("conveyor.error"),
            pipeline: attr("conveyor.pipeline"),
            body_bytes: m.body.as_deref().map_or(0, str::len),
            sent_at_ms: m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|v| v.parse().ok()),
        }
    }

    /// The reason without its details: `poison message`, `unrouted`, `retries exhausted …`.
    pub fn reason_class(&self) -> String {
        match &self.reason {
            None => "(no conveyor.error: natively redriven)".into(),
            Some(r) => {
                let head = r.split(':').next().unwrap_or(r);
                // "retries exhausted after 3 receives (maxReceiveCount 3)" → "retries exhausted"
                head.split(" after ")
                    .next()
                    .unwrap_or(head)
                    .trim()
                    .to_owned()
            }
        }
    }
}

/// The DLQ and source queue of the chosen configured queue.
pub struct Target {
    pub dlq_url: String,
    pub source_url: String,
}

/// Finds the DLQ of `--queue` (or the only configured queue).
pub async fn target(client: &Client, config: &Config, key: Option<&str>) -> anyhow::Result<Target> {
    let (name, queue) = match key {
        Some(k) => (
            k,
            config
                .queues
                .get(k)
                .ok_or_else(|| anyhow::anyhow!("--queue {k}: no [queues.{k}] in the config"))?,
        ),
        None if config.queues.len() == 1 => {
            let (k, q) = config.queues.iter().next().expect("one queue");
            (k.as_str(), q)
        }
        None => anyhow::bail!(
            "{} queues configured: choose one with --queue",
            config.queues.len()
        ),
    };
    let info = crate::sqs::describe_queue(client, queue).await?;
    let dlq_url = match (&queue.dlq_url, &info.redrive) {
        (Some(url), _) => url.clone(),
        (None, Some(r)) => crate::sqs::url_for_arn(client, &r.dead_letter_target_arn).await?,
        (None, None) => anyhow::bail!("queues.{name} has no DLQ: no RedrivePolicy and no dlq_url"),
    };
    Ok(Target {
        dlq_url,
        source_url: info.url,
    })
}

/// Receives up to `max` messages with a short visibility (not consuming them).
pub(crate) async fn receive(
    client: &Client,
    url: &str,
    max: usize,
    visibility: i32,
) -> anyhow::Result<Vec<Message>> {
    let mut all = Vec::new();
    while all.len() < max {
        let batch = client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages((max - all.len()).min(10) as i32)
            .visibility_timeout(visibility)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await?
            .messages
            .unwrap_or_default();
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    Ok(all)
}

/// Makes inspected messages visible again.
pub(crate) async fn release(
    client: &Client,
    url: &str,
    messages: &[Message],
) -> anyhow::Result<()> {
    for m in messages {
        if let Some(receipt) = &m.receipt_handle {
            client
                .change_message_visibility()
                .queue_url(url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await?;
        }
    }
    Ok(())
}

/// Runs `conveyor dlq …`.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<std::process::ExitCode> {
    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    let client = Client::new(&sdk);
    let target = target(&client, config, args.queue.as_deref()).await?;
    match args.command {
        DlqCommand::Stats { sample } => stats(&client, &target, sample).await?,
        DlqCommand::Peek { max, show_body } => peek(&client, &target, max, show_body).await?,
        DlqCommand::Redrive { max, rate } => redrive(&client, &target, max, rate).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn stats(client: &Client, target: &Target, sample: usize) -> anyhow::Result<()> {
    let attributes = client
        .get_queue_attributes()
        .queue_url(&target.dlq_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await?
        .attributes
        .unwrap_or_default();
    let messages = receive(client, &target.dlq_url, sample, INSPECT_VISIBILITY_SECS).await?;
    release(client, &target.dlq_url, &messages).await?;
    let letters: Vec<DeadLetter> = messages.iter().map(DeadLetter::of).collect();
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for l in &letters {
        *by_reason.entry(l.reason_class()).or_default() += 1;
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let oldest_age_secs = letters
        .iter()
        .filter_map(|l| l.sent_at_ms)
        .min()
        .map(|t| (now_ms - t).max(0) / 1000);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "dlq": target.dlq_url,
            "visible": attributes.get(&QueueAttributeName::ApproximateNumberOfMessages),
            "in_flight": attributes.get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            "sampled": letters.len(),
            "oldest_sampled_age_secs": oldest_age_secs,
            "by_reason": by_reason,
        }))?
    );
    Ok(())
}

async fn peek(client: &Client, target: &Target, max: usize, show_body: bool) -> anyhow::Result<()> {
    let messages = receive(client, &target.dlq_url, max, INSPECT_VISIBILITY_SECS).await?;
    release(client, &target.dlq_url, &messages).await?;
    for m in &messages {
        let mut line = serde_json::to_value(DeadLetter::of(m))?;
        if show_body {
            line["body"] = json!(m.body());
        }
        println!("{line}");
    }
    if messages.is_empty() {
        eprintln!("{} is empty", target.dlq_url);
    }
    Ok(())
}

/// The message's attributes for its way back: the engine's removed (a batch's
/// `conveyor.batch` and a drop's `conveyor.drop_key` kept), folded originals restored.
pub fn cleaned_attributes(m: &Message) -> HashMap<String, MessageAttributeValue> {
    let all = m.message_attributes.clone().unwrap_or_default();
    let mut kept: HashMap<String, MessageAttributeValue> = all
        .iter()
        .filter(|(name, _)| !crate::engine::ENGINE_ATTRIBUTES.contains(&name.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(folded) = all.get(FOLDED).and_then(|v| v.string_value())
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(folded)
    {
        for (name, v) in map {
            let data_type = v["DataType"].as_str().unwrap_or("String");
            let mut b = MessageAttributeValue::builder().data_type(data_type);
            if let Some(s) = v["StringValue"].as_str() {
                b = b.string_value(s);
            } else if let Some(bin) = v["BinaryValue"]
                .as_str()
                .and_then(|b| aws_smithy_types::base64::decode(b).ok())
            {
                b = b.binary_value(aws_smithy_types::Blob::new(bin));
            }
            if let Ok(value) = b.build() {
                kept.insert(name, value);
            }
        }
    }
    kept
}

async fn redrive(
    client: &Client,
    target: &Target,
    max: Option<usize>,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let total = client
        .get_queue_attributes()
        .queue_url(&target.dlq_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await?
        .attributes
        .unwrap_or_default()
        .get(&QueueAttributeName::ApproximateNumberOfMessages)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let goal = max.map_or(total, |m| m.min(total));
    let pause = rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    // Every message of a batch must be sent and deleted before its visibility runs out, or it
    // reappears in the DLQ and is sent twice: at a slow rate, receive fewer at once.
    let per_batch = redrive_batch_size(pause);
    let progress = Progress::new(goal as u64, "redriving", Unit::Items("messages"));
    let (mut moved, mut failed, mut undeleted) = (0usize, 0usize, 0usize);
    while moved + undeleted < goal {
        let want = (goal - moved - undeleted).min(per_batch);
        let batch = receive(
            client,
            &target.dlq_url,
            want,
            REDRIVE_VISIBILITY_SECS as i32,
        )
        .await?;
        if batch.is_empty() {
            break;
        }
        for (i, m) in batch.into_iter().enumerate() {
            if i > 0
                && let Some(pause) = pause
            {
                tokio::time::sleep(pause).await;
            }
            let destination = DeadLetter::of(&m)
                .source_queue
                .unwrap_or_else(|| target.source_url.clone());
            // The producer's trace goes back with it, so the redriven message still links to it.
            let trace_header = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                .cloned();
            let mut send = client
                .send_message()
                .queue_url(&destination)
                .message_body(m.body().unwrap_or_default())
                .set_message_attributes(Some(cleaned_attributes(&m)))
                .set_message_system_attributes(crate::sqs::trace_header_attribute(trace_header));
            // Back into a FIFO queue (SQS ties the .fifo suffix to FIFO queues) with the group
            // it was dead-lettered from, deduplicated by the dead letter's own id: a redrive
            // repeated after a send whose delete failed leaves one copy (within SQS's 5-minute
            // window).
            if destination.ends_with(".fifo") {
                let group = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId));
                let Some(group) = group else {
                    failed += 1;
                    progress.note(format!(
                        "could not send {} back to the FIFO queue {destination}: it has no MessageGroupId (left in the DLQ)",
                        m.message_id().unwrap_or("?")
                    ));
                    continue;
                };
                send = send
                    .message_group_id(group)
                    .message_deduplication_id(format!(
                        "redrive-{}",
                        m.message_id().unwrap_or_default()
                    ));
            }
            let sent = send.send().await;
            match sent {
                Ok(_) => {
                    let deleted = client
                        .delete_message()
                        .queue_url(&target.dlq_url)
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .send()
                        .await;
                    match deleted {
                        Ok(_) => moved += 1,
                        Err(e) => {
                            // Sent back, still in the DLQ: it reappears there, and a second
                            // redrive would send it again. Say so; go on with the rest.
                            undeleted += 1;
                            progress.note(format!(
                                "sent {} back but could not delete it from the DLQ (it will show there again; do not redrive it twice): {}",
                                m.message_id().unwrap_or("?"),
                                crate::safe::error_chain(&aws_sdk_sqs::Error::from(e))
                            ));
                        }
                    }
                }
                Err(e) => {
                    // Left in the DLQ: it reappears there when its visibility runs out.
                    failed += 1;
                    progress.note(format!(
                        "could not send {} back to {destination}: {}",
                        m.message_id().unwrap_or("?"),
                        crate::safe::error_chain(&aws_sdk_sqs::Error::from(e))
                    ));
                }
            }
            progress.advance(1);
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    progress.finish();
    println!(
        "{}",
        json!({"redriven": moved, "failed": failed, "sent_not_deleted": undeleted, "dlq": target.dlq_url})
    );
    if failed > 0 || undeleted > 0 {
        anyhow::bail!(
            "{failed} messages could not be sent back (they remain in the DLQ); {undeleted} were sent back but remain in the DLQ too"
        );
    }
    Ok(())
}

/// How long a message received for redrive stays invisible in the DLQ.
const REDRIVE_VISIBILITY_SECS: u64 = 120;

/// Messages to receive at once so that, at one per `pause`, the last of them is sent well
/// within [`REDRIVE_VISIBILITY_SECS`] (SQS returns at most 10 per receive).
fn redrive_batch_size(pause: Option<Duration>) -> usize {
    const MARGIN: Duration = Duration::from_secs(20);
    match pause {
        None => 10,
        Some(pause) => {
            let usable = Duration::from_secs(REDRIVE_VISIBILITY_SECS) - MARGIN;
            ((usable.as_secs_f64() / pause.as_secs_f64()).floor() as usize).clamp(1, 10)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_redrives_receive_only_what_they_send_before_it_reappears() {
        assert_eq!(redrive_batch_size(None), 10);
        assert_eq!(redrive_batch_size(Some(Duration::from_millis(100))), 10);
        assert_eq!(redrive_batch_size(Some(Duration::from_secs(20))), 5);
        assert_eq!(redrive_batch_size(Some(Duration::from_secs(120))), 1);
        assert_eq!(redrive_batch_size(Some(Duration::from_secs(600))), 1);
    }

    fn string(v: &str) -> MessageAttributeValue {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    }

    #[test]
    fn cleaned_attributes_drop_conveyors_and_unfold_originals() {
        let m = Message::builder()
            .message_attributes("conveyor.error", string("boom"))
            .message_attributes("conveyor.pipeline", string("graph"))
            .message_attributes("mine", string("kept"))
            .message_attributes(
                FOLDED,
                string(r#"{"folded":{"DataType":"String","StringValue":"back"}}"#),
            )
            .build();
        let a = cleaned_attributes(&m);
        assert_eq!(a.len(), 2);
        assert_eq!(a["mine"].string_value(), Some("kept"));
        assert_eq!(a["folded"].string_value(), Some("back"));
    }

    #[test]
    fn reasons_are_classed_without_their_details() {
        let l = |reason: &str| {
            DeadLetter::of(
                &Message::builder()
                    .message_attributes("conveyor.error", string(reason))
                    .build(),
            )
            .reason_class()
        };
        assert_eq!(
            l("poison message: body is not JSON: syntax error at line 1 column 1"),
            "poison message"
        );
        assert_eq!(
            l("retries exhausted after 3 receives (maxReceiveCount 3): graph: down"),
            "retries exhausted"
        );
        assert_eq!(l("unrouted: no route for source \"x\""), "unrouted");
        assert_eq!(l("graph: bad input"), "graph");
    }
}
