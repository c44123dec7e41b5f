//! A local OpenAI-compatible chat server: the only faked component (there is no internet).
//! It serves `POST /v1/chat/completions` and `GET /v1/models` on an ephemeral port.
//!
//! Asked for a notification's priority (schema `notification_priority`) it answers 5 when the
//! metadata says `"urgency":"critical"`, else 3.
//!
//! Its "model" finds one action item per line containing `ACTION:`, written as
//! `ACTION: <description> [| owner=<name>] [| due=<YYYY-MM-DD>]`. Tests can script the next
//! answers (a status with `Retry-After`, or a malformed reply) and read every call it got.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// A scripted answer, used before the default behaviour.
#[derive(Clone, Debug)]
pub enum Scripted {
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// A 200 whose message content is not the schema's JSON.
    Malformed,
    /// A 200 whose message content is exactly this.
    Reply(String),
}

/// One chat request as received.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub user_content_len: usize,
    /// The request carried a JSON-schema response format.
    pub json_schema: bool,
    pub bearer: Option<String>,
}

#[derive(Default)]
struct Inner {
    script: Mutex<VecDeque<Scripted>>,
    calls: Mutex<Vec<Call>>,
    /// Every chat request is answered with this status until then (an outage of the model).
    failing: Mutex<Option<(u16, Instant)>>,
    /// Every chat request is answered this late until then (a slow model).
    slow: Mutex<Option<(std::time::Duration, Instant)>>,
}

#[derive(Clone)]
pub struct FakeLlm {
    /// The base URL to configure (`http://127.0.0.1:<port>/v1`).
    pub base_url: String,
    inner: Arc<Inner>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl FakeLlm {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/models", get(models))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            inner,
            task: Arc::new(task),
        }
    }

    /// Queues answers to give before behaving normally.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.inner.script.lock().unwrap().extend(answers);
    }

    /// Answers every chat request with `status` for `how_long` (503: the model is down; 401:
    /// the key was rotated).
    pub fn fail_for(&self, status: u16, how_long: std::time::Duration) {
        *self.inner.failing.lock().unwrap() = Some((status, Instant::now() + how_long));
    }

    /// Answers every chat request `by` late for `how_long`.
    pub fn slow_for(&self, by: std::time::Duration, how_long: std::time::Duration) {
        *self.inner.slow.lock().unwrap() = Some((by, Instant::now() + how_long));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

async fn models() -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "tests"}]}),
    )
}

async fn chat(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    let user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    inner.calls.lock().unwrap().push(Call {
        at: Instant::now(),
        user_content_len: user.len(),
        json_schema: request["response_format"]["type"] == "json_schema",
        bearer: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("Bearer ").to_owned()),
    });
    let slow = *inner.slow.lock().unwrap();
    if let Some((by, until)) = slow
        && Instant::now() < until
    {
        tokio::time::sleep(by).await;
    }
    let failing = *inner.failing.lock().unwrap();
    let scripted = match failing {
        Some((status, until)) if Instant::now() < until => Some(Scripted::Status {
            status,
            retry_after: None,
        }),
        _ => inner.script.lock().unwrap().pop_front(),
    };
    match scripted {
        Some(Scripted::Status {
            status,
            retry_after,
        }) => {
            let mut response = (
                StatusCode::from_u16(status).unwrap(),
                Json(json!({"error": {"message": "scripted failure", "type": "test", "param": null, "code": null}})),
            )
                .into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            response
        }
        Some(Scripted::Malformed) => {
            Json(completion("{\"action_items\": [ this is not json", &user)).into_response()
        }
        Some(Scripted::Reply(content)) => Json(completion(&content, &user)).into_response(),
        // Notification scoring: priority 5 for `"urgency":"critical"` metadata, else 3.
        None if request["response_format"]["json_schema"]["name"] == "notification_priority" => {
            let priority = if user.contains("\"urgency\":\"critical\"") {
                5
            } else {
                3
            };
            let answer = json!({"priority": priority,
                "score_breakdown": {"urgency": 0.5, "relevance": 0.5, "timeliness": 0.5},
                "reason": "scored by the fake model"});
            Json(completion(&answer.to_string(), &user)).into_response()
        }
        None => {
            let items: Vec<Value> = user
                .lines()
                .filter_map(|line| line.split_once("ACTION:").map(|(_, rest)| rest))
                .map(|rest| {
                    let mut parts = rest.split('|').map(str::trim);
                    let description = parts.next().unwrap_or_default();
                    let (mut owner, mut due) = (Value::Null, Value::Null);
                    for part in parts {
                        if let Some(name) = part.strip_prefix("owner=") {
                            owner = json!({"name": name, "email": null});
                        } else if let Some(date) = part.strip_prefix("due=") {
                            due = json!(date);
                        }
                    }
                    json!({"description": description, "owner": owner, "due_date": due,
                           "status": "open", "priority": "medium", "confidence": 0.9})
                })
                .collect();
            Json(completion(
                &json!({"action_items": items}).to_string(),
                &user,
            ))
            .into_response()
        }
    }
}

fn completion(content: &str, prompt: &str) -> Value {
    json!({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt.len() / 4, "completion_tokens": content.len() / 4,
                  "total_tokens": prompt.len() / 4 + content.len() / 4}
    })
}
