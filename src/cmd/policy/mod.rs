//! `conveyor policy`: the least-privilege IAM policy for one role of this configuration —
//! `run` (the daemon's task role), `publish` or `infra` (an operator or CI) — each naming the
//! exact queues, DLQs, bus, rule and KMS keys it touches and nothing more. The daemon never
//! holds what provisioning needs (`SetQueueAttributes`, `DeleteQueue`, `PutRule`, …). The
//! account id is read from the queues' own ARNs when they exist.

mod statements;

use crate::config::Config;
pub use statements::document;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Whose policy: run (default), publish or infra.
    #[arg(long, value_enum, default_value_t = Role::Run)]
    pub role: Role,
}

/// Prints the role's policy document.
pub async fn run(config: &Config, args: Args) -> anyhow::Result<std::process::ExitCode> {
    let resources = resources(config).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&document(&resources, args.role))?
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// Whose policy to print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The daemon (`conveyor run`): consume, dead-letter, requeue, announce.
    #[default]
    Run,
    /// `conveyor publish`: PutEvents on the configured bus.
    Publish,
    /// `conveyor infra up|down|verify`: create, change and remove the queue, DLQ and rule.
    Infra,
}

/// A queue the daemon consumes.
#[derive(Debug, Clone, Default)]
pub struct Consumed {
    pub name: String,
    pub dlq: Option<String>,
    /// `KmsMasterKeyId` of the queue and of its DLQ (SSE-KMS), as SQS reports them.
    pub kms_keys: Vec<String>,
    /// `queues.<key>.claim_check_buckets`: where its offloaded bodies may be read.
    pub claim_check_buckets: Vec<String>,
}

/// The resources the policy names.
#[derive(Debug, Clone)]
pub struct Resources {
    pub region: String,
    pub account: String,
    pub consumed: Vec<Consumed>,
    /// `eventbridge.bus_name`: where `publish` puts events and `infra` puts the rule.
    pub bus: String,
    /// `announce.bus_name`, when a route runs the `announce` pipeline.
    pub announce_bus: Option<String>,
    pub infra_queue: String,
    pub infra_dlq: String,
    pub infra_rule: String,
    /// `[notify]`: the stages' bucket, queues and rule, and which stages this daemon runs.
    pub notify: Option<NotifyResources>,
}

/// The notification stages' resources.
#[derive(Debug, Clone)]
pub struct NotifyResources {
    pub bucket: String,
    pub ingest_queue: String,
    pub incoming_queue: String,
    pub priority_queue: String,
    pub rule: String,
    /// A route runs `notify-ingest` (reads drops, writes rejects, sends to `incoming`).
    pub runs_ingest: bool,
    /// A route runs `notify-rank` (sends to `priority`).
    pub runs_rank: bool,
    /// A route runs `notify-deliver` (SES, SNS, and failovers to `priority`).
    pub runs_deliver: bool,
    /// The SES identities of `notify.email.sender` (`EmailConfig::identities`).
    pub sender_identities: Vec<String>,
    /// `notify.email.configuration_set`, when set.
    pub configuration_set: Option<String>,
}

/// SQS's AWS managed key: its key policy already lets every principal of the account use it
/// through SQS, so it needs no statement.
pub(super) const AWS_MANAGED_SQS_KEY: &str = "alias/aws/sqs";

impl Resources {
    fn queue(&self, name: &str) -> String {
        format!("arn:aws:sqs:{}:{}:{name}", self.region, self.account)
    }

    fn bus_arn(&self, bus: &str) -> String {
        format!(
            "arn:aws:events:{}:{}:event-bus/{bus}",
            self.region, self.account
        )
    }

    fn rule_arn(&self) -> String {
        self.named_rule_arn(&self.infra_rule)
    }

    fn named_rule_arn(&self, rule: &str) -> String {
        // Rules on the default bus have no bus segment in their ARN.
        let bus = if self.bus == "default" {
            String::new()
        } else {
            format!("{}/", self.bus)
        };
        format!(
            "arn:aws:events:{}:{}:rule/{bus}{rule}",
            self.region, self.account
        )
    }

