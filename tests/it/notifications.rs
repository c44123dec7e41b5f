//! The notification system's intake and ranking end to end (LocalStack with S3, PostgreSQL,
//! the fake model): `conveyor infra up` provisions each test's own bucket, queues and rule;
//! preferences go in with `conveyor notify prefs import`; drops go in with `conveyor notify
//! drop` and events through EventBridge; the daemon ingests and ranks them into the `priority`
//! queue. Defaults are the shipped ones (maxReceiveCount 3, the default backoff).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_llm::{FakeLlm, Scripted};
use crate::helpers::*;

/// One test's notification stages: names, a private database, provisioned by `infra up`.
/// Shared with the delivery tests (`delivery.rs`), which consume `priority` too.
pub struct Stages {
    pub prefix: String,
    pub bucket: String,
    /// The rule matches only this source: other tests' events never reach this test's queues.
    pub source: String,
    pub tenant: uuid::Uuid,
    pub database_url: String,
    pub pool: sqlx::PgPool,
    pub ingest_url: String,
    pub incoming_url: String,
    pub incoming_dlq_url: String,
    pub priority_url: String,
    pub priority_dlq_url: String,
    pub sqs: aws_sdk_sqs::Client,
    /// Whether the daemon also delivers: `priority` consumed by `notify-deliver`.
    pub deliver: Option<Delivering>,
    /// The tenants the test's source and drops are bound to (`[notify.bindings]`); `None`:
    /// unbound, allowed (`allow_unbound`, as in the local environment).
    pub bound_tenants: Option<Vec<uuid::Uuid>>,
}

/// How the delivery stage of [`Stages`] is configured.
#[derive(Debug, Clone)]
pub struct Delivering {
    /// `notify.webhook.allow_private_targets`: the test's receiver is local.
    pub allow_private: bool,
    /// `NOTIFY_WEBHOOK_SECRETS`.
    pub secrets: String,
}

impl Stages {
    pub async fn provision(prefix: &str) -> Self {
        Self::provision_with(prefix, None).await
    }

    pub async fn provision_with(prefix: &str, deliver: Option<Delivering>) -> Self {
        let prefix = unique(prefix);
        let (database_url, pool) = private_database("it_notify").await;
        let stages = Self {
            bucket: prefix.to_lowercase(),
            source: format!("{prefix}.producer"),
            tenant: uuid::Uuid::new_v4(),
            database_url,
            pool,
            ingest_url: String::new(),
            incoming_url: String::new(),
            incoming_dlq_url: String::new(),
            priority_url: String::new(),
            priority_dlq_url: String::new(),
            sqs: sqs_client().await,
            deliver,
            bound_tenants: None,
            prefix,
        };
        let up = stages.cli("").output(&["infra", "up"]);
        assert_eq!(up.code, Some(0), "{}", up.all());
        let again = stages.cli("").output(&["infra", "up"]);
        assert!(
            again.stdout.contains("nothing to change"),
            "idempotent: {}",
            again.all()
        );
        let url = |name: String| {
            let sqs = stages.sqs.clone();
            async move {
                sqs.get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .unwrap()
                    .queue_url
                    .unwrap()
            }
        };
        let p = &stages.prefix;
        Self {
            ingest_url: url(format!("{p}-ingest")).await,
            incoming_url: url(format!("{p}-incoming")).await,
            incoming_dlq_url: url(format!("{p}-incoming-dlq")).await,
            priority_url: url(format!("{p}-priority")).await,
            priority_dlq_url: url(format!("{p}-priority-dlq")).await,
            ..stages
        }
    }

