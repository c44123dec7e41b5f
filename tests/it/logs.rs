//! Logs carry ids, lengths and hashes — never message content or secrets — on every path a
//! message can take: success, transient and permanent pipeline failures, a model that
//! rate-limits, errs and answers garbage, poison bodies, invalid envelopes, dead-lettering,
//! shutdown. And neither does what `check` and `dlq peek` print.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::fake_llm::{FakeLlm, Scripted};
use crate::helpers::*;

// Multi-threaded: the fake model must keep answering while this thread waits on `check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_line_carries_content_or_secrets_on_any_path() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-logs", 5).await;
    let llm = FakeLlm::start().await;
    llm.script([
        Scripted::Status {
            status: 429,
            retry_after: Some(1),
        },
        Scripted::Status {
            status: 503,
            retry_after: None,
        },
        Scripted::Malformed,
        Scripted::Malformed,
    ]);
    let s = stack();
    let run = format!("{:08x}", rand::random::<u32>());
    let api_key = format!("sk-secret-{run}");
    let aws_secret = format!("aws-secret-{run}");
    let db_password = format!("dbpw{run}");
    // Trust authentication ignores the password, so it can be a marker.
    let database_url = s
        .database_url
        .replacen("postgres@", &format!("postgres:{db_password}@"), 1);
    let content = format!("contentmarker{run}");

    let k = unique("logs").replace('-', "_").to_lowercase();
    let toml = format!(
        "{}\n[telemetry]\nlog_format = \"json\"\nlog_level = \"debug,h2=info,hyper=info,rustls=info,aws=info,sqlx=info,neo4rs=info,tower=info,reqwest=info\"\n\
         [graph]\nuri = \"{}\"\nuser = \"{}\"\n\
         [extraction]\nbase_url = \"{}\"\nmodel = \"fake-model\"\n",
        queue_toml(
            &k,
            &q.url,
            &format!(
                "[queues.{k}.retry]\nbase_secs = 1\ncap_secs = 2\njitter = \"none\"\n\
                 [[queues.{k}.routes]]\nsource = \"*\"\ndetail_type = \"EnvelopeV1.*\"\n\
                 pipelines = [\"graph\", \"projection\", \"chaos\"]"
            )
        ),
        s.neo4j_uri,
        s.neo4j_user,
        llm.base_url
    );
    let conveyor = || {
        Conveyor::new(&toml)
            .env("OPENAI_API_KEY", &api_key)
            .env("AWS_SECRET_ACCESS_KEY", &aws_secret)
            .env("DATABASE_URL", &database_url)
    };

    let tenant = Uuid::new_v4();
    let envelope = |text: &str, chaos: serde_json::Value, format: &str| {
        let detail = json!({"schema_version":"v1","tenant_id": tenant,"user_id":"u-1",
            "interaction_type":"transcript","content":{"text": text,"format": format},
            "timestamp":"2026-11-18T10:30:00Z","source":"web-mic","interaction_id": Uuid::new_v4(),
            "account_id": "acct-logs", "extras": {"chaos": chaos}});
        json!({"version":"0","id": Uuid::new_v4(),"detail-type":"EnvelopeV1.transcript",
            "source":"com.yourapp.transcription","account":"000000000000",
            "time":"2026-11-18T10:30:00Z","region":"us-east-1","resources":[],"detail": detail})
        .to_string()
    };
    let line = |n: u32| {
        format!("Rep: {content} ACTION: Send the {content} deck {n} | owner=Quill {content}\n")
    };
    let bodies = vec![
        envelope(&line(1), json!(null), "diarized"),
        envelope(&line(2), json!({"fail_until_receive": 2}), "diarized"),
        envelope(&line(3), json!({"permanent": true}), "diarized"),
        // Invalid: the reason names the field and echoes the (enum) value, at most 32 chars;
        // markers go in free text, which is never echoed.
        envelope(&line(4), json!(null), "html"),
        format!("not json at all {content} {api_key}"),
        format!("{{\"detail\": \"{content}\"}}"),
    ];
    send_all(&sqs, &q.url, &bodies).await;

    let mut daemon = conveyor().spawn_daemon();
    eventually(
        "every message decided",
        Duration::from_secs(90),
        async || queue_depth(&sqs, &q.url).await == (0, 0),
    )
    .await;
    let dead = queue_depth(&sqs, &q.dlq_url).await.0;
    assert_eq!(dead, 4, "permanent, invalid envelope and two poison bodies");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));

    let mut lines = daemon.logs();
    let check = conveyor().output(&["check"]);
    assert!(check.stdout.contains("ok    model:"), "{}", check.all());
    lines.extend(check.all().lines().map(str::to_owned));
    let peek = conveyor().output(&["dlq", "--queue", &k, "peek", "--max", "10"]);
    assert_eq!(peek.code, Some(0), "{}", peek.all());
    lines.extend(peek.all().lines().map(str::to_owned));

    assert!(lines.len() > 50, "the run logged: {} lines", lines.len());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("chat endpoint answered 429")),
        "the model's failures were logged (without bodies)"
    );
    for needle in [
        &content,
        &api_key,
        &aws_secret,
        &db_password,
        &"Quill".to_owned(),
    ] {
        let leaks: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(needle.as_str()))
            .collect();
        assert!(leaks.is_empty(), "{needle:?} leaked: {leaks:#?}");
    }
}
