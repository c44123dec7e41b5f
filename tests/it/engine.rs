//! The SQS engine against LocalStack: throughput without loss, leases that hold, backoff and
//! dead-lettering, poison messages, shutdown with work in flight, and recovery from an
//! endpoint that stops answering.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::fault_proxy::FaultProxy;
use crate::helpers::*;

/// A metric-label-safe queue key unique to this test.
fn key() -> String {
    format!("q{:08x}", rand::random::<u32>())
}

#[tokio::test]
async fn drains_1000_messages_each_processed_once_none_dead_lettered() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-thousand", 3).await;
    // Event ids are the ledger's keys: unique per run, or an earlier run's successes skip them.
    let run = unique("ev");
    let bodies: Vec<String> = (0..1000)
        .map(|i| event_body(&format!("{run}-{i}"), json!({"n": i})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;

    let recorder = Recorder::default();
    let k = key();
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        "pollers = 4\nmax_in_flight = 100\n[[queues.QUEUE.routes]]\npipelines = [\"recorder\"]"
            .replace("QUEUE", &k)
            .as_str(),
    ));
    let daemon = InProcess::start(config, registry_with(&recorder)).await;
    eventually(
        "1000 distinct events",
        Duration::from_secs(120),
        async || recorder.distinct() == 1000,
    )
    .await;
    eventually(
        "the queue to be empty",
        Duration::from_secs(30),
        async || queue_depth(&sqs, &q.url).await == (0, 0),
    )
    .await;
    daemon.stop().await;

    assert_eq!(recorder.deliveries(), 1000, "no event processed twice");
    assert_eq!(
        queue_depth(&sqs, &q.dlq_url).await,
        (0, 0),
        "nothing dead-lettered"
    );
    assert_eq!(
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")]
        ),
        1000.0
    );
}

#[tokio::test]
async fn a_slow_handler_keeps_its_lease_with_batched_extensions() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-slow", 3).await;
    // Event ids are the ledger's keys: unique per run, or an earlier run's successes skip them.
    let run = unique("slow");
    let bodies: Vec<String> = (0..10)
        .map(|i| event_body(&format!("{run}-{i}"), json!({})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;

    // 11 s of work against a 2 s lease: more than 5× the visibility timeout.
    let recorder = Recorder {
        sleep: Duration::from_secs(11),
        ..Default::default()
    };
    let k = key();
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "pollers = 1\nmax_in_flight = 10\nvisibility_timeout_secs = 2\nlease_renew_before_secs = 1\n\
             [[queues.{k}.routes]]\npipelines = [\"recorder\"]"
        ),
    ));
    let daemon = InProcess::start(config, registry_with(&recorder)).await;
    eventually("10 deletions", Duration::from_secs(60), async || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        ) == 10.0
    })
    .await;
    daemon.stop().await;

    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10);
    for (id, deliveries) in &seen {
        assert_eq!(
            deliveries.len(),
            1,
            "{id} was redelivered: the lease did not hold"
        );
        assert_eq!(deliveries[0].0, 1);
    }
    let label = format!("queue=\"{k}\"");
    let extensions = metric("conveyor_lease_extensions_total", &[&label]);
    let calls = metric(
        "conveyor_sqs_requests_total",
        &[&label, "operation=\"ChangeMessageVisibilityBatch\""],
    );
    assert!(
        extensions >= 10.0 * 5.0,
        "each lease extended about every second: {extensions}"
    );
    assert!(
        calls * 3.0 <= extensions,
        "extensions batched: {extensions} extensions in {calls} calls"
    );
    assert_eq!(metric("conveyor_leases_lost_total", &[&label]), 0.0);
    assert_eq!(queue_depth(&sqs, &q.url).await, (0, 0));
}

