//! Hardening against what a platform team meets in production: a message whose handling
//! blocks, a locked ledger, shutdown on an idle poll — each against the real stack, with the
//! defaults `infra up` and `config/default.toml` give unless a test says why not.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor::pipeline::{Delivery, Pipeline, PipelineError, Registry};
use futures::future::BoxFuture;

use crate::helpers::*;

/// Hangs on a message's first delivery (far past any deadline); succeeds on the next.
#[derive(Clone, Default)]
struct HangsOnce {
    runs: Arc<Mutex<Vec<(u32, Instant)>>>,
}

impl Pipeline for HangsOnce {
    fn name(&self) -> &'static str {
        "hangs_once"
    }

    fn run(&self, d: Arc<Delivery>) -> BoxFuture<'static, Result<(), PipelineError>> {
        self.runs
            .lock()
            .unwrap()
            .push((d.receive_count, Instant::now()));
        Box::pin(async move {
            if d.receive_count == 1 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok(())
        })
    }
}

/// A step that blocks past the queue's deadline gives the message up: it comes back after
/// its backoff and succeeds, instead of being held (lease extended) for hours.
#[tokio::test]
async fn a_message_past_its_deadline_is_retried_not_held() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-deadline", 3).await;
    let k = unique("dl").replace('-', "_").to_lowercase();
    // A short deadline so the test takes seconds; the pipeline's own timeout (300 s) is far
    // longer, so only the deadline can end the first run.
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "deadline_secs = 3\n[queues.{k}.retry]\nbase_secs = 1\njitter = \"none\"\n\
             [[queues.{k}.routes]]\npipelines = [\"hangs_once\"]"
        ),
    ));
    let pipeline = HangsOnce::default();
    let mut registry = Registry::built_in();
    registry.add(Arc::new(pipeline.clone()));
    let daemon = InProcess::start(config, registry).await;

    send_all(
        &sqs,
        &q.url,
        &[event_body(&unique("e"), serde_json::json!({}))],
    )
    .await;
    eventually(
        "processed on its second delivery",
        Duration::from_secs(30),
        async || {
            metric(
                "conveyor_messages_deleted_total",
                &[&format!("queue=\"{k}\"")],
            ) == 1.0
        },
    )
    .await;
    let runs = pipeline.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let gap = runs[1].1 - runs[0].1;
    assert!(
        gap < Duration::from_secs(10),
        "given up at the 3 s deadline and back after the 1 s backoff, not held: {gap:?}"
    );
    assert_eq!(
        metric(
            "conveyor_deadlines_exceeded_total",
            &[&format!("queue=\"{k}\"")]
        ),
        1.0
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    daemon.stop().await;
}

