//! The notification system's delivery stage end to end: drops and events go through intake and
//! ranking into `priority`, where `notify-deliver` sends them over real services — SES (v1)
//! and SNS (SMS, mobile push) in LocalStack, read back from its `/_aws/ses` and `/_aws/sns/…`
//! records, and webhooks to a local HTTP receiver started here. Rate-limit buckets and the
//! delivery record live in each test's own PostgreSQL database. Defaults are the shipped ones
//! (maxReceiveCount 3, the default backoff and attempts), except where a test says why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use hmac::Mac;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::notifications::{Delivering, Stages};

const CHANNELS: [&str; 4] = ["email", "sms", "push", "webhook"];

/// One webhook request as the receiver got it.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    path: String,
    pub(crate) id: String,
    timestamp: String,
    signature: String,
    pub(crate) body: Vec<u8>,
    pub(crate) status: u16,
    pub(crate) at: Instant,
}

/// How the receiver answers the `n`th (0-based) request to a path.
type Answer = Arc<dyn Fn(&str, usize) -> u16 + Send + Sync>;
/// How long the receiver takes to answer the `n`th request to a path (after recording it).
type Delay = Arc<dyn Fn(&str, usize) -> Duration + Send + Sync>;

/// A local webhook receiver: records every request, answers as `answer` says.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

#[derive(Clone)]
struct ReceiverState {
    hits: Arc<Mutex<Vec<Hit>>>,
    answer: Answer,
    delay: Delay,
    /// `Retry-After` (seconds) on every 429 and 503 answer, when set.
    retry_after: Option<u64>,
}

impl Receiver {
    pub(crate) async fn start(answer: impl Fn(&str, usize) -> u16 + Send + Sync + 'static) -> Self {
        Self::start_slow(answer, |_, _| Duration::ZERO).await
    }

    /// A receiver that records each request as it arrives (it has it) and answers `delay`
    /// later: a sender that gives up or dies meanwhile does not know whether it got there.
    pub(crate) async fn start_slow(
        answer: impl Fn(&str, usize) -> u16 + Send + Sync + 'static,
        delay: impl Fn(&str, usize) -> Duration + Send + Sync + 'static,
    ) -> Self {
        Self::serve(ReceiverState {
            hits: Arc::new(Mutex::new(Vec::new())),
            answer: Arc::new(answer),
            delay: Arc::new(delay),
            retry_after: None,
        })
        .await
    }

    /// A receiver whose 429 and 503 answers carry `Retry-After: secs`.
    pub(crate) async fn start_asking_retry_after(
        answer: impl Fn(&str, usize) -> u16 + Send + Sync + 'static,
        secs: u64,
    ) -> Self {
        Self::serve(ReceiverState {
            hits: Arc::new(Mutex::new(Vec::new())),
            answer: Arc::new(answer),
            delay: Arc::new(|_, _| Duration::ZERO),
            retry_after: Some(secs),
        })
        .await
    }

    async fn serve(state: ReceiverState) -> Self {
        let hits = state.hits.clone();
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            base: format!("http://{addr}"),
            hits,
        }
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Accepted deliveries (2xx) by webhook-id.
    pub(crate) fn delivered(&self) -> HashMap<String, Vec<Hit>> {
        let mut out: HashMap<String, Vec<Hit>> = HashMap::new();
        for h in self.hits().into_iter().filter(|h| h.status < 300) {
            out.entry(h.id.clone()).or_default().push(h);
        }
        out
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (status, delay) = {
        let mut hits = state.hits.lock().unwrap();
        let before = hits.iter().filter(|h| h.path == path).count();
        let status = (state.answer)(&path, before);
        let delay = (state.delay)(&path, before);
        hits.push(Hit {
            path,
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp"),
            signature: header("webhook-signature"),
            body: body.to_vec(),
            status,
            at: Instant::now(),
        });
        (status, delay)
    };
    tokio::time::sleep(delay).await;
    let status = StatusCode::from_u16(status).unwrap();
    match state.retry_after {
        Some(secs) if matches!(status.as_u16(), 429 | 503) => {
            axum::response::IntoResponse::into_response((
                status,
                [("retry-after", secs.to_string())],
            ))
        }
        _ => axum::response::IntoResponse::into_response(status),
    }
}

/// A Standard Webhooks secret and its key.
pub(crate) fn new_secret() -> (String, Vec<u8>) {
    let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    (
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&key)
        ),
        key,
    )
}

