//! `notify example-config`: the notification stages' configuration for one set of names — the
//! three stage queues with their routes and the `[notify]` section — as TOML to start from.
//! It is also the one source of that TOML for the project's own tests, soak and benchmarks,
//! which add their own keys: `[notify]` comes last, so keys written after the output belong to
//! it, and a queue's settings can be changed with `CONVEYOR_QUEUES__<KEY>__<SETTING>`.

/// What the stages are called and what they may do.
#[derive(Debug, Clone, clap::Args)]
pub struct ExampleArgs {
    /// The prefix of every name: queues `<prefix>-ingest`, `-incoming` and `-priority` (each
    /// with a DLQ made by `infra up`) and the rule `<prefix>-requested`.
    #[arg(long)]
    pub prefix: String,
    /// The bucket drops are uploaded to (default: the prefix, lower-cased).
    #[arg(long)]
    pub bucket: Option<String>,
    /// The EventBridge `source` whose `NotificationRequested` events the rule takes (default
    /// `<prefix>.producer`).
    #[arg(long)]
    pub source: Option<String>,
    /// The SES identity mail is sent from (default `notify@<bucket>.example.com`, which only
    /// LocalStack accepts: give your verified one).
    #[arg(long)]
    pub sender: Option<String>,
    /// Intake and ranking only: no route to the `notify-deliver` pipeline.
    #[arg(long)]
    pub no_delivery: bool,
    /// Let webhooks go to private addresses and plain http (a receiver on this machine).
    #[arg(long)]
    pub allow_private_targets: bool,
    /// A tenant the source and the bucket's drops may send for (repeat for several): written
    /// to `[notify.bindings]`.
    #[arg(long = "tenant")]
    pub tenants: Vec<uuid::Uuid>,
    /// Rank events from sources and drops bound to no tenant, for any tenant they name (the
    /// local environment only).
    #[arg(long)]
    pub allow_unbound: bool,
}

impl ExampleArgs {
    /// The stages named after `prefix`, every other choice left at its default.
    pub fn named(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            bucket: None,
            source: None,
            sender: None,
            no_delivery: false,
            allow_private_targets: false,
            tenants: Vec::new(),
            allow_unbound: false,
        }
    }
}

/// The configuration for `args`, as TOML.
pub fn example_config(args: &ExampleArgs) -> String {
    let p = &args.prefix;
    let bucket = args.bucket.clone().unwrap_or_else(|| p.to_lowercase());
    let source = args
        .source
        .clone()
        .unwrap_or_else(|| format!("{p}.producer"));
    let mut out = format!(
        r#"# The notification stages, from `conveyor notify example-config --prefix {p}`.
# Intake: drops in s3://{bucket} are announced on {p}-ingest; NotificationRequested events from
# {source} arrive on {p}-incoming, where they are ranked.

[queues.ingest]
name = "{p}-ingest"
format = "s3"
# A drop is read in ranges of 8 MiB, each a message here: a daemon holds only the ranges it
# reads (notify.ingest_ranges_in_flight), and the others are left to the other daemons.
max_in_flight = 2
[[queues.ingest.routes]]
pipelines = ["notify-ingest"]

[queues.incoming]
name = "{p}-incoming"
[[queues.incoming.routes]]
detail_type = "NotificationRequested"
contract = "notification_event_v1"
pipelines = ["notify-rank"]
"#
    );
    if !args.no_delivery {
        let sender = args
            .sender
            .clone()
            .unwrap_or_else(|| format!("notify@{bucket}.example.com"));
        out.push_str(&format!(
            r#"
# Delivery: ranked notifications on {p}-priority are sent on their channel.
[queues.priority]
name = "{p}-priority"
format = "raw"
[[queues.priority.routes]]
source = "conveyor.notify.rank"
detail_type = "RankedNotification"
contract = "ranked_notification_v1"
pipelines = ["notify-deliver"]

[notify.email]
sender = "{sender}"

[notify.webhook]
allow_private_targets = {}
"#,
            args.allow_private_targets
        ));
    }
    let tenants = args
        .tenants
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let bound = if args.tenants.is_empty() { "# " } else { "" };
    out.push_str(&format!(
        r#"
# The tenants events from {source}, and lines of drops in s3://{bucket}, may name; any other
# tenantId is dead-lettered by ranking with the reason.
[notify.bindings]
{bound}sources = {{ "{source}" = [{tenants}] }}
{bound}drop_prefixes = {{ "" = [{tenants}] }}
allow_unbound = {}
"#,
        args.allow_unbound
    ));
    out.push_str(&format!(
        r#"
# Last, so that keys added below this line belong to [notify].
[notify]
bucket = "{bucket}"
ingest_queue = "{p}-ingest"
incoming_queue = "{p}-incoming"
priority_queue = "{p}-priority"
rule_name = "{p}-requested"
sources = ["{source}"]
"#
    ));
    out
}

#[cfg(test)]
mod tests {
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    use super::*;
    use crate::config::Config;

    fn load(toml: &str) -> Config {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(toml))
            .extract()
            .unwrap()
    }

    #[test]
    fn the_example_loads_and_keys_appended_belong_to_notify() {
        let mut args = ExampleArgs::named("Shop");
        args.allow_private_targets = true;
        args.tenants = vec![uuid::Uuid::from_u128(7)];
        let config = load(&(example_config(&args) + "ingest_sends_in_flight = 3\n"));
        let notify = config.notify.as_ref().unwrap();
        assert_eq!(notify.bucket, "shop");
        assert_eq!(notify.priority_queue, "Shop-priority");
        assert_eq!(
            notify.ingest_sends_in_flight, 3,
            "an appended key is [notify]'s"
        );
        assert!(notify.webhook.allow_private_targets);
        assert_eq!(
            notify.bindings.sources["Shop.producer"],
            [uuid::Uuid::from_u128(7)]
        );
        assert_eq!(
            notify.bindings.drop_prefixes[""],
            [uuid::Uuid::from_u128(7)]
        );
        assert_eq!(notify.email.sender, "notify@shop.example.com");
        assert!(config.routes_to("notify-ingest"));
        assert!(config.routes_to("notify-rank"));
        assert!(config.routes_to("notify-deliver"));
        config
            .validate_with(crate::pipeline::catalog::rules)
            .unwrap_or_else(|e| {
                // Only the secrets a test machine lacks may be missing.
                assert!(e.to_string().contains("DATABASE_URL"), "{e}");
            });
    }

    #[test]
    fn without_delivery_no_route_sends() {
        let mut args = ExampleArgs::named("x");
        args.no_delivery = true;
        let config = load(&example_config(&args));
        assert!(!config.routes_to("notify-deliver"));
        assert!(!config.queues.contains_key("priority"));
    }
}
