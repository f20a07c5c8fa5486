//! OAuth 2.0 client-credentials grant (RFC 6749 §4.4) as IRIS speaks it: the protocol values
//! ([`Credentials`], [`Token`]), the token request and response handling ([`client`]) and the
//! per-destination token cache ([`cache`]).
//!
//! Credentials and tokens are [`SecretString`]s: they have no `Display`, their `Debug` prints
//! `[REDACTED]`, and they are zeroized on drop. The only places that expose them are the two
//! header builders (`Authorization: Basic` here, `Authorization: Bearer` in the request
//! builder), and those mark the header value sensitive.

pub mod cache;
pub mod client;

use base64::Engine;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

pub use cache::TokenCache;
pub use client::{TokenClient, TokenError};

/// How we authenticate to a partner's token endpoint.
#[derive(Clone)]
pub enum Credentials {
    /// RFC 6749 §2.3.1: `Basic base64(urlencode(client_id) ":" urlencode(client_secret))`.
    ClientSecret {
        client_id: String,
        secret: SecretString,
    },
    /// An opaque value the partner hands out, sent as `Basic <value>` unchanged.
    Basic(SecretString),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ClientSecret { client_id, .. } => f
                .debug_struct("ClientSecret")
                .field("client_id", client_id)
                .field("secret", &"***")
                .finish(),
            Credentials::Basic(_) => f.write_str("Basic(***)"),
        }
    }
}

impl Credentials {
    /// The `Authorization` header value, marked sensitive (hyper will not log it, HPACK will
    /// not index it).
    pub fn authorization(&self) -> HeaderValue {
        let value = match self {
            Credentials::ClientSecret { client_id, secret } => {
                // Both the plain pair and its base64 hold the secret: wiped when dropped rather
                // than left in freed memory (the header itself is marked sensitive).
                let mut plain = zeroize::Zeroizing::new(String::with_capacity(
                    client_id.len() + secret.expose_secret().len() + 1,
                ));
                plain.extend(form_urlencoded::byte_serialize(client_id.as_bytes()));
                plain.push(':');
                plain.extend(form_urlencoded::byte_serialize(
                    secret.expose_secret().as_bytes(),
                ));
                let encoded = zeroize::Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(plain.as_bytes()),
                );
                format!("Basic {}", encoded.as_str())
            }
            Credentials::Basic(value) => format!("Basic {}", value.expose_secret()),
        };
        let mut hv = HeaderValue::try_from(value)
            .unwrap_or_else(|_| HeaderValue::from_static("Basic invalid"));
        hv.set_sensitive(true);
        hv
    }
}

/// An access token obtained from a partner.
pub struct Token {
    /// The bearer value. Never printed.
    pub(crate) value: SecretString,
    /// Distinguishes tokens of one cache so a 401 invalidates only the token it was sent with.
    pub generation: u64,
    pub obtained_at: Instant,
    /// `obtained_at + expires_in`, when the partner said.
    pub expires_at: Option<Instant>,
    /// When to start a background refresh (`expires_at - skew`).
    pub refresh_at: Option<Instant>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"***")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Token {
    /// A copy in a new allocation (see [`cache`]: each thread uses its own).
    pub(crate) fn duplicate(&self) -> Token {
        Token {
            value: SecretString::from(self.value.expose_secret().to_string()),
            generation: self.generation,
            obtained_at: self.obtained_at,
            expires_at: self.expires_at,
            refresh_at: self.refresh_at,
        }
    }

    /// `Bearer <token>`, marked sensitive.
    pub fn bearer_header(&self) -> HeaderValue {
        let mut hv = HeaderValue::try_from(format!("Bearer {}", self.value.expose_secret()))
            .expect("token characters were validated when it was received");
        hv.set_sensitive(true);
        hv
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    pub fn wants_refresh(&self, now: Instant) -> bool {
        self.refresh_at.is_some_and(|r| now >= r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_follow_rfc6749_2_3_1() {
        let c = Credentials::ClientSecret {
            client_id: "id with:colon".into(),
            secret: SecretString::from("p@ss w+rd!%é".to_string()),
        };
        let hv = c.authorization();
        assert!(hv.is_sensitive());
        let b64 = hv.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let plain = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&plain).unwrap(),
            "id+with%3Acolon:p%40ss+w%2Brd%21%25%C3%A9"
        );
    }

    #[test]
    fn opaque_basic_is_sent_unchanged() {
        let c = Credentials::Basic(SecretString::from("zq2LOO1CcYGr".to_string()));
        assert_eq!(c.authorization().to_str().unwrap(), "Basic zq2LOO1CcYGr");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::ClientSecret {
            client_id: "iris".into(),
            secret: SecretString::from("hunter2".to_string()),
        };
        let s = format!("{c:?}");
        assert!(s.contains("iris") && !s.contains("hunter2"));
        let b = Credentials::Basic(SecretString::from("opaque123".to_string()));
        assert!(!format!("{b:?}").contains("opaque123"));
        let t = Token {
            value: SecretString::from("tok-value".to_string()),
            generation: 1,
            obtained_at: Instant::now(),
            expires_at: None,
            refresh_at: None,
        };
        assert!(!format!("{t:?}").contains("tok-value"));
    }
}
