//! `conveyor infra up|down|verify`: idempotent provisioning of the DLQ, the queue, the
//! EventBridge rule and target, and the queue policy; removal of exactly those; and an end-to-end
//! check of the event flow that does not steal messages from a running daemon.
//!
//! `up` compares every existing resource with the desired settings: equal → `exists`,
//! different → updated and reported with what changed (every setting managed here can be
//! changed in place), missing → created. `--dry-run` does the same comparison and changes
//! nothing. Account id and ARNs come from the resources themselves (GetQueueAttributes,
//! PutRule/DescribeRule), never from configuration.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_sqs::types::QueueAttributeName as Q;
use serde_json::{Value, json};
use uuid::Uuid;

use super::publish::{self, EventType, IdentityInputs};
use crate::config::Config;

mod notify;

/// The id of the queue's target on the rule; `down` removes exactly this one.
const TARGET_ID: &str = "conveyor-queue";
/// How long `verify` waits for its event.
const VERIFY_WITHIN: Duration = Duration::from_secs(30);

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
            let (changes, ids) = up(&clients, config, dry_run).await?;
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
        InfraCommand::Down { yes } => down(&clients, config, yes).await,
        InfraCommand::Verify => verify(&clients, config).await,
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

async fn up(c: &Clients, config: &Config, dry_run: bool) -> Result<(Vec<Change>, Ids), InfraError> {
    let infra = &config.infra;
    let bus = config.eventbridge.bus_name.as_str();
    let mut changes = Vec::new();
    let mut ids = Ids::default();

    if bus != "default" {
        match c.eb.describe_event_bus().name(bus).send().await {
            Ok(_) => changes.push(change(
                format!("event bus {bus}"),
                "exists",
                dry_run,
                vec![],
            )),
            Err(e) if is_not_found(e.code()) => {
                if !dry_run {
                    c.eb.create_event_bus()
                        .name(bus)
                        .send()
                        .await
                        .map_err(|e| eb_err("CreateEventBus", e))?;
                }
                changes.push(change(
                    format!("event bus {bus}"),
                    "created",
                    dry_run,
                    vec![],
                ));
            }
            Err(e) => return Err(eb_err("DescribeEventBus", e)),
        }
    }

    let retention = infra.retention_secs.to_string();
    // FifoQueue can only be set at creation: a queue of the other kind under the same name
    // cannot exist (SQS ties the .fifo suffix to it), so the diff never has to change it.
    let fifo: Vec<(Q, String)> = if infra.fifo {
        vec![
            (Q::FifoQueue, "true".to_owned()),
            (Q::ContentBasedDeduplication, "true".to_owned()),
        ]
    } else {
        Vec::new()
    };
    let dlq_name = infra.dlq_name();
    let mut dlq_attributes = BTreeMap::from([(Q::MessageRetentionPeriod, retention.clone())]);
    dlq_attributes.extend(fifo.clone());
    let (dlq_url, dlq_arn, dlq_change) =
        ensure_queue(c, &dlq_name, dlq_attributes, dry_run).await?;
    changes.push(dlq_change);
    ids.dlq_url = dlq_url;
    let dlq_arn = dlq_arn.unwrap_or_else(|| format!("(arn of {dlq_name})"));

    let redrive =
        json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": infra.max_receive_count})
            .to_string();
    let mut queue_attributes = BTreeMap::from([
        (
            Q::VisibilityTimeout,
            infra.visibility_timeout_secs.to_string(),
        ),
        (Q::MessageRetentionPeriod, retention),
        (Q::RedrivePolicy, redrive),
    ]);
    queue_attributes.extend(fifo);
    let (queue_url, queue_arn, queue_change) =
        ensure_queue(c, &infra.queue_name, queue_attributes, dry_run).await?;
    changes.push(queue_change);
    ids.queue_url = queue_url.clone();
    let queue_arn = queue_arn.unwrap_or_else(|| format!("(arn of {})", infra.queue_name));

    let rule = RuleToQueue {
        bus,
        rule_name: &infra.rule_name,
        pattern: event_pattern(config),
        description: "conveyor: events for the queue consumed by conveyor",
        queue_name: &infra.queue_name,
        queue_arn: &queue_arn,
        group_id: infra.fifo.then_some(infra.fifo_group_id.as_str()),
    };
    ids.rule_arn = ensure_rule_to_queue(c, &rule, dry_run, &mut changes).await?;
    let rule_arn = ids
        .rule_arn
        .clone()
        .unwrap_or_else(|| format!("(arn of rule {})", infra.rule_name));
    // The queue policy: only this rule, through events.amazonaws.com, may send.
    let policy = queue_policy(&queue_arn, &rule_arn);
    changes.push(
        ensure_queue_policy(c, &infra.queue_name, queue_url.as_deref(), policy, dry_run).await?,
    );
    if let Some(notify) = &config.notify {
        changes.extend(notify::up(c, config, notify, dry_run).await?);
    }
    Ok((changes, ids))
}