#[tokio::test]
async fn retryable_failures_back_off_then_dead_letter_with_the_reason_and_body_intact() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-retry", 4).await;
    let id = unique("flaky");
    let body = event_body(&id, json!({"text": "keep me exactly"}));
    send_all(&sqs, &q.url, std::slice::from_ref(&body)).await;

    let recorder = Recorder {
        fail_until_receive: u32::MAX,
        ..Default::default()
    };
    let k = key();
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "pollers = 1\nwait_time_secs = 1\n[queues.{k}.retry]\nbase_secs = 1\nmultiplier = 2.0\ncap_secs = 60\njitter = \"none\"\n\
             [[queues.{k}.routes]]\npipelines = [\"recorder\"]"
        ),
    ));
    let daemon = InProcess::start(config, registry_with(&recorder)).await;
    let dead = drain_queue(&sqs, &q.dlq_url, 1, Duration::from_secs(60)).await;
    daemon.stop().await;

    assert_eq!(dead.len(), 1, "dead-lettered after maxReceiveCount");
    let m = &dead[0];
    assert_eq!(m.body(), Some(body.as_str()), "original body intact");
    let error = string_attribute(m, "conveyor.error").unwrap();
    assert!(
        error.contains("retries exhausted after 4 receives"),
        "{error}"
    );
    assert!(error.contains("recorder: asked to fail"), "{error}");
    assert_eq!(string_attribute(m, "conveyor.pipeline"), Some("recorder"));
    assert_eq!(string_attribute(m, "conveyor.receive_count"), Some("4"));
    assert!(
        string_attribute(m, "conveyor.first_received_at")
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(
        string_attribute(m, "conveyor.source_queue"),
        Some(q.url.as_str())
    );

    // Backoff without jitter: 1 s, 2 s, 4 s between receives 1→2, 2→3, 3→4.
    let deliveries = recorder.seen.lock().unwrap()[&id].clone();
    assert_eq!(
        deliveries.iter().map(|d| d.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let gaps: Vec<f64> = deliveries
        .windows(2)
        .map(|w| (w[1].1 - w[0].1).as_secs_f64())
        .collect();
    for (gap, expected) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            *gap >= expected - 0.1 && *gap < expected + 2.5,
            "gaps {gaps:?}"
        );
    }
    assert!(gaps[2] > gaps[0], "backoff grows: {gaps:?}");
    assert_eq!(queue_depth(&sqs, &q.url).await, (0, 0));
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_on_first_receive_and_the_daemon_carries_on() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-poison", 3).await;
    let garbage: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        // 1 MiB less room for conveyor's attributes: the largest body that can be
        // dead-lettered with its reason.
        (0..1_048_576 - 1024)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect()
    };
    let poison = [
        ("not json", "not JSON".to_owned()),
        (
            "no detail",
            r#"{"version":"0","id":"p1","source":"s","detail-type":"t"}"#.to_owned(),
        ),
        (
            "detail not an object",
            r#"{"id":"p2","source":"s","detail-type":"t","detail":"x"}"#.to_owned(),
        ),
        (
            "invalid escape",
            r#"{"id":"p3","source":"s","detail-type":"t","detail":{"a":"\udc00"}}"#.to_owned(),
        ),
        ("1 MiB of garbage", garbage),
    ];
    let bodies: Vec<String> = poison.iter().map(|(_, b)| b.clone()).collect();
    for body in &bodies {
        sqs.send_message()
            .queue_url(&q.url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    let recorder = Recorder::default();
    let k = key();
    let config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\npipelines = [\"recorder\"]"),
    ));
    let daemon = InProcess::start(config, registry_with(&recorder)).await;
    let dead = drain_queue(&sqs, &q.dlq_url, poison.len(), Duration::from_secs(60)).await;

    // Still consuming after all of that.
    send_all(
        &sqs,
        &q.url,
        &[event_body(&unique("good-after-poison"), json!({}))],
    )
    .await;
    eventually("the good event", Duration::from_secs(30), async || {
        recorder.distinct() == 1
    })
    .await;
    daemon.stop().await;

    assert_eq!(dead.len(), poison.len());
    for (what, body) in &poison {
        let m = dead
            .iter()
            .find(|m| m.body() == Some(body.as_str()))
            .unwrap_or_else(|| panic!("{what} not in the DLQ"));
        let error = string_attribute(m, "conveyor.error").unwrap();
        assert!(error.starts_with("poison message: "), "{what}: {error}");
        assert!(
            !error.contains("udc00") && error.len() < 200,
            "{what}: reason quotes no content: {error}"
        );
        assert_eq!(
            string_attribute(m, "conveyor.receive_count"),
            Some("1"),
            "{what}: first receive"
        );
    }
    assert_eq!(queue_depth(&sqs, &q.url).await, (0, 0));
}

