//! The interaction contracts (`envelope_v1`, `batch_completed_v1`), parsed at the edge into one
//! internal [`Interaction`]: an `EnvelopeV1.<type>` envelope, or a `BatchProcessingCompleted`
//! v1.0 event (a transcript). Every validation error names the field path and the problem, and never
//! quotes message content (an enum value is echoed, truncated; free text never).
//!
//! Unknown fields are tolerated (publishers evolve); wrong types and bad values are not.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use crate::fields::FieldError;
use crate::fields::Fields;
use crate::input::eventbridge::EventBridgeEvent;

/// `detail-type` prefix of EnvelopeV1 events (`EnvelopeV1.transcript`, …).
pub const ENVELOPE_V1_PREFIX: &str = "EnvelopeV1.";
/// `detail-type` of the batch transcription event.
pub const BATCH_PROCESSING_COMPLETED: &str = "BatchProcessingCompleted";

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [&'static str] = &[$($text),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// What kind of interaction an envelope carries.
    InteractionType { Transcript = "transcript", Note = "note", Document = "document", Email = "email", Meeting = "meeting" }
);
string_enum!(
    /// How `content.text` is formatted.
    ContentFormat { Plain = "plain", Markdown = "markdown", Diarized = "diarized", Email = "email" }
);
string_enum!(
    /// Where the interaction came from.
    InteractionSource { WebMic = "web-mic", Upload = "upload", Api = "api", Import = "import", EmailPipeline = "email-pipeline", Gmail = "gmail", Outlook = "outlook" }
);

/// The interaction's text. Never logged: use [`Content::len`] and [`Content::sha256`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    pub text: String,
    pub format: ContentFormat,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Content {{ format: {}, len: {} }}",
            self.format,
            self.text.len()
        )
    }
}

impl Content {
    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Hex SHA-256 of the text: identifies content in logs and the graph without revealing it.
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.text.as_bytes()))
    }
}

/// Which event an interaction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    EnvelopeV1,
    BatchProcessingCompleted,
}

/// A validated interaction, whatever event it came in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub kind: EventKind,
    pub schema_version: String,
    pub tenant_id: Uuid,
    pub user_id: String,
    pub interaction_type: InteractionType,
    pub content: Content,
    pub timestamp: DateTime<Utc>,
    pub source: InteractionSource,
    pub pg_user_id: Option<Uuid>,
    /// Domain metadata (`opportunity_id`, `contact_ids`, …): the one untyped part.
    pub extras: Map<String, Value>,
    pub interaction_id: Option<Uuid>,
    pub trace_id: Option<String>,
    pub account_id: Option<String>,
    /// BatchProcessingCompleted only: the transcript before cleaning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_transcript: Option<String>,
}

/// Parses the event's `detail` if its `detail-type` names an interaction event. `Ok(None)` for
/// other detail-types (they may still be routed to pipelines that do not need one).
pub fn parse(event: &EventBridgeEvent) -> Result<Option<Interaction>, FieldError> {
    if event.detail_type.starts_with(ENVELOPE_V1_PREFIX) {
        parse_envelope_v1(&event.detail, "detail", &event.detail_type).map(Some)
    } else if event.detail_type == BATCH_PROCESSING_COMPLETED {
        parse_batch_completed(&event.detail, "detail").map(Some)
    } else {
        Ok(None)
    }
}

/// Validates an EnvelopeV1 payload found at `path` (`detail`, `Message`, `body`). When the
/// event's type names an envelope type (`EnvelopeV1.<type>`), it must agree with the payload's.
pub fn parse_envelope_v1(
    payload: &Map<String, Value>,
    path: &str,
    event_type: &str,
) -> Result<Interaction, FieldError> {
    let interaction = envelope_v1(&Fields::new(path, payload))?;
    if let Some(suffix) = event_type.strip_prefix(ENVELOPE_V1_PREFIX)
        && suffix != interaction.interaction_type.as_str()
    {
        // A disagreement means a publisher bug.
        return Err(FieldError {
            path: format!("{path}.interaction_type"),
            problem: format!(
                "{:?} does not match detail-type {}",
                interaction.interaction_type.as_str(),
                crate::safe::token(event_type)
            ),
        });
    }
    Ok(interaction)
}

/// Validates a BatchProcessingCompleted v1.0 payload found at `path`.
pub fn parse_batch_completed(
    payload: &Map<String, Value>,
    path: &str,
) -> Result<Interaction, FieldError> {
    batch_processing_completed(&Fields::new(path, payload))
}

