//! `infra up|down` for `[notify]`: the notification stages' resources — the drops bucket and its
//! ObjectCreated notification to the `ingest` queue, the `ingest`, `incoming` and `priority`
//! queues each with a DLQ, the EventBridge rule sending `NotificationRequested` events to
//! `incoming`, and the two queue policies letting exactly the bucket and the rule send.
//! `down` leaves the bucket (it holds the drops and their rejects).

use std::collections::BTreeMap;

use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, Event, NotificationConfiguration,
    QueueConfiguration,
};
use aws_sdk_sqs::types::QueueAttributeName as Q;
use serde_json::{Value, json};

use super::resources::{
    RuleToQueue, TARGET_ID, ensure_queue, ensure_queue_policy, ensure_rule_to_queue, queue_policy,
};
use super::resources::{remove_queue, remove_rule_target};
use super::{Change, Clients, InfraError, change};
use crate::config::{Config, NotifyConfig};
use crate::contract::notification::NOTIFICATION_REQUESTED;

/// The id of the bucket's notification to the ingest queue; `down` removes exactly this one.
pub(super) const NOTIFICATION_ID: &str = "conveyor-notify-ingest";

/// `{"detail-type": ["NotificationRequested"]}`, and the sources when configured.
pub fn event_pattern(notify: &NotifyConfig) -> Value {
    let mut pattern = json!({"detail-type": [NOTIFICATION_REQUESTED]});
    if !notify.sources.is_empty() {
        pattern["source"] = json!(notify.sources);
    }
    pattern
}

/// Only S3, for this bucket in this account, may send to the ingest queue.
pub fn ingest_policy(queue_arn: &str, bucket: &str) -> Value {
    // arn:aws:sqs:REGION:ACCOUNT:NAME — the queue's own account owns the bucket.
    let account = queue_arn.split(':').nth(4).unwrap_or_default();
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AllowDropsBucket",
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {
                "ArnLike": {"aws:SourceArn": format!("arn:aws:s3:::{bucket}")},
                "StringEquals": {"aws:SourceAccount": account},
            },
        }],
    })
}

pub(super) async fn up(
    c: &Clients,
    config: &Config,
    notify: &NotifyConfig,
    dry_run: bool,
) -> Result<Vec<Change>, InfraError> {
    let mut changes = Vec::new();
    let mut queues = BTreeMap::new();
    for name in [
        &notify.ingest_queue,
        &notify.incoming_queue,
        &notify.priority_queue,
    ] {
        let retention = notify.retention_secs.to_string();
        let dlq_name = NotifyConfig::dlq_name(name);
        let (_, dlq_arn, dlq_change) = ensure_queue(
            c,
            &dlq_name,
            BTreeMap::from([(Q::MessageRetentionPeriod, retention.clone())]),
            dry_run,
        )
        .await?;
        changes.push(dlq_change);
        let dlq_arn = dlq_arn.unwrap_or_else(|| format!("(arn of {dlq_name})"));
        let redrive =
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": notify.max_receive_count});
        let (url, arn, queue_change) = ensure_queue(
            c,
            name,
            BTreeMap::from([
                (
                    Q::VisibilityTimeout,
                    config.infra.visibility_timeout_secs.to_string(),
                ),
                (Q::MessageRetentionPeriod, retention),
                (Q::RedrivePolicy, redrive.to_string()),
            ]),
            dry_run,
        )
        .await?;
        changes.push(queue_change);
        let arn = arn.unwrap_or_else(|| format!("(arn of {name})"));
        queues.insert(name.as_str(), (url, arn));
    }

    // EventBridge → incoming.
    let (incoming_url, incoming_arn) = &queues[notify.incoming_queue.as_str()];
    let bus = config.eventbridge.bus_name.as_str();
    let rule = RuleToQueue {
        bus,
        rule_name: &notify.rule_name,
        pattern: event_pattern(notify),
        description: "conveyor: NotificationRequested events for the notification system",
        queue_name: &notify.incoming_queue,
        queue_arn: incoming_arn,
        group_id: None,
    };
    let rule_arn = ensure_rule_to_queue(c, &rule, dry_run, &mut changes)
        .await?
        .unwrap_or_else(|| format!("(arn of rule {})", notify.rule_name));
    changes.push(
        ensure_queue_policy(
            c,
            &notify.incoming_queue,
            incoming_url.as_deref(),
            queue_policy(incoming_arn, &rule_arn),
            dry_run,
        )
        .await?,
    );

    // The bucket → ingest. The queue policy comes first: S3 checks it may send before it
    // accepts the notification configuration.
    let (ingest_url, ingest_arn) = &queues[notify.ingest_queue.as_str()];
    changes.push(ensure_bucket(c, &notify.bucket, dry_run).await?);
    changes.push(
        ensure_queue_policy(
            c,
            &notify.ingest_queue,
            ingest_url.as_deref(),
            ingest_policy(ingest_arn, &notify.bucket),
            dry_run,
        )
        .await?,
    );
    changes.push(ensure_notification(c, &notify.bucket, ingest_arn, dry_run).await?);
    if !notify.email.sender.is_empty() {
        changes.push(ensure_sender(c, &notify.email, dry_run).await?);
    }
    Ok(changes)
}

