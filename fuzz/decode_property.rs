// The property the decoder fuzz target checks, in a file of its own so that the integration
// tests (tests/it/formats.rs) replay the seed corpus through the very same check on every run,
// without the nightly toolchain: `include!`d by both, with `conveyor` as an external crate.
//
// The edge, body bytes → outcome: every input format's decoder, then the route contract
// (`auto`: by the event's type; and each notification contract), as every SQS message goes
// through them before any pipeline sees it. It must never panic, and a rejection's reason must
// stay short (reasons name fields and problems; they never quote the body).

/// Decodes `data` as each format would and validates what it yields against each contract.
pub fn decode_property(data: &[u8]) {
    use conveyor::input::{self, Decoded, Format};
    // SQS bodies are text; anything else arrives as replacement characters.
    let body = String::from_utf8_lossy(data);
    for format in [Format::Eventbridge, Format::Sns, Format::S3, Format::Raw] {
        match input::decode(format, &body, &std::collections::BTreeMap::new()) {
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
}

/// `auto` covers the interaction contracts and NotificationEvent v1 (by detail-type); the
/// notification contracts are also tried on every event.
const CONTRACTS: [conveyor::contract::Contract; 3] = [
    conveyor::contract::Contract::Auto,
    conveyor::contract::Contract::NotificationEventV1,
    conveyor::contract::Contract::RankedNotificationV1,
];

fn check(contract: conveyor::contract::Contract, event: &conveyor::input::Event) {
    use conveyor::contract::Validated;
    use conveyor::contract::notification::NotificationEvent;
    use conveyor::contract::ranked::RankedNotification;
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
