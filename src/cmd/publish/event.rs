//! The event `publish` sends: an EnvelopeV1 or BatchProcessingCompleted detail from a file or
//! a built-in sample, with the publishers' identity chain (flag, then environment, then a
//! generated or default value), validated with the consumer's own parser before anything is
//! sent.

use crate::contract::envelope::{
    self, BATCH_PROCESSING_COMPLETED, ENVELOPE_V1_PREFIX, InteractionType,
};
use crate::input::eventbridge::EventBridgeEvent;
use crate::telemetry::otel;
use chrono::Utc;
use opentelemetry::trace::SpanContext;
use serde_json::{Map, Value, json};
use uuid::Uuid;

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
    pub(super) fn traced_detail(&self, trace: Option<&SpanContext>) -> Map<String, Value> {
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
