//! irisd's integration tests, in one binary (one link of SQLite, librdkafka, ring and rustls
//! instead of one per file). Each module tests one area against the real mock partner on
//! loopback and, where the process matters, the real `irisd` binary. `secrets_in_logs` is a
//! binary of its own: it installs a global log subscriber.

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod batch;
mod bench;
mod browser;
mod cli;
mod config;
mod crash;
mod deploy;
mod durability;
mod intake;
mod kafka;
mod lazyfs;
mod limits;
mod mock_partner;
mod mock_rfc;
mod oauth;
mod power_loss;
mod properties;
mod reload;
mod security;
mod signals;
mod signing;
mod tls;
mod verify;
