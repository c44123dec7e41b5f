//! `[notify.delivery]`, `[notify.rate_limits]`, `[notify.tenant_rate_limits]` and
//! `[notify.provider_rate_limits]`: how `notify-deliver` retries a channel, and the token
//! buckets its sends obey.

use serde::{Deserialize, Serialize};

use super::{NotifyConfig, Problems};
use crate::contract::notification::Channel;

/// `[notify.delivery]`: retries of one channel (seed 004: exponential backoff with full
/// jitter, 100 ms × 2ⁿ capped at 30 s).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Sends tried on one channel (retryable failures) before it fails over.
    pub attempts_per_channel: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_secs: u64,
    /// Longest one provider call may take (SES, SNS, a webhook's whole response).
    pub send_timeout_secs: u64,
    /// A send cut short after it went out (it timed out, or its run was aborted: a lost
    /// lease, the shutdown grace, a killed process) may have reached the provider. Its channel
    /// is *in doubt* and is not sent again for this long; then it is, once (a webhook with the
    /// same `webhook-id`, for the receiver to drop).
    pub in_doubt_hold_secs: u64,
    /// How much of a hot rate-limit bucket's refill a daemon leases in one statement and
    /// hands out from memory (`src/notify/bucket.rs`); 0: one statement per send.
    pub rate_limit_lease_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            attempts_per_channel: 8,
            backoff_base_ms: 100,
            backoff_cap_secs: 30,
            send_timeout_secs: 10,
            in_doubt_hold_secs: 300,
            rate_limit_lease_ms: 1_000,
        }
    }
}

/// A token bucket: `capacity` sends at once, refilled at `refill_per_sec`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub capacity: f64,
    pub refill_per_sec: f64,
}

/// `[notify.rate_limits]`: one [`Limit`] per channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    pub email: Limit,
    pub sms: Limit,
    pub push: Limit,
    pub webhook: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        // SES's default production sending rate, SNS's default transactional SMS rate, and
        // what one tenant's receivers can usually take.
        let limit = |n: f64| Limit {
            capacity: n,
            refill_per_sec: n,
        };
        Self {
            email: limit(14.0),
            sms: limit(20.0),
            push: limit(100.0),
            webhook: limit(50.0),
        }
    }
}

impl RateLimits {
    pub fn get(&self, channel: Channel) -> Limit {
        match channel {
            Channel::Email => self.email,
            Channel::Sms => self.sms,
            Channel::Push => self.push,
            Channel::Webhook => self.webhook,
        }
    }
}

/// `[notify.tenant_rate_limits."<tenant id>"]`: the channels whose bucket differs for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantRateLimits {
    pub email: Option<Limit>,
    pub sms: Option<Limit>,
    pub push: Option<Limit>,
    pub webhook: Option<Limit>,
}

impl TenantRateLimits {
    pub fn get(&self, channel: Channel) -> Option<Limit> {
        match channel {
            Channel::Email => self.email,
            Channel::Sms => self.sms,
            Channel::Push => self.push,
            Channel::Webhook => self.webhook,
        }
    }
}

/// `[notify.provider_rate_limits]`: the account's own limits at each provider, one bucket per
/// provider shared by every tenant and every daemon on the database (a send takes a token of
/// its tenant's bucket and of its provider's). Unset: no account-level bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderRateLimits {
    /// SES's maximum send rate for the account (`GetSendQuota`'s `MaxSendRate`).
    pub ses: Option<Limit>,
    /// SNS's SMS transactions per second for the account.
    pub sns_sms: Option<Limit>,
    /// SNS `Publish` to mobile platform endpoints, per second.
    pub sns_push: Option<Limit>,
}

impl Default for ProviderRateLimits {
    fn default() -> Self {
        // SES's starting production rate (a sandbox account has 1/s) and SNS's default SMS
        // rate; SNS publishes to push endpoints at thousands per second in every region.
        let limit = |n: f64| {
            Some(Limit {
                capacity: n,
                refill_per_sec: n,
            })
        };
        Self {
            ses: limit(14.0),
            sns_sms: limit(20.0),
            sns_push: None,
        }
    }
}

