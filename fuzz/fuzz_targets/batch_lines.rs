//! Batch file reading (CSV or NDJSON by the first byte, optionally gzip'd by the second):
//! every line becomes a user, a reject or the end; positions only move forward.
#![no_main]
use irisd::batch::reader::{BatchReader, Format, Item};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (Some(&f), Some(&g)) = (data.first(), data.get(1)) else {
        return;
    };
    let format = if f % 2 == 0 {
        Format::Csv
    } else {
        Format::Ndjson
    };
    let body = data[2..].to_vec();
    let mut r = BatchReader::new(std::io::Cursor::new(body), format, g % 4 == 1, "d");
    let mut last = 0u64;
    for _ in 0..100_000 {
        match r.next_item() {
            Ok(Some(Item::User { .. })) | Ok(Some(Item::Reject { .. })) => {
                let at = r.position().offset;
                assert!(at >= last);
                last = at;
            }
            Ok(None) | Err(_) => return,
        }
    }
});
