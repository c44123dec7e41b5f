//! The notification contracts against their JSON Schemas (`docs/schemas/`): for a sample of each
//! and for every kind of mistake, conveyor's validator and the schema agree, and conveyor's
//! error names the field.

use serde_json::{Value, json};

use super::notification::NotificationEvent;
use super::ranked::RankedNotification;

const EVENT_SCHEMA: &str = include_str!("../../docs/schemas/notification-event.v1.schema.json");
const RANKED_SCHEMA: &str = include_str!("../../docs/schemas/ranked-notification.v1.schema.json");

/// Resolves the schemas' references to each other from `docs/schemas/`, never the network.
struct Local;

impl jsonschema::Retrieve for Local {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        match uri.as_str() {
            "https://conveyor.dev/schemas/notification-event.v1.schema.json" => {
                Ok(serde_json::from_str(EVENT_SCHEMA)?)
            }
            other => Err(format!("no local schema for {other}").into()),
        }
    }
}

fn validator(schema: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(schema).unwrap();
    jsonschema::options()
        .with_retriever(Local)
        .build(&schema)
        .expect("the schema compiles")
}

const TENANT: &str = "550e8400-e29b-41d4-a716-446655440000";

fn content() -> Value {
    json!({"title": "Invoice ready", "body": "Your invoice for November is ready.",
           "cta": {"label": "View", "url": "https://app.example.com/invoices/1"},
           "metadata": {"kind": "billing", "amount": 120}})
}

fn event() -> Value {
    json!({"eventId": "evt-2026-11-23-0001", "source": "billing", "occurredAt": "2026-11-23T10:00:00Z",
           "tenantId": TENANT, "user": {"id": "user-1", "segment": "pro", "channels": ["email", "sms"]},
           "content": content()})
}

fn ranked() -> Value {
    json!({"eventId": "evt-2026-11-23-0001", "tenantId": TENANT, "userId": "user-1",
           "occurredAt": "2026-11-23T10:00:00Z", "priority": 4, "sendAfter": "2026-11-23T22:00:00+01:00",
           "scoreBreakdown": {"urgency": 0.8, "relevance": 0.6}, "scorer": "rules", "channel": "email",
           "delivery": {"address": "dana@example.com", "rateLimitKey": format!("email:{TENANT}")},
           "failover": [{"channel": "sms", "address": "+15555550100"}], "attempt": 0, "content": content()})
}

/// `base` with the value at the JSON pointer replaced (`None`: removed).
fn with(base: &Value, pointer: &str, value: Option<Value>) -> Value {
    let mut doc = base.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = doc.pointer_mut(parent).unwrap();
    match (target, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(key.to_owned(), v);
        }
        (Value::Object(map), None) => {
            map.remove(key);
        }
        (Value::Array(items), Some(v)) => items[key.parse::<usize>().unwrap()] = v,
        _ => unreachable!(),
    }
    doc
}

/// Checks one document: the schema's verdict and conveyor's agree; when invalid, conveyor's
/// error is at `expected_path`.
fn agree(
    validator: &jsonschema::Validator,
    parse: impl Fn(&serde_json::Map<String, Value>) -> Result<(), crate::fields::FieldError>,
    case: &str,
    doc: &Value,
    expected_path: Option<&str>,
) {
    let schema_ok = validator.is_valid(doc);
    let ours = parse(doc.as_object().unwrap());
    assert_eq!(
        schema_ok,
        ours.is_ok(),
        "{case}: the schema says {schema_ok}, conveyor says {ours:?}"
    );
    match (expected_path, ours) {
        (None, Ok(())) => {}
        (Some(path), Err(e)) => assert_eq!(e.path, path, "{case}: {e}"),
        (expected, ours) => panic!("{case}: expected {expected:?}, got {ours:?}"),
    }
}

