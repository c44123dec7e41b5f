//! The foundation: the stack is really reachable from Rust, `check` validates, redacts and
//! probes, and `run` serves the ops endpoints and stops cleanly on SIGTERM.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::helpers::*;

const NOOP_ROUTE: &str = "[[queues.main.routes]]\npipelines = [\"noop\"]\n";

#[tokio::test]
async fn stack_sqs_creates_a_queue_and_round_trips_a_message() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let url = create_queue(&sqs, &unique("it-roundtrip")).await;
    sqs.send_message()
        .queue_url(&url)
        .message_body("hello")
        .send()
        .await
        .unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].body(), Some("hello"));
    sqs.delete_queue().queue_url(&url).send().await.unwrap();
}

#[tokio::test]
async fn stack_postgres_answers_a_query() {
    let pool = sqlx::PgPool::connect(&stack().database_url).await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT 40 + 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 42);
}

#[tokio::test]
async fn stack_bolt_server_answers_return_1() {
    conveyor::install_crypto_provider();
    let s = stack();
    let config = conveyor::config::GraphConfig {
        user: s.neo4j_user.clone(),
        ..Default::default()
    };
    conveyor::bolt::connect(
        &config,
        &s.neo4j_uri,
        &conveyor::config::Secret::new(s.neo4j_password),
    )
    .await
    .expect("RETURN 1 over Bolt");
}

#[tokio::test]
async fn check_probes_every_dependency_and_never_prints_secrets() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let queue = unique("it-check");
    create_queue(&sqs, &queue).await;
    let s = stack();
    // Trust auth ignores the password, so a marker password still connects.
    let db_url = s
        .database_url
        .replace("postgres@", "postgres:db-secret-marker-7f3a@");
    let out = Conveyor::new(&format!("[queues.main]\nname = \"{queue}\"\n{NOOP_ROUTE}"))
        .env("DATABASE_URL", &db_url)
        .env("OPENAI_API_KEY", "sk-secret-marker-91c2")
        .env("AWS_SECRET_ACCESS_KEY", "aws-secret-marker-55d1")
        .output(&["check"]);
    // LocalStack accepts any secret key, so the marker works for SQS too.
    assert_eq!(out.code, Some(0), "{}", out.all());
    for secret in [
        "db-secret-marker-7f3a",
        "sk-secret-marker-91c2",
        "aws-secret-marker-55d1",
        &s.neo4j_password,
    ] {
        assert!(
            !out.all().contains(secret),
            "secret {secret} printed:\n{}",
            out.all()
        );
    }
    assert!(
        out.stdout.contains("# DATABASE_URL = ***"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("# OPENAI_API_KEY = ***"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("name = \"{queue}\"")),
        "{}",
        out.stdout
    );
    for probe in [
        "ok    aws region",
        "ok    sqs queue main",
        "ok    postgres",
        "ok    bolt graph",
    ] {
        assert!(
            out.stdout.contains(probe),
            "missing {probe:?}:\n{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn check_exits_non_zero_naming_each_unreachable_dependency() {
    let _ls = localstack_shared().await;
    let out = Conveyor::new(&format!(
        "[queues.main]\nname = \"{}\"\n{NOOP_ROUTE}",
        unique("it-missing")
    ))
    .env(
        "DATABASE_URL",
        &format!("postgres://postgres@127.0.0.1:{}/conveyor", closed_port()),
    )
    .env("NEO4J_URI", &format!("127.0.0.1:{}", closed_port()))
    .env("CONVEYOR_DATABASE__CONNECT_TIMEOUT_SECS", "2")
    .env("CONVEYOR_GRAPH__CONNECT_TIMEOUT_SECS", "2")
    .output(&["check"]);
    assert_eq!(out.code, Some(1), "{}", out.all());
    for name in ["sqs queue main", "postgres", "bolt graph"] {
        assert!(
            out.stdout.contains(&format!("FAIL  {name}")),
            "{name}:\n{}",
            out.all()
        );
        assert!(
            out.stderr.contains(name),
            "{name} not named on stderr:\n{}",
            out.stderr
        );
    }
}

#[test]
fn bad_config_fails_naming_the_key() {
    let cases = [
        (
            "[queues.main]\nname = \"q\"\nwait_time_secs = 30\n",
            "queues.main.wait_time_secs = 30",
        ),
        (
            "[queues.main]\nname = \"q\"\nreceive_batch_size = 11\n",
            "queues.main.receive_batch_size = 11",
        ),
        ("[telemetry]\nformat = \"json\"\n", "telemetry.format"),
        ("[graph]\nuri = \"127.0.0.1:7687\"\n", "NEO4J_PASSWORD"),
    ];
    for (toml, needle) in cases {
        let out = Conveyor::new(toml)
            .env_remove("NEO4J_PASSWORD")
            .env_remove("NEO4J_URI")
            .output(&["check", "--no-probe"]);
        assert_eq!(out.code, Some(1), "{toml}: {}", out.all());
        assert!(
            out.stderr.contains(needle),
            "{toml}: expected {needle:?} in:\n{}",
            out.stderr
        );
    }
    let out = Conveyor::new("")
        .env("CONVEYOR_QUEUES__MAIN__NAME", "q")
        .env("CONVEYOR_QUEUES__MAIN__POLLERS", "0")
        .output(&["check", "--no-probe"]);
    assert!(
        out.stderr.contains("queues.main.pollers = 0"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn run_serves_ops_endpoints_and_exits_zero_on_sigterm() {
    let mut daemon = Conveyor::new("").spawn_daemon();
    let http = reqwest::Client::new();
    let health = http.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");
    assert_eq!(
        http.get(daemon.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http.get(daemon.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);

    daemon.signal(Signal::SIGTERM);
    let (code, took) = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", daemon.logs().join("\n"));
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(daemon.logs().iter().any(|l| l.contains("conveyor stopped")));
}
