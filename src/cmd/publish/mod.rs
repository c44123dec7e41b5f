//! `conveyor publish`: build an EnvelopeV1 or BatchProcessingCompleted event (from a file or a
//! built-in sample), validate it with the consumer's own parser, and put it on EventBridge.
//! Identity follows the publishers' fallback chain: flag, then environment, then a generated or
//! default value.

use std::fmt;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use chrono::Utc;
use serde_json::{Value, json};
use uuid::Uuid;

use super::progress::{Progress, Unit};
use crate::telemetry::otel;

/// EventBridge takes at most 10 entries per PutEvents call.
pub const MAX_ENTRIES_PER_CALL: usize = 10;

mod event;

pub use event::{
    EMAIL_SOURCE, EventType, Identity, IdentityInputs, Prepared, PublishError,
    TRANSCRIPTION_SOURCE, parse_detail, prepare, resolve_identity,
};

/// A failed PutEvents entry.
#[derive(Debug)]
pub struct FailedEntry {
    pub code: String,
    pub message: String,
}

impl fmt::Display for FailedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// What one PutEvents call did.
pub struct Put {
    /// Each entry's event id or failure, in order.
    pub entries: Vec<Result<String, FailedEntry>>,
    /// The trace the events carry (their `TraceHeader`), when tracing.
    pub trace_id: Option<String>,
}

/// Puts up to 10 events in one call, in a `send {bus}` span whose context each event carries
/// as its `TraceHeader` — and, for an envelope with no `trace_id` of its own, as its
/// `trace_id` too (a W3C traceparent), since a bus target need not pass the header on.
pub async fn put(
    client: &aws_sdk_eventbridge::Client,
    bus: &str,
    events: &[Prepared],
) -> Result<Put, aws_sdk_eventbridge::Error> {
    let span = otel::publish("aws_eventbridge", bus, events.len());
    let trace = otel::context_of(&span);
    let entries = events
        .iter()
        .map(|e| {
            PutEventsRequestEntry::builder()
                .event_bus_name(bus)
                .source(&e.source)
                .detail_type(&e.detail_type)
                .detail(Value::Object(e.traced_detail(trace.as_ref())).to_string())
                .set_trace_header(trace.as_ref().map(otel::to_xray))
                .build()
        })
        .collect();
    let out = otel::traced(span, client.put_events().set_entries(Some(entries)).send()).await?;
    let entries = out
        .entries
        .unwrap_or_default()
        .into_iter()
        .map(|entry| match (entry.event_id, entry.error_code) {
            (Some(id), None) => Ok(id),
            (_, code) => Err(FailedEntry {
                code: code.unwrap_or_else(|| "Unknown".into()),
                message: entry.error_message.unwrap_or_default(),
            }),
        })
        .collect();
    Ok(Put {
        entries,
        trace_id: trace.map(|cx| cx.trace_id().to_string()),
    })
}