    /// The configuration: `[notify]` with this test's names, and the two consuming queues (three
    /// when delivering). `notify_extra` goes inside `[notify]`, and may add its sub-tables.
    /// The stages' config (`conveyor notify example-config` for this test's names), with its own
    /// [infra] names and `notify_extra` added to [notify].
    pub fn toml(&self, notify_extra: &str) -> String {
        let p = &self.prefix;
        let mut names = conveyor::cmd::notify::ExampleArgs::named(p);
        names.bucket = Some(self.bucket.clone());
        names.source = Some(self.source.clone());
        names.no_delivery = self.deliver.is_none();
        names.allow_private_targets = self.deliver.as_ref().is_some_and(|d| d.allow_private);
        match &self.bound_tenants {
            Some(tenants) => names.tenants = tenants.clone(),
            // Most tests make tenants up as they go.
            None => names.allow_unbound = true,
        }
        format!(
            "[infra]\nqueue_name = \"{p}-events\"\nrule_name = \"{p}-events\"\nsources = [\"{p}.unused\"]\n\n{}{notify_extra}\n",
            conveyor::cmd::notify::example_config(&names)
        )
    }

    pub fn cli(&self, notify_extra: &str) -> Conveyor {
        let cli = Conveyor::new(&self.toml(notify_extra)).env("DATABASE_URL", &self.database_url);
        match &self.deliver {
            Some(d) => cli.env("NOTIFY_WEBHOOK_SECRETS", &d.secrets),
            None => cli,
        }
    }

    pub async fn daemon(&self, notify_extra: &str) -> InProcess {
        let mut config = test_config(&self.toml(notify_extra));
        config.secrets.database_url = Some(conveyor::config::Secret::new(&self.database_url));
        if let Some(d) = &self.deliver {
            config.secrets.notify_webhook_secrets = Some(conveyor::config::Secret::new(&d.secrets));
        }
        InProcess::start(config, conveyor::pipeline::Registry::built_in()).await
    }

    /// Imports preferences (JSON lines) with the CLI.
    pub fn import_prefs(&self, documents: &[Value]) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for d in documents {
            writeln!(file, "{d}").unwrap();
        }
        let out =
            self.cli("")
                .output(&["notify", "prefs", "import", file.path().to_str().unwrap()]);
        assert_eq!(out.code, Some(0), "{}", out.all());
    }

    pub fn prefs(&self, user: &str, extra: Value) -> Value {
        let mut doc = json!({
            "tenantId": self.tenant, "userId": user,
            "channels": {"email": format!("addr-mark-{user}@example.com"),
                         "push": format!("arn:aws:sns:us-east-1:000000000000:endpoint/GCM/app/{user}")},
        });
        for (k, v) in extra.as_object().unwrap() {
            doc[k] = v.clone();
        }
        doc
    }

    pub fn event(&self, event_id: &str, user: &str, metadata: Value) -> Value {
        json!({
            "eventId": event_id, "source": "billing", "occurredAt": "2026-11-23T10:00:00Z",
            "tenantId": self.tenant,
            "user": {"id": user, "channels": ["email", "push"]},
            "content": {"title": format!("TITLE-MARK {event_id}"), "body": "BODY-MARK private words",
                        "metadata": metadata},
        })
    }

    /// Uploads `bytes` as the drop `key` with `conveyor notify drop`.
    pub fn upload_drop(&self, key: &str, bytes: &[u8]) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        let out = self.cli("").output(&[
            "notify",
            "drop",
            file.path().to_str().unwrap(),
            "--key",
            key,
        ]);
        assert_eq!(out.code, Some(0), "{}", out.all());
    }

    /// The rejects object of the drop `key`; `None` when there is none.
    pub async fn rejects(&self, key: &str) -> Option<String> {
        let s3 = conveyor::aws::s3_client(&aws_sdk().await);
        let object = s3
            .get_object()
            .bucket(&self.bucket)
            .key(format!("{key}.rejects.jsonl"))
            .send()
            .await
            .ok()?;
        Some(String::from_utf8(object.body.collect().await.unwrap().to_vec()).unwrap())
    }

    pub async fn publish(&self, detail: &Value) {
        put_event(&self.source, "NotificationRequested", detail).await;
    }
}

