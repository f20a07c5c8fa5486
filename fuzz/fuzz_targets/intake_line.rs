//! One intake NDJSON line: parse, validate, render. A rendered record must be a valid
//! `Users` entry of the IRIS payload.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(ev) = serde_json::from_slice::<irisd::payload::IntakeEvent<'_>>(data) else {
        return;
    };
    if let Ok(rec) = irisd::payload::render_user(&ev, jiff::Timestamp::UNIX_EPOCH) {
        let user: irisd::payload::User = serde_json::from_slice(&rec.json)
            .expect("a rendered user is valid JSON of the payload's shape");
        assert_eq!(user.aam_uuid, ev.aam_uuid);
        assert_eq!(user.data_partner_uuid, ev.data_partner_uuid);
        assert_eq!(user.segments.len(), ev.segments.len());
    }
});