#[test]
fn notification_event_v1_agrees_with_its_schema() {
    let v = validator(EVENT_SCHEMA);
    let parse =
        |m: &serde_json::Map<String, Value>| NotificationEvent::parse(m, "detail").map(|_| ());
    let base = event();
    let long = |n: usize| Some(json!("x".repeat(n)));
    let valid = [
        ("the sample", base.clone()),
        (
            "segment null",
            with(&base, "/user/segment", Some(Value::Null)),
        ),
        ("no segment", with(&base, "/user/segment", None)),
        ("no cta", with(&base, "/content/cta", None)),
        ("no metadata", with(&base, "/content/metadata", None)),
        (
            "an unknown field",
            with(&base, "/priorityHint", Some(json!(3))),
        ),
        (
            "an offset",
            with(
                &base,
                "/occurredAt",
                Some(json!("2026-11-23T11:00:00.250+01:00")),
            ),
        ),
        ("a 128-character id", with(&base, "/eventId", long(128))),
        (
            "a 256-character title",
            with(&base, "/content/title", long(256)),
        ),
    ];
    for (case, doc) in &valid {
        agree(&v, parse, case, doc, None);
    }
    let invalid = [
        ("no eventId", "/eventId", None, "detail.eventId"),
        (
            "an eventId with a space",
            "/eventId",
            Some(json!("evt 1")),
            "detail.eventId",
        ),
        (
            "a 129-character eventId",
            "/eventId",
            long(129),
            "detail.eventId",
        ),
        (
            "an empty source",
            "/source",
            Some(json!("  ")),
            "detail.source",
        ),
        (
            "occurredAt in words",
            "/occurredAt",
            Some(json!("yesterday")),
            "detail.occurredAt",
        ),
        (
            "occurredAt without an offset",
            "/occurredAt",
            Some(json!("2026-11-23T10:00:00")),
            "detail.occurredAt",
        ),
        (
            "a tenantId that is no UUID",
            "/tenantId",
            Some(json!("acme")),
            "detail.tenantId",
        ),
        (
            "a tenantId without hyphens",
            "/tenantId",
            Some(json!("550e8400e29b41d4a716446655440000")),
            "detail.tenantId",
        ),
        ("no user", "/user", None, "detail.user"),
        (
            "a blank user id",
            "/user/id",
            Some(json!(" ")),
            "detail.user.id",
        ),
        (
            "a 65-character segment",
            "/user/segment",
            long(65),
            "detail.user.segment",
        ),
        (
            "no channels",
            "/user/channels",
            Some(json!([])),
            "detail.user.channels",
        ),
        (
            "a channel twice",
            "/user/channels",
            Some(json!(["email", "email"])),
            "detail.user.channels[1]",
        ),
        (
            "an unknown channel",
            "/user/channels",
            Some(json!(["fax"])),
            "detail.user.channels[0]",
        ),
        (
            "channels as a string",
            "/user/channels",
            Some(json!("email")),
            "detail.user.channels",
        ),
        ("no content", "/content", None, "detail.content"),
        (
            "an empty title",
            "/content/title",
            Some(json!("")),
            "detail.content.title",
        ),
        (
            "a 257-character title",
            "/content/title",
            long(257),
            "detail.content.title",
        ),
        (
            "a number for a body",
            "/content/body",
            Some(json!(42)),
            "detail.content.body",
        ),
        (
            "a body too long",
            "/content/body",
            long(65_537),
            "detail.content.body",
        ),
        (
            "a cta without a url",
            "/content/cta",
            Some(json!({"label": "View"})),
            "detail.content.cta.url",
        ),
        (
            "an ftp cta",
            "/content/cta/url",
            Some(json!("ftp://files.example.com/x")),
            "detail.content.cta.url",
        ),
        (
            "metadata as a string",
            "/content/metadata",
            Some(json!("billing")),
            "detail.content.metadata",
        ),
    ];
    for (case, pointer, value, path) in invalid {
        agree(&v, parse, case, &with(&base, pointer, value), Some(path));
    }
}

