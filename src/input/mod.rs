//! Input formats: how a queue's message bodies become events. Each queue has one
//! (`queues.<key>.format`); every format yields the same [`Event`] — id, source, type, time,
//! payload, attributes — that routes match on and contracts validate. A body that can never
//! become an event is a [`PoisonError`], permanent and named without quoting the body.
//!
//! | format        | `source`                      | `detail_type`            | payload            |
//! |---------------|-------------------------------|--------------------------|--------------------|
//! | `eventbridge` | the event's `source`          | its `detail-type`        | `detail`           |
//! | `sns`         | the topic ARN                 | the `Subject` (or "")    | `Message` as JSON  |
//! | `s3`          | the bucket name               | the record's `eventName` | the object record  |
//! | `raw`         | the `source` message attribute (or "") | the `type` attribute (or "") | the body |
//!
//! A body that is an S3 pointer written by the AWS extended clients is resolved first, in any
//! format (see `claim_check`, above this pure layer: it fetches from S3).

pub mod eventbridge;
mod raw;
pub mod s3;
mod sns;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a queue's bodies are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// EventBridge events, as an EventBridge rule's SQS target delivers them.
    #[default]
    Eventbridge,
    /// SNS notifications (a subscription with raw message delivery off).
    Sns,
    /// S3 event notifications: one event per record.
    S3,
    /// The body is the JSON payload itself.
    Raw,
}

impl Format {
    pub const ALL: &'static [&'static str] = &["eventbridge", "sns", "s3", "raw"];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Eventbridge => "eventbridge",
            Format::Sns => "sns",
            Format::S3 => "s3",
            Format::Raw => "raw",
        }
    }
}

/// One event, whatever format it arrived in.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The producer's id for the event (EventBridge event id, SNS message id, a hash of the S3
    /// record); `None` for raw bodies, which are identified by their SQS message id.
    pub id: Option<String>,
    pub source: String,
    pub detail_type: String,
    /// When the producer says it happened (RFC 3339), if it says.
    pub time: Option<String>,
    /// What the route's contract validates.
    pub payload: Value,
    /// Where the payload sits in the message (`detail`, `Message`, `body`, `s3`): the prefix of
    /// every validation error's field path.
    pub payload_path: &'static str,
    /// String-valued attributes: the SQS message attributes, or an SNS notification's own.
    pub attributes: BTreeMap<String, String>,
}

/// What a body decoded into.
#[derive(Debug)]
pub enum Decoded {
    Events(Vec<Event>),
    /// A message that carries no event and needs no work (S3's `s3:TestEvent`): delete it.
    Nothing(&'static str),
}

/// Why a body can never be processed. Permanent: dead-lettered on first receive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object")]
    NotAnObject,
    #[error("no `detail` object: not an EventBridge event")]
    NoDetail,
    #[error("`{0}` is missing or not a string")]
    MissingField(&'static str),
    /// Not what the queue's format says its bodies are.
    #[error("{0}")]
    WrongFormat(String),
}

impl PoisonError {
    /// A short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PoisonError::NotJson(_) => "not_json",
            PoisonError::NotAnObject | PoisonError::NoDetail => "not_eventbridge",
            PoisonError::MissingField(_) => "missing_field",
            PoisonError::WrongFormat(_) => "wrong_format",
        }
    }
}

/// Decodes one body in `format`. `attributes` are the SQS message attributes (string values).
pub fn decode(
    format: Format,
    body: &str,
    attributes: &BTreeMap<String, String>,
) -> Result<Decoded, PoisonError> {
    match format {
        Format::Eventbridge => {
            let event = eventbridge::decode(body)?;
            Ok(Decoded::Events(vec![event.into_event(attributes.clone())]))
        }
        Format::Sns => sns::decode(body).map(|e| Decoded::Events(vec![e])),
        Format::S3 => s3::decode(body),
        Format::Raw => raw::decode(body, attributes).map(|e| Decoded::Events(vec![e])),
    }
}

/// Parses a body as JSON, naming the error's position but never quoting the body.
pub(crate) fn json(body: &str) -> Result<Value, PoisonError> {
    serde_json::from_str(body).map_err(|e| PoisonError::NotJson(crate::safe::json_error(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic_in_any_format(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let body = String::from_utf8_lossy(&bytes);
            for format in [Format::Eventbridge, Format::Sns, Format::S3, Format::Raw] {
                let _ = decode(format, &body, &BTreeMap::new());
            }
        }
    }
}