impl ProviderRateLimits {
    /// The provider bucket a send on `channel` also takes from: its key and limit.
    pub fn get(&self, channel: Channel) -> Option<(&'static str, Limit)> {
        match channel {
            Channel::Email => self.ses.map(|l| ("provider:ses", l)),
            Channel::Sms => self.sns_sms.map(|l| ("provider:sns-sms", l)),
            Channel::Push => self.sns_push.map(|l| ("provider:sns-push", l)),
            Channel::Webhook => None,
        }
    }
}

impl NotifyConfig {
    pub(super) fn validate_delivery(&self, problems: &mut Problems) {
        let d = &self.delivery;
        if !(1..=100).contains(&d.attempts_per_channel) {
            problems.bad(
                "notify.delivery.attempts_per_channel",
                &d.attempts_per_channel,
                "1–100",
            );
        }
        if !(1..=60_000).contains(&d.backoff_base_ms) {
            problems.bad(
                "notify.delivery.backoff_base_ms",
                &d.backoff_base_ms,
                "1–60000",
            );
        }
        if !(1..=3_600).contains(&d.backoff_cap_secs) {
            problems.bad(
                "notify.delivery.backoff_cap_secs",
                &d.backoff_cap_secs,
                "1–3600",
            );
        }
        if !(1..=120).contains(&d.send_timeout_secs) {
            problems.bad(
                "notify.delivery.send_timeout_secs",
                &d.send_timeout_secs,
                "1–120",
            );
        }
        if !(1..=86_400).contains(&d.in_doubt_hold_secs) {
            problems.bad(
                "notify.delivery.in_doubt_hold_secs",
                &d.in_doubt_hold_secs,
                "1–86400 (how long a send that may have gone out waits before it is sent again)",
            );
        }
        if d.rate_limit_lease_ms > 10_000 {
            problems.bad(
                "notify.delivery.rate_limit_lease_ms",
                &d.rate_limit_lease_ms,
                "0–10000 (0: a statement per send; the default 1000 leases up to a second of refill)",
            );
        }
        if let Some(id) = &self.sms.sender_id {
            let ok = (1..=11).contains(&id.len())
                && id.chars().all(|c| c.is_ascii_alphanumeric())
                && id.chars().any(|c| c.is_ascii_alphabetic());
            if !ok {
                problems.bad(
                    "notify.sms.sender_id",
                    &format!("{id:?}"),
                    "1–11 letters and digits, at least one letter (SNS's AWS.SNS.SMS.SenderID)",
                );
            }
        }
        if !matches!(self.sms.sms_type.as_str(), "Transactional" | "Promotional") {
            problems.bad(
                "notify.sms.sms_type",
                &format!("{:?}", self.sms.sms_type),
                "\"Transactional\" or \"Promotional\"",
            );
        }
        let limits = Channel::ALL
            .iter()
            .filter_map(|c| Channel::parse(c))
            .map(|c| {
                (
                    format!("notify.rate_limits.{}", c.as_str()),
                    self.rate_limits.get(c),
                )
            })
            .chain(self.tenant_rate_limits.iter().flat_map(|(tenant, t)| {
                Channel::ALL
                    .iter()
                    .filter_map(|c| Channel::parse(c))
                    .filter_map(move |c| {
                        t.get(c).map(|l| {
                            (
                                format!("notify.tenant_rate_limits.\"{tenant}\".{}", c.as_str()),
                                l,
                            )
                        })
                    })
            }))
            .chain(
                [
                    ("ses", self.provider_rate_limits.ses),
                    ("sns_sms", self.provider_rate_limits.sns_sms),
                    ("sns_push", self.provider_rate_limits.sns_push),
                ]
                .into_iter()
                .filter_map(|(name, l)| {
                    l.map(|l| (format!("notify.provider_rate_limits.{name}"), l))
                }),
            );
        for (key, limit) in limits {
            let ok = limit.capacity >= 1.0
                && limit.capacity <= 1e6
                && limit.refill_per_sec > 0.0
                && limit.refill_per_sec <= 1e6;
            if !ok {
                problems.bad(
                    &key,
                    &format!("{limit:?}"),
                    "capacity 1–1000000 (sends at once) and refill_per_sec above 0, at most 1000000",
                );
            }
        }
    }
}