    /// Key ARNs of the consumed queues' customer managed keys, and whether any key is named
    /// by a custom alias (IAM cannot name a key by alias for Decrypt).
    fn kms(&self) -> (Vec<String>, bool) {
        let mut arns = Vec::new();
        let mut by_alias = false;
        for key in self.consumed.iter().flat_map(|c| &c.kms_keys) {
            if key == AWS_MANAGED_SQS_KEY || key.ends_with(":alias/aws/sqs") {
                continue;
            }
            if key.starts_with("alias/") || key.contains(":alias/") {
                by_alias = true;
            } else if key.starts_with("arn:") {
                arns.push(key.clone());
            } else {
                arns.push(format!(
                    "arn:aws:kms:{}:{}:key/{key}",
                    self.region, self.account
                ));
            }
        }
        arns.sort();
        arns.dedup();
        (arns, by_alias)
    }
}

/// Resolves names and the account from the configuration and, where they exist, the queues.
pub async fn resources(config: &Config) -> anyhow::Result<Resources> {
    let sdk = crate::aws::sdk_config(&config.aws).await;
    let region = crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let mut account = None;
    let mut consumed = Vec::new();
    for queue in config.queues.values() {
        let configured_name = queue.name.clone().or_else(|| {
            queue
                .url
                .as_deref()
                .and_then(|u| u.rsplit('/').next())
                .map(str::to_owned)
        });
        match crate::sqs::describe_queue(&client, queue).await {
            Ok(info) => {
                let mut parts = info.arn.split(':');
                account = account.or_else(|| parts.nth(4).map(str::to_owned));
                let name = info
                    .arn
                    .rsplit(':')
                    .next()
                    .map(str::to_owned)
                    .or(configured_name)
                    .unwrap_or_default();
                let mut kms_keys: Vec<String> = info.kms_key.iter().cloned().collect();
                let dlq_url = match (&queue.dlq_url, &info.redrive) {
                    (Some(url), _) => Some(url.clone()),
                    (None, Some(r)) => crate::sqs::url_for_arn(&client, &r.dead_letter_target_arn)
                        .await
                        .ok(),
                    (None, None) => None,
                };
                if let Some(url) = &dlq_url {
                    match crate::sqs::describe_queue(
                        &client,
                        &crate::config::QueueConfig {
                            url: Some(url.clone()),
                            ..Default::default()
                        },
                    )
                    .await
                    {
                        Ok(dlq) => kms_keys.extend(dlq.kms_key),
                        Err(e) => {
                            tracing::warn!(error = %crate::safe::error_chain(&e), "DLQ not reachable; its KMS key (if any) is not in the policy")
                        }
                    }
                }
                consumed.push(Consumed {
                    name,
                    dlq: dlq_url.and_then(|u| u.rsplit('/').next().map(str::to_owned)),
                    kms_keys,
                    claim_check_buckets: queue.claim_check_buckets.clone(),
                });
            }
            Err(e) => {
                tracing::warn!(error = %crate::safe::error_chain(&e), "queue not reachable; naming it from the config");
                consumed.push(Consumed {
                    name: configured_name.unwrap_or_default(),
                    claim_check_buckets: queue.claim_check_buckets.clone(),
                    ..Consumed::default()
                });
            }
        }
    }
    let account = account.unwrap_or_else(|| {
        tracing::warn!(
            "no reachable queue to read the account id from: the policy says ACCOUNT_ID"
        );
        "ACCOUNT_ID".to_owned()
    });
    Ok(Resources {
        region,
        account,
        consumed,
        bus: config.eventbridge.bus_name.clone(),
        announce_bus: crate::pipeline::catalog::needs(config, crate::pipeline::Need::EventBridge)
            .then(|| config.announce.bus_name.clone()),
        infra_queue: config.infra.queue_name.clone(),
        infra_dlq: config.infra.dlq_name(),
        infra_rule: config.infra.rule_name.clone(),
        notify: config.notify.as_ref().map(|n| NotifyResources {
            bucket: n.bucket.clone(),
            ingest_queue: n.ingest_queue.clone(),
            incoming_queue: n.incoming_queue.clone(),
            priority_queue: n.priority_queue.clone(),
            rule: n.rule_name.clone(),
            runs_ingest: config.routes_to("notify-ingest"),
            runs_rank: config.routes_to("notify-rank"),
            runs_deliver: config.routes_to("notify-deliver"),
            sender_identities: n.email.identities(),
            configuration_set: n.email.configuration_set.clone(),
        }),
    })
}
