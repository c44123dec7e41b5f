//! Fuzzes the decoder edge (`fuzz/decode_property.rs`: body bytes → outcome through every format
//! and contract; no panic, short reasons). The integration tests replay the seed corpus through
//! the same property on every run.
#![no_main]

use libfuzzer_sys::fuzz_target;

include!("../decode_property.rs");

fuzz_target!(|data: &[u8]| decode_property(data));
