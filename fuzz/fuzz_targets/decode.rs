//! The edge, body bytes → outcome: every input format's decoder, then the route contract
//! (`auto`: by the event's type), as every SQS message goes through them before any pipeline
//! sees it. It must never panic, and a rejection's reason must stay short (reasons name fields
//! and problems; they never quote the body).
#![no_main]

use std::collections::BTreeMap;

use conveyor::contract::Contract;
use conveyor::input::{self, Decoded, Format};
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
                    match Contract::Auto.validate(&event) {
                        Err(e) => assert!(e.to_string().len() < 512, "reason too long: {}", e.path),
                        Ok(None) => {}
                        Ok(Some(interaction)) => {
                            // A valid interaction survives the serialization `publish` uses.
                            let again = interaction.to_envelope_v1();
                            serde_json::to_string(&again).expect("serializable");
                        }
                    }
                }
            }
        }
    }
});
