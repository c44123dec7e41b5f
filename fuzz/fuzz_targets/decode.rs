//! The edge, body bytes → outcome: every input format's decoder, then the route contract
//! (`auto`: by the event's type; and each notification contract), as every SQS message goes
//! through them before any pipeline sees it. It must never panic, and a rejection's reason must stay short (reasons name fields
//! and problems; they never quote the body).
#![no_main]

use std::collections::BTreeMap;

use conveyor::contract::{Contract, Validated};
use conveyor::input::{self, Decoded, Event, Format};
use conveyor::contract::notification::NotificationEvent;
use conveyor::contract::ranked::RankedNotification;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // SQS bodies are text; anything else arrives as replacement characters.
    let body = String::from_utf8_lossy(data);
    for format in [Format::Eventbridge, Format::Sns, Format::S3, Format::Raw] {
        match input::decode(format, &body, &BTreeMap::new()) {
            Err(poison) => assert!(poison.to_string().len() < 512, "reason too long"),
            Ok(Decoded::Nothing(_)) => {}
            Ok(Decoded::Events(events)) => {
                for event in events {
                    for contract in CONTRACTS {
                        check(contract, &event);
                    }
                }
            }
        }
    }
});

/// `auto` covers the interaction contracts and NotificationEvent v1 (by detail-type); the
/// notification contracts are also tried on every event.
const CONTRACTS: [Contract; 3] = [
    Contract::Auto,
    Contract::NotificationEventV1,
    Contract::RankedNotificationV1,
];

fn check(contract: Contract, event: &Event) {
    match contract.validate(event) {
        Err(e) => assert!(e.to_string().len() < 512, "reason too long: {}", e.path),
        Ok(Validated::Untyped) => {}
        Ok(Validated::Interaction(interaction)) => {
            // A valid interaction survives the serialization `publish` uses.
            let again = interaction.to_envelope_v1();
            serde_json::to_string(&again).expect("serializable");
        }
        // What conveyor writes of a valid notification, it reads back the same.
        Ok(Validated::Notification(n)) => {
            let written = serde_json::to_value(&n).expect("serializable");
            let again = NotificationEvent::parse(written.as_object().unwrap(), "x");
            assert_eq!(again.as_ref(), Ok(n.as_ref()));
        }
        Ok(Validated::Ranked(r)) => {
            let written = serde_json::to_value(&r).expect("serializable");
            let again = RankedNotification::parse(written.as_object().unwrap(), "x");
            assert_eq!(again.as_ref(), Ok(r.as_ref()));
        }
    }
}
