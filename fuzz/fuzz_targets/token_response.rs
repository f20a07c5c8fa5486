//! Token endpoint responses (status from the first byte, gzip'd when the second is odd): any
//! answer is bounded and our secret never appears in an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "s3cret-Value";

fuzz_target!(|data: &[u8]| {
    let (Some(&s), Some(&g)) = (data.first(), data.get(1)) else {
        return;
    };
    let status = [200u16, 400, 401, 403, 500, 302][s as usize % 6];
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    if g % 2 == 1 {
        headers.insert("content-encoding", "gzip".parse().unwrap());
    }
    let body = &data[2..];
    match irisd::oauth::client::parse_token_response(
        http::StatusCode::from_u16(status).unwrap(),
        &headers,
        body,
        &[SECRET],
    ) {
        Ok(_) => assert_eq!(status, 200),
        Err(e) => assert!(!e.to_string().contains(SECRET), "{e}"),
    }
});
