//! The `sns` format: an SNS notification as a topic's SQS subscription delivers it with raw
//! message delivery off. `Message` is parsed as the JSON payload; the notification's
//! `MessageAttributes` are kept as the event's attributes. Any other `Type`
//! (`SubscriptionConfirmation`, `UnsubscribeConfirmation`) carries no payload and is poison.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Event, PoisonError};

pub(super) fn decode(body: &str) -> Result<Event, PoisonError> {
    let Value::Object(mut envelope) = super::json(body)? else {
        return Err(PoisonError::NotAnObject);
    };
    let mut string = |key: &'static str| match envelope.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    match string("Type").as_deref() {
        Some("Notification") => {}
        Some(other) => {
            return Err(PoisonError::WrongFormat(format!(
                "an SNS {} message carries no payload (a SubscriptionConfirmation means the \
                 subscription was never confirmed: confirm it, or subscribe the queue with \
                 `sns subscribe` from the queue's own account)",
                crate::safe::token(other)
            )));
        }
        None => {
            return Err(PoisonError::WrongFormat(
                "not an SNS notification (no `Type`); is queues.<key>.format right, or is raw \
                 message delivery on (then use format = \"raw\")?"
                    .into(),
            ));
        }
    }
    let message = string("Message").ok_or(PoisonError::MissingField("Message"))?;
    let source = string("TopicArn").ok_or(PoisonError::MissingField("TopicArn"))?;
    let id = string("MessageId");
    let subject = string("Subject").unwrap_or_default();
    let time = string("Timestamp");
    let payload = serde_json::from_str(&message)
        .map_err(|e| PoisonError::NotJson(format!("`Message`: {}", crate::safe::json_error(&e))))?;
    let attributes = match envelope.remove("MessageAttributes") {
        Some(Value::Object(attributes)) => attributes
            .into_iter()
            .filter_map(|(name, v)| Some((name, v.get("Value")?.as_str()?.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    };
    Ok(Event {
        id,
        source,
        detail_type: subject,
        time,
        payload,
        payload_path: "Message",
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn notification(message: &str) -> String {
        json!({"Type":"Notification","MessageId":"m-1","TopicArn":"arn:aws:sns:us-east-1:000000000000:t",
            "Subject":"EnvelopeV1.note","Message": message,"Timestamp":"2026-11-23T10:00:00.000Z",
            "MessageAttributes":{"tenant":{"Type":"String","Value":"acme"}}})
        .to_string()
    }

    #[test]
    fn a_notification_becomes_an_event_with_its_message_as_payload() {
        let e = decode(&notification(r#"{"a":1}"#)).unwrap();
        assert_eq!(e.id.as_deref(), Some("m-1"));
        assert_eq!(e.source, "arn:aws:sns:us-east-1:000000000000:t");
        assert_eq!(e.detail_type, "EnvelopeV1.note");
        assert_eq!(e.payload, json!({"a": 1}));
        assert_eq!(e.attributes["tenant"], "acme");
    }

    #[test]
    fn other_types_and_bad_messages_are_named_without_quoting() {
        let confirm =
            json!({"Type":"SubscriptionConfirmation","Message":"secret-text","TopicArn":"t"});
        let e = decode(&confirm.to_string()).unwrap_err().to_string();
        assert!(e.contains("SubscriptionConfirmation"), "{e}");
        let e = decode(&notification("secret-text"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`Message`") && !e.contains("secret-text"), "{e}");
        let e = decode(r#"{"detail":{}}"#).unwrap_err().to_string();
        assert!(e.contains("not an SNS notification"), "{e}");
    }
}