/// The SES identity mail is sent from: verified (the address, or its domain), or else a
/// verification request for the address (SES mails it a link). A sender that is not verified
/// yet is an error after the request: delivery would fail over every email until it is.
pub(super) async fn ensure_sender(
    c: &Clients,
    email: &crate::config::EmailConfig,
    dry_run: bool,
) -> Result<Change, InfraError> {
    let sender = email.sender.as_str();
    let ses_err = |context: &str, e: aws_sdk_ses::Error| {
        let code = aws_sdk_ses::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
        InfraError::aws(context, code.as_deref(), crate::safe::error_chain(&e))
    };
    let identities = email.identities();
    let domain = identities.get(1).cloned();
    // Which of them SES knows: ListIdentities, since LocalStack reports any identity asked
    // about as verified.
    let mut known = Vec::new();
    let mut pages = c
        .ses
        .list_identities()
        .max_items(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ses_err("ListIdentities", e.into()))?;
        known.extend(
            page.identities
                .into_iter()
                .filter(|i| identities.iter().any(|want| want.eq_ignore_ascii_case(i))),
        );
    }
    let resource = format!("SES sender identity {sender}");
    if !known.is_empty() {
        let found = c
            .ses
            .get_identity_verification_attributes()
            .set_identities(Some(known.clone()))
            .send()
            .await
            .map_err(|e| ses_err("GetIdentityVerificationAttributes", e.into()))?;
        let verified = found
            .verification_attributes
            .values()
            .any(|a| a.verification_status.as_str() == "Success");
        if verified {
            return Ok(change(resource, "exists", dry_run, vec!["verified".into()]));
        }
    }
    if dry_run {
        return Ok(change(
            resource,
            "would create",
            dry_run,
            vec!["verification request".into()],
        ));
    }
    if !known.iter().any(|i| i.eq_ignore_ascii_case(sender)) {
        c.ses
            .verify_email_identity()
            .email_address(sender)
            .send()
            .await
            .map_err(|e| ses_err("VerifyEmailIdentity", e.into()))?;
    }
    let now = c
        .ses
        .get_identity_verification_attributes()
        .identities(sender)
        .send()
        .await
        .map_err(|e| ses_err("GetIdentityVerificationAttributes", e.into()))?;
    let state = now
        .verification_attributes
        .get(sender)
        .map(|a| a.verification_status.as_str().to_owned())
        .unwrap_or_else(|| "NotStarted".into());
    if state == "Success" {
        return Ok(change(
            resource,
            "created",
            dry_run,
            vec!["verified".into()],
        ));
    }
    Err(InfraError::Other(format!(
        "notify.email.sender: SES has not verified {sender} yet (status {state}); SES sent it a verification link — open it, or verify its domain{}, then run `conveyor infra up` again",
        domain.map(|d| format!(" {d}")).unwrap_or_default()
    )))
}

pub(super) fn s3_err(context: &str, e: impl Into<aws_sdk_s3::Error>) -> InfraError {
    let e: aws_sdk_s3::Error = e.into();
    let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_owned);
    InfraError::aws(context, code.as_deref(), crate::safe::error_chain(&e))
}

pub(super) async fn ensure_bucket(
    c: &Clients,
    bucket: &str,
    dry_run: bool,
) -> Result<Change, InfraError> {
    let resource = format!("bucket {bucket}");
    match c.s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(change(resource, "exists", dry_run, vec![])),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {}
        Err(e) => return Err(s3_err("HeadBucket", e)),
    }
    if !dry_run {
        let mut create = c.s3.create_bucket().bucket(bucket);
        // us-east-1 takes no location constraint; every other region needs its own.
        if let Some(region) = c.region.as_deref().filter(|r| *r != "us-east-1") {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        create.send().await.map_err(|e| s3_err("CreateBucket", e))?;
    }
    Ok(change(resource, "created", dry_run, vec![]))
}