/// `publish --queue`: each event sent to the queue as EventBridge would deliver it; bodies over
/// `--offload-over` go to S3 and travel as a claim-check pointer.
async fn send_to_queue(
    config: &crate::config::Config,
    sdk: &aws_config::SdkConfig,
    key: &str,
    args: &Args,
    events: &[Prepared],
    identity: &Identity,
) -> anyhow::Result<()> {
    use crate::claim_check::{ClaimCheck, SIZE_ATTRIBUTE};
    let queue = config.queues.get(key).ok_or_else(|| {
        anyhow::anyhow!(
            "--queue {key:?}: no [queues.{key}] in the config; configured: {}",
            config.queues.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let info = crate::sqs::describe_queue(&sqs, queue)
        .await
        .map_err(|e| anyhow::anyhow!("queues.{key}: {}", crate::safe::error_chain(&e)))?;
    match (info.fifo, &args.group_id) {
        (true, None) => anyhow::bail!(
            "queues.{key} is a FIFO queue: pass --group-id (events of one group are handled in order)"
        ),
        (false, Some(_)) => {
            anyhow::bail!("queues.{key} is a standard queue: --group-id is for FIFO queues only")
        }
        _ => {}
    }
    let url = info.url;
    let claim_check = ClaimCheck::new(crate::aws::s3_client(sdk));
    let progress = (events.len() > MAX_ENTRIES_PER_CALL)
        .then(|| Progress::new(events.len() as u64, "sending", Unit::Items("events")));
    for event in events {
        let event_id = Uuid::new_v4().to_string();
        let span = otel::publish("aws_sqs", key, 1);
        let trace = otel::context_of(&span);
        let body = json!({
            "version": "0", "id": event_id, "detail-type": event.detail_type,
            "source": event.source,
            "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": sdk.region().map(|r| r.to_string()), "resources": [],
            "detail": event.traced_detail(trace.as_ref()),
        })
        .to_string();
        let mut send = sqs
            .send_message()
            .queue_url(&url)
            .set_message_system_attributes(crate::sqs::trace_header_attribute(
                trace.as_ref().map(otel::to_xray),
            ));
        if let Some(group) = &args.group_id {
            send = send
                .message_group_id(group)
                .message_deduplication_id(&event_id);
        }
        let mut offloaded = None;
        match (args.offload_over, &args.offload_bucket) {
            (Some(limit), Some(bucket)) if body.len() > limit => {
                let size = body.len();
                let pointer = claim_check
                    .offload(bucket, body)
                    .await
                    .map_err(|e| anyhow::anyhow!("offloading to bucket {bucket:?}: {e}"))?;
                send = send.message_body(pointer.to_body()).message_attributes(
                    SIZE_ATTRIBUTE,
                    aws_sdk_sqs::types::MessageAttributeValue::builder()
                        .data_type("Number")
                        .string_value(size.to_string())
                        .build()?,
                );
                offloaded = Some(pointer.to_string());
            }
            _ => send = send.message_body(body),
        }
        let message_id = otel::traced(span, send.send())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "SendMessage to queues.{key}: {}",
                    crate::safe::error_chain(&aws_sdk_sqs::Error::from(e))
                )
            })?
            .message_id
            .unwrap_or_default();
        tracing::info!(%message_id, %event_id, interaction_id = %event.interaction_id, content_len = event.content_len, offloaded = offloaded.is_some(), "sent to the queue");
        println!(
            "{}",
            json!({
                "message_id": message_id, "event_id": event_id, "interaction_id": event.interaction_id,
                "queue": key, "offloaded_to": offloaded,
                "trace_id": trace.map(|cx| cx.trace_id().to_string()),
                "source": event.source, "detail_type": event.detail_type,
                "tenant_id": identity.tenant_id, "user_id": identity.user_id,
                "content_length": event.content_len, "content_sha256": event.content_sha256,
            })
        );
        if let Some(progress) = &progress {
            progress.advance(1);
        }
    }
    if let Some(progress) = &progress {
        progress.finish();
    }
    Ok(())
}

/// `conveyor publish`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// An EnvelopeV1 of this interaction type, or `batch` for BatchProcessingCompleted v1.0.
    #[arg(long = "type", value_enum)]
    pub kind: EventType,
    /// Read the event detail (a JSON object) from this file; `-` reads stdin.
    #[arg(long, conflicts_with = "sample")]
    pub file: Option<std::path::PathBuf>,
    /// Publish the built-in sample for the type (what happens without --file).
    #[arg(long)]
    pub sample: bool,
    /// Tenant (UUID v4). Falls back to MOCK_TENANT_ID, then a generated one.
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// User. Falls back to MOCK_USER_ID, then `system`.
    #[arg(long)]
    pub user_id: Option<String>,
    /// Account; null when not given.
    #[arg(long)]
    pub account_id: Option<String>,
    /// Fail on a missing or invalid tenant instead of generating one.
    #[arg(long)]
    pub no_identity_fallback: bool,
    /// Override the conventional source (`com.yourapp.transcription`, or
    /// `com.eq.email-pipeline` for emails).
    #[arg(long)]
    pub source: Option<String>,
    /// Override the conventional detail-type (`EnvelopeV1.<type>` / `BatchProcessingCompleted`).
    #[arg(long)]
    pub detail_type: Option<String>,
    /// Event bus; default: eventbridge.bus_name from the config.
    #[arg(long)]
    pub bus: Option<String>,
    /// Publish this many events (each with its own interaction_id), for load tests.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Send straight to the configured queue `queues.<KEY>` instead of EventBridge, the body
    /// written as an EventBridge rule would deliver it. For events over EventBridge's 256 KB
    /// and for testing a queue without a rule.
    #[arg(long, value_name = "KEY")]
    pub queue: Option<String>,
    /// With --queue: put bodies over this many bytes in S3 (--offload-bucket) and send a
    /// claim-check pointer instead, as the AWS extended clients do.
    #[arg(long, value_name = "BYTES", requires_all = ["queue", "offload_bucket"])]
    pub offload_over: Option<usize>,
    /// The bucket offloaded bodies go to.
    #[arg(long, value_name = "NAME", requires = "offload_over")]
    pub offload_bucket: Option<String>,
    /// With --queue on a FIFO queue (required there): the MessageGroupId of every event sent.
    /// Each event's deduplication id is its event id.
    #[arg(long, value_name = "ID", requires = "queue")]
    pub group_id: Option<String>,
}

