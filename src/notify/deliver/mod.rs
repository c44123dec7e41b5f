//! The delivery channels: one small provider each behind [`Provider`] — email over SES
//! ([`email`]), SMS and mobile push over SNS ([`sns`]), signed webhooks ([`webhook`], with its
//! SSRF guard in [`guard`]) — and how a failed send is classified: retryable (5xx, timeouts,
//! connection errors, a receiver's 429, honouring `Retry-After`), permanent for that channel
//! (rejected, invalid address, disabled endpoint, other 4xx), which fails over, the
//! provider's own (refusing conveyor, throttling the account, failing with 5xx), which waits
//! for it, or in doubt (no answer after the request went out), which holds the channel.
//!
//! Providers see the content and the address (they send them) and put neither in an error:
//! errors carry provider codes, HTTP statuses and conveyor's own words.

pub mod email;
pub mod guard;
pub mod sns;
pub mod webhook;

use std::time::Duration;

use futures::future::BoxFuture;

use crate::contract::notification::Channel;
use crate::contract::ranked::RankedNotification;

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// May pass on a later attempt; `after`: the receiver asked not to be called sooner.
    Retryable {
        label: &'static str,
        reason: String,
        after: Option<Duration>,
    },
    /// Never passes on this channel for this address: fail over.
    Permanent { label: &'static str, reason: String },
    /// The provider refuses conveyor itself (credentials, a permission: a configuration
    /// fault, see `fault::classify`): nothing is wrong with this notification, and every one
    /// on the channel fails alike until an operator fixes it. Never fails over, never spends
    /// an attempt.
    Denied { reason: String },
    /// The provider is unavailable to conveyor's account: it throttles it (its send rate or
    /// quota: SES `Throttling` / `MaxSendRateExceeded`, SNS `Throttling` /
    /// `ThrottledException`), or fails with 5xx. Every notification on the channel meets it
    /// alike, and the next channel's provider is no answer to "slow down". An outage of the
    /// provider (its breaker counts it): never fails over, never spends an attempt.
    Unavailable { label: &'static str, reason: String },
    /// The request went out and no answer came (a timeout after sending): the provider may
    /// have it. The channel is held in doubt, not retried at once (see `notify::deliveries`).
    InDoubt { label: &'static str, reason: String },
}

impl SendError {
    pub fn retryable(label: &'static str, reason: impl Into<String>) -> Self {
        SendError::Retryable {
            label,
            reason: reason.into(),
            after: None,
        }
    }

    pub fn permanent(label: &'static str, reason: impl Into<String>) -> Self {
        SendError::Permanent {
            label,
            reason: reason.into(),
        }
    }

    /// A short stable label for metrics (`http_503`, `throttled`, `guard`, …).
    pub fn label(&self) -> &'static str {
        match self {
            SendError::Retryable { label, .. }
            | SendError::Permanent { label, .. }
            | SendError::Unavailable { label, .. }
            | SendError::InDoubt { label, .. } => label,
            SendError::Denied { .. } => "denied",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            SendError::Retryable { reason, .. }
            | SendError::Permanent { reason, .. }
            | SendError::Denied { reason }
            | SendError::Unavailable { reason, .. }
            | SendError::InDoubt { reason, .. } => reason,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// What a provider gives back for an accepted send: its id for the message, when it has one.
pub type Sent = Option<String>;

/// One channel's provider.
pub trait Provider: Send + Sync + 'static {
    /// Sends `notification` to `address` on this provider's channel.
    fn send<'a>(
        &'a self,
        notification: &'a RankedNotification,
        address: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>>;
}

/// Every channel's provider.
pub struct Providers {
    pub email: Box<dyn Provider>,
    pub sms: Box<dyn Provider>,
    pub push: Box<dyn Provider>,
    pub webhook: Box<dyn Provider>,
}

impl Providers {
    pub fn get(&self, channel: Channel) -> &dyn Provider {
        match channel {
            Channel::Email => self.email.as_ref(),
            Channel::Sms => self.sms.as_ref(),
            Channel::Push => self.push.as_ref(),
            Channel::Webhook => self.webhook.as_ref(),
        }
    }
}

/// Classifies an AWS SDK error: a refusal of conveyor's identity (`fault::classify`'s
/// configuration class) is [`SendError::Denied`], naming `action`; the service's error codes
/// in `permanent` fail the channel over; throttling and 5xx are the provider unavailable; a
/// timeout after the request went out is in doubt; anything else (connection errors, other
/// codes) is retried.
pub(crate) fn classify_aws<E>(
    service: &str,
    action: &str,
    error: &aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    permanent: &[&str],
) -> SendError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_sqs::error::SdkError;
    match error {
        SdkError::ServiceError(e) => {
            let code = e.err().code().unwrap_or("Unknown");
            let message = e.err().message().unwrap_or("");
            let class =
                crate::fault::classify::aws_answer(e.raw().status().as_u16(), e.err().code());
            if class == crate::fault::Class::Configuration && !permanent.contains(&code) {
                return SendError::Denied {
                    reason: crate::fault::classify::denied(action, service, Some(code)),
                };
            }
            // Service messages name the rule broken, not the content; they may echo the
            // address, so only the code and a length go out.
            let reason = format!(
                "{service} refused the send: {code} ({} chars of detail)",
                message.chars().count()
            );
            if permanent.contains(&code) {
                let label = match code {
                    "EndpointDisabled" | "EndpointDisabledException" => "endpoint_disabled",
                    "InvalidParameter" | "InvalidParameterValue" => "invalid_address",
                    "MessageRejected" => "rejected",
                    _ => "refused",
                };
                SendError::permanent(label, reason)
            } else if code.contains("Throttl")
                || code == "TooManyRequestsException"
                || code == "MaxSendRateExceeded"
            {
                SendError::Unavailable {
                    label: "throttled",
                    reason,
                }
            } else if e.raw().status().is_server_error() {
                SendError::Unavailable {
                    label: "server_error",
                    reason,
                }
            } else {
                SendError::retryable("server_error", reason)
            }
        }
        SdkError::TimeoutError(_) => SendError::InDoubt {
            label: "timeout",
            reason: format!("{service}: no answer in time after the request went out"),
        },
        other => SendError::retryable(
            "connection",
            format!("{service}: {}", crate::safe::error_chain(other)),
        ),
    }
}

/// The text of a notification for channels without structure (SMS, an email's text part):
/// the title, the body, and the call to action's link.
pub(crate) fn plain_text(n: &RankedNotification) -> String {
    let mut text = format!("{}\n\n{}", n.content.title, n.content.body);
    if let Some(cta) = &n.content.cta {
        text.push_str(&format!("\n\n{}: {}", cta.label, cta.url));
    }
    text
}