const URGENCIES: [&str; 3] = ["low", "normal", "high"];
/// Makes the drop's lines ~2 KB, the drop ~10 MB: uploaded in two parts, read in two ranges
/// (8 MiB each), with a line across the boundary.
const PADDING: &str = concat!(include_str!("../../LICENSE"), include_str!("../../LICENSE"));

/// A RankedNotification for `channel` at `to`, as `notify-rank` writes it to `priority`: due
/// now (sendAfter in the past), priority 3, no failover.
pub fn ranked(tenant: uuid::Uuid, event_id: &str, channel: &str, to: &str) -> Value {
    json!({
        "eventId": event_id, "tenantId": tenant, "userId": "u-1",
        "occurredAt": chrono::Utc::now().to_rfc3339(), "sendAfter": "2026-01-01T00:00:00Z",
        "priority": 3, "scoreBreakdown": {"base": 3.0}, "scorer": "rules",
        "channel": channel,
        "delivery": {"address": to, "rateLimitKey": format!("{channel}:{tenant}")},
        "failover": [], "attempt": 0,
        "content": {"title": "TITLE-MARK", "body": "BODY-MARK"},
    })
}

/// Sends RankedNotifications to `priority` with the attributes `notify-rank` gives them.
pub async fn send_ranked(sqs: &aws_sdk_sqs::Client, url: &str, notifications: &[Value]) {
    use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
    let attribute = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    for chunk in notifications.chunks(10) {
        let entries = chunk.iter().enumerate().map(|(i, n)| {
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(n.to_string())
                .message_attributes("source", attribute("conveyor.notify.rank"))
                .message_attributes("type", attribute("RankedNotification"))
                .message_attributes("priority", attribute(&n["priority"].to_string()))
                .message_attributes("channel", attribute(n["channel"].as_str().unwrap()))
                .message_attributes("eventId", attribute(n["eventId"].as_str().unwrap()))
                .build()
                .unwrap()
        });
        let out = sqs
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries.collect()))
            .send()
            .await
            .unwrap();
        assert!(out.failed().is_empty());
    }
}

/// Ranked notifications by eventId, from messages of one or batches of many
/// (`conveyor.batch`: the body is an array of them). A message of one carries its own
/// `eventId`, `channel` and `priority` attributes.
pub fn by_event(messages: &[aws_sdk_sqs::types::Message]) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for m in messages {
        let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
        let notifications = match string_attribute(m, "conveyor.batch") {
            Some(n) => {
                let all = body.as_array().unwrap().clone();
                assert_eq!(all.len(), n.parse::<usize>().unwrap());
                all
            }
            None => {
                assert_eq!(string_attribute(m, "eventId"), body["eventId"].as_str());
                assert_eq!(string_attribute(m, "channel"), body["channel"].as_str());
                assert_eq!(
                    string_attribute(m, "priority").map(str::to_owned),
                    Some(body["priority"].to_string())
                );
                vec![body]
            }
        };
        for n in notifications {
            out.entry(n["eventId"].as_str().unwrap().to_owned())
                .or_default()
                .push(n);
        }
    }
    out
}

/// Receives (and deletes) ranked notifications from `url` until `expected` of them came, in
/// messages of one or batches; by eventId.
pub async fn drain_ranked(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    expected: usize,
    timeout: Duration,
) -> HashMap<String, Vec<Value>> {
    by_event(&drain_ranked_messages(sqs, url, expected, timeout).await)
}

