//! A fault injector in front of LocalStack: a local HTTP server the daemon takes for its AWS
//! endpoint (`aws.endpoint_url`). It forwards every request to LocalStack unchanged, except
//! those a rule matches, which get the rule's answer instead — an S3 `AccessDenied`, an SNS
//! `AuthorizationError` — as the real service would send it, the real answer late, or no
//! answer until the fix (a frozen endpoint). Rules are switched on and off while the daemon
//! runs: the fault, then the fix. The fault is the daemon's alone: other tests share
//! LocalStack undisturbed.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// What a rule looks at: the request's method, path and query, and body.
pub struct Request<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub body: &'a [u8],
}

type Matcher = Arc<dyn Fn(&Request) -> bool + Send + Sync>;

#[derive(Clone)]
struct Rule {
    matches: Matcher,
    answer: Answer,
}

/// What a matched request gets.
#[derive(Clone)]
enum Answer {
    /// This status and XML body instead of the service's answer.
    Refuse { status: u16, body: String },
    /// The service's answer, this much later (a slow dependency).
    Delay(std::time::Duration),
    /// Nothing until the rule changes, then the service's answer (a frozen endpoint).
    Hold,
    /// The service's answer, unchanged: the rule only counts and times what it matches.
    Pass,
}

#[derive(Clone, Default)]
struct Shared {
    rule: Arc<Mutex<Option<Rule>>>,
    /// How many requests the rule answered.
    refused: Arc<Mutex<u64>>,
    /// When each request the rule matched arrived.
    seen: Arc<Mutex<Vec<std::time::Instant>>>,
    /// Told of every rule change (what held requests wait for).
    changes: Arc<tokio::sync::watch::Sender<()>>,
}

pub struct FaultProxy {
    pub url: String,
    shared: Shared,
}

impl FaultProxy {
    pub async fn start() -> Self {
        let shared = Shared::default();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, shared }
    }

    /// From now on, requests `matches` picks are answered `status` with `body`, an XML error
    /// as the service words it ([`s3_error`], [`query_error`]).
    pub fn refuse(
        &self,
        matches: impl Fn(&Request) -> bool + Send + Sync + 'static,
        status: u16,
        body: String,
    ) {
        self.set(Some(Rule {
            matches: Arc::new(matches),
            answer: Answer::Refuse { status, body },
        }));
    }

    /// From now on, requests `matches` picks are forwarded `by` late.
    pub fn delay(
        &self,
        matches: impl Fn(&Request) -> bool + Send + Sync + 'static,
        by: std::time::Duration,
    ) {
        self.set(Some(Rule {
            matches: Arc::new(matches),
            answer: Answer::Delay(by),
        }));
    }

    /// From now on, requests `matches` picks get no answer until [`heal`](Self::heal); then
    /// they are forwarded (a frozen endpoint: the client sees it stop answering).
    pub fn hold(&self, matches: impl Fn(&Request) -> bool + Send + Sync + 'static) {
        self.set(Some(Rule {
            matches: Arc::new(matches),
            answer: Answer::Hold,
        }));
    }

    /// From now on, requests `matches` picks are forwarded unchanged, and their arrival
    /// times kept ([`seen`](Self::seen)): what the service was asked, and when.
    pub fn watch(&self, matches: impl Fn(&Request) -> bool + Send + Sync + 'static) {
        self.set(Some(Rule {
            matches: Arc::new(matches),
            answer: Answer::Pass,
        }));
    }

    /// When each request the rule matched arrived, in order.
    pub fn seen(&self) -> Vec<std::time::Instant> {
        self.shared.seen.lock().unwrap().clone()
    }

    fn set(&self, rule: Option<Rule>) {
        *self.shared.rule.lock().unwrap() = rule;
        self.shared.changes.send_replace(());
    }

    /// An S3 (REST-XML) error with `code`.
    pub fn s3_error(code: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>injected by the test</Message><RequestId>fault-proxy</RequestId></Error>"
        )
    }

    /// A query-protocol (SNS, SES v1) error with `code`.
    pub fn query_error(code: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?>\n<ErrorResponse><Error><Type>Sender</Type>\
             <Code>{code}</Code><Message>injected by the test</Message></Error>\
             <RequestId>fault-proxy</RequestId></ErrorResponse>"
        )
    }

    /// The fix: everything is forwarded again.
    pub fn heal(&self) {
        self.set(None);
    }

    /// Requests the rule matched so far.
    pub fn refused(&self) -> u64 {
        *self.shared.refused.lock().unwrap()
    }
}

async fn forward(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Subscribed before the rule is read, so a change right after is not missed.
    let mut changes = shared.changes.subscribe();
    let rule = shared.rule.lock().unwrap().clone();
    if let Some(rule) = rule {
        let request = Request {
            method: &method,
            uri: &uri,
            body: &body,
        };
        if (rule.matches)(&request) {
            *shared.refused.lock().unwrap() += 1;
            shared.seen.lock().unwrap().push(std::time::Instant::now());
            match rule.answer {
                Answer::Refuse { status, body } => {
                    return (
                        StatusCode::from_u16(status).unwrap(),
                        [("content-type", "text/xml")],
                        body,
                    )
                        .into_response();
                }
                Answer::Delay(by) => tokio::time::sleep(by).await,
                Answer::Hold => {
                    let _ = changes.changed().await;
                }
                Answer::Pass => {}
            }
        }
    }
    let target = format!(
        "{}{}",
        crate::helpers::stack().aws_endpoint.trim_end_matches('/'),
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut request = http_client().request(method, target).body(body);
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    let mut out = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "content-length" | "transfer-encoding" | "connection"
        ) {
            out.append(name, value.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    (status, out, bytes).into_response()
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}
