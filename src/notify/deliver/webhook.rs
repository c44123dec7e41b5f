//! Webhooks: an HTTPS POST of the notification, signed per the Standard Webhooks spec
//! (<https://www.standardwebhooks.com>): `webhook-id` = the eventId (receivers deduplicate on
//! it), `webhook-timestamp` = Unix seconds, `webhook-signature` = `v1,` + base64 of
//! HMAC-SHA256 over `{id}.{timestamp}.{body}` with the tenant's secret (`whsec_…`, from
//! `NOTIFY_WEBHOOK_SECRETS`).
//!
//! 2xx is delivered. 408, 429, 5xx and connection errors are retried, no sooner than
//! `Retry-After` asks; a request sent and not answered in time is in doubt (held, then sent
//! again with the same `webhook-id`); any other status (redirects are not followed) fails the
//! channel over.
//! Addresses are checked by the SSRF guard ([`super::guard`]); plain `http://` and private
//! addresses only with `notify.webhook.allow_private_targets`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::future::BoxFuture;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::guard::{self, GuardedResolver, Refused};
use super::{Provider, SendError, Sent};
use crate::config::{SigningSecrets, WEBHOOK_SECRETS_ENV};
use crate::contract::ranked::RankedNotification;

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// What a receiver gets: the notification without its addresses or failover list.
pub fn payload(n: &RankedNotification, now: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    json!({
        "type": "notification",
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "eventId": n.event_id,
            "tenantId": n.tenant_id,
            "userId": n.user_id,
            "occurredAt": n.occurred_at,
            "priority": n.priority,
            "content": n.content,
        },
    })
    .to_string()
    .into_bytes()
}

pub struct Webhook {
    client: reqwest::Client,
    secrets: SigningSecrets,
    allow_private: bool,
}

impl Webhook {
    pub fn new(
        secrets: SigningSecrets,
        allow_private: bool,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, out of the guard's reach.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("conveyor/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            secrets,
            allow_private,
        })
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(Duration::from_millis(
        wait.num_milliseconds().clamp(0, 86_400_000) as u64,
    ))
}

impl Provider for Webhook {
    fn send<'a>(
        &'a self,
        n: &'a RankedNotification,
        address: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let url = url::Url::parse(address).map_err(|_| {
                SendError::permanent("invalid_address", "the webhook address is not a URL")
            })?;
            match url.scheme() {
                "https" => {}
                "http" if self.allow_private => {}
                scheme => {
                    return Err(SendError::permanent(
                        "invalid_address",
                        format!(
                            "webhooks are sent over https only, not {scheme} (http only with notify.webhook.allow_private_targets)"
                        ),
                    ));
                }
            }
            guard::check(&url, self.allow_private)
                .await
                .map_err(|e| SendError::permanent("guard", e))?;
            let key = self.secrets.get(n.tenant_id).ok_or_else(|| {
                SendError::permanent(
                    "no_secret",
                    format!(
                        "no webhook signing secret for tenant {}: add <tenant id>=whsec_… to {WEBHOOK_SECRETS_ENV}",
                        n.tenant_id
                    ),
                )
            })?;
            let now = chrono::Utc::now();
            let body = payload(n, now);
            let timestamp = now.timestamp();
            let response = self
                .client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &n.event_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    signature(key, &n.event_id, timestamp, &body),
                )
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    let mut source: Option<&dyn std::error::Error> = Some(&e);
                    while let Some(s) = source {
                        if let Some(refused) = s.downcast_ref::<Refused>() {
                            return SendError::permanent("guard", refused.to_string());
                        }
                        source = s.source();
                    }
                    if e.is_timeout() && !e.is_connect() {
                        // Sent, unanswered: the receiver may have it.
                        SendError::InDoubt {
                            label: "timeout",
                            reason: "the webhook receiver did not answer in time".into(),
                        }
                    } else {
                        // Without the URL: it is the tenant's address.
                        SendError::retryable(
                            "connection",
                            format!("webhook: {}", crate::safe::error_chain(&e.without_url())),
                        )
                    }
                })?;
            let status = response.status();
            if status.is_success() {
                return Ok(Some(format!("http {}", status.as_u16())));
            }
            let code = status.as_u16();
            let reason = format!("the webhook receiver answered {status}");
            Err(match code {
                408 => SendError::Retryable {
                    label: "http_408",
                    reason,
                    after: retry_after(response.headers()),
                },
                429 => SendError::Retryable {
                    label: "http_429",
                    reason,
                    after: retry_after(response.headers()),
                },
                500..=599 => SendError::Retryable {
                    label: "http_5xx",
                    reason,
                    after: retry_after(response.headers()),
                },
                300..=399 => SendError::permanent(
                    "redirect",
                    format!(
                        "{reason}: redirects are not followed; point the webhook at the final URL"
                    ),
                ),
                _ => SendError::permanent("http_4xx", reason),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_secret;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The spec's reference vector (standard-webhooks, libraries' test suites).
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(90)).to_rfc2822();
        h.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(80) && d <= Duration::from_secs(90),
            "{d:?}"
        );
    }
}
