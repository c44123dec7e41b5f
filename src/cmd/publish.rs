//! `conveyor publish`: build an EnvelopeV1 or BatchProcessingCompleted event (from a file or a
//! built-in sample), validate it with the consumer's own parser, and put it on EventBridge.
//! Identity follows the publishers' fallback chain: flag, then environment, then a generated or
//! default value.

use std::fmt;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use chrono::Utc;
use opentelemetry::trace::SpanContext;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::progress::{Progress, Unit};
use crate::contract::envelope::{
    self, BATCH_PROCESSING_COMPLETED, ENVELOPE_V1_PREFIX, InteractionType,
};
use crate::input::eventbridge::EventBridgeEvent;
use crate::telemetry::otel;

/// EventBridge takes at most 10 entries per PutEvents call.
pub const MAX_ENTRIES_PER_CALL: usize = 10;
/// The publishers' source for transcripts, notes and meetings (and batch results).
pub const TRANSCRIPTION_SOURCE: &str = "com.yourapp.transcription";
/// The publishers' source for emails.
pub const EMAIL_SOURCE: &str = "com.eq.email-pipeline";

/// What to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventType {
    Transcript,
    Note,
    Meeting,
    Email,
    Document,
    /// A BatchProcessingCompleted v1.0 event.
    Batch,
}

impl EventType {
    fn interaction_type(self) -> Option<InteractionType> {
        Some(match self {
            EventType::Transcript => InteractionType::Transcript,
            EventType::Note => InteractionType::Note,
            EventType::Meeting => InteractionType::Meeting,
            EventType::Email => InteractionType::Email,
            EventType::Document => InteractionType::Document,
            EventType::Batch => return None,
        })
    }

    /// The conventional `source` and `detail-type`.
    pub fn conventions(self) -> (&'static str, String) {
        match self.interaction_type() {
            None => (TRANSCRIPTION_SOURCE, BATCH_PROCESSING_COMPLETED.to_owned()),
            Some(t) => (
                if t == InteractionType::Email {
                    EMAIL_SOURCE
                } else {
                    TRANSCRIPTION_SOURCE
                },
                format!("{ENVELOPE_V1_PREFIX}{t}"),
            ),
        }
    }
}

/// Where identity values come from, in order: flag, environment, fallback.
#[derive(Debug, Clone, Default)]
pub struct IdentityInputs {
    /// `--tenant-id`
    pub tenant_flag: Option<String>,
    /// `MOCK_TENANT_ID`
    pub tenant_env: Option<String>,
    /// `--user-id`
    pub user_flag: Option<String>,
    /// `MOCK_USER_ID`
    pub user_env: Option<String>,
    /// `--account-id`
    pub account: Option<String>,
}

/// The resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant_id: Uuid,
    pub user_id: String,
    pub account_id: Option<String>,
}

/// Resolves the identity chain: tenant = `--tenant-id` → `MOCK_TENANT_ID` → a new UUID v4; a
/// value that is not a UUID v4 is replaced with a new one and a warning naming it. User =
/// `--user-id` → `MOCK_USER_ID` → `system`. Account = `--account-id` or none. With
/// `fallback = false` a missing or invalid tenant is an error instead.
pub fn resolve_identity(
    inputs: &IdentityInputs,
    fallback: bool,
) -> Result<(Identity, Vec<String>), String> {
    let present = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let mut warnings = Vec::new();
    let tenant = match (present(&inputs.tenant_flag), present(&inputs.tenant_env)) {
        (Some(v), _) => Some(("--tenant-id", v)),
        (None, Some(v)) => Some(("MOCK_TENANT_ID", v)),
        (None, None) => None,
    };
    let tenant_id = match tenant {
        Some((origin, value)) => match Uuid::parse_str(&value) {
            Ok(id) if id.get_version_num() == 4 => id,
            _ if !fallback => {
                return Err(format!(
                    "{origin} = {value:?} is not a UUID v4 (and --no-identity-fallback is set)"
                ));
            }
            _ => {
                let id = Uuid::new_v4();
                warnings.push(format!(
                    "{origin} = {value:?} is not a UUID v4; using a generated tenant id {id}"
                ));
                id
            }
        },
        None if !fallback => {
            return Err("no tenant id: pass --tenant-id or set MOCK_TENANT_ID (--no-identity-fallback is set)".into());
        }
        None => Uuid::new_v4(),
    };
    let user_id = present(&inputs.user_flag)
        .or_else(|| present(&inputs.user_env))
        .unwrap_or_else(|| "system".to_owned());
    Ok((
        Identity {
            tenant_id,
            user_id,
            account_id: present(&inputs.account),
        },
        warnings,
    ))
}

