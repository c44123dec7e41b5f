//! `notify send`: one NotificationEvent built from flags, validated with the consumer's own
//! parser, and published to the bus like any producer's.

use super::SendArgs;
use crate::cmd::publish::{IdentityInputs, resolve_identity};
use crate::config::Config;
use crate::contract::notification::{NOTIFICATION_REQUESTED, NotificationEvent};
use serde_json::{Map, Value, json};
use std::process::ExitCode;

/// The event `send` publishes, validated with ranking's own parser.
pub(super) fn build_event(args: &SendArgs) -> anyhow::Result<NotificationEvent> {
    let detail: Map<String, Value> = match &args.file {
        Some(path) => {
            let origin = path.display().to_string();
            let text = if origin == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?
            };
            match serde_json::from_str(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => anyhow::bail!("{origin}: expected one JSON object (a NotificationEvent)"),
                Err(e) => anyhow::bail!("{origin}: not JSON: {}", crate::safe::json_error(&e)),
            }
        }
        None => {
            let inputs = IdentityInputs {
                tenant_flag: args.tenant_id.clone(),
                tenant_env: std::env::var("MOCK_TENANT_ID").ok(),
                user_flag: args.user_id.clone(),
                user_env: std::env::var("MOCK_USER_ID").ok(),
                account: None,
            };
            let (identity, warnings) = resolve_identity(&inputs, !args.no_identity_fallback)
                .map_err(anyhow::Error::msg)?;
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            let mut metadata = Map::new();
            for entry in &args.metadata {
                let (k, v) = entry
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--metadata {entry:?}: expected KEY=VALUE"))?;
                metadata.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            let mut user = json!({"id": identity.user_id, "channels": args.channels});
            if let Some(segment) = &args.segment {
                user["segment"] = json!(segment);
            }
            let event = json!({
                "eventId": args.event_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                "source": args.source,
                "occurredAt": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "tenantId": identity.tenant_id,
                "user": user,
                "content": {"title": args.title, "body": args.body, "metadata": metadata},
            });
            event.as_object().cloned().unwrap_or_default()
        }
    };
    NotificationEvent::parse(&detail, "event")
        .map_err(|e| anyhow::anyhow!("not a valid NotificationEvent v1: {e}"))
}

pub(super) async fn send(config: &Config, args: SendArgs) -> anyhow::Result<ExitCode> {
    let event = build_event(&args)?;
    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    let bus = args.bus.as_deref().unwrap_or(&config.eventbridge.bus_name);
    let detail = serde_json::to_value(&event)?;
    let prepared = crate::cmd::publish::Prepared {
        source: event.source.clone(),
        detail_type: NOTIFICATION_REQUESTED.to_owned(),
        detail: detail.as_object().cloned().unwrap_or_default(),
        interaction_id: uuid::Uuid::nil(),
        content_len: event.content.body.len(),
        content_sha256: String::new(),
    };
    let client = aws_sdk_eventbridge::Client::new(&sdk);
    let results = crate::cmd::publish::put(&client, bus, std::slice::from_ref(&prepared))
        .await
        .map_err(|e| {
            anyhow::anyhow!("PutEvents on bus {bus:?}: {}", crate::safe::error_chain(&e))
        })?;
    let eventbridge_id = results
        .entries
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("PutEvents answered no entry"))?
        .map_err(|failed| anyhow::anyhow!("EventBridge rejected the event: {failed}"))?;
    tracing::info!(event_id = %event.event_id, %eventbridge_id, "notification published");
    println!(
        "{}",
        json!({
            "event_id": event.event_id, "eventbridge_id": eventbridge_id, "bus": bus,
            "tenant_id": event.tenant_id, "user_id": event.user.id,
            "channels": event.user.channels,
        })
    );
    Ok(ExitCode::SUCCESS)
}