/// The bucket's notification configuration with ours (id [`NOTIFICATION_ID`]) set to send
/// every ObjectCreated event to the ingest queue; other notifications are kept as they are.
pub(super) async fn ensure_notification(
    c: &Clients,
    bucket: &str,
    queue_arn: &str,
    dry_run: bool,
) -> Result<Change, InfraError> {
    let resource = format!("notification {NOTIFICATION_ID} of bucket {bucket}");
    let current = match c
        .s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => Some(out),
        // A bucket this dry run would create has no notifications yet.
        Err(_) if dry_run => None,
        Err(e) => return Err(s3_err("GetBucketNotificationConfiguration", e)),
    };
    let ours = QueueConfiguration::builder()
        .id(NOTIFICATION_ID)
        .queue_arn(queue_arn)
        .events(Event::S3ObjectCreated)
        .build()
        .map_err(|e| InfraError::Other(e.to_string()))?;
    let existing = current
        .as_ref()
        .and_then(|out| {
            out.queue_configurations()
                .iter()
                .find(|q| q.id() == Some(NOTIFICATION_ID))
        })
        .cloned();
    let (action, differences) = match &existing {
        None => ("created", vec![]),
        Some(q) if q.queue_arn() == queue_arn && q.events() == [Event::S3ObjectCreated] => {
            ("exists", vec![])
        }
        Some(q) => (
            "updated",
            vec![format!("queue: {} → {queue_arn}", q.queue_arn())],
        ),
    };
    if action != "exists" && !dry_run {
        replace_ours(c, bucket, current, Some(ours)).await?;
    }
    Ok(change(resource, action, dry_run, differences))
}

/// Puts the bucket's notifications with ours removed, then `add` added; the others kept as
/// they are.
pub(super) async fn replace_ours(
    c: &Clients,
    bucket: &str,
    current: Option<aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput>,
    add: Option<QueueConfiguration>,
) -> Result<(), InfraError> {
    let mut builder = NotificationConfiguration::builder();
    let mut queues = Vec::new();
    if let Some(current) = current {
        queues.extend(
            current
                .queue_configurations()
                .iter()
                .filter(|q| q.id() != Some(NOTIFICATION_ID))
                .cloned(),
        );
        builder = builder
            .set_topic_configurations(current.topic_configurations)
            .set_lambda_function_configurations(current.lambda_function_configurations)
            .set_event_bridge_configuration(current.event_bridge_configuration);
    }
    queues.extend(add);
    c.s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(builder.set_queue_configurations(Some(queues)).build())
        .send()
        .await
        .map_err(|e| s3_err("PutBucketNotificationConfiguration", e))?;
    Ok(())
}

/// What `down` removes for `[notify]`, for its plan.
pub(super) fn plan(config: &Config, notify: &NotifyConfig) -> Vec<String> {
    let bus = &config.eventbridge.bus_name;
    let mut plan = vec![
        format!(
            "notification {NOTIFICATION_ID} of bucket {} (the bucket is kept)",
            notify.bucket
        ),
        format!(
            "target {TARGET_ID} of rule {} on bus {bus}",
            notify.rule_name
        ),
        format!("rule {} (if no other target uses it)", notify.rule_name),
    ];
    for name in [
        &notify.ingest_queue,
        &notify.incoming_queue,
        &notify.priority_queue,
    ] {
        plan.push(format!("queue {name}"));
        plan.push(format!("queue {}", NotifyConfig::dlq_name(name)));
    }
    plan
}

pub(super) async fn down(
    c: &Clients,
    config: &Config,
    notify: &NotifyConfig,
) -> Result<(), InfraError> {
    let bucket = &notify.bucket;
    match c
        .s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(current)
            if current
                .queue_configurations()
                .iter()
                .any(|q| q.id() == Some(NOTIFICATION_ID)) =>
        {
            replace_ours(c, bucket, Some(current), None).await?;
            println!("removed      notification {NOTIFICATION_ID} of bucket {bucket}");
        }
        Ok(_) => println!("absent       notification {NOTIFICATION_ID} of bucket {bucket}"),
        Err(e)
            if e.as_service_error().is_some_and(|e| {
                aws_sdk_s3::error::ProvideErrorMetadata::code(e) == Some("NoSuchBucket")
            }) =>
        {
            println!("absent       bucket {bucket}");
        }
        Err(e) => return Err(s3_err("GetBucketNotificationConfiguration", e)),
    }
    remove_rule_target(c, &config.eventbridge.bus_name, &notify.rule_name).await?;
    for name in [
        &notify.ingest_queue,
        &notify.incoming_queue,
        &notify.priority_queue,
    ] {
        remove_queue(c, name).await?;
        remove_queue(c, &NotifyConfig::dlq_name(name)).await?;
    }
    Ok(())
}