/// A rule sending to one queue (as target [`TARGET_ID`]).
struct RuleToQueue<'a> {
    bus: &'a str,
    rule_name: &'a str,
    pattern: Value,
    description: &'a str,
    queue_name: &'a str,
    queue_arn: &'a str,
    /// The MessageGroupId of a FIFO queue's target.
    group_id: Option<&'a str>,
}

/// Creates or fixes the rule and its queue target; returns the rule's ARN (none on a dry run
/// of a new rule).
async fn ensure_rule_to_queue(
    c: &Clients,
    want: &RuleToQueue<'_>,
    dry_run: bool,
    changes: &mut Vec<Change>,
) -> Result<Option<String>, InfraError> {
    let (bus, rule_name) = (want.bus, want.rule_name);
    let pattern = &want.pattern;
    let rule_resource = format!("rule {rule_name} on bus {bus}");
    let existing = describe_rule(c, bus, rule_name).await?;
    let mut differences = Vec::new();
    if let Some(rule) = &existing {
        let current: Value = rule
            .event_pattern()
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or(Value::Null);
        if &current != pattern {
            differences.push(format!("event pattern: {current} → {pattern}"));
        }
        if rule.state() != Some(&RuleState::Enabled) {
            differences.push(format!(
                "state: {:?} → ENABLED",
                rule.state().map(|s| s.as_str())
            ));
        }
    }
    let action = match (&existing, differences.is_empty()) {
        (None, _) => "created",
        (Some(_), true) => "exists",
        (Some(_), false) => "updated",
    };
    let mut rule_arn = existing.as_ref().and_then(|r| r.arn().map(str::to_owned));
    if action != "exists" && !dry_run {
        let out =
            c.eb.put_rule()
                .name(rule_name)
                .event_bus_name(bus)
                .event_pattern(pattern.to_string())
                .state(RuleState::Enabled)
                .description(want.description)
                .send()
                .await
                .map_err(|e| eb_err("PutRule", e))?;
        rule_arn = out.rule_arn;
    }
    changes.push(change(rule_resource, action, dry_run, differences));

    // The queue as the rule's target.
    let targets = if existing.is_some() {
        rule_targets(c, bus, rule_name).await?.unwrap_or_default()
    } else {
        Vec::new()
    };
    let queue_arn = want.queue_arn;
    let target_resource = format!("target {TARGET_ID} → {}", want.queue_name);
    let group_id = want.group_id;
    let action = match targets.iter().find(|t| t.id() == TARGET_ID) {
        Some(t) => {
            let mut differences = Vec::new();
            if t.arn() != queue_arn {
                differences.push(format!("arn: {} → {queue_arn}", t.arn()));
            }
            let current = t.sqs_parameters().and_then(|p| p.message_group_id());
            if current != group_id {
                differences.push(format!(
                    "message group id: {} → {}",
                    current.unwrap_or("(unset)"),
                    group_id.unwrap_or("(unset)")
                ));
            }
            if differences.is_empty() {
                ("exists", differences)
            } else {
                ("updated", differences)
            }
        }
        None => ("created", vec![]),
    };
    if action.0 != "exists" && !dry_run {
        let target = Target::builder()
            .id(TARGET_ID)
            .arn(queue_arn)
            .set_sqs_parameters(group_id.map(|group| {
                aws_sdk_eventbridge::types::SqsParameters::builder()
                    .message_group_id(group)
                    .build()
            }))
            .build()
            .map_err(|e| InfraError::Other(e.to_string()))?;
        let out =
            c.eb.put_targets()
                .rule(rule_name)
                .event_bus_name(bus)
                .targets(target)
                .send()
                .await
                .map_err(|e| eb_err("PutTargets", e))?;
        if out.failed_entry_count > 0 {
            return Err(InfraError::Other(format!(
                "PutTargets failed: {:?}",
                out.failed_entries
            )));
        }
    }
    changes.push(change(target_resource, action.0, dry_run, action.1));
    Ok(rule_arn)
}