/// Verifies a hit's signature with `key`, independently of conveyor's code.
fn verifies(hit: &Hit, key: &[u8]) -> bool {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{}.{}.", hit.id, hit.timestamp).as_bytes());
    mac.update(&hit.body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    hit.signature.split(' ').any(|s| s == expected)
}

/// LocalStack's record of what SES and SNS sent (`key` is its top-level list). Asked again when
/// the answer lacks it: under load LocalStack answers these internal endpoints with an error
/// now and then.
async fn localstack_record(path: &str, key: &str) -> Value {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or("http://127.0.0.1:4566".into());
    let mut last = String::new();
    for _ in 0..20 {
        if let Ok(response) = reqwest::get(format!("{endpoint}{path}")).await {
            let text = response.text().await.unwrap_or_default();
            if let Ok(record) = serde_json::from_str::<Value>(&text)
                && record.get(key).is_some()
            {
                return record;
            }
            last = text.chars().take(300).collect();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("LocalStack's {path} never answered with {key}: {last}");
}

/// Event ids found in sent mail, texts and pushes: each of `ids` that appears in a message's
/// title, counted per channel.
async fn sent_by_providers(ids: &HashSet<String>) -> HashMap<(String, &'static str), usize> {
    let mut seen: HashMap<(String, &'static str), usize> = HashMap::new();
    let mut count = |text: &str, channel: &'static str| {
        // Titles are "N <eventId>"; the eventId is the last word of the first line.
        let first = text.lines().next().unwrap_or_default();
        if let Some(id) = first.split_whitespace().last()
            && ids.contains(id)
        {
            *seen.entry((id.to_owned(), channel)).or_default() += 1;
        }
    };
    let ses = localstack_record("/_aws/ses", "messages").await;
    for m in ses["messages"].as_array().unwrap() {
        count(m["Subject"].as_str().unwrap_or_default(), "email");
    }
    let sms = localstack_record("/_aws/sns/sms-messages", "sms_messages").await;
    for messages in sms["sms_messages"].as_object().unwrap().values() {
        for m in messages.as_array().unwrap() {
            count(m["Message"].as_str().unwrap_or_default(), "sms");
        }
    }
    let push = localstack_record(
        "/_aws/sns/platform-endpoint-messages",
        "platform_endpoint_messages",
    )
    .await;
    for messages in push["platform_endpoint_messages"]
        .as_object()
        .unwrap()
        .values()
    {
        for m in messages.as_array().unwrap() {
            // The GCM message, a JSON string (LocalStack keeps it JSON-encoded once more).
            let raw = m["Message"].as_str().unwrap_or_default();
            let gcm: Value = serde_json::from_str(raw)
                .ok()
                .and_then(|v: Value| v.as_str().and_then(|s| serde_json::from_str(s).ok()))
                .or_else(|| serde_json::from_str(raw).ok())
                .unwrap_or(Value::Null);
            count(
                gcm["notification"]["title"].as_str().unwrap_or_default(),
                "push",
            );
        }
    }
    seen
}

/// A GCM platform application and one enabled endpoint per token.
async fn push_endpoints(tokens: &[String]) -> Vec<String> {
    let sns = aws_sdk_sns::Client::new(&aws_sdk().await);
    let app = sns
        .create_platform_application()
        .name(unique("it-push"))
        .platform("GCM")
        .attributes("PlatformCredential", "test-key")
        .attributes("PlatformPrincipal", "")
        .send()
        .await
        .unwrap()
        .platform_application_arn
        .unwrap();
    let mut arns = Vec::new();
    for token in tokens {
        arns.push(
            sns.create_platform_endpoint()
                .platform_application_arn(&app)
                .token(token)
                .send()
                .await
                .unwrap()
                .endpoint_arn
                .unwrap(),
        );
    }
    arns
}

/// A notification for `user` of `tenant` on exactly `channels`, titled `N <eventId>`.
pub(crate) fn notification(tenant: uuid::Uuid, id: &str, user: &str, channels: &[&str]) -> Value {
    json!({
        "eventId": id, "source": "billing", "occurredAt": chrono::Utc::now().to_rfc3339(),
        "tenantId": tenant,
        "user": {"id": user, "channels": channels},
        "content": {"title": format!("N {id}"), "body": "BODY-MARK private words",
                    "cta": {"label": "Open", "url": "https://app.example.com/x"},
                    "metadata": {"urgency": "normal"}},
    })
}

/// Uploads `events` as one drop with `notify drop`.
pub(crate) fn drop_events(s: &Stages, events: &[Value]) {
    let mut file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    for e in events {
        writeln!(file, "{e}").unwrap();
    }
    let out = s
        .cli("")
        .output(&["notify", "drop", file.path().to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.all());
}

/// Rows of the delivery record in `state`.
async fn delivered_rows(s: &Stages) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM notify_deliveries WHERE state = 'delivered'")
        .fetch_one(&s.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_thousand_notifications_over_four_channels_and_20_tenants_are_each_delivered_once_on_their_channel()
 {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start(|_, _| 200).await;
    let tenants: Vec<(uuid::Uuid, String, Vec<u8>)> = (0..20)
        .map(|_| {
            let (secret, key) = new_secret();
            (uuid::Uuid::new_v4(), secret, key)
        })
        .collect();
    let secrets = tenants
        .iter()
        .map(|(t, s, _)| format!("{t}={s}"))
        .collect::<Vec<_>>()
        .join(",");
    let s = Stages::provision_with(
        "it-deliver",
        Some(Delivering {
            allow_private: true,
            secrets,
        }),
    )
    .await;
    const USERS: usize = 5;
    let tokens: Vec<String> = (0..tenants.len() * USERS)
        .map(|i| format!("{}-token-{i}", s.prefix))
        .collect();
    let endpoints = push_endpoints(&tokens).await;
    let mut prefs = Vec::new();
    for (t, (tenant, _, _)) in tenants.iter().enumerate() {
        for u in 0..USERS {
            prefs.push(json!({
                "tenantId": tenant, "userId": format!("u-{u}"),
                "channels": {
                    "email": format!("addr-mark-{t}-{u}@example.com"),
                    "sms": format!("+1555{t:03}{u:04}"),
                    "push": endpoints[t * USERS + u],
                    "webhook": format!("{}/hook/{t}/{u}", receiver.base),
                },
            }));
        }
    }
    s.import_prefs(&prefs);

    // 1,000 notifications: tenant i % 20, user (i / 20) % 5, channel (i / 3) % 4.
    let mut expected: HashMap<String, (&str, usize)> = HashMap::new();
    let events: Vec<Value> = (0..1000)
        .map(|i| {
            let (t, u, c) = (i % 20, (i / 20) % USERS, CHANNELS[(i / 3) % 4]);
            let id = format!("{}-{i}", s.prefix);
            expected.insert(id.clone(), (c, t));
            notification(tenants[t].0, &id, &format!("u-{u}"), &[c])
        })
        .collect();
    let daemon = s.daemon("").await;
    drop_events(&s, &events);
    eventually("1,000 delivered", Duration::from_secs(300), async || {
        delivered_rows(&s).await == 1000
    })
    .await;
    daemon.stop().await;

    let ids: HashSet<String> = expected.keys().cloned().collect();
    let mut sent = sent_by_providers(&ids).await;
    for (id, hits) in receiver.delivered() {
        let (_, t) = expected[&id];
        for hit in &hits {
            assert!(
                verifies(hit, &tenants[t].2),
                "{id}: signature of tenant {t}"
            );
            assert!(!verifies(hit, &tenants[(t + 1) % 20].2));
            assert!(
                hit.path.starts_with(&format!("hook/{t}/")),
                "{id} went to {}",
                hit.path
            );
        }
        *sent.entry((id, "webhook")).or_default() += hits.len();
    }
    let mut per_channel: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, (channel, _)) in &expected {
        for c in CHANNELS {
            let n = sent.get(&(id.clone(), c)).copied().unwrap_or(0);
            let want = usize::from(c == *channel);
            assert_eq!(
                n, want,
                "{id} sent {n} times on {c} (its channel: {channel})"
            );
        }
        *per_channel.entry(channel).or_default() += 1;
    }
    eprintln!("delivered once each: {per_channel:?}");
    assert_eq!(queue_depth(&s.sqs, &s.priority_dlq_url).await, (0, 0));
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));
}

#[tokio::test]
async fn a_tenant_bucket_of_10_refilling_20_per_second_paces_300_webhooks_across_two_daemons() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start(|_, _| 200).await;
    let (secret, _) = new_secret();
    let tenant = uuid::Uuid::new_v4();
    let s = Stages::provision_with(
        "it-bucket",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    s.import_prefs(&[json!({
        "tenantId": tenant, "userId": "u-1",
        "channels": {"webhook": format!("{}/paced", receiver.base)},
    })]);
    let extra = format!(
        "[notify.tenant_rate_limits.\"{tenant}\"]\nwebhook = {{ capacity = 10, refill_per_sec = 20 }}\n"
    );
    // Two daemons, two processes, one database: one bucket.
    let mut daemons = [s.cli(&extra).spawn_daemon(), s.cli(&extra).spawn_daemon()];
    for d in &mut daemons {
        d.wait_for_log("consuming queue", Duration::from_secs(60));
    }
    let events: Vec<Value> = (0..300)
        .map(|i| notification(tenant, &format!("{}-{i}", s.prefix), "u-1", &["webhook"]))
        .collect();
    drop_events(&s, &events);
    eventually("300 delivered", Duration::from_secs(180), async || {
        receiver.delivered().len() == 300
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let delivered = receiver.delivered();
    assert!(
        delivered.values().all(|hits| hits.len() == 1),
        "each delivered once"
    );
    let mut at: Vec<Instant> = delivered.values().map(|h| h[0].at).collect();
    at.sort();
    // In any window of take times [t_i, t_j] the bucket grants at most capacity + refill ×
    // (t_j − t_i) tokens. Arrivals are seen here, a little after each take: two sends whose
    // takes were up to ~150 ms apart may arrive closer together on a loaded machine, which is
    // 3 tokens at 20/s. Each daemon may spend a leased token up to `STALE` past its due time:
    // 2 more each. A second bucket (a daemon not sharing it) would show 10 more at once.
    let stale = 2.0 * 20.0 * conveyor::notify::bucket::STALE.as_secs_f64();
    let mut worst = f64::MIN;
    for i in 0..at.len() {
        for j in i..at.len() {
            let window = (at[j] - at[i]).as_secs_f64();
            let allowed = 10.0 + 20.0 * window + 3.0 + stale;
            let seen = (j - i + 1) as f64;
            worst = worst.max(seen - allowed);
            assert!(
                seen <= allowed,
                "{seen} webhooks within {window:.3}s; the bucket allows {allowed:.1}"
            );
        }
    }
    let span = (at[at.len() - 1] - at[0]).as_secs_f64();
    eprintln!(
        "300 webhooks in {span:.1}s ({:.1}/s; the bucket allows 10 + 20/s), the fullest window {worst:.2} sends from the bound (≤ 0)",
        300.0 / span
    );
    // At most one decision on the bucket per notification, however long it waited: a token
    // taken, or one reserved and used when the message came back for it, and with leases one
    // statement for many (the old retry loop made ~39 statements on the bucket's row per send
    // here).
    let (mut decisions, mut reserved, mut early) = (0.0, 0.0, 0.0);
    for d in &daemons {
        decisions += d
            .metric("conveyor_notify_bucket_decisions_total", &[])
            .await;
        reserved += d.metric("conveyor_notify_rate_limited_total", &[]).await;
        early += d
            .metric(
                "conveyor_notify_deferred_total",
                &["reason=\"reservation_early\""],
            )
            .await;
    }
    eprintln!(
        "bucket decisions: {decisions} for 300 delivered ({:.3} each), {reserved} of them reservations ahead",
        decisions / 300.0
    );
    assert!(
        decisions <= 300.0 * 1.1,
        "{decisions} bucket decisions for 300 sends"
    );
    assert!(
        reserved > 0.0,
        "the bucket ran empty and tokens were reserved ahead"
    );
    assert_eq!(early, 0.0, "no message came back before its reservation");
    let mut per_daemon = Vec::new();
    for mut d in daemons {
        d.signal(nix::sys::signal::Signal::SIGTERM);
        d.wait_exit(Duration::from_secs(30));
        per_daemon.push(
            d.logs()
                .iter()
                .filter(|l| l.contains("notification delivered"))
                .count(),
        );
    }
    eprintln!("delivered per daemon: {per_daemon:?}");
    assert!(
        per_daemon.iter().all(|n| *n > 0),
        "both daemons delivered: {per_daemon:?}"
    );
    assert_eq!(per_daemon.iter().sum::<usize>(), 300);
    assert_eq!(queue_depth(&s.sqs, &s.priority_dlq_url).await, (0, 0));
    let rate_limited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notify_deliveries WHERE attempts > 0")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(
        rate_limited, 0,
        "waiting for a token is never a failed attempt"
    );
}

#[tokio::test]
async fn webhooks_that_fail_are_retried_failed_over_or_dead_lettered_with_every_channels_reason() {
    let _ls = localstack_shared().await;
    // /flaky answers 503 twice, then 200; /gone always 410.
    let receiver = Receiver::start(|path, n| match path {
        p if p.starts_with("flaky") && n < 2 => 503,
        // The doomed user's receiver is fixed after its first answer (see the redrive below).
        p if p.starts_with("gone") && p.ends_with("/2") && n > 0 => 200,
        p if p.starts_with("gone") => 410,
        _ => 200,
    })
    .await;
    let (secret, _) = new_secret();
    let tenant = uuid::Uuid::new_v4();
    let s = Stages::provision_with(
        "it-failover",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    let disabled = push_endpoints(&[format!("{}-disabled", s.prefix)]).await;
    let sns = aws_sdk_sns::Client::new(&aws_sdk().await);
    sns.set_endpoint_attributes()
        .endpoint_arn(&disabled[0])
        .attributes("Enabled", "false")
        .send()
        .await
        .unwrap();
    let p = &s.prefix;
    s.import_prefs(&[
        json!({"tenantId": tenant, "userId": "flaky",
               "channels": {"webhook": format!("{}/flaky/{p}", receiver.base),
                            "email": format!("addr-mark-flaky-{p}@example.com")},
               "failoverOrder": ["webhook", "email"]}),
        json!({"tenantId": tenant, "userId": "gone",
               "channels": {"webhook": format!("{}/gone/{p}/1", receiver.base),
                            "email": format!("addr-mark-gone-{p}@example.com")},
               "failoverOrder": ["webhook", "email"]}),
        json!({"tenantId": tenant, "userId": "doomed",
               "channels": {"push": disabled[0],
                            "webhook": format!("{}/gone/{p}/2", receiver.base)},
               "failoverOrder": ["push", "webhook"]}),
    ]);
    let daemon = s.daemon("").await;
    let ids = [
        format!("{p}-flaky"),
        format!("{p}-gone"),
        format!("{p}-doomed"),
    ];
    s.publish(&notification(
        tenant,
        &ids[0],
        "flaky",
        &["webhook", "email"],
    ))
    .await;
    s.publish(&notification(
        tenant,
        &ids[1],
        "gone",
        &["webhook", "email"],
    ))
    .await;
    s.publish(&notification(
        tenant,
        &ids[2],
        "doomed",
        &["push", "webhook"],
    ))
    .await;

    let dead = drain_queue(&s.sqs, &s.priority_dlq_url, 1, Duration::from_secs(120)).await;
    eventually("two delivered", Duration::from_secs(120), async || {
        delivered_rows(&s).await == 2
    })
    .await;

    // 503, 503, 200: delivered once, after two retries, on the webhook.
    let flaky: Vec<Hit> = receiver
        .hits()
        .into_iter()
        .filter(|h| h.id == ids[0])
        .collect();
    assert_eq!(
        flaky.iter().map(|h| h.status).collect::<Vec<_>>(),
        [503, 503, 200]
    );
    // 410: permanent, once; the email goes out instead.
    let gone: Vec<u16> = receiver
        .hits()
        .into_iter()
        .filter(|h| h.id == ids[1])
        .map(|h| h.status)
        .collect();
    assert_eq!(gone, [410]);
    let all: HashSet<String> = ids.iter().cloned().collect();
    let sent = sent_by_providers(&all).await;
    assert_eq!(sent.get(&(ids[1].clone(), "email")), Some(&1));
    assert_eq!(sent.get(&(ids[0].clone(), "email")), None);
    assert_eq!(sent.get(&(ids[2].clone(), "push")), None);

    // Every channel failed: one dead letter naming each channel's reason, no content.
    assert_eq!(dead.len(), 1);
    let reason = string_attribute(&dead[0], "conveyor.error").unwrap();
    let body: Value = serde_json::from_str(dead[0].body().unwrap()).unwrap();
    assert_eq!(body["eventId"], ids[2]);
    assert!(reason.contains("every channel failed"), "{reason}");
    assert!(
        reason.contains("push") && reason.contains("EndpointDisabled"),
        "{reason}"
    );
    assert!(
        reason.contains("webhook") && reason.contains("410"),
        "{reason}"
    );
    assert!(
        !reason.contains("BODY-MARK")
            && !reason.contains("addr-mark")
            && !reason.contains("/gone/"),
        "no content, no address: {reason}"
    );

    // The operator's view of each.
    let status = |id: &str| {
        let out = s.cli("").output(&["notify", "status", id]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        serde_json::from_str::<Value>(&out.stdout).unwrap()
    };
    let flaky = status(&ids[0]);
    assert!(
        flaky["summary"]
            .as_str()
            .unwrap()
            .starts_with("delivered on webhook"),
        "{flaky}"
    );
    assert_eq!(flaky["channels"][0]["attempts"], 2);
    let gone = status(&ids[1]);
    assert!(
        gone["summary"]
            .as_str()
            .unwrap()
            .starts_with("delivered on email"),
        "{gone}"
    );
    let channels: Vec<(&str, &str)> = gone["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["channel"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert_eq!(channels, [("webhook", "failed"), ("email", "delivered")]);
    // The dead letter was drained above; its record says the channels failed.
    let doomed = status(&ids[2]);
    let states: Vec<&str> = doomed["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["failed", "failed"], "{doomed}");
    for out in [&flaky, &gone, &doomed] {
        assert!(!out.to_string().contains("addr-mark"), "no address: {out}");
    }

    // The receiver is fixed; the operator redrives the dead letter (as `dlq redrive` does: the
    // body and its own attributes back on the queue). Its last channel gets a new round. (The
    // daemon keeps running: a stopped one's abandoned long poll would take the message for a
    // visibility timeout — the fast exit's documented price.)
    let attributes = dead[0].message_attributes().unwrap();
    let mut send = s
        .sqs
        .send_message()
        .queue_url(&s.priority_url)
        .message_body(dead[0].body().unwrap());
    for name in ["source", "type", "eventId", "channel", "priority"] {
        send = send.message_attributes(name, attributes[name].clone());
    }
    send.send().await.unwrap();
    eventually(
        "the redriven one delivered",
        Duration::from_secs(60),
        async || delivered_rows(&s).await == 3,
    )
    .await;
    daemon.stop().await;
    let doomed = status(&ids[2]);
    assert!(
        doomed["summary"]
            .as_str()
            .unwrap()
            .starts_with("delivered on webhook"),
        "{doomed}"
    );
}

#[tokio::test]
async fn a_webhook_on_a_private_address_is_refused_by_the_ssrf_guard_without_the_allowance() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start(|_, _| 200).await;
    let (secret, _) = new_secret();
    let tenant = uuid::Uuid::new_v4();
    let s = Stages::provision_with(
        "it-ssrf",
        Some(Delivering {
            allow_private: false,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    // https, so the scheme is not what refuses it: the address is.
    let port = receiver.base.rsplit(':').next().unwrap();
    s.import_prefs(&[json!({
        "tenantId": tenant, "userId": "u-1",
        "channels": {"webhook": format!("https://127.0.0.1:{port}/internal")},
    })]);
    let daemon = s.daemon("").await;
    let id = format!("{}-ssrf", s.prefix);
    s.publish(&notification(tenant, &id, "u-1", &["webhook"]))
        .await;
    let dead = drain_queue(&s.sqs, &s.priority_dlq_url, 1, Duration::from_secs(60)).await;
    daemon.stop().await;
    assert_eq!(dead.len(), 1);
    let reason = string_attribute(&dead[0], "conveyor.error").unwrap();
    assert!(
        reason.contains("SSRF guard") && reason.contains("loopback"),
        "{reason}"
    );
    assert!(
        reason.contains("allow_private_targets"),
        "names the setting: {reason}"
    );
    assert!(receiver.hits().is_empty(), "nothing reached the address");

    // The delivery stage's policy: SES on the sender's identities only, SNS publishing, the
    // failover queue; infra may check and request the sender's verification. Linted.
    let policy = |role: &str| -> Value {
        let out = s.cli("").output(&["policy", "--role", role]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        serde_json::from_str(&out.stdout).unwrap()
    };
    let statement = |doc: &Value, sid: &str| -> Value {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|st| st["Sid"] == sid)
            .unwrap_or_else(|| panic!("{sid} in {doc}"))
            .clone()
    };
    let (run, infra) = (policy("run"), policy("infra"));
    let email = statement(&run, "NotifyDeliverEmail");
    assert_eq!(email["Action"], json!(["ses:SendEmail"]));
    let identities: Vec<&str> = email["Resource"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        identities.len(),
        2,
        "the address and its domain: {identities:?}"
    );
    assert!(identities.iter().all(|r| r.contains(":identity/")));
    assert_eq!(
        statement(&run, "NotifyDeliverPush")["Action"],
        json!(["sns:Publish"])
    );
    assert!(
        statement(&run, "NotifyDeliverFailover")["Resource"][0]
            .as_str()
            .unwrap()
            .ends_with(&format!("{}-priority", s.prefix))
    );
    statement(&infra, "InfraNotifySender");
    for (role, doc) in [("run", &run), ("infra", &infra)] {
        assert_parliament_clean(role, doc);
    }
}

/// kill -9 twice while 2,000 webhooks go out to a receiver that answers 2 s late (so each kill
/// lands with up to 100 sends in flight): every notification is delivered, and a repeat comes
/// only from a send in doubt — with the same webhook-id, and no sooner than the in-doubt hold.
/// The hold is 20 s here (the default is 5 minutes, which a test run cannot spend).
#[tokio::test]
async fn kill_9_during_2000_deliveries_delivers_each_and_repeats_only_in_doubt_after_the_hold() {
    const HOLD: &str = "[notify.delivery]\nin_doubt_hold_secs = 20";
    let _ls = localstack_shared().await;
    let receiver = Receiver::start_slow(|_, _| 200, |_, _| Duration::from_secs(2)).await;
    let tenants: Vec<(uuid::Uuid, String)> = (0..10)
        .map(|_| (uuid::Uuid::new_v4(), new_secret().0))
        .collect();
    let s = Stages::provision_with(
        "it-deliver-kill",
        Some(Delivering {
            allow_private: true,
            secrets: tenants
                .iter()
                .map(|(t, s)| format!("{t}={s}"))
                .collect::<Vec<_>>()
                .join(","),
        }),
    )
    .await;
    s.import_prefs(
        &tenants
            .iter()
            .map(|(t, _)| {
                json!({"tenantId": t, "userId": "u-1",
                       "channels": {"webhook": format!("{}/k/{t}", receiver.base)}})
            })
            .collect::<Vec<_>>(),
    );
    let events: Vec<Value> = (0..2000)
        .map(|i| {
            notification(
                tenants[i % tenants.len()].0,
                &format!("{}-{i}", s.prefix),
                "u-1",
                &["webhook"],
            )
        })
        .collect();
    drop_events(&s, &events);
    let mut kills = 0;
    for _ in 0..2 {
        let mut daemon = s.cli(HOLD).spawn_daemon();
        let before = receiver.delivered().len();
        let deadline = Instant::now() + Duration::from_secs(120);
        while receiver.delivered().len() < before + 300 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        daemon.signal(nix::sys::signal::Signal::SIGKILL);
        daemon.wait_exit(Duration::from_secs(10));
        kills += 1;
    }
    let mut daemon = s.cli(HOLD).spawn_daemon();
    let started = Instant::now();
    let mut last_report = 0;
    while receiver.delivered().len() < 2000 {
        let elapsed = started.elapsed().as_secs();
        if elapsed >= last_report + 30 {
            last_report = elapsed;
            eprintln!(
                "{} delivered after {elapsed}s; incoming {:?}, priority {:?}",
                receiver.delivered().len(),
                queue_depth(&s.sqs, &s.incoming_url).await,
                queue_depth(&s.sqs, &s.priority_url).await
            );
        }
        if elapsed > 300 {
            let logs = daemon.logs();
            let tail: Vec<&String> = logs
                .iter()
                .filter(|l| !l.contains(" INFO "))
                .rev()
                .take(40)
                .collect();
            panic!(
                "{} of 2,000 delivered after 300 s; the daemon's last warnings: {tail:#?}",
                receiver.delivered().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the last daemon finished in {:?}", started.elapsed());
    eventually("the record agrees", Duration::from_secs(60), async || {
        delivered_rows(&s).await == 2000
    })
    .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(30));
    let delivered = receiver.delivered();
    let repeats: usize = delivered.values().map(|hits| hits.len() - 1).sum();
    // Grouped by webhook-id: a repeat carries its first send's id. None came before the hold.
    let soonest = delivered
        .values()
        .flat_map(|hits| hits.windows(2).map(|w| w[1].at - w[0].at))
        .min();
    eprintln!(
        "2,000 webhooks after {kills} kill -9: {repeats} repeats, each with its webhook-id, the soonest {soonest:?} after the first send"
    );
    if let Some(soonest) = soonest {
        assert!(
            soonest >= Duration::from_secs(20),
            "a repeat {soonest:?} after its first send"
        );
    }
    // At most the sends in doubt when each kill landed: those in flight, bounded by the
    // daemon's max_in_flight (100).
    assert!(repeats <= kills * 100, "{repeats} repeats");
    assert_eq!(queue_depth(&s.sqs, &s.priority_dlq_url).await, (0, 0));
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));
}
