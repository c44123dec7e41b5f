//! The resources `infra` manages, one function each way: ensure a queue, a rule with its
//! target, a queue policy (created, updated in place, or left as it is, and reported as a
//! [`Change`]); remove a rule's target and a queue; read back ARNs and attributes.

use super::{Change, Clients, InfraError, change, eb_err, is_not_found, sqs_err};
use crate::config::Config;
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_sqs::types::QueueAttributeName as Q;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The id of the queue's target on the rule; `down` removes exactly this one.
pub(super) const TARGET_ID: &str = "conveyor-queue";

/// A rule sending to one queue (as target [`TARGET_ID`]).
pub(super) struct RuleToQueue<'a> {
    pub(super) bus: &'a str,
    pub(super) rule_name: &'a str,
    pub(super) pattern: Value,
    pub(super) description: &'a str,
    pub(super) queue_name: &'a str,
    pub(super) queue_arn: &'a str,
    /// The MessageGroupId of a FIFO queue's target.
    pub(super) group_id: Option<&'a str>,
}

/// Creates or fixes the rule and its queue target; returns the rule's ARN (none on a dry run
/// of a new rule).
pub(super) async fn ensure_rule_to_queue(
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
pub(super) async fn ensure_queue_policy(
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
pub(super) async fn ensure_queue(
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
pub(super) fn same_attribute(attribute: &Q, have: &str, want: &str) -> bool {
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
pub(super) async fn describe_rule(
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
pub(super) async fn rule_targets(
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

pub(super) async fn queue_arn(c: &Clients, url: &str) -> Result<String, InfraError> {
    Ok(queue_attribute(c, url, Q::QueueArn)
        .await?
        .unwrap_or_default())
}

/// One attribute of a queue; `None` when it is not set.
pub(super) async fn queue_attribute(
    c: &Clients,
    url: &str,
    name: Q,
) -> Result<Option<String>, InfraError> {
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

/// Removes conveyor's target ([`TARGET_ID`]) from the rule, and the rule unless another target
/// uses it.
pub(super) async fn remove_rule_target(
    c: &Clients,
    bus: &str,
    rule: &str,
) -> Result<(), InfraError> {
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
pub(super) async fn remove_queue(c: &Clients, name: &str) -> Result<(), InfraError> {
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
