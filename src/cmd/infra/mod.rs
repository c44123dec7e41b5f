//! `conveyor infra up|down|verify`: idempotent provisioning of the DLQ, the queue, the
//! EventBridge rule and target, and the queue policy; removal of exactly those; and an end-to-end
//! check of the event flow that does not steal messages from a running daemon.
//!
//! `up` compares every existing resource with the desired settings: equal → `exists`,
//! different → updated and reported with what changed (every setting managed here can be
//! changed in place), missing → created. `--dry-run` does the same comparison and changes
//! nothing. Account id and ARNs come from the resources themselves (GetQueueAttributes,
//! PutRule/DescribeRule), never from configuration.

use std::process::ExitCode;

use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use serde_json::json;

use crate::config::Config;

mod down;
mod notify;
mod resources;
mod up;
mod verify;

#[derive(Debug, clap::Subcommand)]
pub enum InfraCommand {
    /// Create or fix the DLQ, queue, rule, target and queue policy; print their ids.
    Up {
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        output: String,
    },
    /// Remove the target, the rule (if no other target uses it), the queue and the DLQ.
    Down {
        /// Confirm: without it, nothing is removed.
        #[arg(long)]
        yes: bool,
    },
    /// Publish a test event and prove it reaches a queue through the rule within 30 s. Exit
    /// codes: 0 verified, 1 not received in time, 2 AWS credentials or permissions, 3 queue or
    /// rule missing, 4 event structure invalid.
    Verify,
}

/// A failure with the exit code `verify` promises for it.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error(
        "{0}\nnext: check the rule's pattern and targets (`conveyor infra up --dry-run`), and the bus name"
    )]
    NotReceived(String),
    #[error(
        "{0}\nnext: check AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, the task role) and that they may use SQS and EventBridge (`conveyor policy`)"
    )]
    Credentials(String),
    #[error("{0}\nnext: run `conveyor infra up`")]
    Missing(String),
    #[error(
        "{0}\nnext: the event arrived altered; compare the rule's input transformer and the publisher's schema"
    )]
    Invalid(String),
    #[error("{0}")]
    Other(String),
}

impl InfraError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            InfraError::NotReceived(_) | InfraError::Other(_) => 1,
            InfraError::Credentials(_) => 2,
            InfraError::Missing(_) => 3,
            InfraError::Invalid(_) => 4,
        })
    }

    /// Classifies an AWS error: credentials and permission problems get exit code 2.
    fn aws(context: &str, code: Option<&str>, chain: String) -> Self {
        const AUTH: &[&str] = &[
            "AccessDenied",
            "AccessDeniedException",
            "InvalidClientTokenId",
            "UnrecognizedClientException",
            "SignatureDoesNotMatch",
            "ExpiredToken",
            "ExpiredTokenException",
            "MissingAuthenticationToken",
            "InvalidSignatureException",
            "IncompleteSignature",
        ];
        let lower = chain.to_ascii_lowercase();
        if code.is_some_and(|c| AUTH.contains(&c)) || lower.contains("credential") {
            InfraError::Credentials(format!("{context}: {chain}"))
        } else {
            InfraError::Other(format!("{context}: {chain}"))
        }
    }
}

fn sqs_err<E: ProvideErrorMetadata + std::error::Error + 'static>(
    context: &str,
    e: aws_sdk_sqs::error::SdkError<E>,
) -> InfraError {
    let code = e.code().map(str::to_owned);
    InfraError::aws(context, code.as_deref(), crate::safe::error_chain(&e))
}

fn eb_err<E: ProvideErrorMetadata + std::error::Error + 'static>(
    context: &str,
    e: aws_sdk_eventbridge::error::SdkError<E>,
) -> InfraError {
    let code = e.code().map(str::to_owned);
    InfraError::aws(context, code.as_deref(), crate::safe::error_chain(&e))
}

fn is_not_found(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
                | "ResourceNotFoundException"
        )
    )
}

/// What happened (or, with `--dry-run`, would happen) to one resource.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub resource: String,
    /// `created`, `updated`, `exists`, or with --dry-run `would create` / `would update`.
    pub action: String,
    /// For updates: `setting: current → desired`.
    pub differences: Vec<String>,
}

struct Clients {
    sqs: aws_sdk_sqs::Client,
    eb: aws_sdk_eventbridge::Client,
    /// The notification drops bucket (`[notify]`).
    s3: aws_sdk_s3::Client,
    /// The notification email sender's identity (`notify.email.sender`).
    ses: aws_sdk_ses::Client,
    region: Option<String>,
}

/// Runs `conveyor infra …`; the exit code follows `verify`'s contract for every subcommand.
pub async fn run(config: &Config, command: InfraCommand) -> anyhow::Result<ExitCode> {
    match perform(config, command).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(e.exit_code())
        }
    }
}

async fn perform(config: &Config, command: InfraCommand) -> Result<(), InfraError> {
    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(InfraError::Credentials)?;
    let clients = Clients {
        sqs: aws_sdk_sqs::Client::new(&sdk),
        eb: aws_sdk_eventbridge::Client::new(&sdk),
        s3: crate::aws::s3_client(&sdk),
        ses: aws_sdk_ses::Client::new(&sdk),
        region: sdk.region().map(|r| r.to_string()),
    };
    match command {
        InfraCommand::Up { dry_run, output } => {
            let (changes, ids) = up::up(&clients, config, dry_run).await?;
            if output == "json" {
                println!(
                    "{}",
                    json!({"dry_run": dry_run, "changes": changes, "queue_url": ids.queue_url, "dlq_url": ids.dlq_url, "rule_arn": ids.rule_arn})
                );
            } else {
                for c in &changes {
                    let diff = if c.differences.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", c.differences.join("; "))
                    };
                    println!("{:<12} {}{diff}", c.action, c.resource);
                }
                if changes.iter().all(|c| c.action == "exists") {
                    println!("nothing to change");
                }
                println!(
                    "queue_url: {}",
                    ids.queue_url.as_deref().unwrap_or("(not created: dry run)")
                );
                println!(
                    "dlq_url:   {}",
                    ids.dlq_url.as_deref().unwrap_or("(not created: dry run)")
                );
                println!(
                    "rule_arn:  {}",
                    ids.rule_arn.as_deref().unwrap_or("(not created: dry run)")
                );
            }
            Ok(())
        }
        InfraCommand::Down { yes } => down::down(&clients, config, yes).await,
        InfraCommand::Verify => verify::verify(&clients, config).await,
    }
}

/// The ids `up` prints.
#[derive(Debug, Default)]
pub struct Ids {
    pub queue_url: Option<String>,
    pub dlq_url: Option<String>,
    pub rule_arn: Option<String>,
}

fn change(resource: String, action: &str, dry_run: bool, differences: Vec<String>) -> Change {
    let action = match (action, dry_run) {
        ("created", true) => "would create",
        ("updated", true) => "would update",
        (a, _) => a,
    };
    Change {
        resource,
        action: action.to_owned(),
        differences,
    }
}