/// Sets the queue's policy to `policy` unless it is that already.
async fn ensure_queue_policy(
    c: &Clients,
    queue_name: &str,
    queue_url: Option<&str>,
    policy: Value,
    dry_run: bool,
) -> Result<Change, InfraError> {
    let resource = format!("policy on {queue_name}");
    let Some(url) = queue_url else {
        return Ok(change(resource, "created", dry_run, vec![]));
    };
    let current = queue_attribute(c, url, Q::Policy)
        .await?
        .and_then(|p| serde_json::from_str::<Value>(&p).ok());
    let (action, differences) = match current {
        Some(p) if p == policy => ("exists", vec![]),
        Some(_) => (
            "updated",
            vec!["policy differs from the desired one".to_owned()],
        ),
        None => ("created", vec![]),
    };
    if action != "exists" && !dry_run {
        c.sqs
            .set_queue_attributes()
            .queue_url(url)
            .attributes(Q::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| sqs_err("SetQueueAttributes", e))?;
    }
    Ok(change(resource, action, dry_run, differences))
}

/// `{"source": [...], "detail-type": [...]}` (detail-type only when configured).
pub fn event_pattern(config: &Config) -> Value {
    let mut pattern = json!({"source": config.infra.sources});
    if !config.infra.detail_types.is_empty() {
        pattern["detail-type"] = json!(config.infra.detail_types);
    }
    pattern
}

/// Only EventBridge, and only for this rule, may send to the queue.
pub fn queue_policy(queue_arn: &str, rule_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowConveyorRule",
            "Effect": "Allow",
            "Principal": {"Service": "events.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}},
        }],
    })
}

/// Creates the queue or brings its attributes to `desired`; returns (url, arn, change).
async fn ensure_queue(
    c: &Clients,
    name: &str,
    desired: BTreeMap<Q, String>,
    dry_run: bool,
) -> Result<(Option<String>, Option<String>, Change), InfraError> {
    let resource = format!("queue {name}");
    let url = match c.sqs.get_queue_url().queue_name(name).send().await {
        Ok(out) => out.queue_url,
        Err(e) if is_not_found(e.code()) => None,
        Err(e) => return Err(sqs_err("GetQueueUrl", e)),
    };
    let Some(url) = url else {
        if dry_run {
            return Ok((None, None, change(resource, "created", true, vec![])));
        }
        let url = c
            .sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(desired.into_iter().collect()))
            .send()
            .await
            .map_err(|e| sqs_err("CreateQueue", e))?
            .queue_url
            .unwrap_or_default();
        let arn = queue_arn(c, &url).await?;
        return Ok((
            Some(url),
            Some(arn),
            change(resource, "created", false, vec![]),
        ));
    };
    let current = c
        .sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(Q::All)
        .send()
        .await
        .map_err(|e| sqs_err("GetQueueAttributes", e))?
        .attributes
        .unwrap_or_default();
    let mut differences = Vec::new();
    let mut updates = std::collections::HashMap::new();
    for (attribute, want) in desired {
        let have = current.get(&attribute).cloned().unwrap_or_default();
        if !same_attribute(&attribute, &have, &want) {
            differences.push(format!(
                "{}: {} → {}",
                attribute.as_str(),
                if have.is_empty() { "(unset)" } else { &have },
                want
            ));
            updates.insert(attribute, want);
        }
    }
    let action = if updates.is_empty() {
        "exists"
    } else {
        "updated"
    };
    if !updates.is_empty() && !dry_run {
        c.sqs
            .set_queue_attributes()
            .queue_url(&url)
            .set_attributes(Some(updates))
            .send()
            .await
            .map_err(|e| sqs_err("SetQueueAttributes", e))?;
    }
    let arn = current.get(&Q::QueueArn).cloned();
    Ok((
        Some(url),
        arn,
        change(resource, action, dry_run, differences),
    ))
}

/// Compares attribute values the way SQS means them (a RedrivePolicy's count may come back as
/// a string or a number).
fn same_attribute(attribute: &Q, have: &str, want: &str) -> bool {
    match attribute {
        Q::RedrivePolicy => {
            let parse = |s: &str| {
                serde_json::from_str::<crate::sqs::RedrivePolicy>(s)
                    .ok()
                    .map(|p| (p.dead_letter_target_arn, p.max_receive_count))
            };
            parse(have).is_some() && parse(have) == parse(want)
        }
        _ => have == want,
    }
}