#[tokio::test]
async fn sigterm_with_200_in_flight_exits_zero_and_releases_everything_unfinished() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-sigterm", 3).await;
    // Event ids are the ledger's keys: unique per run, or an earlier run's successes skip them.
    let run = unique("term");
    // 100 finish within the grace period, 100 cannot.
    let bodies: Vec<String> = (0..200)
        .map(|i| {
            let sleep_ms = if i % 2 == 0 { 1_500 } else { 120_000 };
            event_body(
                &format!("{run}-{i}"),
                json!({"chaos": {"sleep_ms": sleep_ms}}),
            )
        })
        .collect();
    send_all(&sqs, &q.url, &bodies).await;

    let mut daemon = Conveyor::new(&format!(
        "[shutdown]\ngrace_secs = 4\n[queues.main]\nurl = \"{}\"\npollers = 4\nmax_in_flight = 200\n\
         visibility_timeout_secs = 300\nlease_renew_before_secs = 60\n[[queues.main.routes]]\npipelines = [\"chaos\"]\n",
        q.url
    ))
    .spawn_daemon();
    daemon
        .eventually_in_flight(200, Duration::from_secs(30))
        .await;

    daemon.signal(Signal::SIGTERM);
    let (code, took) = daemon.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{}", daemon.logs().join("\n"));
    assert!(
        took < Duration::from_secs(4 + 3),
        "exited within the grace period (+ flush): {took:?}"
    );

    // The 100 slow ones are visible again at once (their lease was 300 s); the rest deleted.
    let (visible, in_flight) = queue_depth(&sqs, &q.url).await;
    assert_eq!(
        (visible, in_flight),
        (100, 0),
        "{}",
        daemon.logs().join("\n")
    );
    let back = drain_queue(&sqs, &q.url, 100, Duration::from_secs(10)).await;
    let mut ids: Vec<u32> = back
        .iter()
        .map(|m| {
            conveyor::input::eventbridge::decode(m.body().unwrap())
                .unwrap()
                .id
                .unwrap()[run.len() + 1..]
                .parse()
                .unwrap()
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        (0..200).filter(|i| i % 2 == 1).collect::<Vec<_>>(),
        "exactly the unfinished ones"
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
}

#[tokio::test]
async fn a_second_signal_releases_at_once() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-twice", 3).await;
    let bodies: Vec<String> = (0..20)
        .map(|_| event_body(&unique("twice"), json!({"chaos": {"sleep_ms": 120_000}})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;
    let mut daemon = Conveyor::new(&format!(
        "[shutdown]\ngrace_secs = 60\n[queues.main]\nurl = \"{}\"\nmax_in_flight = 20\nvisibility_timeout_secs = 300\n\
         lease_renew_before_secs = 60\n[[queues.main.routes]]\npipelines = [\"chaos\"]\n",
        q.url
    ))
    .spawn_daemon();
    daemon
        .eventually_in_flight(20, Duration::from_secs(30))
        .await;
    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_log("stopping: no new receives", Duration::from_secs(5));
    let second = Instant::now();
    daemon.signal(Signal::SIGINT);
    let (code, _) = daemon.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0));
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(
        queue_depth(&sqs, &q.url).await,
        (20, 0),
        "all released:\n{}",
        daemon.logs().join("\n")
    );
}

