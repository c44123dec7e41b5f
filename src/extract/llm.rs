//! Extraction with an OpenAI-compatible chat model (async-openai) and a JSON-schema structured
//! response.
//!
//! conveyor owns the retry policy, so the client's own retries are replaced: [`Transport`]
//! sends each request once and turns a non-2xx answer into an [`HttpFailure`] carrying the
//! status and `Retry-After`, without reading (or logging) the body. Then:
//! - 429, 408, 409, 425, 5xx, timeouts and connection errors are retryable (after
//!   `Retry-After` when given);
//! - other 4xx are permanent: the endpoint refused this request;
//! - a reply that does not parse is asked for once more, then retryable.
//!
//! A [`Limiter`] shared by every worker caps requests per minute and requests in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs, ResponseFormat,
    ResponseFormatJsonSchema,
};
use futures::StreamExt;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tracing::Instrument;

use super::{ExtractError, Extraction, RawItem};
use crate::config::{ExtractionConfig, Secret};
use crate::contract::envelope::Interaction;
use crate::telemetry::{self, otel};

/// Bump when the instructions or schema change: stored extractions are keyed by it.
pub const PROMPT_VERSION: &str = "action-items/1";

const INSTRUCTIONS: &str = "You extract action items from one part of a business interaction \
(a call transcript, meeting notes, a note, a document or an email). An action item is a \
concrete commitment or task someone agreed to do. For each one give: a short imperative \
description; the owner (name, and email only if it appears in the text) or null; the due date \
as YYYY-MM-DD or null (resolve relative dates such as \"Friday\" against the interaction date \
given below); status \"open\" or \"done\"; priority \"low\", \"medium\", \"high\" or null; and \
your confidence from 0 to 1. Do not invent items; return an empty list when there are none.";

/// A non-2xx answer, as the transport saw it.
#[derive(Debug, thiserror::Error)]
#[error("HTTP {status}")]
pub struct HttpFailure {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
}