/// The rule `name` on `bus`, or `None` when it does not exist.
async fn describe_rule(
    c: &Clients,
    bus: &str,
    name: &str,
) -> Result<Option<aws_sdk_eventbridge::operation::describe_rule::DescribeRuleOutput>, InfraError> {
    match c
        .eb
        .describe_rule()
        .name(name)
        .event_bus_name(bus)
        .send()
        .await
    {
        Ok(rule) => Ok(Some(rule)),
        Err(e) if is_not_found(e.code()) => Ok(None),
        Err(e) => Err(eb_err("DescribeRule", e)),
    }
}

/// The targets of rule `name` on `bus`; `None` when the rule does not exist.
async fn rule_targets(
    c: &Clients,
    bus: &str,
    name: &str,
) -> Result<Option<Vec<aws_sdk_eventbridge::types::Target>>, InfraError> {
    match c
        .eb
        .list_targets_by_rule()
        .rule(name)
        .event_bus_name(bus)
        .send()
        .await
    {
        Ok(out) => Ok(Some(out.targets.unwrap_or_default())),
        Err(e) if is_not_found(e.code()) => Ok(None),
        Err(e) => Err(eb_err("ListTargetsByRule", e)),
    }
}

async fn queue_arn(c: &Clients, url: &str) -> Result<String, InfraError> {
    Ok(queue_attribute(c, url, Q::QueueArn)
        .await?
        .unwrap_or_default())
}

/// One attribute of a queue; `None` when it is not set.
async fn queue_attribute(c: &Clients, url: &str, name: Q) -> Result<Option<String>, InfraError> {
    Ok(c.sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .map_err(|e| sqs_err("GetQueueAttributes", e))?
        .attributes
        .unwrap_or_default()
        .remove(&name))
}

async fn down(c: &Clients, config: &Config, yes: bool) -> Result<(), InfraError> {
    let infra = &config.infra;
    let bus = config.eventbridge.bus_name.as_str();
    let plan = [
        format!(
            "target {TARGET_ID} of rule {} on bus {bus}",
            infra.rule_name
        ),
        format!("rule {} (if no other target uses it)", infra.rule_name),
        format!("queue {}", infra.queue_name),
        format!("queue {}", infra.dlq_name()),
    ]
    .into_iter()
    .chain(config.notify.iter().flat_map(|n| notify::plan(config, n)))
    .collect::<Vec<_>>();
    if !yes {
        println!(
            "would remove:\n  {}\nrun again with --yes to remove them",
            plan.join("\n  ")
        );
        return Err(InfraError::Other("not confirmed: nothing removed".into()));
    }
    remove_rule_target(c, bus, &infra.rule_name).await?;
    for name in [infra.queue_name.clone(), infra.dlq_name()] {
        remove_queue(c, &name).await?;
    }
    if let Some(n) = &config.notify {
        notify::down(c, config, n).await?;
    }
    Ok(())
}

/// Removes conveyor's target ([`TARGET_ID`]) from the rule, and the rule unless another target
/// uses it.
async fn remove_rule_target(c: &Clients, bus: &str, rule: &str) -> Result<(), InfraError> {
    let Some(targets) = rule_targets(c, bus, rule).await? else {
        println!("absent       rule {rule}");
        return Ok(());
    };
    if targets.iter().any(|t| t.id() == TARGET_ID) {
        c.eb.remove_targets()
            .rule(rule)
            .event_bus_name(bus)
            .ids(TARGET_ID)
            .send()
            .await
            .map_err(|e| eb_err("RemoveTargets", e))?;
        println!("removed      target {TARGET_ID} of rule {rule}");
    }
    if targets.iter().all(|t| t.id() == TARGET_ID) {
        c.eb.delete_rule()
            .name(rule)
            .event_bus_name(bus)
            .send()
            .await
            .map_err(|e| eb_err("DeleteRule", e))?;
        println!("removed      rule {rule}");
    } else {
        println!("kept         rule {rule} (other targets use it)");
    }
    Ok(())
}

