//! The command line. Each subcommand's `--help` says what it does.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "conveyor",
    version,
    about = "Consume EventBridge events from SQS and run pipelines on them, losing nothing.",
    long_about = "conveyor long-polls SQS, unwraps EventBridge events, runs the routed pipelines \
                  with fault isolation, keeps each message's lease while work runs, retries with \
                  backoff, dead-letters with the reason, and drains cleanly on SIGTERM."
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Directory holding default.toml and <env>.toml.
    #[arg(
        long,
        global = true,
        env = "CONVEYOR_CONFIG_DIR",
        default_value = "config"
    )]
    pub config_dir: PathBuf,
    /// Environment: selects <config-dir>/<env>.toml (local, test, production, …).
    #[arg(
        long = "env",
        global = true,
        env = "CONVEYOR_ENV",
        default_value = "local"
    )]
    pub env: String,
    /// An extra TOML file merged over the environment's file (environment variables still win).
    #[arg(long = "config", global = true, env = "CONVEYOR_CONFIG")]
    pub config_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: consume the configured queues until SIGTERM/SIGINT, then drain and exit 0.
    Run,
    /// Load and validate the config, print it with secrets redacted, and probe every configured
    /// dependency (SQS queues, PostgreSQL, Bolt server). Exits 1 naming whatever failed.
    Check {
        /// Only load, validate and print the configuration.
        #[arg(long)]
        no_probe: bool,
    },
    /// Apply the PostgreSQL migrations in migrations/ (needs DATABASE_URL). The daemon also
    /// applies them at startup.
    Migrate,
    /// Provision (up), check end to end (verify) or remove (down) the queue, DLQ, EventBridge
    /// rule, target and queue policy described by [infra].
    #[command(subcommand)]
    Infra(crate::infra::InfraCommand),
    /// Publish EnvelopeV1 or BatchProcessingCompleted events to EventBridge, validated with the
    /// consumer's own parser first. Prints one JSON line per event (ids, never content).
    Publish(crate::publish::PublishArgs),
    /// Print the least-privilege IAM policy (JSON) of one role for this configuration: `run`
    /// (the daemon's task role), `publish` or `infra` (operators, CI). One document per role:
    /// the daemon never holds what provisioning needs.
    Policy {
        /// Whose policy: run (default), publish or infra.
        #[arg(long, value_enum, default_value_t = crate::policy::Role::Run)]
        role: crate::policy::Role,
    },
    /// Inspect a queue's dead-letter queue (stats, peek) and move messages back (redrive).
    Dlq(crate::dlq::DlqArgs),
    /// Ask the running daemon's ops listener (ops.listen_addr) whether it is alive (/healthz)
    /// or ready (--ready: /readyz). Exit 0 yes, 1 no. For container health checks: the image
    /// needs no curl.
    Health {
        /// Check /readyz (every dependency answers) instead of /healthz (the process is alive).
        #[arg(long)]
        ready: bool,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}
