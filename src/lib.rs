//! irisd delivers Audience Manager segment qualifications to partners the way IRIS does:
//! OAuth 2.0 client-credentials tokens from the partner's token endpoint, cached per
//! destination, and gzip'd JSON payloads to the partner's publish endpoint over HTTPS.
//!
//! The map of the modules and the flow of one event is in `ARCHITECTURE.md`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod batch;
pub mod bench;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod demo;
pub mod fsync;
pub mod gzip;
pub mod intake;
pub mod kafka;
pub mod metrics;
pub mod mock;
pub mod oauth;
pub mod payload;
pub mod schedule;
pub mod server;
pub mod shutdown;
pub mod signing;
pub mod spool;
pub mod transport;
pub mod verify;
