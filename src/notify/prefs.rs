//! A user's notification preferences, per tenant: the channels they can be reached on with
//! their address, per-channel opt-outs, their failover order, quiet hours in their IANA time
//! zone, and their segment. Kept in PostgreSQL (`notify_preferences`), written by operators
//! with `conveyor notify prefs set|import`, read by ranking.
//!
//! The document (one JSON object, also one line of an import file):
//! ```json
//! {"tenantId": "…", "userId": "u-1", "segment": "vip",
//!  "channels": {"email": "ada@example.com", "sms": "+4915112345678",
//!               "push": "arn:aws:sns:eu-west-1:123456789012:endpoint/GCM/app/0b1c…",
//!               "webhook": "https://hooks.example.com/notify"},
//!  "optOut": ["sms"], "failoverOrder": ["push", "email"],
//!  "quietHours": {"start": "22:00", "end": "07:00", "timeZone": "Europe/Berlin"}}
//! ```
//! Addresses are personal data: validation names the field, never the value, and `Debug`
//! prints lengths.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveTime;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::contract::notification::{Channel, MAX_URL_CHARS, channels};
use crate::fields::{FieldError, Fields};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preferences {
    pub tenant_id: Uuid,
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// Where the user can be reached, by channel.
    pub channels: BTreeMap<Channel, String>,
    /// Channels the user turned off (their address is kept).
    #[serde(default)]
    pub opt_out: Vec<Channel>,
    /// The order channels are tried in; empty: the configured policy.
    #[serde(default)]
    pub failover_order: Vec<Channel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
}

impl fmt::Debug for Preferences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preferences")
            .field("tenant_id", &self.tenant_id)
            .field("user_id", &self.user_id)
            .field("segment", &self.segment)
            .field("channels", &self.channels.keys().collect::<Vec<_>>())
            .field("opt_out", &self.opt_out)
            .field("failover_order", &self.failover_order)
            .field("quiet_hours", &self.quiet_hours)
            .finish()
    }
}

/// When not to send (unless the priority bypasses it): from `start` to `end` local time in
/// `time_zone`, across midnight when `end` is earlier than `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuietHours {
    #[serde(with = "hh_mm")]
    pub start: NaiveTime,
    #[serde(with = "hh_mm")]
    pub end: NaiveTime,
    pub time_zone: chrono_tz::Tz,
}

mod hh_mm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(d)?;
        NaiveTime::parse_from_str(&text, "%H:%M").map_err(serde::de::Error::custom)
    }
}

impl Preferences {
    /// Validates a preferences document found at `path`.
    pub fn parse(document: &Map<String, Value>, path: &str) -> Result<Self, FieldError> {
        let d = Fields::new(path, document);
        let known = [
            "tenantId",
            "userId",
            "segment",
            "channels",
            "optOut",
            "failoverOrder",
            "quietHours",
        ];
        if let Some(unknown) = document.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(d.error(
                &crate::safe::token(unknown),
                format!("unknown field; expected {}", known.join(", ")),
            ));
        }
        let tenant_id = d.hyphenated_uuid("tenantId")?;
        let user_id = d.bounded_string("userId", 1, 256)?.to_owned();
        let segment = d.optional_bounded_string("segment", 64)?.map(str::to_owned);
        let by_channel = d.object("channels")?;
        let mut addresses = BTreeMap::new();
        for (name, value) in by_channel.map() {
            let Some(channel) = Channel::parse(name) else {
                return Err(by_channel.error(
                    &crate::safe::token(name),
                    format!(
                        "unknown channel, expected one of {}",
                        Channel::ALL.join(", ")
                    ),
                ));
            };
            let Value::String(address) = value else {
                return Err(by_channel.error(name, "expected the address as a string"));
            };
            if let Err(want) = check_address(channel, address) {
                return Err(by_channel.error(name, want));
            }
            addresses.insert(channel, address.clone());
        }
        let list = |key: &str| -> Result<Vec<Channel>, FieldError> {
            if d.get(key).is_none() {
                Ok(Vec::new())
            } else {
                channels(&d, key, 0)
            }
        };
        let opt_out = list("optOut")?;
        let failover_order = list("failoverOrder")?;
        let quiet_hours = match d.optional_object("quietHours")? {
            None => None,
            Some(map) => {
                let q = Fields::new(&format!("{}.quietHours", d.path()), map);
                let time = |key: &str| {
                    let text = q.string(key)?;
                    NaiveTime::parse_from_str(text, "%H:%M")
                        .map_err(|_| q.error(key, "expected a local time as HH:MM (24-hour)"))
                };
                let (start, end) = (time("start")?, time("end")?);
                if start == end {
                    return Err(q.error("end", "equals start: quiet hours would be empty"));
                }
                let zone = q.string("timeZone")?;
                let time_zone = zone.parse::<chrono_tz::Tz>().map_err(|_| {
                    q.error(
                        "timeZone",
                        format!(
                            "unknown time zone {}; expected an IANA name such as Europe/Berlin",
                            crate::safe::token(zone)
                        ),
                    )
                })?;
                Some(QuietHours {
                    start,
                    end,
                    time_zone,
                })
            }
        };
        Ok(Preferences {
            tenant_id,
            user_id,
            segment,
            channels: addresses,
            opt_out,
            failover_order,
            quiet_hours,
        })
    }

    /// The address for `channel`, unless the user has none or opted out.
    pub fn usable(&self, channel: Channel) -> Option<&str> {
        if self.opt_out.contains(&channel) {
            return None;
        }
        self.channels.get(&channel).map(String::as_str)
    }
}

