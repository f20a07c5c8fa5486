//! Request signing as IRIS does it: an HMAC (md5, sha1 or sha256) over the request body for
//! POST and PUT, or over the path and query for GET, base64-encoded in a header (default
//! `X-Signature`). The daemon signs with one key; a partner (the mock) verifies against one or
//! two keys, so keys rotate without downtime. Pure functions; verification is constant-time.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use http::Method;

/// The HMAC hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "md5" => Ok(Algorithm::Md5),
            "sha1" => Ok(Algorithm::Sha1),
            "sha256" => Ok(Algorithm::Sha256),
            other => Err(format!("{other:?} is not one of md5, sha1, sha256")),
        }
    }
}

fn mac(alg: Algorithm, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    match alg {
        Algorithm::Md5 => run::<Hmac<md5::Md5>>(key, data),
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, data),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, data),
    }
}

/// What is signed: the body for POST/PUT, the path and query for GET.
pub fn signed_data<'a>(method: &Method, path_and_query: &'a str, body: &'a [u8]) -> &'a [u8] {
    if method == Method::GET {
        path_and_query.as_bytes()
    } else {
        body
    }
}

/// The header value: base64 of the HMAC.
pub fn sign(alg: Algorithm, key: &[u8], data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(alg, key, data))
}

/// Whether `signature` is the HMAC of `data` under any of `keys` (constant-time per key).
pub fn verify(alg: Algorithm, keys: &[&[u8]], data: &[u8], signature: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let mut ok = false;
    for key in keys {
        let expected = mac(alg, key, data);
        ok |= bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_slice(),
            given.as_slice(),
        ));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        // RFC 2202 / RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let data = b"what do ya want for nothing?";
        let hex = |alg| {
            mac(alg, b"Jefe", data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(hex(Algorithm::Md5), "750c783e6ab0b503eaa86e310a5db738");
        assert_eq!(
            hex(Algorithm::Sha1),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert_eq!(
            hex(Algorithm::Sha256),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_either_active_key() {
        let sig = sign(Algorithm::Sha256, b"new", b"body");
        assert!(verify(Algorithm::Sha256, &[b"old", b"new"], b"body", &sig));
        assert!(!verify(Algorithm::Sha256, &[b"old"], b"body", &sig));
        assert!(!verify(Algorithm::Sha256, &[b"new"], b"other body", &sig));
        assert!(!verify(Algorithm::Sha1, &[b"new"], b"body", &sig));
        assert!(!verify(
            Algorithm::Sha256,
            &[b"new"],
            b"body",
            "not base64!"
        ));
    }

    #[test]
    fn get_signs_the_path_and_query() {
        assert_eq!(
            signed_data(&Method::GET, "/segments/aam?x=1", b"body"),
            b"/segments/aam?x=1"
        );
        assert_eq!(
            signed_data(&Method::POST, "/segments/aam", b"body"),
            b"body"
        );
    }
}
