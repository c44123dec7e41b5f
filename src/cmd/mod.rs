//! The command line: one file per subcommand, holding its arguments and its `run`. Each
//! subcommand's `--help` says what it does.

pub mod check;
pub mod dlq;
pub mod health;
pub mod infra;
pub mod migrate;
pub mod notify;
pub mod policy;
mod progress;
pub mod publish;
pub mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Sources};

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
    Check(check::Args),
    /// Apply the PostgreSQL migrations in migrations/ (needs DATABASE_URL). The daemon also
    /// applies them at startup.
    Migrate,
    /// Provision (up), check end to end (verify) or remove (down) the queue, DLQ, EventBridge
    /// rule, target and queue policy described by [infra].
    #[command(subcommand)]
    Infra(infra::InfraCommand),
    /// Publish EnvelopeV1 or BatchProcessingCompleted events to EventBridge (or straight to a
    /// queue), validated with the consumer's own parser first. Prints one JSON line per event
    /// (ids, never content).
    Publish(Box<publish::Args>),
    /// Print the least-privilege IAM policy (JSON) of one role for this configuration: `run`
    /// (the daemon's task role), `publish` or `infra` (operators, CI). One document per role:
    /// the daemon never holds what provisioning needs.
    Policy(policy::Args),
    /// The notification system: publish a NotificationEvent (send), upload a JSON-lines drop
    /// (drop), read and write users' preferences (prefs get|set|import).
    Notify(notify::Args),
    /// Inspect a queue's dead-letter queue (stats, peek) and move messages back (redrive).
    Dlq(dlq::Args),
    /// Ask the running daemon's ops listener (ops.listen_addr) whether it is alive (/healthz)
    /// or ready (--ready: /readyz). Exit 0 yes, 1 no. For container health checks: the image
    /// needs no curl.
    Health(health::Args),
}

impl Command {
    /// Whether the command logs (to stderr). `check` and `health` print only their answer.
    fn logs(&self) -> bool {
        !matches!(self, Command::Check(_) | Command::Health(_))
    }
}

/// Loads the configuration, sets up logging once, and runs the subcommand.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let sources = Sources {
        dir: cli.config.config_dir.clone(),
        env: cli.config.env.clone(),
        file: cli.config.config_file.clone(),
        secrets_used: !matches!(cli.command, Command::Policy(_)),
    };
    let config = Config::load_with(&sources, crate::pipeline::catalog::rules)?;
    // Held to the end: dropping it flushes the spans still buffered.
    let _telemetry = if cli.command.logs() {
        Some(crate::telemetry::init_logging(&config.telemetry)?)
    } else {
        None
    };
    for name in &config.ignored_env {
        tracing::debug!(variable = %name, "not configuration (no such section): ignored");
    }
    match cli.command {
        Command::Run => run::run(config).await,
        Command::Check(args) => check::run(&config, &cli.config.env, args).await,
        Command::Migrate => migrate::run(&config).await,
        Command::Infra(args) => infra::run(&config, args).await,
        Command::Publish(args) => publish::run(&config, *args).await,
        Command::Policy(args) => policy::run(&config, args).await,
        Command::Dlq(args) => dlq::run(&config, args).await,
        Command::Notify(args) => notify::run(&config, args).await,
        Command::Health(args) => health::run(&config, args).await,
    }
}