/// One event ready to put.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub source: String,
    pub detail_type: String,
    pub detail: Map<String, Value>,
    pub interaction_id: Uuid,
    pub content_len: usize,
    pub content_sha256: String,
}

impl Prepared {
    /// The detail to send: an envelope without a `trace_id` of its own gets the sending span's
    /// context as one (a W3C traceparent), so the consumer links back even when the bus or
    /// queue does not pass the trace header on.
    fn traced_detail(&self, trace: Option<&SpanContext>) -> Map<String, Value> {
        let mut detail = self.detail.clone();
        let is_envelope = !self.interaction_id.is_nil();
        if let (Some(cx), true) = (trace, is_envelope)
            && detail.get("trace_id").is_none_or(Value::is_null)
        {
            detail.insert("trace_id".into(), Value::String(otel::to_traceparent(cx)));
        }
        detail
    }
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    Input(String),
    #[error("the event would be rejected by conveyor: {0}")]
    Invalid(#[from] envelope::FieldError),
}

/// Builds one event from `base` (a file's detail, or `None` for the built-in sample), applying
/// the identity and a new `interaction_id`, and validates it with the consumer's parser.
pub fn prepare(
    kind: EventType,
    base: Option<&Map<String, Value>>,
    identity: &Identity,
    source: Option<&str>,
    detail_type: Option<&str>,
) -> Result<Prepared, PublishError> {
    let interaction_id = Uuid::new_v4();
    let mut detail = base.cloned().unwrap_or_else(|| sample(kind));
    detail.insert("tenant_id".into(), json!(identity.tenant_id));
    detail.insert("user_id".into(), json!(identity.user_id));
    if identity.account_id.is_some() || !detail.contains_key("account_id") {
        detail.insert("account_id".into(), json!(identity.account_id));
    }
    detail.insert("interaction_id".into(), json!(interaction_id));
    let (default_source, default_detail_type) = kind.conventions();
    let event = EventBridgeEvent {
        id: None,
        source: source.unwrap_or(default_source).to_owned(),
        detail_type: detail_type.map_or(default_detail_type, str::to_owned),
        account: None,
        time: None,
        region: None,
        resources: vec![],
        detail,
    };
    let interaction = envelope::parse(&event)?.ok_or_else(|| {
        PublishError::Input(format!(
            "detail-type {:?} is neither EnvelopeV1.<type> nor BatchProcessingCompleted",
            event.detail_type
        ))
    })?;
    Ok(Prepared {
        content_len: interaction.content.len(),
        content_sha256: interaction.content.sha256(),
        source: event.source,
        detail_type: event.detail_type,
        detail: event.detail,
        interaction_id,
    })
}

/// Parses a file's (or stdin's) content as an event detail object.
pub fn parse_detail(origin: &str, text: &str) -> Result<Map<String, Value>, PublishError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(PublishError::Input(format!(
            "{origin}: expected a JSON object (the event detail)"
        ))),
        Err(e) => Err(PublishError::Input(format!(
            "{origin}: not JSON: line {} column {}",
            e.line(),
            e.column()
        ))),
    }
}