/// Runs `conveyor publish`: prepares and validates every event first, then sends them 10 per
/// call. Prints one JSON line per published event (ids, identity, content length and hash —
/// never the content).
pub async fn run(
    config: &crate::config::Config,
    args: Args,
) -> anyhow::Result<std::process::ExitCode> {
    let inputs = IdentityInputs {
        tenant_flag: args.tenant_id.clone(),
        tenant_env: std::env::var("MOCK_TENANT_ID").ok(),
        user_flag: args.user_id.clone(),
        user_env: std::env::var("MOCK_USER_ID").ok(),
        account: args.account_id.clone(),
    };
    let (identity, warnings) =
        resolve_identity(&inputs, !args.no_identity_fallback).map_err(anyhow::Error::msg)?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let base = match &args.file {
        None => None,
        Some(path) => {
            let origin = path.display().to_string();
            let text = if origin == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?
            };
            Some(parse_detail(&origin, &text)?)
        }
    };
    // Everything is validated before the first event is sent.
    let events = (0..args.count)
        .map(|_| {
            prepare(
                args.kind,
                base.as_ref(),
                &identity,
                args.source.as_deref(),
                args.detail_type.as_deref(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;

    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    if let Some(key) = &args.queue {
        send_to_queue(config, &sdk, key, &args, &events, &identity).await?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let bus = args.bus.as_deref().unwrap_or(&config.eventbridge.bus_name);
    let client = aws_sdk_eventbridge::Client::new(&sdk);
    // A bar for more than one call's worth; a single call's events print as they go.
    let progress = (events.len() > MAX_ENTRIES_PER_CALL)
        .then(|| Progress::new(events.len() as u64, "publishing", Unit::Items("events")));
    for chunk in events.chunks(MAX_ENTRIES_PER_CALL) {
        let put = put(&client, bus, chunk).await.map_err(|e| {
            anyhow::anyhow!("PutEvents on bus {bus:?}: {}", crate::safe::error_chain(&e))
        })?;
        for (event, result) in chunk.iter().zip(put.entries) {
            let event_id = result.map_err(|failed| {
                anyhow::anyhow!(
                    "EventBridge rejected the event (interaction_id {}): {failed}",
                    event.interaction_id
                )
            })?;
            tracing::info!(%event_id, interaction_id = %event.interaction_id, detail_type = %event.detail_type, content_len = event.content_len, "published");
            println!(
                "{}",
                json!({
                    "event_id": event_id, "interaction_id": event.interaction_id, "bus": bus,
                    "source": event.source, "detail_type": event.detail_type,
                    "tenant_id": identity.tenant_id, "user_id": identity.user_id, "account_id": identity.account_id,
                    "content_length": event.content_len, "content_sha256": event.content_sha256,
                    "trace_id": put.trace_id,
                })
            );
        }
        if let Some(progress) = &progress {
            progress.advance(chunk.len() as u64);
        }
    }
    if let Some(progress) = &progress {
        progress.finish();
    }
    Ok(std::process::ExitCode::SUCCESS)
}
