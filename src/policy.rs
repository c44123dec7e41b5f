//! `conveyor policy`: the least-privilege IAM policy for this configuration — separate
//! statements for what `run`, `publish` and `infra` each need, on the exact queues, DLQs, bus
//! and rule. The account id is read from the queues' own ARNs when they exist.

use serde_json::{Value, json};

use crate::config::Config;

/// The resources the policy names.
#[derive(Debug, Clone)]
pub struct Resources {
    pub region: String,
    pub account: String,
    /// (queue name, DLQ name) of each consumed queue.
    pub consumed: Vec<(String, Option<String>)>,
    pub bus: String,
    pub infra_queue: String,
    pub infra_dlq: String,
    pub infra_rule: String,
}

impl Resources {
    fn queue(&self, name: &str) -> String {
        format!("arn:aws:sqs:{}:{}:{name}", self.region, self.account)
    }

    fn bus_arn(&self) -> String {
        format!(
            "arn:aws:events:{}:{}:event-bus/{}",
            self.region, self.account, self.bus
        )
    }

    fn rule_arn(&self) -> String {
        // Rules on the default bus have no bus segment in their ARN.
        let bus = if self.bus == "default" {
            String::new()
        } else {
            format!("{}/", self.bus)
        };
        format!(
            "arn:aws:events:{}:{}:rule/{bus}{}",
            self.region, self.account, self.infra_rule
        )
    }
}

/// The policy document.
pub fn document(r: &Resources) -> Value {
    let consumed: Vec<String> = r.consumed.iter().map(|(q, _)| r.queue(q)).collect();
    let dlqs: Vec<String> = r
        .consumed
        .iter()
        .filter_map(|(_, d)| d.as_deref().map(|d| r.queue(d)))
        .collect();
    let mut statements = vec![json!({
        "Sid": "RunConsume",
        "Effect": "Allow",
        "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:DeleteMessageBatch", "sqs:ChangeMessageVisibility",
                   "sqs:ChangeMessageVisibilityBatch", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
        "Resource": consumed,
    })];
    if !dlqs.is_empty() {
        statements.push(json!({
            "Sid": "RunDeadLetter",
            "Effect": "Allow",
            "Action": ["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            "Resource": dlqs,
        }));
    }
    statements.push(json!({
        "Sid": "Publish",
        "Effect": "Allow",
        "Action": ["events:PutEvents"],
        "Resource": [r.bus_arn()],
    }));
    statements.push(json!({
        "Sid": "InfraQueues",
        "Effect": "Allow",
        "Action": ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes",
                   "sqs:SetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage"],
        // The verification queues are created and removed by `infra verify`.
        "Resource": [r.queue(&r.infra_queue), r.queue(&r.infra_dlq), r.queue("conveyor-verify-*")],
    }));
    statements.push(json!({
        "Sid": "InfraRule",
        "Effect": "Allow",
        "Action": ["events:PutRule", "events:DescribeRule", "events:DeleteRule", "events:PutTargets",
                   "events:RemoveTargets", "events:ListTargetsByRule", "events:PutEvents"],
        "Resource": [r.rule_arn(), r.bus_arn()],
    }));
    if r.bus != "default" {
        statements.push(json!({
            "Sid": "InfraBus",
            "Effect": "Allow",
            "Action": ["events:DescribeEventBus", "events:CreateEventBus"],
            "Resource": [r.bus_arn()],
        }));
    }
    json!({"Version": "2012-10-17", "Statement": statements})
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
                let dlq = queue
                    .dlq_url
                    .as_deref()
                    .and_then(|u| u.rsplit('/').next())
                    .map(str::to_owned)
                    .or_else(|| {
                        info.redrive.map(|r| {
                            r.dead_letter_target_arn
                                .rsplit(':')
                                .next()
                                .unwrap_or_default()
                                .to_owned()
                        })
                    });
                consumed.push((name, dlq));
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "queue not reachable; naming it from the config");
                consumed.push((configured_name.unwrap_or_default(), None));
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
        infra_queue: config.infra.queue_name.clone(),
        infra_dlq: config.infra.dlq_name(),
        infra_rule: config.infra.rule_name.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_exact_resources_per_use() {
        let r = Resources {
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            consumed: vec![("events".into(), Some("events-dlq".into()))],
            bus: "default".into(),
            infra_queue: "events".into(),
            infra_dlq: "events-dlq".into(),
            infra_rule: "events-rule".into(),
        };
        let doc = document(&r);
        let by_sid = |sid: &str| {
            doc["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["Sid"] == sid)
                .cloned()
                .unwrap()
        };
        assert_eq!(
            by_sid("RunConsume")["Resource"][0],
            "arn:aws:sqs:eu-west-1:123456789012:events"
        );
        assert!(
            !by_sid("RunConsume")["Action"]
                .as_array()
                .unwrap()
                .contains(&json!("sqs:SendMessage")),
            "run only sends to DLQs"
        );
        assert_eq!(
            by_sid("RunDeadLetter")["Resource"][0],
            "arn:aws:sqs:eu-west-1:123456789012:events-dlq"
        );
        assert_eq!(
            by_sid("Publish")["Resource"][0],
            "arn:aws:events:eu-west-1:123456789012:event-bus/default"
        );
        assert_eq!(
            by_sid("InfraRule")["Resource"][0],
            "arn:aws:events:eu-west-1:123456789012:rule/events-rule"
        );
        assert!(
            doc.to_string().matches("\"*\"").count() == 0,
            "no wildcard resources"
        );
    }
}
