//! The mock partner's strict IRIS payload parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = irisd::payload::parse_payload(data, 10_000) {
        assert_eq!(p.user_count, p.users.len().to_string());
        assert!(p.users.len() <= 10_000);
    }
});