/// Deletes the queue `name` if it exists.
async fn remove_queue(c: &Clients, name: &str) -> Result<(), InfraError> {
    match c.sqs.get_queue_url().queue_name(name).send().await {
        Ok(out) => {
            c.sqs
                .delete_queue()
                .queue_url(out.queue_url.unwrap_or_default())
                .send()
                .await
                .map_err(|e| sqs_err("DeleteQueue", e))?;
            println!("removed      queue {name}");
        }
        Err(e) if is_not_found(e.code()) => println!("absent       queue {name}"),
        Err(e) => return Err(sqs_err("GetQueueUrl", e)),
    }
    Ok(())
}

/// Publishes a test event through the rule and waits for it on a temporary queue attached to
/// the rule as an extra target — so a daemon consuming the real queue keeps all its messages.
/// The temporary queue and target are removed afterwards, also on failure and on Ctrl-C.
async fn verify(c: &Clients, config: &Config) -> Result<(), InfraError> {
    let infra = &config.infra;
    let bus = config.eventbridge.bus_name.as_str();
    // The real queue and rule must exist, and the rule must deliver to the queue.
    let queue_url = match c
        .sqs
        .get_queue_url()
        .queue_name(&infra.queue_name)
        .send()
        .await
    {
        Ok(out) => out.queue_url.unwrap_or_default(),
        Err(e) if is_not_found(e.code()) => {
            return Err(InfraError::Missing(format!(
                "queue {} does not exist",
                infra.queue_name
            )));
        }
        Err(e) => return Err(sqs_err("GetQueueUrl", e)),
    };
    let rule = describe_rule(c, &config.eventbridge.bus_name, &config.infra.rule_name)
        .await?
        .ok_or_else(|| {
            InfraError::Missing(format!(
                "rule {} does not exist on bus {bus}",
                infra.rule_name
            ))
        })?;
    let queue_arn = queue_arn(c, &queue_url).await?;
    let targets = rule_targets(c, &config.eventbridge.bus_name, &config.infra.rule_name)
        .await?
        .unwrap_or_default();
    if !targets.iter().any(|t| t.arn() == queue_arn) {
        return Err(InfraError::NotReceived(format!(
            "rule {} has no target for queue {}: events would never arrive",
            infra.rule_name, infra.queue_name
        )));
    }
    println!(
        "ok    queue {} and rule {} exist; the rule targets the queue",
        infra.queue_name, infra.rule_name
    );

    let probe = Probe::create(c, &infra.rule_name, bus, rule.arn().unwrap_or_default()).await?;
    let result = tokio::select! {
        result = publish_and_wait(c, config, &probe) => result,
        _ = tokio::signal::ctrl_c() => Err(InfraError::Other("interrupted".into())),
    };
    probe.remove(c, &infra.rule_name, bus).await;
    result
}

/// The temporary queue attached to the rule for one verification.
struct Probe {
    queue_url: String,
    target_id: String,
}

impl Probe {
    async fn create(
        c: &Clients,
        rule: &str,
        bus: &str,
        rule_arn: &str,
    ) -> Result<Probe, InfraError> {
        let short = &Uuid::new_v4().simple().to_string()[..12];
        let name = format!("conveyor-verify-{short}");
        let queue_url = c
            .sqs
            .create_queue()
            .queue_name(&name)
            .attributes(Q::MessageRetentionPeriod, "300")
            .send()
            .await
            .map_err(|e| sqs_err("CreateQueue (verification queue)", e))?
            .queue_url
            .unwrap_or_default();
        let probe = Probe {
            queue_url,
            target_id: format!("conveyor-verify-{short}"),
        };
        let attach = async {
            let arn = queue_arn(c, &probe.queue_url).await?;
            c.sqs
                .set_queue_attributes()
                .queue_url(&probe.queue_url)
                .attributes(Q::Policy, queue_policy(&arn, rule_arn).to_string())
                .send()
                .await
                .map_err(|e| sqs_err("SetQueueAttributes (verification queue)", e))?;
            let target = Target::builder()
                .id(&probe.target_id)
                .arn(arn)
                .build()
                .map_err(|e| InfraError::Other(e.to_string()))?;
            c.eb.put_targets()
                .rule(rule)
                .event_bus_name(bus)
                .targets(target)
                .send()
                .await
                .map_err(|e| eb_err("PutTargets (verification)", e))?;
            Ok::<_, InfraError>(())
        };
        if let Err(e) = attach.await {
            probe.remove(c, rule, bus).await;
            return Err(e);
        }
        Ok(probe)
    }