#[test]
fn ranked_notification_v1_agrees_with_its_schema() {
    let v = validator(RANKED_SCHEMA);
    let parse =
        |m: &serde_json::Map<String, Value>| RankedNotification::parse(m, "body").map(|_| ());
    let base = ranked();
    let valid = [
        ("the sample", base.clone()),
        ("no failover", with(&base, "/failover", Some(json!([])))),
        (
            "a provider",
            with(&base, "/delivery/provider", Some(json!("ses"))),
        ),
        ("priority 5.0", with(&base, "/priority", Some(json!(5.0)))),
        (
            "an empty breakdown",
            with(&base, "/scoreBreakdown", Some(json!({}))),
        ),
    ];
    for (case, doc) in &valid {
        agree(&v, parse, case, doc, None);
    }
    let invalid = [
        ("priority 0", "/priority", Some(json!(0)), "body.priority"),
        ("priority 6", "/priority", Some(json!(6)), "body.priority"),
        (
            "priority 2.5",
            "/priority",
            Some(json!(2.5)),
            "body.priority",
        ),
        (
            "priority as text",
            "/priority",
            Some(json!("3")),
            "body.priority",
        ),
        (
            "a word in the breakdown",
            "/scoreBreakdown",
            Some(json!({"urgency": "high"})),
            "body.scoreBreakdown",
        ),
        (
            "an unknown scorer",
            "/scorer",
            Some(json!("magic")),
            "body.scorer",
        ),
        (
            "an unknown channel",
            "/channel",
            Some(json!("fax")),
            "body.channel",
        ),
        (
            "an empty address",
            "/delivery/address",
            Some(json!("")),
            "body.delivery.address",
        ),
        (
            "no rate-limit key",
            "/delivery/rateLimitKey",
            None,
            "body.delivery.rateLimitKey",
        ),
        (
            "a failover without an address",
            "/failover",
            Some(json!([{"channel": "sms"}])),
            "body.failover[0].address",
        ),
        (
            "a failover that is no object",
            "/failover",
            Some(json!(["sms"])),
            "body.failover[0]",
        ),
        (
            "a negative attempt",
            "/attempt",
            Some(json!(-1)),
            "body.attempt",
        ),
        (
            "sendAfter in words",
            "/sendAfter",
            Some(json!("tonight")),
            "body.sendAfter",
        ),
        ("no content", "/content", None, "body.content"),
    ];
    for (case, pointer, value, path) in invalid {
        agree(&v, parse, case, &with(&base, pointer, value), Some(path));
    }
    // What a schema cannot say: no channel twice among the chosen one and the failovers.
    let twice = with(
        &base,
        "/failover",
        Some(json!([{"channel": "email", "address": "x@example.com"}])),
    );
    assert!(v.is_valid(&twice));
    let e = RankedNotification::parse(twice.as_object().unwrap(), "body").unwrap_err();
    assert_eq!(e.path, "body.failover[0].channel");
}

#[test]
fn timestamps_that_could_not_be_written_back_are_refused() {
    for edge in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:30:00+01:00"] {
        let doc = with(&event(), "/occurredAt", Some(json!(edge)));
        let e = NotificationEvent::parse(doc.as_object().unwrap(), "detail").unwrap_err();
        assert_eq!(e.path, "detail.occurredAt", "{edge}");
    }
}

#[test]
fn what_conveyor_writes_is_what_it_reads_and_what_the_schema_accepts() {
    let event = NotificationEvent::parse(event().as_object().unwrap(), "detail").unwrap();
    let written = serde_json::to_value(&event).unwrap();
    assert!(validator(EVENT_SCHEMA).is_valid(&written), "{written}");
    assert_eq!(
        NotificationEvent::parse(written.as_object().unwrap(), "detail").unwrap(),
        event
    );
    let ranked = RankedNotification::parse(ranked().as_object().unwrap(), "body").unwrap();
    let written = serde_json::to_value(&ranked).unwrap();
    assert!(validator(RANKED_SCHEMA).is_valid(&written), "{written}");
    assert_eq!(
        RankedNotification::parse(written.as_object().unwrap(), "body").unwrap(),
        ranked
    );
}

#[test]
fn errors_and_debug_output_never_carry_content_or_addresses() {
    let secret = "Your diagnosis is attached";
    let bad = with(&event(), "/content/title", Some(json!(secret.repeat(20))));
    let e = NotificationEvent::parse(bad.as_object().unwrap(), "detail").unwrap_err();
    assert!(!e.to_string().contains("diagnosis"), "{e}");
    let ok = with(&event(), "/content/body", Some(json!(secret)));
    let parsed = NotificationEvent::parse(ok.as_object().unwrap(), "detail").unwrap();
    assert!(!format!("{parsed:?}").contains("diagnosis"));
    let ranked = RankedNotification::parse(ranked().as_object().unwrap(), "body").unwrap();
    let debug = format!("{ranked:?}");
    assert!(
        !debug.contains("dana@example.com") && !debug.contains("+1555"),
        "{debug}"
    );
}
