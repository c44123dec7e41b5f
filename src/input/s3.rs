//! The `s3` format: S3 event notifications (a bucket's notification configuration targeting the
//! queue). Each record is one event: `source` is the bucket, `detail_type` the record's
//! `eventName` (`ObjectCreated:Put`), the payload `{bucket, key, size, etag, event_name,
//! event_time, sequencer, range}` with the key URL-decoded (`range` only on conveyor's own work
//! messages, one per range of a drop: `notify-ingest`). The `s3:TestEvent` S3 sends when the
//! notification is configured carries no record: it is deleted, not dead-lettered.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Decoded, Event, PoisonError};

/// The field of a record that makes it a range of a drop, not an upload (`range` in the
/// payload).
pub const RANGE_FIELD: &str = "conveyorRange";

pub(super) fn decode(body: &str) -> Result<Decoded, PoisonError> {
    let Value::Object(notification) = super::json(body)? else {
        return Err(PoisonError::NotAnObject);
    };
    if notification.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(Decoded::Nothing("s3:TestEvent"));
    }
    let Some(Value::Array(records)) = notification.get("Records") else {
        return Err(PoisonError::WrongFormat(
            "no `Records` array: not an S3 event notification".into(),
        ));
    };
    if records.is_empty() {
        return Err(PoisonError::WrongFormat(
            "`Records` is empty: an S3 event notification without an event".into(),
        ));
    }
    records
        .iter()
        .enumerate()
        .map(|(i, record)| event(i, record))
        .collect::<Result<Vec<_>, _>>()
        .map(Decoded::Events)
}

fn event(i: usize, record: &Value) -> Result<Event, PoisonError> {
    let missing = |field: &str| {
        PoisonError::WrongFormat(format!("Records[{i}].{field} is missing or not a string"))
    };
    let text = |pointer: &str, field: &str| {
        record
            .pointer(pointer)
            .and_then(Value::as_str)
            .ok_or_else(|| missing(field))
    };
    let event_name = text("/eventName", "eventName")?;
    let bucket = text("/s3/bucket/name", "s3.bucket.name")?;
    let encoded_key = text("/s3/object/key", "s3.object.key")?;
    // S3 writes keys form-URL-encoded (`+` for a space).
    let key: String = url::form_urlencoded::parse(encoded_key.as_bytes())
        .map(|(k, v)| {
            if v.is_empty() {
                k.into_owned()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let size = record.pointer("/s3/object/size").and_then(Value::as_u64);
    let etag = record.pointer("/s3/object/eTag").and_then(Value::as_str);
    let sequencer = record
        .pointer("/s3/object/sequencer")
        .and_then(Value::as_str);
    let time = record.pointer("/eventTime").and_then(Value::as_str);
    // A range of a drop to read: conveyor's own work message (`notify-ingest` sends one per
    // range of an upload, shaped as the upload's record).
    let range = record.get(RANGE_FIELD).cloned();
    // Object keys may be names people chose: the id (logged, used as the idempotency key) is
    // a hash, never the key itself.
    let id = {
        let mut hash = Sha256::new();
        for part in [bucket, &key, etag.unwrap_or(""), sequencer.unwrap_or("")] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        if let Some(range) = &range {
            hash.update(range.to_string().as_bytes());
        }
        hex::encode(&hash.finalize()[..16])
    };
    Ok(Event {
        id: Some(id),
        source: bucket.to_owned(),
        detail_type: event_name.to_owned(),
        time: time.map(str::to_owned),
        payload: json!({
            "bucket": bucket, "key": key, "size": size, "etag": etag,
            "event_name": event_name, "event_time": time, "sequencer": sequencer,
            "range": range,
        }),
        payload_path: "s3",
        attributes: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, etag: &str) -> Value {
        json!({"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put",
            "eventTime":"2026-11-23T10:00:00.000Z",
            "s3":{"bucket":{"name":"drops"},"object":{"key": key,"size": 12,"eTag": etag,"sequencer":"0A1"}}})
    }

    #[test]
    fn each_record_is_an_event_with_its_key_decoded() {
        let body = json!({"Records": [record("in/a+b%2Bc.json", "e1"), record("in/x.json", "e2")]});
        let Decoded::Events(events) = decode(&body.to_string()).unwrap() else {
            panic!("events expected")
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].source, "drops");
        assert_eq!(events[0].detail_type, "ObjectCreated:Put");
        assert_eq!(events[0].payload["key"], "in/a b+c.json");
        assert_eq!(events[0].payload["size"], 12);
        assert_ne!(events[0].id, events[1].id);
        assert!(
            !events[0].id.as_deref().unwrap().contains("in/"),
            "the id is a hash"
        );
    }

    #[test]
    fn the_test_event_is_nothing_and_other_bodies_are_poison() {
        let test = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"drops"}"#;
        assert!(matches!(decode(test), Ok(Decoded::Nothing("s3:TestEvent"))));
        assert!(decode(r#"{"Records":[]}"#).is_err());
        let e = decode(r#"{"Records":[{"eventName":"x"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Records[0].s3.bucket.name"), "{e}");
        assert!(decode(r#"{"detail":{}}"#).is_err());
    }
}