    async fn remove(&self, c: &Clients, rule: &str, bus: &str) {
        if let Err(e) =
            c.eb.remove_targets()
                .rule(rule)
                .event_bus_name(bus)
                .ids(&self.target_id)
                .send()
                .await
        {
            eprintln!(
                "warning: could not remove the verification target {}: {}",
                self.target_id,
                crate::safe::error_chain(&e)
            );
        }
        if let Err(e) = c.sqs.delete_queue().queue_url(&self.queue_url).send().await {
            eprintln!(
                "warning: could not delete the verification queue {}: {}",
                self.queue_url,
                crate::safe::error_chain(&e)
            );
        }
    }
}

async fn publish_and_wait(c: &Clients, config: &Config, probe: &Probe) -> Result<(), InfraError> {
    let infra = &config.infra;
    // An event the rule matches: its first source, and its first detail-type (or a batch event).
    let detail_type = infra
        .detail_types
        .first()
        .cloned()
        .unwrap_or_else(|| envelope_detail_type(&infra.sources[0]));
    let kind = match detail_type.strip_prefix(crate::contract::envelope::ENVELOPE_V1_PREFIX) {
        Some("transcript") => EventType::Transcript,
        Some("meeting") => EventType::Meeting,
        Some("email") => EventType::Email,
        Some("document") => EventType::Document,
        Some(_) => EventType::Note,
        None => EventType::Batch,
    };
    let (identity, _) =
        publish::resolve_identity(&IdentityInputs::default(), true).map_err(InfraError::Other)?;
    let event = publish::prepare(
        kind,
        None,
        &identity,
        Some(&infra.sources[0]),
        Some(&detail_type),
    )
    .map_err(|e| InfraError::Other(e.to_string()))?;
    let results = publish::put(
        &c.eb,
        &config.eventbridge.bus_name,
        std::slice::from_ref(&event),
    )
    .await
    .map_err(|e| InfraError::aws("PutEvents", e.code(), crate::safe::error_chain(&e)))?;
    let event_id = results
        .entries
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            Err(publish::FailedEntry {
                code: "NoEntry".into(),
                message: String::new(),
            })
        })
        .map_err(|f| InfraError::Other(format!("PutEvents rejected the test event: {f}")))?;
    println!(
        "ok    published test event {event_id} (interaction_id {})",
        event.interaction_id
    );

    let started = Instant::now();
    while started.elapsed() < VERIFY_WITHIN {
        let messages = c
            .sqs
            .receive_message()
            .queue_url(&probe.queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(2)
            .send()
            .await
            .map_err(|e| sqs_err("ReceiveMessage (verification queue)", e))?
            .messages
            .unwrap_or_default();
        for m in messages {
            let body = m.body().unwrap_or_default();
            let delivered = crate::input::eventbridge::decode(body).map_err(|e| {
                InfraError::Invalid(format!(
                    "the delivered event is not an EventBridge event: {e}"
                ))
            })?;
            let interaction = crate::contract::envelope::parse(&delivered)
                .map_err(|e| {
                    InfraError::Invalid(format!("the delivered event fails validation: {e}"))
                })?
                .ok_or_else(|| {
                    InfraError::Invalid(format!(
                        "the delivered event has detail-type {:?}",
                        delivered.detail_type
                    ))
                })?;
            if interaction.interaction_id != Some(event.interaction_id) {
                continue; // Some other event on the rule.
            }
            if delivered.source != event.source || delivered.detail_type != event.detail_type {
                return Err(InfraError::Invalid(format!(
                    "source/detail-type arrived as {:?}/{:?}, sent as {:?}/{:?}",
                    delivered.source, delivered.detail_type, event.source, event.detail_type
                )));
            }
            println!(
                "ok    received it through rule {} in {} ms, structure intact",
                infra.rule_name,
                started.elapsed().as_millis()
            );
            return Ok(());
        }
    }
    Err(InfraError::NotReceived(format!(
        "the test event did not arrive within {}s",
        VERIFY_WITHIN.as_secs()
    )))
}

/// A detail-type for `source` by the publishers' conventions.
fn envelope_detail_type(source: &str) -> String {
    if source == publish::EMAIL_SOURCE {
        "EnvelopeV1.email".into()
    } else {
        "BatchProcessingCompleted".into()
    }
}
