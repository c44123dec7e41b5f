//! NotificationEvent v1: what a producer sends to be notified — through EventBridge
//! (`NotificationRequested`), or as one line of a JSON-lines drop in S3. The seed's canonical
//! incoming event, plus `tenantId` (preferences and rate limits are per tenant). Schema:
//! `docs/schemas/notification-event.v1.schema.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Channel, Content, MAX_ID_CHARS, channels};
use crate::fields::{FieldError, Fields};

/// The EventBridge `detail-type` of a NotificationEvent v1.
pub const NOTIFICATION_REQUESTED: &str = "NotificationRequested";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationEvent {
    /// The producer's id: the idempotency key of everything done for this event (scoped by
    /// tenant), and at most one delivery per (eventId, channel).
    pub event_id: String,
    pub source: String,
    pub occurred_at: DateTime<Utc>,
    pub tenant_id: Uuid,
    pub user: User,
    pub content: Content,
}

/// Whom to notify, and on which channels the producer allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// At least one, each once, in the producer's order of preference.
    pub channels: Vec<Channel>,
}

impl NotificationEvent {
    /// Validates a NotificationEvent v1 found at `path` (`detail`, `Message`, `body`, a line).
    pub fn parse(payload: &Map<String, Value>, path: &str) -> Result<Self, FieldError> {
        let d = Fields::new(path, payload);
        let user = d.object("user")?;
        Ok(NotificationEvent {
            event_id: d.identifier("eventId", MAX_ID_CHARS)?.to_owned(),
            source: d.bounded_string("source", 1, 256)?.to_owned(),
            occurred_at: d.rfc3339("occurredAt")?,
            tenant_id: d.hyphenated_uuid("tenantId")?,
            user: User {
                id: user.bounded_string("id", 1, 256)?.to_owned(),
                segment: user
                    .optional_bounded_string("segment", 64)?
                    .map(str::to_owned),
                channels: channels(&user, "channels", 1)?,
            },
            content: Content::parse(&d)?,
        })
    }
}
