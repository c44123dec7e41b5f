//! `[notify]`: the notification system's stages (SPEC §8) — where drops land, the queues
//! between the stages, how events are scored and which channel is tried first. Present only
//! when the notification system runs: `conveyor infra up` provisions its resources, and the
//! `notify-ingest` / `notify-rank` pipelines need it.

use serde::{Deserialize, Serialize};

mod bindings;
mod delivery;

pub use bindings::Bindings;
pub use delivery::{DeliveryConfig, Limit, ProviderRateLimits, RateLimits, TenantRateLimits};

use super::Problems;
use crate::contract::notification::Channel;
use crate::contract::ranked::PRIORITIES;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// The bucket JSON-lines drops are uploaded to; its ObjectCreated notifications feed
    /// `ingest_queue`. Rejects are written next to each drop as `<key>.rejects.jsonl`.
    pub bucket: String,
    /// Receives the bucket's event notifications (consume it with `format = "s3"` and the
    /// `notify-ingest` pipeline).
    pub ingest_queue: String,
    /// Validated NotificationEvents: from EventBridge (`NotificationRequested`, through
    /// `rule_name`) and from `notify-ingest`. Consumed by `notify-rank`.
    pub incoming_queue: String,
    /// RankedNotifications, each delayed until its `sendAfter` (up to SQS's 15 minutes).
    pub priority_queue: String,
    /// The EventBridge rule (on `eventbridge.bus_name`) sending `NotificationRequested`
    /// events to `incoming_queue`.
    pub rule_name: String,
    /// Event sources the rule matches; empty = any publisher.
    pub sources: Vec<String>,
    /// Retention of the three queues and their DLQs.
    pub retention_secs: u32,
    /// Native redrive to each queue's DLQ after this many receives (the backstop behind
    /// conveyor's explicit dead-lettering).
    pub max_receive_count: u32,
    /// `rules` (offline, documented in docs/notifications.md) or `model` (the `[extraction]`
    /// endpoint and its limits; OPENAI_API_KEY).
    pub scorer: Scorer,
    /// Notifications of at least this priority are sent during quiet hours.
    pub quiet_hours_bypass_priority: u8,
    /// From this priority on a notification is urgent and `urgent_channel_order` applies.
    pub urgent_priority: u8,
    /// Which channel is tried first (the rest fail over in this order) for a user without a
    /// failover order of their own; every channel must be listed.
    pub channel_order: Vec<Channel>,
    /// The same for urgent notifications: channels that reach a person at once come first.
    pub urgent_channel_order: Vec<Channel>,
    /// Segments the rules scorer raises by one (`user.segment`, or the stored preferences').
    pub vip_segments: Vec<String>,
    /// `SendMessageBatch` calls `notify-ingest` has in flight while it reads a range of a drop.
    pub ingest_sends_in_flight: u32,
    /// Ranges of drops one process reads at once (memory: about 1 MiB plus the batches in
    /// flight per range). More ranges waiting are held, their leases extended.
    pub ingest_ranges_in_flight: u32,
    /// A drop is read in ranges of this many bytes, each an SQS work message any daemon may
    /// take; a daemon killed mid-drop costs the ranges it had in flight.
    pub drop_range_bytes: u64,
    /// Longest line of a drop: longer ones are rejected with the reason, never read whole.
    pub max_line_bytes: u64,
    /// Many events packed into one SQS message (a batch, up to 256 KiB) from `notify-ingest`
    /// to `notify-rank` and from ranking to delivery; each keeps its own outcome and retries.
    pub pack_events: bool,
    /// How long ranking waits for other ranked notifications to pack with one (milliseconds).
    pub pack_linger_ms: u64,
    /// How `notify-deliver` retries a channel before failing over.
    pub delivery: DeliveryConfig,
    /// `[notify.email]`: SES.
    pub email: EmailConfig,
    /// `[notify.sms]`: SNS text messages.
    pub sms: SmsConfig,
    /// `[notify.webhook]`: signed HTTPS POSTs.
    pub webhook: WebhookConfig,
    /// A token bucket per `rateLimitKey` (`<channel>:<tenantId>`): each channel's default.
    pub rate_limits: RateLimits,
    /// Per tenant (by id), channels whose bucket differs from `rate_limits`.
    pub tenant_rate_limits: std::collections::BTreeMap<uuid::Uuid, TenantRateLimits>,
    /// The account's limits at SES and SNS, shared by every tenant.
    pub provider_rate_limits: ProviderRateLimits,
    /// A notification's `sendAfter` may be at most this far ahead (a later one is
    /// dead-lettered as the message's own fault).
    pub max_defer_secs: u64,
    /// `[notify.bindings]`: the tenants each source, drop prefix and queue may send for.
    pub bindings: Bindings,
}