/// `LOCK TABLE pipeline_ledger` (a migration, a forgotten psql session) must not hold
/// messages in flight: every ledger statement gives up after `database.lock_timeout_secs`,
/// and `/readyz` names the ledger while it is locked.
#[tokio::test]
async fn a_locked_ledger_never_holds_messages_and_readyz_names_it() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-ledger-lock", 3).await;
    let (url, pool) = private_database("it_lock").await;
    let k = unique("lk").replace('-', "_").to_lowercase();
    let mut config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\npipelines = [\"recorder\"]"),
    ));
    config.secrets.database_url = Some(conveyor::config::Secret::new(url));
    let recorder = Recorder::default();
    let daemon = InProcess::start(config, registry_with(&recorder)).await;
    eventually("ready", Duration::from_secs(15), async || {
        ops_get(daemon.ops_addr, "/readyz").await.0 == 200
    })
    .await;

    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE pipeline_ledger")
        .execute(&mut *locker)
        .await
        .unwrap();
    eventually(
        "/readyz names the locked ledger",
        Duration::from_secs(15),
        async || {
            let (status, body) = ops_get(daemon.ops_addr, "/readyz").await;
            status == 503 && body.contains("ledger unready")
        },
    )
    .await;

    let sent = Instant::now();
    let bodies: Vec<String> = (0..5)
        .map(|_| event_body(&unique("e"), serde_json::json!({})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;
    eventually(
        "all five processed while the ledger is still locked",
        Duration::from_secs(40),
        async || {
            metric(
                "conveyor_messages_deleted_total",
                &[&format!("queue=\"{k}\"")],
            ) == 5.0
        },
    )
    .await;
    let took = sent.elapsed();
    assert_eq!(recorder.distinct(), 5);
    assert_eq!(recorder.deliveries(), 5, "each run once");
    locker.rollback().await.unwrap();
    eventually("ready again", Duration::from_secs(15), async || {
        ops_get(daemon.ops_addr, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    eprintln!("five messages done in {took:?} with the ledger locked");
    daemon.stop().await;
}

/// Rolling deploys wait for the old task to exit: an idle daemon must not sit out its 20 s
/// long poll after SIGTERM. (Measured here: well under a second; the bound below is loose so
/// a loaded CI machine does not fail it, and still far below the 16 s it used to take.)
#[tokio::test]
async fn an_idle_daemon_exits_promptly_on_sigterm_mid_poll() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-idle-exit", 3).await;
    let mut daemon = Conveyor::new(&format!(
        "[queues.idle]\nurl = \"{}\"\n[[queues.idle.routes]]\npipelines = [\"noop\"]\n",
        q.url
    ))
    .spawn_daemon();
    daemon.wait_for_log("consuming queue", Duration::from_secs(30));
    // Four seconds into the 20 s long poll.
    tokio::time::sleep(Duration::from_secs(4)).await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let (code, took) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", daemon.logs().join("\n"));
    eprintln!("idle daemon exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// An SQS endpoint that is down when the daemon starts (a network blip during a deploy) is
/// waited for — alive, not ready, naming SQS — and consumed once it answers; no crash loop.
// Multi-threaded: the forwarder must run while this thread blocks reading the daemon's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_unreachable_at_startup_is_waited_out_not_a_crash() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-startup", 3).await;
    let port = closed_port();
    let mut daemon = Conveyor::new(&format!(
        "[queues.late]\nurl = \"{}\"\n[[queues.late.routes]]\npipelines = [\"noop\"]\n",
        q.url
    ))
    .env("AWS_ENDPOINT_URL", &format!("http://127.0.0.1:{port}"))
    .spawn_daemon_until("SQS unreachable at startup");
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "still running:\n{}",
        daemon.logs().join("\n")
    );
    assert_eq!(
        http.get(daemon.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = http.get(daemon.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        ready
            .text()
            .await
            .unwrap()
            .contains("sqs:late:startup unready"),
        "readyz names the queue"
    );

    send_all(
        &sqs,
        &q.url,
        &[event_body(&unique("e"), serde_json::json!({}))],
    )
    .await;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let target = stack()
        .aws_endpoint
        .trim_start_matches("http://")
        .to_owned();
    let _forwarder = Proxy::on(listener, target.trim_end_matches('/'));
    daemon.wait_for_log("conveyor started", Duration::from_secs(30));
    eventually(
        "the waiting message consumed",
        Duration::from_secs(30),
        async || queue_depth(&sqs, &q.url).await == (0, 0),
    )
    .await;
    assert_eq!(
        http.get(daemon.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
}

/// Answers no retry changes still fail fast, naming the fix.
#[test]
fn a_queue_that_does_not_exist_fails_startup_naming_the_fix() {
    let out = Conveyor::new(
        "[queues.gone]\nname = \"conveyor-it-no-such-queue\"\n[[queues.gone.routes]]\npipelines = [\"noop\"]\n",
    )
    .output(&["run"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    assert!(out.stderr.contains("queues.gone"), "{}", out.stderr);
    assert!(out.stderr.contains("infra up"), "{}", out.stderr);
}

/// A dead letter always fits its DLQ: a body near the DLQ's limit is copied with a shortened
/// reason; a body larger than the DLQ accepts is never dropped, and said loudly.
#[tokio::test]
async fn dead_letters_fit_their_dlq_or_stay_on_the_redrive_path_loudly() {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let name = unique("it-dlq-size");
    // A DLQ smaller than its queue: the misconfiguration this guards against.
    const DLQ_MAX: usize = 2048;
    let dlq_url = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(A::MaximumMessageSize, DLQ_MAX.to_string())
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let url = sqs
        .create_queue()
        .queue_name(&name)
        .attributes(A::MaximumMessageSize, "1048576")
        .attributes(
            A::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": queue_arn(&sqs, &dlq_url).await, "maxReceiveCount": 3})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let padded = |total: usize| {
        let id = unique("e");
        let base = event_body(
            &id,
            serde_json::json!({"chaos": {"permanent": true}, "pad": ""}),
        );
        event_body(
            &id,
            serde_json::json!({"chaos": {"permanent": true}, "pad": "x".repeat(total - base.len())}),
        )
    };
    // Room for 40 bytes of attributes: not conveyor's five, but a shortened reason.
    let near_limit = padded(DLQ_MAX - 60);
    let too_big = padded(DLQ_MAX + 500);
    assert_eq!(near_limit.len(), DLQ_MAX - 60);

    let k = unique("sz").replace('-', "_").to_lowercase();
    let config = test_config(&queue_toml(
        &k,
        &url,
        &format!("[[queues.{k}.routes]]\npipelines = [\"chaos\"]"),
    ));
    let daemon = InProcess::start(config, Registry::built_in()).await;
    send_all(&sqs, &url, std::slice::from_ref(&near_limit)).await;
    let dead = drain_queue(&sqs, &dlq_url, 1, Duration::from_secs(30)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body(), Some(near_limit.as_str()), "body intact");
    let reason = string_attribute(&dead[0], "conveyor.error").expect("a reason");
    assert!(
        reason.starts_with("chaos") && reason.ends_with('…'),
        "{reason}"
    );

    send_all(&sqs, &url, &[too_big]).await;
    eventually("the refusal counted", Duration::from_secs(30), async || {
        metric(
            "conveyor_dead_letters_refused_total",
            &[&format!("queue=\"{k}\"")],
        ) >= 1.0
    })
    .await;
    daemon.stop().await;
    let (visible, in_flight) = queue_depth(&sqs, &url).await;
    assert_eq!(
        visible + in_flight,
        1,
        "not dropped: still on the queue's redrive path"
    );
}

/// The third signal exits the process at once, whatever the second stage is still doing (the
/// messages it had not released come back after their visibility timeout).
#[tokio::test]
async fn a_third_signal_exits_at_once() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-thrice", 3).await;
    let bodies: Vec<String> = (0..3)
        .map(|_| {
            event_body(
                &unique("thrice"),
                serde_json::json!({"chaos": {"sleep_ms": 120_000}}),
            )
        })
        .collect();
    send_all(&sqs, &q.url, &bodies).await;
    let mut daemon = Conveyor::new(&format!(
        "[shutdown]\ngrace_secs = 60\n[queues.main]\nurl = \"{}\"\n[[queues.main.routes]]\npipelines = [\"chaos\"]\n",
        q.url
    ))
    .spawn_daemon();
    eventually("3 in flight", Duration::from_secs(30), async || {
        queue_depth(&sqs, &q.url).await == (0, 3)
    })
    .await;
    use nix::sys::signal::Signal;
    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_log("stopping: no new receives", Duration::from_secs(5));
    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_log("second signal", Duration::from_secs(5));
    daemon.signal(Signal::SIGTERM);
    let (code, took) = daemon.wait_exit(Duration::from_secs(10));
    // 143 when the third signal won, 0 when the release had already finished.
    assert!(
        matches!(code, Some(143 | 0)),
        "{code:?}\n{}",
        daemon.logs().join("\n")
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Errors describe position and kind, never values taken from content: a model reply that
/// puts text where the schema wants a list, and detail-types with control characters, reach
/// no log line, no ledger row and no DLQ attribute — and the reasons are ones SQS accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_replies_and_detail_types_leak_into_no_log_ledger_or_dlq() {
    use crate::fake_llm::{FakeLlm, Scripted};
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    // maxReceiveCount 1: a retryable failure is dead-lettered at once, with its reason.
    let q = queue_with_dlq(&sqs, "it-no-content", 1).await;
    let llm = FakeLlm::start().await;
    let marker = format!("leakmarker{:08x}", rand::random::<u32>());
    let reply = format!("{{\"action_items\": \"{marker} the customer's secret plan\"}}");
    llm.script([Scripted::Reply(reply.clone()), Scripted::Reply(reply)]);
    let (url, pool) = private_database("it_no_content").await;
    let toml = format!(
        "[telemetry]\nlog_format = \"json\"\nlog_level = \"debug,h2=info,hyper=info,rustls=info,aws=info,sqlx=info,tower=info,reqwest=info\"\n\
         [extraction]\nbase_url = \"{}\"\nmodel = \"fake-model\"\n\
         [queues.nc]\nurl = \"{}\"\n[[queues.nc.routes]]\ndetail_type = \"EnvelopeV1.*\"\npipelines = [\"projection\"]\n",
        llm.base_url, q.url
    );
    let envelope = |detail_type: &str| {
        let detail = serde_json::json!({"schema_version":"v1","tenant_id": uuid::Uuid::new_v4(),
            "user_id":"u-1","interaction_type":"transcript",
            "content":{"text": format!("Rep: ACTION: {marker}"),"format":"diarized"},
            "timestamp":"2026-11-18T10:30:00Z","source":"web-mic","interaction_id": uuid::Uuid::new_v4()});
        serde_json::json!({"version":"0","id": uuid::Uuid::new_v4(),"detail-type": detail_type,
            "source":"com.yourapp.transcription","account":"000000000000",
            "time":"2026-11-18T10:30:00Z","region":"us-east-1","resources":[],"detail": detail})
        .to_string()
    };
    send_all(
        &sqs,
        &q.url,
        &[
            envelope("EnvelopeV1.transcript"),
            // A mismatching type whose detail-type carries a bell and a line break.
            envelope("EnvelopeV1.not\u{7}\ne"),
            // Unrouted, with control characters.
            envelope("Other\u{1b}[31m\ttype"),
        ],
    )
    .await;
    let mut daemon = Conveyor::new(&toml)
        .env("DATABASE_URL", &url)
        .env("OPENAI_API_KEY", "sk-test")
        .spawn_daemon();
    let dead = drain_queue(&sqs, &q.dlq_url, 3, Duration::from_secs(60)).await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
    assert_eq!(
        dead.len(),
        3,
        "each one dead-lettered (SQS accepted every reason)"
    );
    let reasons: Vec<String> = dead
        .iter()
        .map(|m| string_attribute(m, "conveyor.error").unwrap().to_owned())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not the schema's JSON: wrong type or value at line 1")),
        "{reasons:#?}"
    );
    for reason in &reasons {
        assert!(!reason.contains(&marker), "{reason}");
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
    }
    let errors: Vec<Option<String>> = sqlx::query_scalar("SELECT last_error FROM pipeline_ledger")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!errors.is_empty(), "the failed run is recorded");
    for error in errors.into_iter().flatten() {
        assert!(!error.contains(&marker), "ledger: {error}");
    }
    let leaks: Vec<String> = daemon
        .logs()
        .into_iter()
        .filter(|l| l.contains(&marker))
        .collect();
    assert!(leaks.is_empty(), "logged: {leaks:#?}");
}

/// `announce` is at least once: PutEvents cannot be atomic with the ledger's record of it, so
/// a daemon killed between the two announces again. What is guaranteed — and proved here with
/// `kill -9` while announcements drain — is that every interaction is announced, and every
/// repeat carries the same `announcement_id` for consumers to deduplicate on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_survive_kill_9_at_least_once_with_one_stable_id_each() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let eb = aws_sdk_eventbridge::Client::new(&aws_sdk().await);
    let q = queue_with_dlq(&sqs, "it-announce-kill", 3).await;
    let (bus, source) = (
        unique("it-kill-bus"),
        format!("conveyor.{:08x}", rand::random::<u32>()),
    );
    eb.create_event_bus().name(&bus).send().await.unwrap();
    let listen = create_queue(&sqs, &unique("it-kill-announced")).await;
    rule_to_queue(&bus, serde_json::json!({"source": [source]}), &listen).await;
    const N: usize = 150;
    let tenant = uuid::Uuid::new_v4();
    let bodies: Vec<String> = (0..N)
        .map(|_| {
            let detail = serde_json::json!({"schema_version":"v1","tenant_id": tenant,
                "user_id":"u-1","interaction_type":"note",
                "content":{"text":"a note","format":"plain"},
                "timestamp":"2026-11-18T10:30:00Z","source":"api",
                "interaction_id": uuid::Uuid::new_v4(),
                // Slow enough that every kill lands with work in flight.
                "extras": {"chaos": {"sleep_ms": 300}}});
            serde_json::json!({"version":"0","id": uuid::Uuid::new_v4(),"detail-type":"EnvelopeV1.note",
                "source":"com.yourapp.transcription","account":"000000000000",
                "time":"2026-11-18T10:30:00Z","region":"us-east-1","resources":[],"detail": detail})
            .to_string()
        })
        .collect();
    send_all(&sqs, &q.url, &bodies).await;
    // A short lease so a killed daemon's messages come back within seconds, and short
    // pipeline timeouts so its ledger claims expire within seconds (a claim holds for the
    // timeout plus 5 s); the ledger in PostgreSQL is shared by every incarnation.
    let (url, _pool) = private_database("it_announce_kill").await;
    let toml = format!(
        "[announce]\nbus_name = \"{bus}\"\nsource = \"{source}\"\n\
         [pipelines.chaos]\ntimeout_secs = 5\n[pipelines.announce]\ntimeout_secs = 5\n\
         [queues.ak]\nurl = \"{}\"\nmax_in_flight = 10\nvisibility_timeout_secs = 5\nlease_renew_before_secs = 2\n\
         [[queues.ak.routes]]\npipelines = [\"chaos\"]\nafter = [\"announce\"]\n",
        q.url
    );
    let spawn = || {
        Conveyor::new(&toml)
            .env("DATABASE_URL", &url)
            .spawn_daemon()
    };
    for _ in 0..4 {
        let mut daemon = spawn();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        daemon.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = daemon.wait_exit(Duration::from_secs(5));
    }
    let mut daemon = spawn();
    eventually("every message done", Duration::from_secs(120), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait_exit(Duration::from_secs(30));

    // EventBridge delivers to the listening queue asynchronously, and a loaded machine reads a
    // few hundred messages slowly: drain until every interaction's id has come, then for a
    // quiet spell more, so late repeats are counted too.
    let mut announced = Vec::new();
    let mut per_id: std::collections::HashMap<String, (usize, std::collections::HashSet<String>)> =
        std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let complete = per_id.len() >= N;
        let window = Duration::from_secs(if complete { 5 } else { 2 });
        let batch = drain_queue(&sqs, &listen, usize::MAX, window).await;
        for m in &batch {
            let event: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let id = event["detail"]["announcement_id"]
                .as_str()
                .unwrap()
                .to_owned();
            let key = event["detail"]["interaction_key"]
                .as_str()
                .unwrap()
                .to_owned();
            let entry = per_id.entry(id).or_default();
            entry.0 += 1;
            entry.1.insert(key);
        }
        let quiet = batch.is_empty();
        announced.extend(batch);
        if (complete && quiet) || Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(per_id.len(), N, "every interaction announced, one id each");
    assert!(
        per_id.values().all(|(_, keys)| keys.len() == 1),
        "an id never names two interactions"
    );
    let repeats: usize = per_id.values().map(|(n, _)| n - 1).sum();
    eprintln!(
        "{} announcements for {N} interactions after 4 kill -9: {repeats} repeats, each with its interaction's id",
        announced.len()
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

/// Measures the price of the fast exit (README, Shutdown): SQS does not cancel an aborted
/// long poll, so messages arriving during the rest of its wait are assigned to it and come
/// back only after their visibility timeout. None is lost.
#[tokio::test]
async fn messages_arriving_during_an_aborted_poll_come_back_after_their_visibility_timeout() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-orphan-poll", 3).await;
    const VISIBILITY: u64 = 8;
    let mut daemon = Conveyor::new(&format!(
        "[queues.op]\nurl = \"{}\"\nvisibility_timeout_secs = {VISIBILITY}\nlease_renew_before_secs = 4\n\
         [[queues.op.routes]]\npipelines = [\"noop\"]\n",
        q.url
    ))
    .spawn_daemon();
    daemon.wait_for_log("consuming queue", Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).0, Some(0));
    let sent_at = Instant::now();
    let bodies: Vec<String> = (0..5)
        .map(|_| event_body(&unique("op"), serde_json::json!({})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;
    // What a new consumer sees at once, and what only after the visibility timeout.
    let at_once = drain_queue(&sqs, &q.url, 5, Duration::from_secs(3))
        .await
        .len();
    let later = drain_queue(
        &sqs,
        &q.url,
        5 - at_once,
        Duration::from_secs(VISIBILITY + 10),
    )
    .await
    .len();
    eprintln!(
        "of 5 messages sent right after an idle daemon's SIGTERM: {at_once} received at once, \
         {later} after the {VISIBILITY} s visibility timeout ({:?} after sending)",
        sent_at.elapsed()
    );
    assert_eq!(at_once + later, 5, "none lost");
}
