//! Contracts: what a route's events must contain, validated once at the edge into a typed
//! value. A validation error is permanent (the message is dead-lettered) and names the field.
//!
//! - `envelope_v1`: an EnvelopeV1 interaction ([`envelope`]).
//! - `batch_completed_v1`: a BatchProcessingCompleted v1.0 transcript.
//! - `notification_event_v1`: a NotificationEvent v1 ([`notification`]).
//! - `ranked_notification_v1`: a RankedNotification v1 ([`ranked`]).
//! - `json`: anything; pipelines get the payload untyped.
//! - `auto` (the default): chosen per event by its type, as EventBridge publishers name them —
//!   `EnvelopeV1.*` → `envelope_v1`, `BatchProcessingCompleted` → `batch_completed_v1`,
//!   `NotificationRequested` → `notification_event_v1`, anything else → `json`.

pub mod envelope;
pub mod notification;
pub mod ranked;
#[cfg(test)]
mod schema_tests;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::input::Event;
use envelope::{BATCH_PROCESSING_COMPLETED, ENVELOPE_V1_PREFIX, FieldError, Interaction};
use notification::{NOTIFICATION_REQUESTED, NotificationEvent};
use ranked::RankedNotification;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contract {
    #[default]
    Auto,
    EnvelopeV1,
    BatchCompletedV1,
    NotificationEventV1,
    RankedNotificationV1,
    Json,
}

/// What validation produced: the typed value a route's pipelines work on.
#[derive(Debug, Clone, PartialEq)]
pub enum Validated {
    /// `json`: the payload as it came.
    Untyped,
    Interaction(Box<Interaction>),
    Notification(Box<NotificationEvent>),
    Ranked(Box<RankedNotification>),
}

impl Contract {
    pub const ALL: &'static [&'static str] = &[
        "auto",
        "envelope_v1",
        "batch_completed_v1",
        "notification_event_v1",
        "ranked_notification_v1",
        "json",
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Contract::Auto => "auto",
            Contract::EnvelopeV1 => "envelope_v1",
            Contract::BatchCompletedV1 => "batch_completed_v1",
            Contract::NotificationEventV1 => "notification_event_v1",
            Contract::RankedNotificationV1 => "ranked_notification_v1",
            Contract::Json => "json",
        }
    }

    /// What this contract is for one event (`auto` resolved by the event's type).
    pub fn for_event(self, event: &Event) -> Contract {
        match self {
            Contract::Auto if event.detail_type.starts_with(ENVELOPE_V1_PREFIX) => {
                Contract::EnvelopeV1
            }
            Contract::Auto if event.detail_type == BATCH_PROCESSING_COMPLETED => {
                Contract::BatchCompletedV1
            }
            Contract::Auto if event.detail_type == NOTIFICATION_REQUESTED => {
                Contract::NotificationEventV1
            }
            Contract::Auto => Contract::Json,
            other => other,
        }
    }

    /// Validates the event's payload into its typed value.
    pub fn validate(self, event: &Event) -> Result<Validated, FieldError> {
        let object = || match &event.payload {
            Value::Object(map) => Ok(map),
            _ => Err(FieldError {
                path: event.payload_path.to_owned(),
                problem: "must be a JSON object".to_owned(),
            }),
        };
        let path = event.payload_path;
        Ok(match self.for_event(event) {
            Contract::EnvelopeV1 => Validated::Interaction(Box::new(envelope::parse_envelope_v1(
                object()?,
                path,
                &event.detail_type,
            )?)),
            Contract::BatchCompletedV1 => {
                Validated::Interaction(Box::new(envelope::parse_batch_completed(object()?, path)?))
            }
            Contract::NotificationEventV1 => {
                Validated::Notification(Box::new(NotificationEvent::parse(object()?, path)?))
            }
            Contract::RankedNotificationV1 => {
                Validated::Ranked(Box::new(RankedNotification::parse(object()?, path)?))
            }
            Contract::Json | Contract::Auto => Validated::Untyped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(detail_type: &str, payload: Value) -> Event {
        Event {
            id: None,
            source: "s".into(),
            detail_type: detail_type.into(),
            time: None,
            payload,
            payload_path: "Message",
            attributes: Default::default(),
        }
    }

    #[test]
    fn auto_follows_the_event_type_and_explicit_contracts_ignore_it() {
        let e = event("EnvelopeV1.note", json!({}));
        assert_eq!(Contract::Auto.for_event(&e), Contract::EnvelopeV1);
        assert_eq!(
            Contract::Auto.for_event(&event("Other", json!({}))),
            Contract::Json
        );
        assert_eq!(
            Contract::Auto.for_event(&event("NotificationRequested", json!({}))),
            Contract::NotificationEventV1
        );
        assert_eq!(Contract::Json.for_event(&e), Contract::Json);
        assert_eq!(Contract::Json.validate(&e), Ok(Validated::Untyped));
        let err = Contract::EnvelopeV1
            .validate(&event("", json!({})))
            .unwrap_err();
        assert_eq!(
            err.path, "Message.content",
            "paths start where the payload sits"
        );
        let err = Contract::BatchCompletedV1
            .validate(&event("", json!([1])))
            .unwrap_err();
        assert_eq!(err.to_string(), "Message: must be a JSON object");
    }
}
