//! `infra down`: removal of exactly what `up` made — the rule's target, the rule when no other
//! target remains, the queue and its DLQ — after a confirmation.

use super::resources::{TARGET_ID, remove_queue, remove_rule_target};
use super::{Clients, InfraError};
use crate::config::Config;

pub(super) async fn down(c: &Clients, config: &Config, yes: bool) -> Result<(), InfraError> {
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
    .chain(
        config
            .notify
            .iter()
            .flat_map(|n| super::notify::plan(config, n)),
    )
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
        super::notify::down(c, config, n).await?;
    }
    Ok(())
}