/// The messages holding the first `expected` ranked notifications on `url` (see
/// [`drain_ranked`]).
pub async fn drain_ranked_messages(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<aws_sdk_sqs::types::Message> {
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    while by_event(&messages).values().map(Vec::len).sum::<usize>() < expected
        && Instant::now() < deadline
    {
        messages.extend(drain_queue(sqs, url, 1, Duration::from_secs(2)).await);
    }
    messages
}

/// Waits until the queue holds nothing, visible or in flight, on three checks in a row.
pub async fn settled(sqs: &aws_sdk_sqs::Client, url: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    while quiet < 3 {
        assert!(Instant::now() < deadline, "queue {url} did not settle");
        quiet = if queue_depth(sqs, url).await == (0, 0) {
            quiet + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_drop_of_5000_lines_is_ranked_once_per_valid_event_and_its_invalid_lines_are_listed_in_the_rejects_object()
 {
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-drop").await;
    s.import_prefs(
        &(0..20)
            .map(|u| s.prefs(&format!("u-{u}"), json!({})))
            .collect::<Vec<_>>(),
    );

    // 5,000 lines: every 50th invalid (2 %), of seven kinds.
    let mut file = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    let mut invalid: BTreeMap<u64, &str> = BTreeMap::new();
    let mut valid = BTreeSet::new();
    for n in 1..=5000u64 {
        let id = format!("e-{n}");
        let mut event = s.event(
            &id,
            &format!("u-{}", n % 20),
            json!({ "urgency": URGENCIES[n as usize % 3], "padding": PADDING }),
        );
        let line = if n % 50 == 0 {
            let (line, field) = match (n / 50) % 7 {
                0 => ("{\"eventId\": \"x\", BODY-MARK".to_owned(), ""),
                1 => ("[1, 2]".to_owned(), ""),
                2 => {
                    event.as_object_mut().unwrap().remove("eventId");
                    (event.to_string(), "eventId")
                }
                3 => {
                    event["user"]["channels"] = json!(["email", "fax"]);
                    (event.to_string(), "user.channels[1]")
                }
                4 => {
                    event["content"]["title"] = json!("");
                    (event.to_string(), "content.title")
                }
                5 => {
                    event["tenantId"] = json!("acme");
                    (event.to_string(), "tenantId")
                }
                _ => {
                    event["content"]["body"] = json!("BODY-MARK ".repeat(30_000));
                    (event.to_string(), "content.body")
                }
            };
            invalid.insert(n, field);
            line
        } else {
            valid.insert(id);
            event.to_string()
        };
        writeln!(file, "{line}").unwrap();
    }
    assert_eq!(invalid.len(), 100);
    let size = file.as_file().metadata().unwrap().len();
    assert!(size > 9 << 20, "more than one 8 MiB part: {size} bytes");

    let mut daemon = s
        .cli("")
        .env(
            "CONVEYOR_TELEMETRY__LOG_LEVEL",
            "debug,aws=info,aws_smithy_runtime=info,hyper=info,sqlx=warn,h2=info,rustls=info",
        )
        .spawn_daemon();
    let key = "drops/batch-1.jsonl";
    let drop = |key: &str| s.upload_drop(key, &std::fs::read(file.path()).unwrap());
    drop(key);
    let ranked = drain_ranked(
        &s.sqs,
        &s.priority_url,
        valid.len(),
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(ranked.len(), valid.len(), "every valid event ranked");
    assert!(ranked.values().all(|r| r.len() == 1), "each once");
    assert_eq!(ranked.keys().cloned().collect::<BTreeSet<_>>(), valid);

    // The rejects object lists exactly the invalid lines, with their field.
    let text = s.rejects(key).await.expect("a rejects object");
    let listed: BTreeMap<u64, String> = text
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            assert!(!r["reason"].as_str().unwrap().is_empty());
            (
                r["line"].as_u64().unwrap(),
                r["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeMap<u64, String> =
        invalid.iter().map(|(n, f)| (*n, f.to_string())).collect();
    assert_eq!(listed, expected);
    assert!(!text.contains("MARK"), "no content in the rejects object");

    // The same drop again (under another key, so S3 announces it as a new object and it is
    // read again, as after a crash): ingested again, ranked never again.
    drop("drops/batch-1-again.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while daemon
        .logs()
        .iter()
        .filter(|l| l.contains("drop ingested"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "second drop not ingested");
        std::thread::sleep(Duration::from_millis(200));
    }
    settled(&s.sqs, &s.ingest_url, Duration::from_secs(60)).await;
    settled(&s.sqs, &s.incoming_url, Duration::from_secs(180)).await;
    assert_eq!(
        queue_depth(&s.sqs, &s.priority_url).await,
        (0, 0),
        "nothing ranked twice"
    );
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));

    // Not one log line carries a title, a body or an address.
    let logs = daemon.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("notification ranked") && l.contains("latency_ms"))
    );
    for line in &logs {
        for mark in ["TITLE-MARK", "BODY-MARK", "addr-mark", "example.com"] {
            assert!(!line.contains(mark), "{mark} logged: {line}");
        }
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
}

#[tokio::test]
async fn the_model_answering_429_then_malformed_then_well_ranks_once_and_its_score_is_never_computed_again()
 {
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-score").await;
    s.import_prefs(&[s.prefs("u-1", json!({}))]);
    let llm = FakeLlm::start().await;
    llm.script([
        Scripted::Status {
            status: 429,
            retry_after: Some(2),
        },
        Scripted::Malformed,
    ]);
    let extra = format!(
        "scorer = \"model\"\n\n[extraction]\nbase_url = \"{}\"\n",
        llm.base_url
    );
    let toml_extra = extra.clone();
    let mut config = test_config(&s.toml(&toml_extra));
    config.secrets.database_url = Some(conveyor::config::Secret::new(&s.database_url));
    config.secrets.openai_api_key = Some(conveyor::config::Secret::new("test-key"));
    let daemon = InProcess::start(config, conveyor::pipeline::Registry::built_in()).await;

    let event = s.event("e-model", "u-1", json!({"urgency": "critical"}));
    s.publish(&event).await;
    let ranked = drain_ranked(&s.sqs, &s.priority_url, 1, Duration::from_secs(60)).await;
    let r = &ranked["e-model"][0];
    assert_eq!(r["priority"], 5);
    assert_eq!(r["scorer"], "model");
    assert_eq!(r["channel"], "push", "urgent: push first");
    assert_eq!(r["failover"][0]["channel"], "email");
    assert_eq!(llm.calls().len(), 3, "429, malformed, then the answer");
    assert!(llm.calls().iter().all(|c| c.json_schema));
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));

    // Published again: the ledger ranks it once.
    s.publish(&event).await;
    settled(&s.sqs, &s.incoming_url, Duration::from_secs(60)).await;
    assert_eq!(queue_depth(&s.sqs, &s.priority_url).await, (0, 0));
    // Ranking run again for the event (its ledger record gone): the stored score, no model call.
    sqlx::query("DELETE FROM pipeline_ledger WHERE pipeline = 'notify-rank'")
        .execute(&s.pool)
        .await
        .unwrap();
    s.publish(&event).await;
    let again = drain_ranked(&s.sqs, &s.priority_url, 1, Duration::from_secs(60)).await;
    assert_eq!(again["e-model"][0]["priority"], 5);
    assert_eq!(llm.calls().len(), 3, "the score is computed once");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notify_scores WHERE event_id = 'e-model'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
    daemon.stop().await;
}

/// Quiet hours from two hours ago to a minute boundary 20–80 s ahead, in a zone 5:45 from UTC.
fn quiet_hours_ending_soon() -> (Value, chrono::DateTime<chrono::Utc>) {
    use chrono::{Duration as D, Timelike};
    let zone = chrono_tz::Asia::Kathmandu;
    let now = chrono::Utc::now().with_timezone(&zone);
    let minute = now.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let mut end = minute + D::minutes(1);
    if end - now < D::seconds(20) {
        end += D::minutes(1);
    }
    let start = now - D::hours(2);
    (
        json!({"start": start.format("%H:%M").to_string(), "end": end.format("%H:%M").to_string(),
               "timeZone": "Asia/Kathmandu"}),
        end.with_timezone(&chrono::Utc),
    )
}

#[tokio::test]
async fn quiet_hours_delay_a_notification_to_their_end_without_spending_receives_and_priority_5_bypasses_them()
 {
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-quiet").await;
    let (quiet, end) = quiet_hours_ending_soon();
    s.import_prefs(&[s.prefs("u-q", json!({"quietHours": quiet}))]);
    let daemon = s.daemon("").await;
    let deferred_before = metric(
        "conveyor_notify_deferred_total",
        &["reason=\"quiet_hours\""],
    );

    s.publish(&s.event("e-quiet", "u-q", json!({"urgency": "normal"})))
        .await;
    s.publish(&s.event("e-urgent", "u-q", json!({"urgency": "critical"})))
        .await;

    let mut seen: HashMap<String, (Value, chrono::DateTime<chrono::Utc>, String)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "both ranked: {:?}", seen.keys());
        for m in drain_queue(&s.sqs, &s.priority_url, 1, Duration::from_secs(2)).await {
            let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let receives = m.attributes().unwrap()
                [&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount]
                .clone();
            seen.insert(
                body["eventId"].as_str().unwrap().to_owned(),
                (body, chrono::Utc::now(), receives),
            );
        }
    }
    let (urgent, urgent_at, _) = &seen["e-urgent"];
    assert_eq!(urgent["priority"], 5);
    assert!(*urgent_at < end, "priority 5 is not held by quiet hours");
    let (quiet_one, received_at, receives) = &seen["e-quiet"];
    assert_eq!(quiet_one["priority"], 2);
    let send_after: chrono::DateTime<chrono::Utc> =
        quiet_one["sendAfter"].as_str().unwrap().parse().unwrap();
    assert_eq!(send_after, end, "sendAfter is the end of the quiet hours");
    assert!(
        *received_at >= end - chrono::Duration::seconds(1),
        "held until then (received {received_at}, end {end})"
    );
    assert_eq!(receives, "1", "deferred without a receive");
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));
    assert_eq!(
        metric(
            "conveyor_notify_deferred_total",
            &["reason=\"quiet_hours\""]
        ) - deferred_before,
        1.0
    );
    daemon.stop().await;
}