/// The built-in sample detail for each type (identity and interaction_id are set by `prepare`).
fn sample(kind: EventType) -> Map<String, Value> {
    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let value = match kind {
        EventType::Batch => json!({
            "version": "1.0", "timestamp": now, "status": "completed",
            "data": {
                "cleaned_transcript": "Sarah: I'll send the revised proposal to Acme by Friday. John: We will schedule the security review next week.",
                "raw_transcript": "sarah i'll send the revised proposal to acme by friday john we will schedule the security review next week",
            },
        }),
        _ => {
            let t = kind.interaction_type().expect("envelope types have one");
            let (text, format, source) = match t {
                InteractionType::Transcript => (
                    "John: Thanks for joining the call today. Sarah: I'll send the revised proposal by Friday. John: Action item: book the security review.",
                    "diarized",
                    "web-mic",
                ),
                InteractionType::Note => (
                    "# Acme follow-up\n- I'll draft the pricing summary by Monday\n- Action item: confirm the pilot scope",
                    "markdown",
                    "api",
                ),
                InteractionType::Meeting => (
                    "Weekly sync. We will finalise the rollout plan by Thursday. Action item: Priya to update the runbook.",
                    "plain",
                    "upload",
                ),
                InteractionType::Email => (
                    "Hi team,\nI'll review the contract and reply by Wednesday.\nThanks, Sarah",
                    "email",
                    "email-pipeline",
                ),
                InteractionType::Document => (
                    "Statement of work. The vendor will deliver the integration by 2025-03-01.",
                    "plain",
                    "upload",
                ),
            };
            json!({
                "schema_version": "v1", "interaction_type": t, "timestamp": now, "source": source,
                "content": {"text": text, "format": format},
                "extras": {"opportunity_id": "019c1fa0-4444-7000-8000-000000000005", "contact_ids": ["contact_sarah_001"]},
            })
        }
    };
    match value {
        Value::Object(map) => map,
        _ => unreachable!("samples are objects"),
    }
}

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
    let span = otel::send("aws_eventbridge", bus, events.len());
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
        let span = otel::send("aws_sqs", key, 1);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_sample_is_valid_with_conventional_source_and_detail_type() {
        let (identity, _) = resolve_identity(&IdentityInputs::default(), true).unwrap();
        for kind in [
            EventType::Transcript,
            EventType::Note,
            EventType::Meeting,
            EventType::Email,
            EventType::Document,
            EventType::Batch,
        ] {
            let p = prepare(kind, None, &identity, None, None).unwrap();
            let (source, detail_type) = kind.conventions();
            assert_eq!(
                (p.source.as_str(), p.detail_type.as_str()),
                (source, detail_type.as_str())
            );
            assert_eq!(p.detail["interaction_id"], json!(p.interaction_id));
            assert!(p.content_len > 0);
        }
        assert_eq!(EventType::Email.conventions().0, EMAIL_SOURCE);
        assert_eq!(EventType::Batch.conventions().1, "BatchProcessingCompleted");
    }

    #[test]
    fn identity_chain_prefers_flag_then_env_then_fallback() {
        let v4 = Uuid::new_v4().to_string();
        let inputs = IdentityInputs {
            tenant_flag: Some(v4.clone()),
            tenant_env: Some(Uuid::new_v4().to_string()),
            user_env: Some("env-user".into()),
            ..Default::default()
        };
        let (id, warnings) = resolve_identity(&inputs, true).unwrap();
        assert_eq!(id.tenant_id.to_string(), v4);
        assert_eq!(id.user_id, "env-user");
        assert_eq!(id.account_id, None);
        assert!(warnings.is_empty());

        let bad = IdentityInputs {
            tenant_env: Some("not-a-uuid".into()),
            ..Default::default()
        };
        let (id, warnings) = resolve_identity(&bad, true).unwrap();
        assert_eq!(id.tenant_id.get_version_num(), 4);
        assert_eq!(id.user_id, "system");
        assert!(
            warnings[0].contains("MOCK_TENANT_ID = \"not-a-uuid\""),
            "{warnings:?}"
        );
        let e = resolve_identity(&bad, false).unwrap_err();
        assert!(
            e.contains("MOCK_TENANT_ID") && e.contains("not-a-uuid"),
            "{e}"
        );
        assert!(resolve_identity(&IdentityInputs::default(), false).is_err());
    }

    #[test]
    fn invalid_files_are_rejected_before_anything_is_sent() {
        assert!(
            parse_detail("f.json", "{not json")
                .unwrap_err()
                .to_string()
                .contains("f.json: not JSON")
        );
        assert!(
            parse_detail("f.json", "[1]")
                .unwrap_err()
                .to_string()
                .contains("expected a JSON object")
        );
        let (identity, _) = resolve_identity(&IdentityInputs::default(), true).unwrap();
        let mut detail = sample(EventType::Note);
        detail["content"]["format"] = json!("html");
        let e = prepare(EventType::Note, Some(&detail), &identity, None, None).unwrap_err();
        assert!(e.to_string().contains("detail.content.format"), "{e}");
    }

    proptest! {
        #[test]
        fn the_identity_chain_always_yields_a_v4_tenant_and_a_user(
            tenant_flag in proptest::option::of(".{0,40}"),
            tenant_env in proptest::option::of(".{0,40}"),
            user_flag in proptest::option::of(".{0,20}"),
            user_env in proptest::option::of(".{0,20}"),
            valid_flag in any::<bool>(),
        ) {
            let tenant_flag = if valid_flag { Some(Uuid::new_v4().to_string()) } else { tenant_flag };
            let inputs = IdentityInputs { tenant_flag, tenant_env, user_flag, user_env, account: None };
            let (id, _) = resolve_identity(&inputs, true).unwrap();
            prop_assert_eq!(id.tenant_id.get_version_num(), 4);
            prop_assert!(!id.user_id.trim().is_empty());
        }
    }
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