/// `[notify.email]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// The verified SES identity mail is sent from (`infra up` checks it, and asks SES to
    /// verify it when it is unknown).
    pub sender: String,
    /// An SES configuration set to send through (event publishing, dedicated IPs).
    pub configuration_set: Option<String>,
}

impl EmailConfig {
    /// The SES identities mail from `sender` may be sent as: the address, and its domain (an
    /// address at a verified domain may send as the domain identity). Empty without a sender.
    pub fn identities(&self) -> Vec<String> {
        if self.sender.is_empty() {
            return Vec::new();
        }
        let mut ids = vec![self.sender.clone()];
        if let Some((_, domain)) = self.sender.rsplit_once('@') {
            ids.push(domain.to_owned());
        }
        ids
    }
}

/// `[notify.sms]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// `AWS.SNS.SMS.SenderID`, where the destination country supports one (1–11 letters/digits).
    pub sender_id: Option<String>,
    /// `AWS.SNS.SMS.SMSType`: `Transactional` (delivery first) or `Promotional` (cost first).
    pub sms_type: String,
}

impl Default for SmsConfig {
    fn default() -> Self {
        Self {
            sender_id: None,
            sms_type: "Transactional".to_owned(),
        }
    }
}

/// `[notify.webhook]`. Secrets are per tenant, from `NOTIFY_WEBHOOK_SECRETS`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Lets webhooks reach loopback, private, link-local and cloud-metadata addresses, and
    /// plain `http://`. Off in production: a tenant's URL could otherwise make the daemon call
    /// into its own network. For local receivers in development and tests only.
    pub allow_private_targets: bool,
}

/// How a notification's priority is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scorer {
    Rules,
    Model,
}

impl Scorer {
    pub fn as_str(self) -> &'static str {
        match self {
            Scorer::Rules => "rules",
            Scorer::Model => "model",
        }
    }
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            bucket: "conveyor-notify-drops".to_owned(),
            ingest_queue: "conveyor-notify-ingest".to_owned(),
            incoming_queue: "conveyor-notify-incoming".to_owned(),
            priority_queue: "conveyor-notify-priority".to_owned(),
            rule_name: "conveyor-notify-requested".to_owned(),
            sources: Vec::new(),
            retention_secs: 1_209_600,
            max_receive_count: 3,
            scorer: Scorer::Rules,
            quiet_hours_bypass_priority: 5,
            urgent_priority: 4,
            channel_order: vec![
                Channel::Email,
                Channel::Push,
                Channel::Webhook,
                Channel::Sms,
            ],
            urgent_channel_order: vec![
                Channel::Push,
                Channel::Sms,
                Channel::Webhook,
                Channel::Email,
            ],
            vip_segments: vec!["vip".to_owned(), "enterprise".to_owned()],
            ingest_sends_in_flight: 8,
            ingest_ranges_in_flight: 2,
            drop_range_bytes: 8 * 1024 * 1024,
            max_line_bytes: 1024 * 1024,
            pack_events: true,
            pack_linger_ms: 10,
            delivery: DeliveryConfig::default(),
            email: EmailConfig::default(),
            sms: SmsConfig::default(),
            webhook: WebhookConfig::default(),
            rate_limits: RateLimits::default(),
            tenant_rate_limits: Default::default(),
            provider_rate_limits: ProviderRateLimits::default(),
            max_defer_secs: 7 * 86_400,
            bindings: Bindings::default(),
        }
    }
}

impl NotifyConfig {
    /// The bucket of `channel` for `tenant`: its override, else the channel's default.
    pub fn limit(&self, tenant: uuid::Uuid, channel: Channel) -> Limit {
        self.tenant_rate_limits
            .get(&tenant)
            .and_then(|t| t.get(channel))
            .unwrap_or_else(|| self.rate_limits.get(channel))
    }

    /// `<queue>-dlq`: the DLQ `infra up` gives each stage's queue.
    pub fn dlq_name(queue: &str) -> String {
        format!("{queue}-dlq")
    }

