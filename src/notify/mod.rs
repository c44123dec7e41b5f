//! The notification system (SPEC §8): intake, ranking and delivery as stages of this daemon.
//! Its two contracts live here — [`event::NotificationEvent`] v1, what producers send, and
//! [`ranked::RankedNotification`] v1, what ranking hands to delivery — validated at the edge
//! like every contract (`contract.rs`), with a JSON Schema each in `docs/schemas/`.

pub mod bucket;
pub mod deliver;
pub mod deliveries;
pub mod drop;
pub mod event;
pub mod outbox;
pub mod prefs;
pub mod rank;
pub mod ranked;
pub mod score;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fields::{FieldError, Fields};

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
    fn parse(d: &Fields<'_>) -> Result<Content, FieldError> {
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
fn channels(d: &Fields<'_>, key: &str, min: usize) -> Result<Vec<Channel>, FieldError> {
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

#[cfg(test)]
mod tests;