/// Sends each request once; a non-2xx answer becomes an [`HttpFailure`] (body unread).
#[derive(Clone)]
struct Transport(ReqwestService);

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
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3), from now.
fn parse_retry_after(value: &str) -> Option<Duration> {
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

/// The client, the model and the limits: created once and shared.
pub struct Llm {
    client: Client<OpenAIConfig>,
    model: String,
    max_output_tokens: u32,
    chunk_bytes: usize,
    timeout: Duration,
    /// Chunks of one interaction in flight at once (the limiter still caps the process).
    parallel_chunks: usize,
    limiter: Limiter,
    /// Chunks already extracted for an interaction whose other chunks failed, so its retry
    /// asks the model only for what is missing.
    finished: Mutex<FinishedChunks>,
}

/// Finished chunk results by [`chunk_key`], oldest first out past [`FINISHED_CAPACITY`].
#[derive(Default)]
struct FinishedChunks {
    results: std::collections::HashMap<[u8; 32], ChunkResult>,
    order: std::collections::VecDeque<[u8; 32]>,
}

/// The system prompt for part `part` of `of`.
fn system_prompt(instructions: &str, part: usize, of: usize) -> String {
    if of > 1 {
        format!("{instructions} This is part {part} of {of} of the content.")
    } else {
        instructions.to_owned()
    }
}

/// Finished chunks kept in memory (a retry in another process asks again).
const FINISHED_CAPACITY: usize = 4096;

/// A chunk's identity: whose interaction (tenant-scoped like every result), the request that
/// produces it, and the chunk itself.
fn chunk_key(tenant: uuid::Uuid, model: &str, system: &str, chunk: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in [
        tenant.as_bytes().as_slice(),
        model.as_bytes(),
        PROMPT_VERSION.as_bytes(),
        system.as_bytes(),
        chunk.as_bytes(),
    ] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// The structured reply the schema asks for.
#[derive(Deserialize)]
struct Reply {
    action_items: Vec<serde_json::Value>,
}

impl Llm {
    pub fn new(config: &ExtractionConfig, api_key: &Secret) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()?;
        let client = Client::with_config(
            OpenAIConfig::new()
                .with_api_base(config.base_url.trim_end_matches('/'))
                .with_api_key(api_key.expose()),
        )
        .with_http_service(Transport(ReqwestService::new(http)));
        Ok(Self {
            client,
            model: config.model.clone(),
            max_output_tokens: config.max_output_tokens,
            chunk_bytes: config.chunk_tokens as usize * super::BYTES_PER_TOKEN,
            timeout,
            parallel_chunks: config.max_concurrent_requests.max(1) as usize,
            limiter: Limiter::new(config.requests_per_minute, config.max_concurrent_requests),
            finished: Mutex::default(),
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Every chunk extracted (at most the limiter's concurrency at once), validated and merged.
    pub async fn extract(&self, interaction: &Interaction) -> Result<Extraction, ExtractError> {
        let chunks = super::chunks(&interaction.content.text, self.chunk_bytes);
        let instructions = format!(
            "{INSTRUCTIONS}\nInteraction type: {}. Interaction date: {}.",
            interaction.interaction_type.as_str(),
            interaction.timestamp.date_naive()
        );
        let total = chunks.len();
        let tenant = interaction.tenant_id;
        let mut calls = Vec::with_capacity(total);
        for (i, chunk) in chunks.iter().enumerate() {
            let system = system_prompt(&instructions, i + 1, total);
            let key = chunk_key(tenant, &self.model, &system, chunk);
            calls.push(self.chunk_unless_finished(key, system, chunk));
        }
        let results: Vec<([u8; 32], Result<ChunkResult, ExtractError>)> =
            futures::stream::iter(calls)
                .buffered(self.parallel_chunks)
                .collect()
                .await;
        let mut items = Vec::new();
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let mut first_error = None;
        for (_, result) in &results {
            match result {
                Ok(r) => {
                    items.extend(r.items.iter().cloned());
                    prompt_tokens += r.prompt_tokens;
                    completion_tokens += r.completion_tokens;
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| e.clone());
                }
            }
        }
        if let Some(error) = first_error {
            // Keep what finished, so the retry only asks for the chunks that failed.
            if total > 1 {
                for (key, result) in results {
                    if let Ok(r) = result {
                        self.keep_finished_chunk(key, r);
                    }
                }
            }
            return Err(error);
        }
        if total > 1 {
            let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
            for (key, _) in &results {
                finished.results.remove(key);
            }
        }
        Ok(Extraction {
            items: super::merge(items),
            model: self.model.clone(),
            prompt_version: PROMPT_VERSION.to_owned(),
            chunks: total as u32,
            prompt_tokens,
            completion_tokens,
        })
    }

    /// The chunk's result, from an earlier attempt of the same interaction if that one got
    /// this far.
    async fn chunk_unless_finished(
        &self,
        key: [u8; 32],
        system: String,
        chunk: &str,
    ) -> ([u8; 32], Result<ChunkResult, ExtractError>) {
        if let Some(done) = self.finished_chunk(&key) {
            return (key, Ok(done));
        }
        (key, self.extract_chunk(&system, chunk).await)
    }

    fn finished_chunk(&self, key: &[u8; 32]) -> Option<ChunkResult> {
        let finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        finished.results.get(key).cloned()
    }

    fn keep_finished_chunk(&self, key: [u8; 32], result: ChunkResult) {
        let mut finished = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        let FinishedChunks { results, order } = &mut *finished;
        if results.insert(key, result).is_none() {
            order.push_back(key);
        }
        while order.len() > FINISHED_CAPACITY {
            if let Some(oldest) = order.pop_front() {
                results.remove(&oldest);
            }
        }
    }

    /// One chunk; a reply that does not parse is asked for once more.
    async fn extract_chunk(&self, system: &str, chunk: &str) -> Result<ChunkResult, ExtractError> {
        match self.complete(system, chunk).await? {
            Completion::Parsed(r) => Ok(r),
            Completion::Malformed(first) => {
                telemetry::llm_malformed();
                match self.complete(system, chunk).await? {
                    Completion::Parsed(r) => Ok(r),
                    Completion::Malformed(second) => Err(ExtractError::retryable(format!(
                        "the model's reply did not match the schema twice ({first}; {second})"
                    ))),
                }
            }
        }
    }

    async fn complete(&self, system: &str, chunk: &str) -> Result<Completion, ExtractError> {
        let asked = self
            .ask(&Question {
                name: "action_items",
                description: "Action items found in the content",
                schema: schema(),
                system,
                user: chunk,
            })
            .await?;
        let reply: Reply = match asked.parse() {
            Ok(reply) => reply,
            Err(malformed) => return Ok(Completion::Malformed(malformed)),
        };
        let mut items = Vec::with_capacity(reply.action_items.len());
        for value in reply.action_items {
            match serde_json::from_value::<RawItem>(value)
                .map_err(|_| "not_an_item")
                .and_then(super::validate)
            {
                Ok(item) => items.push(item),
                Err(reason) => telemetry::llm_item_dropped(reason),
            }
        }
        Ok(Completion::Parsed(ChunkResult {
            items,
            prompt_tokens: asked.prompt_tokens,
            completion_tokens: asked.completion_tokens,
        }))
    }

    /// A structured answer to `question`, asked once more if the first reply does not parse as
    /// `T` — the rule extraction follows, for any caller (notification scoring).
    pub async fn answer<T: serde::de::DeserializeOwned>(
        &self,
        question: &Question<'_>,
    ) -> Result<T, ExtractError> {
        let first = match self.ask(question).await?.parse() {
            Ok(answer) => return Ok(answer),
            Err(malformed) => malformed,
        };
        telemetry::llm_malformed();
        self.ask(question).await?.parse().map_err(|second| {
            ExtractError::retryable(format!(
                "the model's reply did not match the schema twice ({first}; {second})"
            ))
        })
    }

    /// One request through the shared limiter, its outcome classified and counted; the reply's
    /// text is returned unparsed.
    async fn ask(&self, question: &Question<'_>) -> Result<Asked, ExtractError> {
        let request = CreateChatCompletionRequestArgs::default()
            .model(&self.model)
            .max_completion_tokens(self.max_output_tokens)
            .temperature(0.0_f32)
            .response_format(ResponseFormat::JsonSchema {
                json_schema: ResponseFormatJsonSchema {
                    name: question.name.to_owned(),
                    description: Some(question.description.to_owned()),
                    schema: question.schema.clone(),
                    strict: Some(true),
                },
            })
            .messages(vec![
                ChatCompletionRequestMessage::from(ChatCompletionRequestSystemMessage::from(
                    question.system,
                )),
                ChatCompletionRequestMessage::from(ChatCompletionRequestUserMessage::from(
                    question.user,
                )),
            ])
            .build()
            .map_err(|e| ExtractError::Permanent(format!("building the request: {e}")))?;

        let _permit = self.limiter.acquire().await;
        let started = std::time::Instant::now();
        let span = otel::chat(&self.model);
        let sent = tokio::time::timeout(self.timeout, self.client.chat().create(request))
            .instrument(span.clone())
            .await;
        let seconds = started.elapsed().as_secs_f64();
        if !matches!(sent, Ok(Ok(_))) {
            otel::failed(&span);
        }
        let response = match sent {
            Err(_) => {
                telemetry::llm_request("timeout", seconds);
                return Err(unavailable(format!("no answer within {:?}", self.timeout)));
            }
            Ok(Err(e)) => {
                let (label, error) = classify(e);
                telemetry::llm_request(label, seconds);
                if let ExtractError::Retryable {
                    retry_after: Some(wait),
                    ..
                }
                | ExtractError::Unavailable {
                    retry_after: Some(wait),
                    ..
                } = &error
                {
                    self.limiter.pause_for(*wait);
                }
                return Err(error);
            }
            Ok(Ok(response)) => response,
        };
        let (prompt_tokens, completion_tokens) = response.usage.as_ref().map_or((0, 0), |u| {
            (u64::from(u.prompt_tokens), u64::from(u.completion_tokens))
        });
        telemetry::llm_tokens(prompt_tokens, completion_tokens);
        otel::chat_tokens(&span, prompt_tokens, completion_tokens);
        Ok(Asked {
            content: response
                .choices
                .into_iter()
                .next()
                .and_then(|c| c.message.content),
            seconds,
            prompt_tokens,
            completion_tokens,
        })
    }

    /// `GET {base_url}/models`: the endpoint answers and accepts the key.
    pub async fn probe(&self) -> Result<String, String> {
        match tokio::time::timeout(self.timeout, self.client.models().list()).await {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Err(classify(e).1.to_string()),
            Ok(Ok(list)) => Ok(format!(
                "{} models listed; using {}",
                list.data.len(),
                self.model
            )),
        }
    }
}

#[derive(Clone)]
struct ChunkResult {
    items: Vec<super::ActionItem>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

enum Completion {
    Parsed(ChunkResult),
    Malformed(String),
}

/// What to ask the model: instructions, the text, and the JSON schema its reply must match.
pub struct Question<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub schema: serde_json::Value,
    pub system: &'a str,
    pub user: &'a str,
}

/// A reply, not yet parsed.
struct Asked {
    content: Option<String>,
    seconds: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Asked {
    /// The reply as `T`, counted `ok`; or why it is malformed (lengths, never the text),
    /// counted `malformed`.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        let parsed = match &self.content {
            None => Err("no content in the reply".to_owned()),
            Some(content) => serde_json::from_str(content).map_err(|e| {
                format!(
                    "reply of {} bytes is not the schema's JSON: {}",
                    content.len(),
                    crate::safe::json_error(&e)
                )
            }),
        };
        telemetry::llm_request(
            if parsed.is_ok() { "ok" } else { "malformed" },
            self.seconds,
        );
        parsed
    }
}

/// The request outcome's metric label and what it means for the message.
fn classify(error: OpenAIError) -> (&'static str, ExtractError) {
    match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<HttpFailure>() {
            Ok(failure) => {
                let HttpFailure {
                    status,
                    retry_after,
                } = *failure;
                let reason = format!("chat endpoint answered {status}");
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    // A rotated or revoked key fails every message alike: an outage of the
                    // model, to be fixed by an operator, not a reason to dead-letter.
                    return (
                        "refused",
                        ExtractError::Unavailable {
                            reason: format!("{reason}: the API key (OPENAI_API_KEY) was refused"),
                            retry_after,
                        },
                    );
                }
                if status.is_server_error() {
                    return (
                        "server_error",
                        ExtractError::Unavailable {
                            reason,
                            retry_after,
                        },
                    );
                }
                let retryable = status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::CONFLICT
                    || status.as_u16() == 425;
                let label = if status == StatusCode::TOO_MANY_REQUESTS {
                    "rate_limited"
                } else if retryable {
                    "retryable_status"
                } else {
                    "refused"
                };
                if retryable {
                    (
                        label,
                        ExtractError::Retryable {
                            reason,
                            retry_after,
                        },
                    )
                } else {
                    (label, ExtractError::Permanent(reason))
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

fn unavailable(reason: String) -> ExtractError {
    ExtractError::Unavailable {
        reason,
        retry_after: None,
    }
}

/// The reply's JSON schema (strict: every property required, nullables explicit).
fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["action_items"],
        "properties": {
            "action_items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["description", "owner", "due_date", "status", "priority", "confidence"],
                    "properties": {
                        "description": {"type": "string"},
                        "owner": {
                            "type": ["object", "null"],
                            "additionalProperties": false,
                            "required": ["name", "email"],
                            "properties": {
                                "name": {"type": "string"},
                                "email": {"type": ["string", "null"]}
                            }
                        },
                        "due_date": {"type": ["string", "null"], "description": "YYYY-MM-DD"},
                        "status": {"type": "string", "enum": ["open", "done"]},
                        "priority": {"type": ["string", "null"], "enum": ["low", "medium", "high", null]},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1}
                    }
                }
            }
        }
    })
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
        assert!(matches!(fail(408, None).1, ExtractError::Retryable { .. }));
        assert!(matches!(fail(400, None).1, ExtractError::Permanent(_)));
        assert!(matches!(fail(422, None).1, ExtractError::Permanent(_)));
        // The model being down, or refusing the key, is an outage: never the message's fault.
        for status in [500, 503, 401, 403] {
            assert!(
                matches!(fail(status, None).1, ExtractError::Unavailable { .. }),
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
