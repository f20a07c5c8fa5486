//! Delivery: from accepted user records to acknowledged publish requests.
//!
//! The pieces follow the data: [`batcher`] decides when a batch is complete (pure),
//! [`request`] turns a batch into the exact HTTP request (pure: payload JSON, gzip, headers),
//! [`retry`] classifies responses (pure), [`sender`] is the only place that talks to the partner
//! (token, HTTPS, one replay after a 401), and [`lane`] runs one destination: its queue, its
//! batcher, its bounded set of in-flight requests.

pub mod batcher;
pub mod lane;
pub mod request;
pub mod retry;
pub mod sender;