fn envelope_v1(d: &Fields<'_>) -> Result<Interaction, FieldError> {
    let content = d.object("content")?;
    Ok(Interaction {
        kind: EventKind::EnvelopeV1,
        schema_version: d
            .optional_string("schema_version")?
            .unwrap_or("v1")
            .to_owned(),
        tenant_id: d.uuid("tenant_id", false)?,
        user_id: d.non_empty_string("user_id")?.to_owned(),
        interaction_type: d.one_of(
            "interaction_type",
            InteractionType::parse,
            InteractionType::ALL,
        )?,
        content: Content {
            text: content.string("text")?.to_owned(),
            format: content.one_of("format", ContentFormat::parse, ContentFormat::ALL)?,
        },
        timestamp: d.timestamp("timestamp")?,
        source: d.one_of("source", InteractionSource::parse, InteractionSource::ALL)?,
        pg_user_id: d.optional_uuid("pg_user_id")?,
        extras: d.optional_object("extras")?.cloned().unwrap_or_default(),
        interaction_id: d.optional_uuid("interaction_id")?,
        trace_id: d.optional_string("trace_id")?.map(str::to_owned),
        account_id: d.optional_string("account_id")?.map(str::to_owned),
        raw_transcript: None,
    })
}

fn batch_processing_completed(d: &Fields<'_>) -> Result<Interaction, FieldError> {
    let version = d.string("version")?;
    if version != "1.0" {
        return Err(d.error(
            "version",
            format!("must be \"1.0\", found {}", crate::safe::token(version)),
        ));
    }
    let status = d.string("status")?;
    if status != "completed" {
        return Err(d.error(
            "status",
            format!(
                "must be \"completed\", found {}",
                crate::safe::token(status)
            ),
        ));
    }
    let data = d.object("data")?;
    Ok(Interaction {
        kind: EventKind::BatchProcessingCompleted,
        schema_version: "1.0".to_owned(),
        tenant_id: d.uuid("tenant_id", true)?,
        user_id: d.non_empty_string("user_id")?.to_owned(),
        interaction_type: InteractionType::Transcript,
        content: Content {
            text: data.string("cleaned_transcript")?.to_owned(),
            format: ContentFormat::Plain,
        },
        timestamp: d.timestamp("timestamp")?,
        // Batch transcription processes uploaded recordings.
        source: InteractionSource::Upload,
        pg_user_id: None,
        extras: Map::new(),
        interaction_id: Some(d.uuid("interaction_id", true)?),
        trace_id: None,
        account_id: d.optional_string("account_id")?.map(str::to_owned),
        raw_transcript: Some(data.string("raw_transcript")?.to_owned()),
    })
}

