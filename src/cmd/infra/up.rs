//! `infra up`: every resource of `[infra]` (and `[notify]`, see `notify`) compared with its
//! desired settings, then created, updated in place (reported with what changed) or left as it
//! is; `--dry-run` compares only.

use super::resources::{
    RuleToQueue, ensure_queue, ensure_queue_policy, ensure_rule_to_queue, event_pattern,
    queue_policy,
};
use super::{Change, Clients, Ids, InfraError, change, eb_err, is_not_found};
use crate::config::Config;
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::QueueAttributeName as Q;
use serde_json::json;
use std::collections::BTreeMap;

pub(super) async fn up(
    c: &Clients,
    config: &Config,
    dry_run: bool,
) -> Result<(Vec<Change>, Ids), InfraError> {
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
        changes.extend(super::notify::up(c, config, notify, dry_run).await?);
    }
    Ok((changes, ids))
}
