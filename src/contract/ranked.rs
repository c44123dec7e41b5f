//! RankedNotification v1: what ranking hands to delivery on the `priority` queue — the event's
//! ids and content, its priority and how it was scored, when to send it, on which channel and
//! to which address, and the channels to fail over to. Schema:
//! `docs/schemas/ranked-notification.v1.schema.json`.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::notification::{Channel, Content, MAX_ID_CHARS, MAX_URL_CHARS};
use crate::fields::{FieldError, Fields, object_at};

/// Lowest and highest priority.
pub const PRIORITIES: std::ops::RangeInclusive<i64> = 1..=5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RankedNotification {
    pub event_id: String,
    pub tenant_id: Uuid,
    pub user_id: String,
    /// The event's `occurredAt`: end-to-end latency is measured from it.
    pub occurred_at: DateTime<Utc>,
    /// 1 (lowest) to 5 (highest).
    pub priority: u8,
    /// Not before this instant (the end of the user's quiet hours, or now).
    pub send_after: DateTime<Utc>,
    /// How the priority came about: named components and their values.
    pub score_breakdown: Map<String, Value>,
    /// `model` or `rules`.
    pub scorer: String,
    pub channel: Channel,
    pub delivery: Delivery,
    /// The channels to try next, in order, with their addresses.
    pub failover: Vec<Target>,
    /// Deliveries tried so far (0 when ranked).
    pub attempt: u32,
    pub content: Content,
}

/// Where to deliver on the chosen channel. The address is personal data: never logged
/// (`Debug` shows its length).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The rate limiter's bucket: `<channel>:<tenantId>`.
    pub rate_limit_key: String,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Delivery {{ address: {} chars, provider: {:?}, rate_limit_key: {:?} }}",
            self.address.chars().count(),
            self.provider,
            self.rate_limit_key
        )
    }
}

/// A failover channel and its address (never logged).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub channel: Channel,
    pub address: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Target {{ channel: {}, address: {} chars }}",
            self.channel.as_str(),
            self.address.chars().count()
        )
    }
}

/// The default `rateLimitKey`: `<channel>:<tenantId>`.
pub fn rate_limit_key(channel: Channel, tenant: Uuid) -> String {
    format!("{}:{tenant}", channel.as_str())
}

impl RankedNotification {
    /// Validates a RankedNotification v1 found at `path`.
    pub fn parse(payload: &Map<String, Value>, path: &str) -> Result<Self, FieldError> {
        let d = Fields::new(path, payload);
        let channel = d.one_of("channel", Channel::parse, Channel::ALL)?;
        let delivery = d.object("delivery")?;
        let breakdown = d.object("scoreBreakdown")?;
        let mut score_breakdown = Map::new();
        for (name, value) in breakdown.map() {
            if !value.is_number() {
                // The key is named only when it is a short token.
                return Err(d.error(
                    "scoreBreakdown",
                    format!(
                        "{}: expected a number, found {}",
                        crate::safe::token(name),
                        crate::fields::kind(value)
                    ),
                ));
            }
            score_breakdown.insert(name.clone(), value.clone());
        }
        let mut failover = Vec::new();
        for (item_path, value) in d.array("failover")? {
            let item = object_at(item_path, value)?;
            let target = Target {
                channel: item.one_of("channel", Channel::parse, Channel::ALL)?,
                address: item.bounded_string("address", 1, MAX_URL_CHARS)?.to_owned(),
            };
            if target.channel == channel
                || failover
                    .iter()
                    .any(|t: &Target| t.channel == target.channel)
            {
                return Err(item.error(
                    "channel",
                    format!(
                        "{} is already the channel or a failover",
                        target.channel.as_str()
                    ),
                ));
            }
            failover.push(target);
        }
        let scorer = d.string("scorer")?;
        if !matches!(scorer, "model" | "rules") {
            return Err(d.error(
                "scorer",
                format!(
                    "unknown scorer {}, expected one of model, rules",
                    crate::safe::token(scorer)
                ),
            ));
        }
        Ok(RankedNotification {
            event_id: d.identifier("eventId", MAX_ID_CHARS)?.to_owned(),
            tenant_id: d.hyphenated_uuid("tenantId")?,
            user_id: d.bounded_string("userId", 1, 256)?.to_owned(),
            occurred_at: d.rfc3339("occurredAt")?,
            priority: d.integer("priority", *PRIORITIES.start(), *PRIORITIES.end())? as u8,
            send_after: d.rfc3339("sendAfter")?,
            score_breakdown,
            scorer: scorer.to_owned(),
            channel,
            delivery: Delivery {
                address: delivery
                    .bounded_string("address", 1, MAX_URL_CHARS)?
                    .to_owned(),
                provider: delivery
                    .optional_bounded_string("provider", 64)?
                    .map(str::to_owned),
                rate_limit_key: delivery.bounded_string("rateLimitKey", 1, 256)?.to_owned(),
            },
            failover,
            attempt: d.integer("attempt", 0, i64::from(u32::MAX))? as u32,
            content: Content::parse(&d)?,
        })
    }
}
