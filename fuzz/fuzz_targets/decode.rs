//! The envelope decoder, body bytes → outcome: what every SQS message goes through before any
//! pipeline sees it. It must never panic, and a rejection's reason must stay short (reasons
//! name fields and problems; they never quote the body).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // SQS bodies are text; anything else arrives as replacement characters.
    let body = String::from_utf8_lossy(data);
    match conveyor::event::decode(&body) {
        Err(poison) => assert!(poison.to_string().len() < 512, "reason too long"),
        Ok(event) => match conveyor::envelope::parse(&event) {
            Err(e) => assert!(e.to_string().len() < 512, "reason too long: {}", e.path),
            Ok(None) => {}
            Ok(Some(interaction)) => {
                // A valid interaction survives the serialization `publish` uses.
                let again = interaction.to_envelope_v1();
                serde_json::to_string(&again).expect("serializable");
            }
        },
    }
});