    pub(super) fn validate(&self, secrets: &super::Secrets, problems: &mut Problems) {
        for (key, name) in [
            ("notify.ingest_queue", &self.ingest_queue),
            ("notify.incoming_queue", &self.incoming_queue),
            ("notify.priority_queue", &self.priority_queue),
        ] {
            // SQS queue names: 1–80 characters of letters, digits, `-` and `_`; the DLQ adds 4.
            let valid = !name.is_empty()
                && name.len() <= 76
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                problems.bad(
                    key,
                    &format!("{name:?}"),
                    "a standard queue name: 1–76 letters, digits, - or _ (its DLQ adds \"-dlq\")",
                );
            }
        }
        let names = [
            &self.ingest_queue,
            &self.incoming_queue,
            &self.priority_queue,
        ];
        if names[0] == names[1] || names[1] == names[2] || names[0] == names[2] {
            problems.bad(
                "notify.ingest_queue",
                &format!("{names:?}"),
                "the three stages need three different queues",
            );
        }
        // S3 bucket names: 3–63 lowercase letters, digits, `.` and `-`.
        let bucket_ok = (3..=63).contains(&self.bucket.len())
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            problems.bad(
                "notify.bucket",
                &format!("{:?}", self.bucket),
                "an S3 bucket name: 3–63 lowercase letters, digits, . or -",
            );
        }
        if self.rule_name.is_empty() || self.rule_name.len() > 64 {
            problems.bad(
                "notify.rule_name",
                &format!("{:?}", self.rule_name),
                "an EventBridge rule name of 1–64 characters",
            );
        }
        if !(60..=super::SQS_MAX_RETENTION_SECS).contains(&self.retention_secs) {
            problems.bad(
                "notify.retention_secs",
                &self.retention_secs,
                "60–1209600 (SQS's MessageRetentionPeriod range)",
            );
        }
        if !(1..=1000).contains(&self.max_receive_count) {
            problems.bad(
                "notify.max_receive_count",
                &self.max_receive_count,
                "1–1000 (SQS's RedrivePolicy range)",
            );
        }
        let priorities = u8::try_from(*PRIORITIES.start()).unwrap_or(1)
            ..=u8::try_from(*PRIORITIES.end()).unwrap_or(5);
        for (key, value) in [
            (
                "notify.quiet_hours_bypass_priority",
                self.quiet_hours_bypass_priority,
            ),
            ("notify.urgent_priority", self.urgent_priority),
        ] {
            if !priorities.contains(&value) {
                problems.bad(key, &value, "a priority from 1 to 5");
            }
        }
        for (key, order) in [
            ("notify.channel_order", &self.channel_order),
            ("notify.urgent_channel_order", &self.urgent_channel_order),
        ] {
            let complete = order.len() == Channel::ALL.len()
                && Channel::ALL
                    .iter()
                    .all(|c| order.iter().any(|o| o.as_str() == *c));
            if !complete {
                problems.bad(
                    key,
                    &format!("{:?}", order.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
                    &format!("list every channel once: {}", Channel::ALL.join(", ")),
                );
            }
        }
        if !(1..=64).contains(&self.ingest_sends_in_flight) {
            problems.bad(
                "notify.ingest_sends_in_flight",
                &self.ingest_sends_in_flight,
                "1–64",
            );
        }
        if !(1..=64).contains(&self.ingest_ranges_in_flight) {
            problems.bad(
                "notify.ingest_ranges_in_flight",
                &self.ingest_ranges_in_flight,
                "1–64 (each range holds about 1 MiB plus its batches in flight)",
            );
        }
        const MIB: u64 = 1024 * 1024;
        if !(MIB..=1024 * MIB).contains(&self.drop_range_bytes) {
            problems.bad(
                "notify.drop_range_bytes",
                &self.drop_range_bytes,
                "1048576–1073741824 (1 MiB to 1 GiB; the default is 8 MiB)",
            );
        }
        if !(1024..=16 * MIB).contains(&self.max_line_bytes) {
            problems.bad(
                "notify.max_line_bytes",
                &self.max_line_bytes,
                "1024–16777216 (the default is 1 MiB; a line's message must also fit SQS's 256 KiB)",
            );
        }
        if self.pack_linger_ms > 1000 {
            problems.bad(
                "notify.pack_linger_ms",
                &self.pack_linger_ms,
                "0–1000 (milliseconds a ranked notification waits for others to share a message with; the default is 10)",
            );
        }
        if !(60..=365 * 86_400).contains(&self.max_defer_secs) {
            problems.bad(
                "notify.max_defer_secs",
                &self.max_defer_secs,
                "60–31536000 (how far ahead a sendAfter may be; the default is 7 days)",
            );
        }
        self.validate_delivery(problems);
        if let Some(secrets) = &secrets.notify_webhook_secrets
            && let Err(e) = super::SigningSecrets::parse(secrets.expose())
        {
            problems.bad(
                super::WEBHOOK_SECRETS_ENV,
                &"***",
                &format!("{e}; the format is <tenant id>=whsec_<base64>[,…]"),
            );
        }
        if self.scorer == Scorer::Model && secrets.openai_api_key.is_none() {
            problems.bad(
                "notify.scorer",
                &"\"model\"",
                "OPENAI_API_KEY is not set in the environment: export it (any value for a gateway without keys), or use scorer = \"rules\" to run offline",
            );
        }
    }
}
