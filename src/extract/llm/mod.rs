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

mod transport;

use std::sync::Mutex;
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::{
    ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs, ResponseFormat,
    ResponseFormatJsonSchema,
};
use futures::StreamExt;
use serde::Deserialize;
use tracing::Instrument;

use super::{ExtractError, Extraction, RawItem};
use crate::config::{ExtractionConfig, Secret};
use crate::contract::envelope::Interaction;
use crate::telemetry::{self, otel};
use transport::{Limiter, Transport, classify, unavailable};

/// Bump when the instructions or schema change: stored extractions are keyed by it.
pub const PROMPT_VERSION: &str = "action-items/1";

const INSTRUCTIONS: &str = "You extract action items from one part of a business interaction \
(a call transcript, meeting notes, a note, a document or an email). An action item is a \
concrete commitment or task someone agreed to do. For each one give: a short imperative \
description; the owner (name, and email only if it appears in the text) or null; the due date \
as YYYY-MM-DD or null (resolve relative dates such as \"Friday\" against the interaction date \
given below); status \"open\" or \"done\"; priority \"low\", \"medium\", \"high\" or null; and \
your confidence from 0 to 1. Do not invent items; return an empty list when there are none.";

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
