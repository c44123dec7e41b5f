//! `infra verify`: publishes a probe event and proves it reaches the queue within 30 s, without
//! stealing messages from a running daemon.

use super::resources::{describe_rule, queue_arn, queue_policy, rule_targets};
use super::{Clients, InfraError, eb_err, is_not_found, sqs_err};
use crate::cmd::publish::{self, EventType, IdentityInputs};
use crate::config::Config;
use aws_sdk_eventbridge::error::ProvideErrorMetadata;
use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::types::QueueAttributeName as Q;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long `verify` waits for its event.
pub(super) const VERIFY_WITHIN: Duration = Duration::from_secs(30);

/// Publishes a test event through the rule and waits for it on a temporary queue attached to
/// the rule as an extra target — so a daemon consuming the real queue keeps all its messages.
/// The temporary queue and target are removed afterwards, also on failure and on Ctrl-C.
pub(super) async fn verify(c: &Clients, config: &Config) -> Result<(), InfraError> {
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
pub(super) struct Probe {
    queue_url: String,
    target_id: String,
}

pub(super) async fn publish_and_wait(
    c: &Clients,
    config: &Config,
    probe: &Probe,
) -> Result<(), InfraError> {
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
pub(super) fn envelope_detail_type(source: &str) -> String {
    if source == publish::EMAIL_SOURCE {
        "EnvelopeV1.email".into()
    } else {
        "BatchProcessingCompleted".into()
    }
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