/// What an address must look like on its channel (the problem, without the value).
fn check_address(channel: Channel, address: &str) -> Result<(), String> {
    match channel {
        Channel::Email => {
            // Deliverability is the provider's to judge; this catches what cannot be an address.
            let parts = address.rsplit_once('@');
            let ok = address.len() <= 254
                && !address.chars().any(|c| c.is_whitespace() || c.is_control())
                && parts.is_some_and(|(local, domain)| {
                    !local.is_empty()
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                });
            ok.then_some(())
                .ok_or_else(|| "expected an email address (local@domain.tld)".to_owned())
        }
        Channel::Sms => {
            // E.164: a `+`, then up to 15 digits, the first not 0.
            let digits = address.strip_prefix('+').unwrap_or("");
            let ok = (2..=15).contains(&digits.len())
                && digits.chars().all(|c| c.is_ascii_digit())
                && !digits.starts_with('0');
            ok.then_some(()).ok_or_else(|| {
                "expected an E.164 phone number: + then up to 15 digits (+4915112345678)".to_owned()
            })
        }
        Channel::Push => {
            // arn:aws:sns:<region>:<account>:endpoint/<platform>/<application>/<id>
            let parts: Vec<&str> = address.splitn(6, ':').collect();
            let ok = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "sns"
                && parts[5].starts_with("endpoint/")
                && parts[5].split('/').count() == 4
                && address.len() <= 1024;
            ok.then_some(()).ok_or_else(|| {
                "expected an SNS platform endpoint ARN (arn:aws:sns:REGION:ACCOUNT:endpoint/PLATFORM/APP/ID)"
                    .to_owned()
            })
        }
        Channel::Webhook => {
            let ok = address.len() <= MAX_URL_CHARS
                && url::Url::parse(address).is_ok_and(|u| {
                    matches!(u.scheme(), "https" | "http")
                        && u.host().is_some()
                        && u.username().is_empty()
                        && u.password().is_none()
                });
            ok.then_some(()).ok_or_else(|| {
                "expected an http(s) URL without credentials (https://hooks.example.com/…)"
                    .to_owned()
            })
        }
    }
}

/// Preferences in PostgreSQL.
#[derive(Clone)]
pub struct PreferenceStore {
    pool: PgPool,
}

