//! The `eventbridge` format: an SQS body as an EventBridge rule's SQS target writes it becomes
//! an [`EventBridgeEvent`] once, or a [`PoisonError`] that says why it never will. Errors never
//! quote the body.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Event, PoisonError};

/// An EventBridge event as EventBridge delivers it to SQS.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBridgeEvent {
    /// EventBridge's event id (unique per PutEvents entry); absent when a producer wrote the
    /// event to SQS itself without one.
    pub id: Option<String>,
    pub source: String,
    pub detail_type: String,
    /// Absent from some emulators' deliveries.
    pub account: Option<String>,
    pub time: Option<String>,
    pub region: Option<String>,
    pub resources: Vec<String>,
    /// The publisher's payload; validated further by the envelope parser.
    pub detail: Map<String, Value>,
}

impl EventBridgeEvent {
    /// The event routes see: `source`, `detail-type`, `detail` as the payload.
    pub fn into_event(self, attributes: BTreeMap<String, String>) -> Event {
        Event {
            id: self.id,
            source: self.source,
            detail_type: self.detail_type,
            time: self.time,
            payload: Value::Object(self.detail),
            payload_path: "detail",
            attributes,
        }
    }
}

/// Parses an SQS body as an EventBridge event.
pub fn decode(body: &str) -> Result<EventBridgeEvent, PoisonError> {
    let Value::Object(mut object) = super::json(body)? else {
        return Err(PoisonError::NotAnObject);
    };
    let Some(Value::Object(detail)) = object.remove("detail") else {
        return Err(PoisonError::NoDetail);
    };
    let mut string = |key: &'static str| match object.remove(key) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(PoisonError::MissingField(key)),
    };
    let id = string("id").ok();
    let source = string("source")?;
    let detail_type = string("detail-type")?;
    let account = string("account").ok();
    let time = string("time").ok();
    let region = string("region").ok();
    let resources = match object.remove("resources") {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(EventBridgeEvent {
        id,
        source,
        detail_type,
        account,
        time,
        region,
        resources,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVENT: &str = r#"{"version":"0","id":"6a7e8feb","detail-type":"EnvelopeV1.transcript",
        "source":"com.yourapp.transcription","account":"000000000000","time":"2025-01-23T10:30:00Z",
        "region":"us-east-1","resources":[],"detail":{"tenant_id":"x"}}"#;

    #[test]
    fn decodes_an_eventbridge_event() {
        let e = decode(EVENT).unwrap();
        assert_eq!(e.id.as_deref(), Some("6a7e8feb"));
        assert_eq!(e.detail_type, "EnvelopeV1.transcript");
        assert_eq!(e.source, "com.yourapp.transcription");
        assert_eq!(e.account.as_deref(), Some("000000000000"));
        assert_eq!(e.detail["tenant_id"], "x");
    }

    #[test]
    fn poison_bodies_are_named_without_quoting_them() {
        let cases = [
            ("hello secret-text", "not JSON"),
            (
                "{\"id\":\"1\",\"source\":\"s\",\"detail-type\":\"t\",\"detail\":{\"a\":\"\\udc00 secret-text\"}}",
                "not JSON",
            ),
            ("[1,2]", "not an object"),
            (
                "{\"id\":\"1\",\"source\":\"s\",\"detail-type\":\"t\"}",
                "no `detail` object",
            ),
            (
                "{\"id\":\"1\",\"source\":\"s\",\"detail-type\":\"t\",\"detail\":\"secret-text\"}",
                "no `detail` object",
            ),
            (
                "{\"id\":\"1\",\"detail-type\":\"t\",\"detail\":{}}",
                "`source`",
            ),
        ];
        for (body, expected) in cases {
            let e = decode(body).unwrap_err().to_string();
            assert!(e.contains(expected), "{body}: {e}");
            assert!(!e.contains("secret-text"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&String::from_utf8_lossy(&bytes));
        }
    }
}