/// The test's source and drops are bound to its tenant. An event naming another tenant — from
/// the bound EventBridge source, or a line of a drop under the bound prefix — is dead-lettered
/// by ranking naming the binding, and nothing is ranked for it; the bound tenant's go through,
/// with their tenant as their message group.
#[tokio::test]
async fn events_naming_a_tenant_their_source_or_drop_is_not_bound_to_are_dead_lettered_with_the_binding()
 {
    let _ls = localstack_shared().await;
    let mut s = Stages::provision("it-bound").await;
    s.bound_tenants = Some(vec![s.tenant]);
    let stranger = uuid::Uuid::new_v4();
    let mut strangers_prefs = s.prefs("u-1", json!({}));
    strangers_prefs["tenantId"] = json!(stranger);
    s.import_prefs(&[s.prefs("u-1", json!({})), strangers_prefs]);
    let daemon = s.daemon("").await;

    let as_stranger = |mut event: Value| {
        event["tenantId"] = json!(stranger);
        event
    };
    s.publish(&s.event("bus-bound", "u-1", json!({}))).await;
    s.publish(&as_stranger(s.event("bus-stranger", "u-1", json!({}))))
        .await;
    crate::delivery::drop_events(
        &s,
        &[
            s.event("drop-bound", "u-1", json!({})),
            as_stranger(s.event("drop-stranger", "u-1", json!({}))),
        ],
    );

    let dead = drain_queue(&s.sqs, &s.incoming_dlq_url, 2, Duration::from_secs(90)).await;
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|m| {
            let body: Value = serde_json::from_str(m.body().unwrap()).unwrap();
            (
                body["detail"]["eventId"].as_str().unwrap().to_owned(),
                string_attribute(m, "conveyor.error").unwrap().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons[0].0, "bus-stranger");
    assert!(
        reasons[0]
            .1
            .contains(&format!("tenant {stranger} is not bound to source"))
            && reasons[0].1.contains("notify.bindings.sources"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "drop-stranger");
    assert!(
        reasons[1].1.contains("drop prefix \"\"")
            && reasons[1].1.contains("notify.bindings.drop_prefixes"),
        "{reasons:?}"
    );
    let ranked = drain_ranked_messages(&s.sqs, &s.priority_url, 2, Duration::from_secs(60)).await;
    let mut ids: Vec<String> = by_event(&ranked).keys().cloned().collect();
    ids.sort();
    assert_eq!(ids, ["bus-bound", "drop-bound"], "only the bound tenant's");
    // Each ranked notification's message group is its tenant (SQS fair queues' key).
    let tenant = s.tenant.to_string();
    for m in &ranked {
        assert_eq!(group_id(m), Some(tenant.as_str()));
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_user_without_a_usable_channel_and_an_invalid_event_are_dead_lettered_naming_the_reason()
{
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-nochannel").await;
    // Reachable only by SMS, which the event does not allow; and opted out of email.
    s.import_prefs(&[json!({"tenantId": s.tenant, "userId": "u-sms",
        "channels": {"sms": "+4915112345678", "email": "addr-mark@example.com"}, "optOut": ["email"]})]);
    let daemon = s.daemon("").await;

    s.publish(&s.event("e-nochannel", "u-sms", json!({}))).await;
    s.publish(&s.event("e-stranger", "u-unknown", json!({})))
        .await;
    let mut invalid = s.event("e-invalid", "u-sms", json!({}));
    invalid["user"].as_object_mut().unwrap().remove("channels");
    s.publish(&invalid).await;

    let dead = drain_queue(&s.sqs, &s.incoming_dlq_url, 3, Duration::from_secs(60)).await;
    assert_eq!(dead.len(), 3);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| {
            let reason = string_attribute(m, "conveyor.error").unwrap().to_owned();
            assert!(
                !reason.contains("addr-mark") && !reason.contains("+4915"),
                "{reason}"
            );
            reason
        })
        .collect();
    reasons.sort();
    let all = reasons.join("\n");
    assert!(all.contains("no usable channel for user \"u-sms\": the event allows [email, push], the user has addresses for [email, sms] and opted out of [email]"), "{all}");
    assert!(
        all.contains("no usable channel for user \"u-unknown\": no preferences stored"),
        "{all}"
    );
    assert!(all.contains("detail.user.channels"), "{all}");
    assert_eq!(queue_depth(&s.sqs, &s.priority_url).await, (0, 0));
    daemon.stop().await;
}

#[tokio::test]
async fn operators_set_and_read_preferences_get_a_policy_per_stage_and_remove_the_stages() {
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-notify-ops").await;
    let tenant = s.tenant.to_string();
    let set = |extra: &[&str]| {
        let mut args = vec![
            "notify",
            "prefs",
            "set",
            "--tenant-id",
            &tenant,
            "--user-id",
            "u-ops",
        ];
        args.extend_from_slice(extra);
        s.cli("").output(&args)
    };
    let bad = set(&["--sms", "0151-secret-digits"]);
    assert_eq!(bad.code, Some(1), "{}", bad.all());
    assert!(
        bad.stderr.contains("--sms: expected an E.164 phone number"),
        "{}",
        bad.all()
    );
    assert!(!bad.all().contains("secret"), "{}", bad.all());
    let bad = set(&[
        "--email",
        "a@b.co",
        "--quiet-hours",
        "22:00-07:00",
        "--time-zone",
        "Mars/Base",
    ]);
    assert!(
        bad.stderr.contains("--time-zone: unknown time zone"),
        "{}",
        bad.all()
    );
    let ok = set(&[
        "--email",
        "ops@example.com",
        "--sms",
        "+4915112345678",
        "--opt-out",
        "sms",
        "--failover-order",
        "sms,email",
        "--quiet-hours",
        "22:00-07:00",
        "--time-zone",
        "Europe/Berlin",
    ]);
    assert_eq!(ok.code, Some(0), "{}", ok.all());
    let got = s.cli("").output(&[
        "notify",
        "prefs",
        "get",
        "--tenant-id",
        &tenant,
        "--user-id",
        "u-ops",
    ]);
    assert_eq!(got.code, Some(0), "{}", got.all());
    let doc: Value = serde_json::from_str(&got.stdout).unwrap();
    assert_eq!(doc["channels"]["email"], "ops@example.com");
    assert_eq!(
        doc["quietHours"],
        json!({"start": "22:00", "end": "07:00", "timeZone": "Europe/Berlin"})
    );
    let other_tenant = uuid::Uuid::new_v4().to_string();
    let none = s.cli("").output(&[
        "notify",
        "prefs",
        "get",
        "--tenant-id",
        &other_tenant,
        "--user-id",
        "u-ops",
    ]);
    assert_eq!(
        none.code,
        Some(1),
        "another tenant sees nothing: {}",
        none.all()
    );

    // An import with one bad line stores nothing and names the line.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{}", s.prefs("u-a", json!({}))).unwrap();
    writeln!(
        file,
        "{}",
        json!({"tenantId": tenant, "userId": "u-b", "channels": {"webhook": "ftp://x"}})
    )
    .unwrap();
    let out = s
        .cli("")
        .output(&["notify", "prefs", "import", file.path().to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains(":2: line.channels.webhook"),
        "{}",
        out.all()
    );
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notify_preferences WHERE user_id = 'u-a'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);

    // A policy per stage, every document clean under a real IAM linter.
    let policy = |role: &str| -> Value {
        let out = s.cli("").output(&["policy", "--role", role]);
        assert_eq!(out.code, Some(0), "{}", out.all());
        serde_json::from_str(&out.stdout).unwrap()
    };
    let sids = |doc: &Value| -> Vec<String> {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Sid"].as_str().unwrap().to_owned())
            .collect()
    };
    let (run, publish, infra) = (policy("run"), policy("publish"), policy("infra"));
    for sid in [
        "NotifyIngestDrops",
        "NotifyIngestRejects",
        "NotifyIngestSend",
        "NotifyRankSend",
    ] {
        assert!(sids(&run).contains(&sid.to_owned()), "{sid} in {run}");
    }
    assert!(sids(&publish).contains(&"PublishNotifyDrops".to_owned()));
    for sid in ["InfraNotifyQueues", "InfraNotifyRule", "InfraNotifyBucket"] {
        assert!(sids(&infra).contains(&sid.to_owned()), "{sid}");
    }
    for (role, doc) in [("run", &run), ("publish", &publish), ("infra", &infra)] {
        assert_parliament_clean(role, doc);
    }

    // `infra down` removes the stages' queues and rule and the bucket's notification; the bucket
    // (the drops) stays.
    let down = s.cli("").output(&["infra", "down", "--yes"]);
    assert_eq!(down.code, Some(0), "{}", down.all());
    for name in [
        "ingest",
        "incoming",
        "priority",
        "ingest-dlq",
        "incoming-dlq",
        "priority-dlq",
    ] {
        let gone = s
            .sqs
            .get_queue_url()
            .queue_name(format!("{}-{name}", s.prefix))
            .send()
            .await;
        assert!(gone.is_err(), "{name} removed");
    }
    let s3 = conveyor::aws::s3_client(&aws_sdk().await);
    s3.head_bucket()
        .bucket(&s.bucket)
        .send()
        .await
        .expect("the bucket is kept");
    let notifications = s3
        .get_bucket_notification_configuration()
        .bucket(&s.bucket)
        .send()
        .await
        .unwrap();
    assert!(notifications.queue_configurations().is_empty());
}