impl Interaction {
    /// The EnvelopeV1 `detail` for this interaction (what a publisher sends).
    pub fn to_envelope_v1(&self) -> Value {
        let mut detail = serde_json::json!({
            "schema_version": self.schema_version,
            "tenant_id": self.tenant_id,
            "user_id": self.user_id,
            "interaction_type": self.interaction_type,
            "content": {"text": self.content.text, "format": self.content.format},
            "timestamp": self.timestamp.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            "source": self.source,
            "extras": self.extras,
        });
        let object = detail.as_object_mut().expect("built as an object");
        for (key, value) in [
            ("pg_user_id", self.pg_user_id.map(|u| u.to_string())),
            ("interaction_id", self.interaction_id.map(|u| u.to_string())),
            ("trace_id", self.trace_id.clone()),
            ("account_id", self.account_id.clone()),
        ] {
            if let Some(value) = value {
                object.insert(key.to_owned(), Value::String(value));
            }
        }
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn event(detail_type: &str, detail: Value) -> EventBridgeEvent {
        EventBridgeEvent {
            id: Some("ev-1".into()),
            source: "com.yourapp.transcription".into(),
            detail_type: detail_type.into(),
            account: None,
            time: None,
            region: None,
            resources: vec![],
            detail: detail.as_object().unwrap().clone(),
        }
    }

    /// The documented EnvelopeV1 example (docs/contracts.md).
    fn documented_example() -> Value {
        json!({"schema_version":"v1","tenant_id":"550e8400-e29b-41d4-a716-446655440000",
            "user_id":"auth0|abc123def456","interaction_type":"transcript",
            "content":{"text":"John: Thanks for joining the call today...","format":"diarized"},
            "timestamp":"2025-01-23T10:30:00Z","source":"web-mic",
            "extras":{"opportunity_id":"019c1fa0-4444-7000-8000-000000000005","contact_ids":["contact_sarah_001"]},
            "account_id":"acct_acme_corp_001"})
    }

    fn batch_example() -> Value {
        json!({"version":"1.0","interaction_id":"6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            "tenant_id":"550e8400-e29b-41d4-a716-446655440000","user_id":"auth0|abc","account_id":null,
            "timestamp":"2025-01-23T10:30:00.123Z","status":"completed",
            "data":{"cleaned_transcript":"Clean text","raw_transcript":"raw text"}})
    }

    #[test]
    fn parses_the_documented_envelope_with_every_field() {
        let i = parse(&event("EnvelopeV1.transcript", documented_example()))
            .unwrap()
            .unwrap();
        assert_eq!(i.kind, EventKind::EnvelopeV1);
        assert_eq!(
            i.tenant_id.to_string(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        assert_eq!(i.user_id, "auth0|abc123def456");
        assert_eq!(i.interaction_type, InteractionType::Transcript);
        assert_eq!(i.content.format, ContentFormat::Diarized);
        assert_eq!(i.content.text, "John: Thanks for joining the call today...");
        assert_eq!(i.timestamp.to_rfc3339(), "2025-01-23T10:30:00+00:00");
        assert_eq!(i.source, InteractionSource::WebMic);
        assert_eq!(i.extras["contact_ids"][0], "contact_sarah_001");
        assert_eq!(i.account_id.as_deref(), Some("acct_acme_corp_001"));
        assert_eq!(i.schema_version, "v1");
        assert_eq!(
            (i.pg_user_id, i.interaction_id, i.trace_id.as_deref()),
            (None, None, None)
        );
    }

    #[test]
    fn parses_batch_processing_completed_as_a_transcript() {
        let i = parse(&event("BatchProcessingCompleted", batch_example()))
            .unwrap()
            .unwrap();
        assert_eq!(i.kind, EventKind::BatchProcessingCompleted);
        assert_eq!(i.interaction_type, InteractionType::Transcript);
        assert_eq!(i.content.text, "Clean text");
        assert_eq!(i.raw_transcript.as_deref(), Some("raw text"));
        assert_eq!(
            i.interaction_id.unwrap().to_string(),
            "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(i.account_id, None);
    }

    #[test]
    fn other_detail_types_carry_no_interaction() {
        assert_eq!(parse(&event("Something.else", json!({}))).unwrap(), None);
    }

    fn error_for(
        detail_type: &str,
        mut detail: Value,
        path: &[&str],
        value: Option<Value>,
    ) -> FieldError {
        let (last, parents) = path.split_last().unwrap();
        let mut target = &mut detail;
        for p in parents {
            target = &mut target[*p];
        }
        match value {
            Some(v) => target[*last] = v,
            None => {
                target.as_object_mut().unwrap().remove(*last);
            }
        }
        parse(&event(detail_type, detail)).expect_err("corruption rejected")
    }

    #[test]
    fn field_errors_name_the_path_and_the_problem() {
        let e = error_for(
            "EnvelopeV1.transcript",
            documented_example(),
            &["content", "format"],
            Some(json!("html")),
        );
        assert_eq!(
            e.to_string(),
            "detail.content.format: unknown variant \"html\", expected one of plain, markdown, diarized, email"
        );
        let e = error_for(
            "EnvelopeV1.transcript",
            documented_example(),
            &["tenant_id"],
            None,
        );
        assert_eq!(e.to_string(), "detail.tenant_id: missing");
        let e = error_for(
            "EnvelopeV1.transcript",
            documented_example(),
            &["content"],
            Some(json!("secret words")),
        );
        assert_eq!(
            e.to_string(),
            "detail.content: expected an object, found a string"
        );
        let e = error_for(
            "BatchProcessingCompleted",
            batch_example(),
            &["status"],
            Some(json!("failed")),
        );
        assert_eq!(
            e.to_string(),
            "detail.status: must be \"completed\", found \"failed\""
        );
        let e = error_for(
            "BatchProcessingCompleted",
            batch_example(),
            &["tenant_id"],
            Some(json!("019c1fa0-4444-7000-8000-000000000005")),
        );
        assert_eq!(
            e.to_string(),
            "detail.tenant_id: must be a UUID v4, found version 7"
        );
        let e = parse(&event("EnvelopeV1.note", documented_example())).unwrap_err();
        assert_eq!(e.path, "detail.interaction_type");
    }

    #[test]
    fn content_never_appears_in_debug_output() {
        let i = parse(&event("EnvelopeV1.transcript", documented_example()))
            .unwrap()
            .unwrap();
        assert!(!format!("{i:?}").contains("Thanks for joining"));
    }

    fn arb_interaction() -> impl Strategy<Value = Interaction> {
        let ids = (
            any::<u128>(),
            proptest::option::of(any::<u128>()),
            proptest::option::of(any::<u128>()),
        );
        let strings = (
            "[a-z0-9|_-]{1,24}",
            ".{0,200}",
            proptest::option::of("[a-z0-9-]{1,16}"),
            proptest::option::of("[a-z_0-9]{1,16}"),
        );
        let enums = (
            0..InteractionType::ALL.len(),
            0..ContentFormat::ALL.len(),
            0..InteractionSource::ALL.len(),
        );
        (
            ids,
            strings,
            enums,
            0i64..4_000_000_000,
            proptest::collection::btree_map("[a-z_]{1,8}", "[a-z0-9]{0,8}", 0..4),
        )
            .prop_map(
                |((t, p, i), (user, text, trace, account), (it, cf, src), secs, extras)| {
                    Interaction {
                        kind: EventKind::EnvelopeV1,
                        schema_version: "v1".into(),
                        tenant_id: Uuid::from_u128(t),
                        user_id: user,
                        interaction_type: InteractionType::parse(InteractionType::ALL[it]).unwrap(),
                        content: Content {
                            text,
                            format: ContentFormat::parse(ContentFormat::ALL[cf]).unwrap(),
                        },
                        timestamp: DateTime::from_timestamp(secs, 0).unwrap(),
                        source: InteractionSource::parse(InteractionSource::ALL[src]).unwrap(),
                        pg_user_id: p.map(Uuid::from_u128),
                        extras: extras
                            .into_iter()
                            .map(|(k, v)| (k, Value::String(v)))
                            .collect(),
                        interaction_id: i.map(Uuid::from_u128),
                        trace_id: trace,
                        account_id: account,
                        raw_transcript: None,
                    }
                },
            )
    }

    /// (path, a value that is invalid there); `None` = remove the field.
    const CORRUPTIONS: &[(&[&str], Option<&str>)] = &[
        (&["tenant_id"], None),
        (&["tenant_id"], Some("\"not-a-uuid\"")),
        (&["tenant_id"], Some("42")),
        (&["user_id"], None),
        (&["user_id"], Some("\"  \"")),
        (&["user_id"], Some("[]")),
        (&["interaction_type"], Some("\"podcast\"")),
        (&["content"], None),
        (&["content"], Some("\"text\"")),
        (&["content", "text"], None),
        (&["content", "text"], Some("{}")),
        (&["content", "format"], Some("\"html\"")),
        (&["timestamp"], None),
        (&["timestamp"], Some("\"yesterday\"")),
        (&["source"], Some("\"fax\"")),
        (&["pg_user_id"], Some("\"nope\"")),
        (&["extras"], Some("[1]")),
        (&["interaction_id"], Some("7")),
        (&["trace_id"], Some("false")),
        (&["account_id"], Some("{}")),
        (&["schema_version"], Some("1")),
    ];

    proptest! {
        #[test]
        fn every_valid_envelope_round_trips(i in arb_interaction()) {
            let detail_type = format!("EnvelopeV1.{}", i.interaction_type);
            let parsed = parse(&event(&detail_type, i.to_envelope_v1())).unwrap().unwrap();
            prop_assert_eq!(parsed, i);
        }

        #[test]
        fn every_single_field_corruption_is_rejected_naming_that_field(
            i in arb_interaction(), which in 0..CORRUPTIONS.len()
        ) {
            let (path, value) = CORRUPTIONS[which];
            let detail_type = format!("EnvelopeV1.{}", i.interaction_type);
            let e = error_for(&detail_type, i.to_envelope_v1(), path, value.map(|v| serde_json::from_str(v).unwrap()));
            prop_assert_eq!(e.path, format!("detail.{}", path.join(".")));
        }

        #[test]
        fn arbitrary_details_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), bpc in any::<bool>()) {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(Value::Object(detail)) = serde_json::from_str::<Value>(&text) {
                let detail_type = if bpc { BATCH_PROCESSING_COMPLETED } else { "EnvelopeV1.note" };
                let _ = parse(&event(detail_type, Value::Object(detail)));
            }
        }
    }
}
