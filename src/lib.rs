//! conveyor: one daemon that long-polls SQS, unwraps EventBridge events and runs pipelines on
//! them, deciding for every message that it is deleted, retried later or dead-lettered with its
//! reason — never lost.

pub mod aws;
pub mod bolt;
pub mod breaker;
pub mod claim_check;
pub mod cmd;
pub mod config;
pub mod contract;
pub mod daemon;
pub mod dispatch;
pub mod engine;
pub mod extract;
pub mod fault;
pub mod fields;
pub mod input;
pub mod ledger;
pub mod notify;
pub mod ops;
pub mod pipeline;
pub mod postgres;
pub mod safe;
pub mod shutdown;
pub mod sqs;
pub mod telemetry;

pub use daemon::{Running, run, start, start_with};

/// Installs aws-lc-rs as rustls's process-wide crypto provider. neo4rs enables rustls's `ring`
/// feature while the AWS SDK and sqlx use aws-lc-rs; with both compiled in rustls cannot choose
/// and the first TLS connection panics. Call before any client is built.
pub fn install_crypto_provider() {
    // Err means a provider is installed already (tests call this repeatedly): fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
