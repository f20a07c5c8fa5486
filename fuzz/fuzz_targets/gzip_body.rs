//! gzip request bodies (the intake's and the mock's decoding): bounded output whatever the
//! input, including bombs.
#![no_main]
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut h = http::HeaderMap::new();
    h.insert("content-encoding", "gzip".parse().unwrap());
    if let Ok(b) = irisd::transport::decode_body(&h, data, MAX) {
        assert!(b.len() <= MAX);
    }
    if let Ok(b) = irisd::transport::gunzip_bounded(data, MAX) {
        assert!(b.len() <= MAX);
    }
});
