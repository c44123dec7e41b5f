//! The statements of each role's policy, built from the [`Resources`] the configuration names:
//! what the daemon needs to consume, send and dead-letter (`run`), to publish (`publish`), and to
//! provision (`infra`).

use super::{Resources, Role};
use serde_json::{Value, json};

/// The policy document for `role`.
pub fn document(r: &Resources, role: Role) -> Value {
    let statements = match role {
        Role::Run => run_statements(r),
        Role::Publish => {
            let mut statements = vec![json!({
                "Sid": "Publish",
                "Effect": "Allow",
                "Action": ["events:PutEvents"],
                "Resource": [r.bus_arn(&r.bus)],
            })];
            if let Some(n) = &r.notify {
                statements.push(json!({
                    "Sid": "PublishNotifyDrops",
                    "Effect": "Allow",
                    // `notify drop`: uploads, multipart for large files (aborted on failure).
                    "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                    "Resource": [format!("arn:aws:s3:::{}/*", n.bucket)],
                }));
            }
            statements
        }
        Role::Infra => infra_statements(r),
    };
    json!({"Version": "2012-10-17", "Statement": statements})
}

pub(super) fn run_statements(r: &Resources) -> Vec<Value> {
    let consumed: Vec<String> = r.consumed.iter().map(|c| r.queue(&c.name)).collect();
    let dlqs: Vec<String> = r
        .consumed
        .iter()
        .filter_map(|c| c.dlq.as_deref().map(|d| r.queue(d)))
        .collect();
    let mut statements = vec![json!({
        "Sid": "RunConsume",
        "Effect": "Allow",
        // SendMessage: a message failed only by a dependency outage at maxReceiveCount is sent
        // back to its own queue as a fresh copy instead of being dead-lettered.
        "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                   "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"],
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
    if let Some(bus) = &r.announce_bus {
        statements.push(json!({
            "Sid": "RunAnnounce",
            "Effect": "Allow",
            "Action": ["events:PutEvents"],
            "Resource": [r.bus_arn(bus)],
        }));
    }
    let mut buckets: Vec<String> = r
        .consumed
        .iter()
        .flat_map(|c| &c.claim_check_buckets)
        .map(|b| format!("arn:aws:s3:::{b}/*"))
        .collect();
    buckets.sort();
    buckets.dedup();
    if !buckets.is_empty() {
        statements.push(json!({
            "Sid": "RunClaimChecks",
            "Effect": "Allow",
            // Bodies offloaded to S3 by the producers' extended clients: read only.
            "Action": ["s3:GetObject"],
            "Resource": buckets,
        }));
        statements.push(json!({
            "Sid": "RunClaimCheckBuckets",
            "Effect": "Allow",
            // Without it S3 answers 403, not 404, for a key not there (yet): a missing body
            // would read as a permission fault.
            "Action": ["s3:ListBucket"],
            "Resource": buckets.iter().map(|b| b.trim_end_matches("/*").to_owned()).collect::<Vec<_>>(),
        }));
    }
    if let Some(n) = r.notify.as_ref().filter(|n| n.runs_ingest) {
        statements.push(json!({
            "Sid": "NotifyIngestDrops",
            "Effect": "Allow",
            "Action": ["s3:GetObject"],
            "Resource": [format!("arn:aws:s3:::{}/*", n.bucket)],
        }));
        statements.push(json!({
            "Sid": "NotifyIngestDropBucket",
            "Effect": "Allow",
            // A drop overwritten or removed reads as 404 only with it; without, 403, which
            // conveyor must take for a permission fault.
            "Action": ["s3:ListBucket"],
            "Resource": [format!("arn:aws:s3:::{}", n.bucket)],
        }));
        statements.push(json!({
            "Sid": "NotifyIngestRejects",
            "Effect": "Allow",
            // Only the rejects objects next to the drops: written, or removed when a new upload
            // of the drop has no rejects (an earlier upload's must not stay).
            "Action": ["s3:PutObject", "s3:DeleteObject"],
            "Resource": [format!("arn:aws:s3:::{}/*{}", n.bucket, crate::notify::drop::REJECTS_SUFFIX)],
        }));
        statements.push(json!({
            "Sid": "NotifyIngestSend",
            "Effect": "Allow",
            // The incoming queue, and the ingest queue itself: a drop's ranges are work
            // messages there.
            "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"],
            "Resource": [r.queue(&n.incoming_queue), r.queue(&n.ingest_queue)],
        }));
    }
    if let Some(n) = r.notify.as_ref().filter(|n| n.runs_rank) {
        statements.push(json!({
            "Sid": "NotifyRankSend",
            "Effect": "Allow",
            "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"],
            "Resource": [r.queue(&n.priority_queue)],
        }));
    }
    if let Some(n) = r.notify.as_ref().filter(|n| n.runs_deliver) {
        let mut ses: Vec<String> = n
            .sender_identities
            .iter()
            .map(|id| format!("arn:aws:ses:{}:{}:identity/{id}", r.region, r.account))
            .collect();
        if let Some(set) = &n.configuration_set {
            ses.push(format!(
                "arn:aws:ses:{}:{}:configuration-set/{set}",
                r.region, r.account
            ));
        }
        if !ses.is_empty() {
            statements.push(json!({
                "Sid": "NotifyDeliverEmail",
                "Effect": "Allow",
                "Action": ["ses:SendEmail"],
                "Resource": ses,
            }));
        }
        statements.push(json!({
            "Sid": "NotifyDeliverPush",
            "Effect": "Allow",
            // Mobile push: the account's platform endpoints only, never its topics.
            "Action": ["sns:Publish"],
            "Resource": [format!("arn:aws:sns:{}:{}:endpoint/*", r.region, r.account)],
        }));
        statements.push(json!({
            "Sid": "NotifyDeliverSms",
            "Effect": "Allow",
            // A text message goes to a phone number, which has no ARN: publishing to anything
            // that is not an SNS resource (no topic, no endpoint) is publishing SMS.
            "Action": ["sns:Publish"],
            "NotResource": ["arn:aws:sns:*:*:*"],
        }));
        statements.push(json!({
            "Sid": "NotifyDeliverFailover",
            "Effect": "Allow",
            // A channel that gives up hands the notification to the next one through this queue.
            "Action": ["sqs:SendMessage", "sqs:GetQueueUrl"],
            "Resource": [r.queue(&n.priority_queue)],
        }));
    }
    let (keys, by_alias) = r.kms();
    if !keys.is_empty() {
        statements.push(json!({
            "Sid": "RunQueueKeys",
            "Effect": "Allow",
            // Decrypt to receive from an SSE-KMS queue; GenerateDataKey to send to one (DLQ,
            // requeue).
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": keys,
        }));
    }
    if by_alias {
        statements.push(json!({
            "Sid": "RunQueueKeysByAlias",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": [format!("arn:aws:kms:{}:{}:key/*", r.region, r.account)],
            // A queue names its key by alias: allow the account's keys, only as used by SQS.
            "Condition": {"StringEquals": {"kms:ViaService": format!("sqs.{}.amazonaws.com", r.region)}},
        }));
    }
    statements
}

pub(super) fn infra_statements(r: &Resources) -> Vec<Value> {
    let mut statements = vec![
        json!({
            "Sid": "InfraQueues",
            "Effect": "Allow",
            "Action": ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes",
                       "sqs:SetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage"],
            // The verification queues are created and removed by `infra verify`.
            "Resource": [r.queue(&r.infra_queue), r.queue(&r.infra_dlq), r.queue("conveyor-verify-*")],
        }),
        json!({
            "Sid": "InfraRule",
            "Effect": "Allow",
            "Action": ["events:PutRule", "events:DescribeRule", "events:DeleteRule", "events:PutTargets",
                       "events:RemoveTargets", "events:ListTargetsByRule", "events:PutEvents"],
            "Resource": [r.rule_arn(), r.bus_arn(&r.bus)],
        }),
    ];
    if let Some(n) = &r.notify {
        let queues: Vec<String> = [&n.ingest_queue, &n.incoming_queue, &n.priority_queue]
            .into_iter()
            .flat_map(|q| {
                [
                    r.queue(q),
                    r.queue(&crate::config::NotifyConfig::dlq_name(q)),
                ]
            })
            .collect();
        statements.push(json!({
            "Sid": "InfraNotifyQueues",
            "Effect": "Allow",
            "Action": ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes",
                       "sqs:SetQueueAttributes"],
            "Resource": queues,
        }));
        statements.push(json!({
            "Sid": "InfraNotifyRule",
            "Effect": "Allow",
            "Action": ["events:PutRule", "events:DescribeRule", "events:DeleteRule", "events:PutTargets",
                       "events:RemoveTargets", "events:ListTargetsByRule"],
            "Resource": [r.named_rule_arn(&n.rule)],
        }));
        statements.push(json!({
            "Sid": "InfraNotifyBucket",
            "Effect": "Allow",
            // HeadBucket is authorised as ListBucket.
            "Action": ["s3:CreateBucket", "s3:ListBucket", "s3:GetBucketNotification",
                       "s3:PutBucketNotification"],
            "Resource": [format!("arn:aws:s3:::{}", n.bucket)],
        }));
        if !n.sender_identities.is_empty() {
            statements.push(json!({
                "Sid": "InfraNotifySender",
                "Effect": "Allow",
                // Checking and requesting the sender's verification: SES v1 authorises these on
                // "*" only.
                "Action": ["ses:ListIdentities", "ses:GetIdentityVerificationAttributes",
                           "ses:VerifyEmailIdentity"],
                "Resource": "*",
            }));
        }
    }
    if r.bus != "default" {
        statements.push(json!({
            "Sid": "InfraBus",
            "Effect": "Allow",
            "Action": ["events:DescribeEventBus", "events:CreateEventBus"],
            "Resource": [r.bus_arn(&r.bus)],
        }));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::policy::{AWS_MANAGED_SQS_KEY, Consumed, NotifyResources};

    fn resources() -> Resources {
        Resources {
            region: "eu-west-1".into(),
            account: "123456789012".into(),
            consumed: vec![Consumed {
                name: "events".into(),
                dlq: Some("events-dlq".into()),
                kms_keys: vec![
                    "1234abcd-12ab-34cd-56ef-1234567890ab".into(),
                    AWS_MANAGED_SQS_KEY.into(),
                ],
                claim_check_buckets: vec!["drops".into()],
            }],
            bus: "default".into(),
            announce_bus: Some("results".into()),
            infra_queue: "events".into(),
            infra_dlq: "events-dlq".into(),
            infra_rule: "events-rule".into(),
            notify: None,
        }
    }

    fn statement(doc: &Value, sid: &str) -> Value {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
            .cloned()
            .unwrap_or_else(|| panic!("no {sid} in {doc}"))
    }

    fn actions(doc: &Value) -> Vec<String> {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["Action"].as_array().unwrap().clone())
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn each_role_names_exact_resources_and_only_what_it_needs() {
        let r = resources();
        let run = document(&r, Role::Run);
        assert_eq!(
            statement(&run, "RunConsume")["Resource"][0],
            "arn:aws:sqs:eu-west-1:123456789012:events"
        );
        assert_eq!(
            statement(&run, "RunDeadLetter")["Resource"][0],
            "arn:aws:sqs:eu-west-1:123456789012:events-dlq"
        );
        assert_eq!(
            statement(&run, "RunAnnounce")["Resource"][0],
            "arn:aws:events:eu-west-1:123456789012:event-bus/results"
        );
        assert_eq!(
            statement(&run, "RunClaimChecks"),
            json!({"Sid": "RunClaimChecks", "Effect": "Allow", "Action": ["s3:GetObject"],
                   "Resource": ["arn:aws:s3:::drops/*"]}),
            "read-only, the configured claim-check buckets only"
        );
        assert_eq!(
            statement(&run, "RunQueueKeys")["Resource"],
            json!(["arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"]),
            "the customer managed key, not the AWS managed one"
        );
        let infra = document(&r, Role::Infra);
        let run_actions = actions(&run);
        for action in actions(&infra) {
            let shared = [
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "events:PutEvents",
            ];
            if !shared.contains(&action.as_str()) {
                assert!(!run_actions.contains(&action), "run holds {action}");
            }
        }
        let publish = document(&r, Role::Publish);
        assert_eq!(actions(&publish), ["events:PutEvents"]);
        assert_eq!(
            statement(&publish, "Publish")["Resource"][0],
            "arn:aws:events:eu-west-1:123456789012:event-bus/default"
        );
        assert_eq!(
            statement(&infra, "InfraRule")["Resource"][0],
            "arn:aws:events:eu-west-1:123456789012:rule/events-rule"
        );
        for doc in [run, publish, infra] {
            assert_eq!(
                doc.to_string().matches("\"*\"").count(),
                0,
                "no wildcard resources"
            );
        }
    }

    #[test]
    fn each_notification_stage_gets_its_own_statements_and_no_more() {
        let mut r = resources();
        r.notify = Some(NotifyResources {
            bucket: "drops".into(),
            ingest_queue: "n-ingest".into(),
            incoming_queue: "n-incoming".into(),
            priority_queue: "n-priority".into(),
            rule: "n-rule".into(),
            runs_ingest: true,
            runs_rank: false,
            runs_deliver: false,
            sender_identities: Vec::new(),
            configuration_set: None,
        });
        let run = document(&r, Role::Run);
        assert_eq!(
            statement(&run, "NotifyIngestRejects")["Resource"],
            json!(["arn:aws:s3:::drops/*.rejects.jsonl"])
        );
        assert_eq!(
            statement(&run, "NotifyIngestSend")["Resource"],
            json!([
                "arn:aws:sqs:eu-west-1:123456789012:n-incoming",
                "arn:aws:sqs:eu-west-1:123456789012:n-ingest"
            ])
        );
        assert!(
            !run.to_string().contains("NotifyRankSend"),
            "rank not routed here"
        );
        let infra = document(&r, Role::Infra);
        assert_eq!(
            statement(&infra, "InfraNotifyRule")["Resource"],
            json!(["arn:aws:events:eu-west-1:123456789012:rule/n-rule"])
        );
        assert_eq!(
            statement(&infra, "InfraNotifyQueues")["Resource"]
                .as_array()
                .unwrap()
                .len(),
            6
        );
        let publish = document(&r, Role::Publish);
        assert_eq!(
            statement(&publish, "PublishNotifyDrops")["Resource"],
            json!(["arn:aws:s3:::drops/*"])
        );
    }

    #[test]
    fn a_key_named_by_alias_is_allowed_only_through_sqs() {
        let mut r = resources();
        r.consumed[0].kms_keys = vec!["alias/orders".into()];
        r.announce_bus = None;
        let run = document(&r, Role::Run);
        let s = statement(&run, "RunQueueKeysByAlias");
        assert_eq!(
            s["Condition"]["StringEquals"]["kms:ViaService"],
            "sqs.eu-west-1.amazonaws.com"
        );
        assert!(run.to_string().find("RunQueueKeys\"").is_none());
        assert!(run.to_string().find("RunAnnounce").is_none());
    }
}
