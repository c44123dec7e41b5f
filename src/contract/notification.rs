//! NotificationEvent v1: what a producer sends to be notified — through EventBridge
//! (`NotificationRequested`), or as one line of a JSON-lines drop in S3. The seed's canonical
//! incoming event, plus `tenantId` (preferences and rate limits are per tenant). Schema:
//! `docs/schemas/notification-event.v1.schema.json`. Also the vocabulary both notification
//! contracts share: [`Channel`], [`Content`] and their limits.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

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

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    Sms,
    Push,
    Webhook,
}

impl Channel {
    pub const ALL: &'static [&'static str] = &["email", "sms", "push", "webhook"];

    pub fn parse(s: &str) -> Option<Channel> {
        Some(match s {
            "email" => Channel::Email,
            "sms" => Channel::Sms,
            "push" => Channel::Push,
            "webhook" => Channel::Webhook,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
            Channel::Webhook => "webhook",
        }
    }
}

/// Limits shared by both contracts and their schemas.
pub const MAX_ID_CHARS: usize = 128;
pub const MAX_TITLE_CHARS: usize = 256;
pub const MAX_BODY_CHARS: usize = 65_536;
pub const MAX_URL_CHARS: usize = 2_048;

/// What a notification says. Never logged: its `Debug` shows lengths only.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    pub title: String,
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cta: Option<CallToAction>,
    /// Free-form, for the scorers (`content.metadata.kind`, …).
    pub metadata: Map<String, Value>,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Content {{ title: {} chars, body: {} chars, cta: {}, metadata keys: {} }}",
            self.title.chars().count(),
            self.body.chars().count(),
            self.cta.is_some(),
            self.metadata.len()
        )
    }
}

/// A button or link under the notification.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CallToAction {
    pub label: String,
    pub url: String,
}

impl Content {
    pub(crate) fn parse(d: &Fields<'_>) -> Result<Content, FieldError> {
        let content = d.object("content")?;
        let cta = match content.optional_object("cta")? {
            None => None,
            Some(map) => {
                let cta = Fields::new(&format!("{}.cta", content.path()), map);
                let url = cta.bounded_string("url", 1, MAX_URL_CHARS)?;
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || url.len() <= "https://".len()
                    || url.chars().any(char::is_whitespace)
                {
                    return Err(cta.error("url", "must be an http(s) URL without spaces"));
                }
                Some(CallToAction {
                    label: cta.bounded_string("label", 1, 64)?.to_owned(),
                    url: url.to_owned(),
                })
            }
        };
        Ok(Content {
            title: content
                .bounded_string("title", 1, MAX_TITLE_CHARS)?
                .to_owned(),
            body: content
                .bounded_string("body", 1, MAX_BODY_CHARS)?
                .to_owned(),
            cta,
            metadata: content
                .optional_object("metadata")?
                .cloned()
                .unwrap_or_default(),
        })
    }
}

/// A list of distinct channels at `key` (at least `min`).
pub(crate) fn channels(d: &Fields<'_>, key: &str, min: usize) -> Result<Vec<Channel>, FieldError> {
    let items = d.array(key)?;
    if items.len() < min {
        return Err(d.error(key, format!("must list at least {min} channel")));
    }
    let mut out = Vec::with_capacity(items.len());
    for (path, value) in items {
        let channel = match value {
            Value::String(s) => Channel::parse(s).ok_or_else(|| FieldError {
                problem: format!(
                    "unknown channel {}, expected one of {}",
                    crate::safe::token(s),
                    Channel::ALL.join(", ")
                ),
                path: path.clone(),
            })?,
            other => {
                return Err(FieldError {
                    problem: format!("expected a string, found {}", crate::fields::kind(other)),
                    path,
                });
            }
        };
        if out.contains(&channel) {
            return Err(FieldError {
                problem: format!("{} is listed twice", channel.as_str()),
                path,
            });
        }
        out.push(channel);
    }
    Ok(out)
}
