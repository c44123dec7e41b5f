//! `conveyor notify send|drop|prefs|status`: the notification system's operator commands —
//! publish one NotificationEvent, upload a JSON-lines drop, read or write users' preferences,
//! and find out where one notification is.
//! Output is ids and counts; content and addresses are printed only by `prefs get`, which an
//! operator asks for by name.

mod drop;
mod example;
mod prefs;
mod send;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{Config, NotifyConfig};
pub use example::{ExampleArgs, example_config};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: NotifyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum NotifyCommand {
    /// Publish one NotificationEvent v1 (`NotificationRequested`) to EventBridge, validated
    /// first; from --file, or built from the flags. Prints its ids.
    Send(Box<SendArgs>),
    /// Upload a JSON-lines file of NotificationEvents to notify.bucket, where its upload
    /// notification starts ingestion. Shows progress on a terminal.
    Drop(DropArgs),
    /// Read or write users' notification preferences (PostgreSQL, DATABASE_URL).
    #[command(subcommand)]
    Prefs(PrefsCommand),
    /// Where one notification is: its score, each channel's state (deferred until, retrying,
    /// delivered at, failed with), and any dead letter of it in the stages' DLQs with its
    /// reason. Reads PostgreSQL (DATABASE_URL) and peeks at the DLQs (nothing is consumed).
    Status(StatusArgs),
    /// Print the notification stages' configuration (the three stage queues with their routes
    /// and the [notify] section) for one set of names, as TOML to start from.
    ExampleConfig(ExampleArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The notification's eventId.
    pub event_id: String,
    /// Only this tenant's notification of that id (default: every tenant's).
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// Most messages to look at in each DLQ.
    #[arg(long, default_value_t = 1000)]
    pub dlq_scan: usize,
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// A NotificationEvent v1 (JSON object); `-` reads stdin. Without it, the flags build one.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Tenant (UUID v4). Falls back to MOCK_TENANT_ID, then a generated one.
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// The user to notify. Falls back to MOCK_USER_ID, then `system`.
    #[arg(long)]
    pub user_id: Option<String>,
    /// Fail on a missing or invalid tenant instead of generating one.
    #[arg(long)]
    pub no_identity_fallback: bool,
    /// The event id; default: a new UUID.
    #[arg(long)]
    pub event_id: Option<String>,
    /// The event's `source` (also its EventBridge source).
    #[arg(long, default_value = "conveyor.cli")]
    pub source: String,
    /// Channels the notification may use, in order (email, sms, push, webhook).
    #[arg(long, value_delimiter = ',', default_value = "email")]
    pub channels: Vec<String>,
    #[arg(long)]
    pub segment: Option<String>,
    #[arg(long, default_value = "Test notification")]
    pub title: String,
    #[arg(long, default_value = "Sent with conveyor notify send.")]
    pub body: String,
    /// `content.metadata` entries the scorers read (`urgency=high`, `category=security`).
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    pub metadata: Vec<String>,
    /// Event bus; default: eventbridge.bus_name.
    #[arg(long)]
    pub bus: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DropArgs {
    /// The JSON-lines file to upload.
    pub file: PathBuf,
    /// The object key; default `drops/<file name>`.
    #[arg(long)]
    pub key: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum PrefsCommand {
    /// Print one user's preferences (JSON; addresses included). Exit 1 when none are stored.
    Get {
        #[arg(long)]
        tenant_id: String,
        #[arg(long)]
        user_id: String,
    },
    /// Store (replace) one user's preferences from flags.
    Set(Box<SetArgs>),
    /// Store every preferences document of a JSON-lines file, in one transaction: a file with
    /// any invalid line is not imported at all, and every invalid line is listed.
    Import { file: PathBuf },
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    #[arg(long)]
    pub tenant_id: String,
    #[arg(long)]
    pub user_id: String,
    #[arg(long)]
    pub segment: Option<String>,
    #[arg(long)]
    pub email: Option<String>,
    /// E.164 (`+4915112345678`).
    #[arg(long)]
    pub sms: Option<String>,
    /// An SNS platform endpoint ARN.
    #[arg(long)]
    pub push: Option<String>,
    #[arg(long)]
    pub webhook: Option<String>,
    /// Channels turned off (their address is kept).
    #[arg(long, value_delimiter = ',')]
    pub opt_out: Vec<String>,
    /// The order channels are tried in (the configured policy when empty).
    #[arg(long, value_delimiter = ',')]
    pub failover_order: Vec<String>,
    /// `HH:MM-HH:MM` local time, with --time-zone.
    #[arg(long, requires = "time_zone")]
    pub quiet_hours: Option<String>,
    /// An IANA zone (`Europe/Berlin`).
    #[arg(long, requires = "quiet_hours")]
    pub time_zone: Option<String>,
}

pub async fn run(config: &Config, args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        NotifyCommand::Send(send_args) => send::send(config, *send_args).await,
        NotifyCommand::Drop(drop_args) => drop::upload(config, drop_args).await,
        NotifyCommand::Prefs(command) => prefs::prefs(config, command).await,
        NotifyCommand::Status(status_args) => status::status(config, status_args).await,
        NotifyCommand::ExampleConfig(names) => {
            print!("{}", example_config(&names));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn notify_config(config: &Config) -> anyhow::Result<&NotifyConfig> {
    config.notify.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "no [notify] section in the configuration: add one (see config/default.toml) naming the bucket and queues"
        )
    })
}
