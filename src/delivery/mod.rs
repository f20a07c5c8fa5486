//! Delivery: from accepted user records to acknowledged publish requests.
//!
//! The pieces follow the data: [`batcher`] decides when a batch is complete (pure),
//! [`request`] turns a batch into the exact HTTP request (pure: payload JSON, gzip, headers),
//! [`retry`] classifies responses and times retries (pure), [`sender`] is the only place that
//! talks to the partner (token, HTTPS, one replay after a 401), [`resolve`] turns attempts into
//! a verdict (delivered, dead letter, abandoned) for real-time and batch alike, and [`lane`]
//! runs one destination's real-time traffic from the spool.

pub mod batcher;
pub mod build;
pub mod lane;
pub mod request;
pub mod resolve;
pub mod retry;
pub mod sender;