#[tokio::test]
async fn recovers_by_itself_after_the_sqs_endpoint_freezes_for_20_seconds() {
    // The daemon reaches SQS through a proxy that stops answering: its endpoint freezes, and
    // the other tests' LocalStack does not (SIGSTOP on LocalStack held the whole suite).
    let _ls = localstack_shared().await;
    let proxy = FaultProxy::start().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-freeze", 5).await;
    // Event ids are the ledger's keys: unique per run, or an earlier run's successes skip them.
    let run = unique("frz");
    let bodies: Vec<String> = (0..300)
        .map(|i| event_body(&format!("{run}-{i}"), json!({})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;

    let recorder = Recorder {
        sleep: Duration::from_millis(100),
        ..Default::default()
    };
    let k = key();
    let mut config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!(
            "pollers = 2\nmax_in_flight = 10\n[[queues.{k}.routes]]\npipelines = [\"recorder\"]"
        ),
    ));
    config.aws.endpoint_url = Some(proxy.url.clone());
    let daemon = InProcess::start(config, registry_with(&recorder)).await;
    let readyz = format!("http://{}/readyz", daemon.ops_addr);
    eventually("some progress", Duration::from_secs(30), async || {
        recorder.distinct() >= 50
    })
    .await;

    proxy.hold(|_| true);
    let frozen = async {
        // Unready while SQS does not answer.
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut saw_unready = false;
        while Instant::now() < deadline {
            if http
                .get(&readyz)
                .send()
                .await
                .map(|r| r.status() == 503)
                .unwrap_or(false)
            {
                saw_unready = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        saw_unready
    }
    .await;
    proxy.heal();
    assert!(frozen, "/readyz turned unready while SQS was frozen");

    eventually("all 300 processed", Duration::from_secs(180), async || {
        recorder.distinct() == 300
    })
    .await;
    eventually(
        "the queue to be empty",
        Duration::from_secs(120),
        async || queue_depth(&sqs, &q.url).await == (0, 0),
    )
    .await;
    let http = reqwest::Client::new();
    eventually("ready again", Duration::from_secs(30), async || {
        http.get(&readyz)
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    daemon.stop().await;
    assert_eq!(
        queue_depth(&sqs, &q.dlq_url).await,
        (0, 0),
        "nothing dead-lettered by the outage"
    );
}

#[tokio::test]
async fn without_a_dlq_permanent_failures_are_retried_never_dropped() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let url = create_queue(&sqs, &unique("it-no-dlq")).await;
    send_all(
        &sqs,
        &url,
        &[event_body(
            &unique("no-dlq"),
            json!({"chaos": {"permanent": true}}),
        )],
    )
    .await;
    let k = key();
    let config = test_config(&queue_toml(
        &k,
        &url,
        &format!(
            "wait_time_secs = 1\n[queues.{k}.retry]\nbase_secs = 1\ncap_secs = 1\njitter = \"none\"\n\
             [[queues.{k}.routes]]\npipelines = [\"chaos\"]"
        ),
    ));
    let daemon = InProcess::start(config, conveyor::pipeline::Registry::built_in()).await;
    let label = format!("queue=\"{k}\"");
    eventually("three retries", Duration::from_secs(30), async || {
        metric("conveyor_messages_retried_total", &[&label]) >= 3.0
    })
    .await;
    daemon.stop().await;
    assert_eq!(metric("conveyor_messages_deleted_total", &[&label]), 0.0);
    assert_eq!(
        metric("conveyor_messages_dead_lettered_total", &[&label]),
        0.0
    );
    let (visible, in_flight) = queue_depth(&sqs, &url).await;
    assert_eq!(visible + in_flight, 1, "the message is still in its queue");
}
