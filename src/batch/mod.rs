//! Batch delivery of onboarded data: files of qualifications (CSV or NDJSON, optionally gzip),
//! read as streams, grouped per user, published in chunks with the destination's token, retry
//! and dead-letter machinery, checkpointed so a restart resumes after the last acknowledged
//! chunk. [`reader`] parses files (pure over a byte stream).

pub mod reader;
pub mod schedule;