impl PreferenceStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The user's preferences, if stored. Every lookup is by (tenant, user).
    pub async fn get(
        &self,
        tenant_id: Uuid,
        user_id: &str,
    ) -> Result<Option<Preferences>, PrefsError> {
        let row: Option<(sqlx::types::Json<Map<String, Value>>,)> = sqlx::query_as(
            "SELECT document FROM notify_preferences WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Ok(None),
            // Stored documents were validated when written; one that no longer validates
            // (edited by hand) is reported, never guessed at.
            Some((document,)) => Preferences::parse(&document.0, "preferences")
                .map(Some)
                .map_err(PrefsError::Stored),
        }
    }

    /// Stores (replaces) preferences, all in one transaction.
    pub async fn put(&self, preferences: &[Preferences]) -> Result<(), PrefsError> {
        let mut tx = self.pool.begin().await?;
        for p in preferences {
            sqlx::query(
                "INSERT INTO notify_preferences (tenant_id, user_id, document, updated_at) \
                 VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (tenant_id, user_id) \
                 DO UPDATE SET document = EXCLUDED.document, updated_at = now()",
            )
            .bind(p.tenant_id)
            .bind(&p.user_id)
            .bind(sqlx::types::Json(p))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrefsError {
    #[error("reading preferences: {}", crate::safe::error_chain(.0))]
    Database(#[from] sqlx::Error),
    #[error(
        "stored preferences no longer validate ({0}); set them again with `conveyor notify prefs set`"
    )]
    Stored(FieldError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Preferences, FieldError> {
        Preferences::parse(v.as_object().unwrap(), "prefs")
    }

    fn valid() -> Value {
        json!({
            "tenantId": "7f1c2a4e-0000-4000-8000-000000000001",
            "userId": "u-1",
            "segment": "vip",
            "channels": {
                "email": "ada@example.com",
                "sms": "+4915112345678",
                "push": "arn:aws:sns:eu-west-1:123456789012:endpoint/GCM/app/0b1c",
                "webhook": "https://hooks.example.com/notify"
            },
            "optOut": ["sms"],
            "failoverOrder": ["push", "email"],
            "quietHours": {"start": "22:00", "end": "07:00", "timeZone": "Europe/Berlin"}
        })
    }

    #[test]
    fn a_full_document_reads_and_writes_back_the_same() {
        let p = parse(valid()).unwrap();
        assert_eq!(p.usable(Channel::Sms), None, "opted out");
        assert_eq!(p.usable(Channel::Email), Some("ada@example.com"));
        assert_eq!(
            p.quiet_hours.as_ref().unwrap().time_zone,
            chrono_tz::Europe::Berlin
        );
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back, valid());
        assert!(!format!("{p:?}").contains("ada@"), "Debug hides addresses");
    }

    #[test]
    fn every_mistake_names_its_field_and_never_the_address() {
        let cases: &[(&str, Value, &str)] = &[
            (
                "/channels/email",
                json!("ada at example"),
                "prefs.channels.email",
            ),
            ("/channels/sms", json!("015112345678"), "prefs.channels.sms"),
            ("/channels/sms", json!("+0123"), "prefs.channels.sms"),
            (
                "/channels/push",
                json!("arn:aws:sqs:x:y:z"),
                "prefs.channels.push",
            ),
            (
                "/channels/webhook",
                json!("ftp://x.example"),
                "prefs.channels.webhook",
            ),
            (
                "/channels/webhook",
                json!("https://u:p@x.example/"),
                "prefs.channels.webhook",
            ),
            (
                "/quietHours/timeZone",
                json!("Mars/Olympus"),
                "prefs.quietHours.timeZone",
            ),
            (
                "/quietHours/start",
                json!("25:00"),
                "prefs.quietHours.start",
            ),
            ("/quietHours/end", json!("22:00"), "prefs.quietHours.end"),
            ("/optOut", json!(["email", "email"]), "prefs.optOut[1]"),
            ("/tenantId", json!("acme"), "prefs.tenantId"),
        ];
        for (pointer, value, path) in cases {
            let mut doc = valid();
            *doc.pointer_mut(pointer).unwrap() = value.clone();
            let e = parse(doc).unwrap_err();
            assert_eq!(&e.path, path, "{pointer}: {e}");
            if let (true, Value::String(s)) = (pointer.starts_with("/channels"), value)
                && s.len() > 8
            {
                assert!(!e.to_string().contains(s.as_str()), "{e}");
            }
        }
        let mut doc = valid();
        doc["channels"]["fax"] = json!("+49");
        assert_eq!(parse(doc).unwrap_err().path, "prefs.channels.\"fax\"");
        let mut doc = valid();
        doc["colour"] = json!("blue");
        assert_eq!(parse(doc).unwrap_err().path, "prefs.\"colour\"");
    }
}
