//! The model's HTTP side: one reqwest transport that keeps each failed response's status and
//! `Retry-After`, a process-wide limiter (requests per minute, concurrency, and a pause every
//! caller honours after a `Retry-After`), and the classification of every error into
//! retryable, dependency unavailable, or permanent for this request.

use crate::extract::ExtractError;
use crate::fault::Class;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use reqwest::StatusCode;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// A non-2xx answer, as the transport saw it.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}")]
pub struct HttpFailure {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
}

/// Sends each request once; a non-2xx answer becomes an [`HttpFailure`] (body unread).
#[derive(Clone)]
pub(super) struct Transport(pub(super) ReqwestService);

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let sent = self.0.call(request);
        Box::pin(async move {
            let response = sent.await?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            Err(OpenAIError::Boxed(Box::new(HttpFailure {
                status,
                retry_after,
            })))
        })
    }
}

/// The longest `Retry-After` honoured: a pause longer than this is a misconfiguration (or an
/// outage, which the circuit breaker handles), not a rate limit.
pub(super) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3), from now.
pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER));
    }
    // IMF-fixdate ("Wed, 21 Oct 2026 07:28:00 GMT") is RFC 2822 with GMT as the zone.
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

/// Caps requests per minute (evenly spaced) and requests in flight, across every caller.
pub struct Limiter {
    in_flight: Semaphore,
    spacing: Duration,
    next_slot: Mutex<Option<Instant>>,
}

impl Limiter {
    pub fn new(requests_per_minute: u32, max_concurrent: u32) -> Self {
        Self {
            in_flight: Semaphore::new(max_concurrent.max(1) as usize),
            spacing: Duration::from_secs(60) / requests_per_minute.max(1),
            next_slot: Mutex::new(None),
        }
    }

    /// The endpoint asked (`Retry-After`) not to be called for `wait`: no caller in this
    /// process gets a slot before then — not only the one whose request got the answer.
    pub fn pause_for(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        *next = Some(next.map_or(until, |n| n.max(until)));
    }

    /// Waits for a slot; the permit is held for the request's duration.
    pub async fn acquire(&self) -> SemaphorePermit<'_> {
        let permit = self
            .in_flight
            .acquire()
            .await
            .expect("the limiter's semaphore is never closed");
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.spacing);
            slot
        };
        tokio::time::sleep_until(slot).await;
        permit
    }
}

/// The request outcome's metric label and what it means for the message.
pub(super) fn classify(error: OpenAIError) -> (&'static str, ExtractError) {
    match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpFailure>() {
            Ok(failure) => {
                let HttpFailure {
                    status,
                    retry_after,
                } = *failure;
                let reason = format!("chat endpoint answered {status}");
                match crate::fault::classify::model_status(status.as_u16()) {
                    // A rotated or revoked key fails every message alike: a configuration
                    // fault, for an operator to fix, never a reason to dead-letter.
                    Class::Configuration => (
                        "refused",
                        ExtractError::Denied(format!(
                            "{reason}: the API key (OPENAI_API_KEY) was refused"
                        )),
                    ),
                    Class::Outage => (
                        if status.is_server_error() {
                            "server_error"
                        } else {
                            "retryable_status"
                        },
                        ExtractError::Unavailable {
                            reason,
                            retry_after,
                        },
                    ),
                    Class::Transient => (
                        if status == StatusCode::TOO_MANY_REQUESTS {
                            "rate_limited"
                        } else {
                            "retryable_status"
                        },
                        ExtractError::Retryable {
                            reason,
                            retry_after,
                        },
                    ),
                    Class::Message => ("refused", ExtractError::Permanent(reason)),
                }
            }
            Err(other) => ("transport", unavailable(other.to_string())),
        },
        OpenAIError::Reqwest(e) => (
            if e.is_timeout() {
                "timeout"
            } else {
                "transport"
            },
            // Without the URL's query; reqwest's message names the host, not the body.
            unavailable(format!("chat endpoint unreachable: {}", e.without_url())),
        ),
        OpenAIError::JSONDeserialize(e, body) => (
            "malformed",
            ExtractError::retryable(format!(
                "the endpoint's reply ({} bytes) is not a chat completion: {}",
                body.len(),
                crate::safe::json_error(&e)
            )),
        ),
        OpenAIError::ApiError(e) => (
            "refused",
            ExtractError::Permanent(format!("chat endpoint answered {}", e.status_code)),
        ),
        other => ("transport", unavailable(other.to_string())),
    }
}

pub(super) fn unavailable(reason: String) -> ExtractError {
    ExtractError::Unavailable {
        reason,
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past: now"
        );
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(90))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let wait = parse_retry_after(&soon).expect("HTTP-date form");
        assert!(
            wait > Duration::from_secs(85) && wait <= Duration::from_secs(90),
            "{wait:?}"
        );
        assert_eq!(parse_retry_after("not a date"), None);
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_every_caller_of_the_process() {
        let limiter = Limiter::new(60_000, 4);
        let start = Instant::now();
        drop(limiter.acquire().await);
        limiter.pause_for(Duration::from_secs(30));
        drop(limiter.acquire().await);
        assert!(
            start.elapsed() >= Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn statuses_split_into_retryable_unavailable_and_permanent() {
        let fail = |status: u16, retry_after| {
            classify(OpenAIError::Boxed(Box::new(HttpFailure {
                status: StatusCode::from_u16(status).unwrap(),
                retry_after,
            })))
        };
        let (label, e) = fail(429, Some(Duration::from_secs(3)));
        assert_eq!(label, "rate_limited");
        assert_eq!(
            e,
            ExtractError::Retryable {
                reason: "chat endpoint answered 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(fail(409, None).1, ExtractError::Retryable { .. }));
        assert!(matches!(fail(400, None).1, ExtractError::Permanent(_)));
        assert!(matches!(fail(422, None).1, ExtractError::Permanent(_)));
        // The model down or timing out is an outage; the key refused, a configuration fault:
        // never the message's fault.
        for status in [408, 500, 503] {
            assert!(
                matches!(fail(status, None).1, ExtractError::Unavailable { .. }),
                "{status}"
            );
        }
        for status in [401, 403] {
            assert!(
                matches!(fail(status, None).1, ExtractError::Denied(_)),
                "{status}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_limiter_spaces_requests_and_caps_concurrency() {
        let limiter = std::sync::Arc::new(Limiter::new(60, 2)); // one per second
        let start = Instant::now();
        let a = limiter.acquire().await;
        let b = limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let l = limiter.clone();
        let third = tokio::spawn(async move {
            let _p = l.acquire().await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!third.is_finished(), "two in flight: the third waits");
        drop(a);
        let at = third.await.unwrap();
        assert_eq!(
            at - start,
            Duration::from_secs(6),
            "as soon as a permit is free"
        );
        drop(b);
    }
}
