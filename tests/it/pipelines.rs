//! The real pipelines — extraction, the graph and the PostgreSQL projection — against
//! LocalStack, PostgreSQL and a Bolt server; only the model is a local fake.

use std::collections::BTreeMap;
use std::time::Duration;

use conveyor::config::{Config, Secret};
use conveyor::pipeline::Registry;
use neo4rs::{Graph, query};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fake_llm::{FakeLlm, Scripted};
use crate::helpers::*;

const API_KEY: &str = "sk-test-key-4b1d9e0a7c";

fn envelope(tenant: Uuid, interaction: Uuid, account: &str, text: &str) -> Value {
    json!({"schema_version":"v1","tenant_id": tenant,"user_id":"auth0|rep-1",
        "interaction_type":"transcript","content":{"text": text,"format":"diarized"},
        "timestamp":"2026-11-18T10:30:00Z","source":"web-mic","interaction_id": interaction,
        "extras":{"opportunity_id":"opp-7","contact_ids":["contact-sarah","contact-raj"]},
        "account_id": account})
}

fn wrapped(detail: &Value) -> String {
    json!({"version":"0","id": Uuid::new_v4(),"detail-type":"EnvelopeV1.transcript",
        "source":"com.yourapp.transcription","account":"000000000000",
        "time":"2026-11-18T10:30:00Z","region":"us-east-1","resources":[],"detail": detail})
    .to_string()
}

const TRANSCRIPT: &str = "Sarah: Thanks for joining.\n\
    Rep: ACTION: Send the revised pricing deck | owner=Dana Rep | due=2026-11-20\n\
    Sarah: ACTION: Book the security review | owner=Dana Rep\n\
    Rep: ACTION: Share the pilot timeline\n";

/// Config routing `pipelines` on a test queue, with the fake model and fast retries.
fn config(k: &str, url: &str, pipelines: &str, llm: &FakeLlm, extra: &str) -> Config {
    let mut config = test_config(&format!(
        "{}\n[extraction]\nextractor = \"llm\"\nbase_url = \"{}\"\nmodel = \"fake-model\"\ntimeout_secs = 10\n\
         requests_per_minute = 60000\nmax_concurrent_requests = 8\n{extra}",
        queue_toml(
            k,
            url,
            &format!(
                "max_receive_count = 100\n[queues.{k}.retry]\nbase_secs = 1\nmultiplier = 2.0\ncap_secs = 4\njitter = \"none\"\n\
                 [[queues.{k}.routes]]\nsource = \"*\"\ndetail_type = \"*\"\npipelines = {pipelines}"
            )
        ),
        llm.base_url
    ));
    config.secrets.openai_api_key = Some(Secret::new(API_KEY));
    config
}

/// [`config`] routing `graph` and `projection`, the graph on the test's own Bolt server.
fn graph_and_projection_on(bolt: &PrivateBolt, k: &str, url: &str, llm: &FakeLlm) -> Config {
    let mut config = config(
        k,
        url,
        "[\"graph\", \"projection\"]",
        llm,
        "[graph]\nuser = \"root\"\nconnect_timeout_secs = 2\n",
    );
    config.graph.uri = Some(bolt.uri());
    config.secrets.neo4j_password = Some(Secret::new("private-bolt-pw"));
    config
}

async fn graph() -> Graph {
    let s = stack();
    conveyor::install_crypto_provider();
    let config = conveyor::config::GraphConfig {
        user: s.neo4j_user.clone(),
        ..Default::default()
    };
    conveyor::bolt::connect(&config, &s.neo4j_uri, &Secret::new(s.neo4j_password))
        .await
        .unwrap()
}

async fn scalar(graph: &Graph, cypher: &str, params: &[(&str, &str)]) -> i64 {
    let mut q = query(cypher);
    for (k, v) in params {
        q = q.param(k, *v);
    }
    let mut rows = graph.execute(q).await.unwrap();
    let row = rows.next().await.unwrap().expect("one row");
    row.get::<i64>("n").unwrap()
}

/// Nodes per label and relationships, of one tenant.
async fn graph_counts(graph: &Graph, tenant: Uuid) -> BTreeMap<String, i64> {
    let t = tenant.to_string();
    let mut counts = BTreeMap::new();
    for label in conveyor::bolt::LABELS {
        let n = scalar(
            graph,
            &format!("MATCH (x:{label} {{tenant_id: $t}}) RETURN count(x) AS n"),
            &[("t", &t)],
        )
        .await;
        counts.insert(label.to_string(), n);
    }
    for rel in [
        "MEMBER_OF",
        "RECORDED",
        "BELONGS_TO",
        "ABOUT_ACCOUNT",
        "ABOUT_OPPORTUNITY",
        "FOR_ACCOUNT",
        "WITH_CONTACT",
        "WORKS_AT",
        "HAS_ACTION_ITEM",
        "OWNED_BY",
    ] {
        let n = scalar(
            graph,
            &format!("MATCH (a {{tenant_id: $t}})-[r:{rel}]->(b) RETURN count(r) AS n"),
            &[("t", &t)],
        )
        .await;
        counts.insert(rel.to_string(), n);
    }
    counts
}

async fn pg_count(pool: &sqlx::PgPool, sql: &'static str, tenant: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn items_in_pg(pool: &sqlx::PgPool, tenant: Uuid) -> i64 {
    pg_count(
        pool,
        "SELECT count(*) FROM projection_action_items WHERE tenant_id = $1",
        tenant,
    )
    .await
}

async fn extractions_in_pg(pool: &sqlx::PgPool, tenant: Uuid) -> i64 {
    pg_count(
        pool,
        "SELECT count(*) FROM extractions WHERE tenant_id = $1",
        tenant,
    )
    .await
}

#[tokio::test]
async fn a_transcript_through_eventbridge_becomes_a_tenant_graph_and_rows_once() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-graph", 5).await;
    let source = format!("com.yourapp.transcription.{}", unique("g"));
    rule_to_queue("default", json!({"source": [source]}), &q.url).await;
    let llm = FakeLlm::start().await;
    let (pool, graph) = (pg().await, graph().await);
    let k = unique("g").replace('-', "_").to_lowercase();
    let mut config = config(&k, &q.url, "[\"graph\", \"projection\"]", &llm, "");
    config.graph.uri = Some(stack().neo4j_uri);
    config.graph.user = stack().neo4j_user;
    let daemon = InProcess::start(config, Registry::built_in()).await;

    let tenant = Uuid::new_v4();
    let detail = envelope(tenant, Uuid::new_v4(), "acct-acme", TRANSCRIPT);
    let publish = async || put_event(&source, "EnvelopeV1.transcript", &detail).await;
    let deleted = || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        )
    };

    publish().await;
    eventually(
        "the first delivery deleted",
        Duration::from_secs(60),
        async || deleted() == 1.0,
    )
    .await;
    let first = graph_counts(&graph, tenant).await;
    let expected: BTreeMap<String, i64> = [
        ("Tenant", 1),
        ("User", 1),
        ("Interaction", 1),
        ("Account", 1),
        ("Opportunity", 1),
        ("Contact", 2),
        ("ActionItem", 3),
        ("Person", 1),
        ("MEMBER_OF", 1),
        ("RECORDED", 1),
        ("BELONGS_TO", 1),
        ("ABOUT_ACCOUNT", 1),
        ("ABOUT_OPPORTUNITY", 1),
        ("FOR_ACCOUNT", 1),
        ("WITH_CONTACT", 2),
        ("WORKS_AT", 2),
        ("HAS_ACTION_ITEM", 3),
        ("OWNED_BY", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(first, expected);
    let t = tenant.to_string();
    assert_eq!(
        scalar(
            &graph,
            "MATCH (i:Interaction {tenant_id: $t}) WHERE i.content IS NULL AND i.content_length > 0 \
             AND size(i.content_sha256) = 64 RETURN count(i) AS n",
            &[("t", &t)]
        )
        .await,
        1,
        "the interaction carries length and hash, not content"
    );
    assert_eq!(
        scalar(
            &graph,
            "MATCH (a:ActionItem {tenant_id: $t})-[:OWNED_BY]->(p:Person {tenant_id: $t}) \
             WHERE p.name = 'Dana Rep' AND a.due_date IS NOT NULL RETURN count(a) AS n",
            &[("t", &t)]
        )
        .await,
        1
    );
    assert_eq!(items_in_pg(&pool, tenant).await, 3);
    let due: Option<chrono::NaiveDate> = sqlx::query_scalar(
        "SELECT due_date FROM projection_action_items WHERE tenant_id = $1 AND description = 'Send the revised pricing deck'",
    )
    .bind(tenant)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(due, chrono::NaiveDate::from_ymd_opt(2026, 11, 20));

    // The same event again: nothing changes, and the model is not asked again.
    publish().await;
    eventually(
        "the second delivery deleted",
        Duration::from_secs(60),
        async || deleted() == 2.0,
    )
    .await;
    assert_eq!(graph_counts(&graph, tenant).await, expected);
    assert_eq!(items_in_pg(&pool, tenant).await, 3);
    assert_eq!(extractions_in_pg(&pool, tenant).await, 1);
    let calls = llm.calls();
    assert_eq!(
        calls.len(),
        1,
        "one extraction for two deliveries and two pipelines"
    );
    assert!(calls[0].json_schema, "structured output requested");
    assert_eq!(calls[0].bearer.as_deref(), Some(API_KEY));
    daemon.stop().await;
}

#[tokio::test]
async fn two_tenants_with_the_same_account_and_action_text_share_no_nodes() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-tenants", 5).await;
    let llm = FakeLlm::start().await;
    let graph = graph().await;
    let k = unique("t").replace('-', "_").to_lowercase();
    let mut config = config(&k, &q.url, "[\"graph\"]", &llm, "");
    config.graph.uri = Some(stack().neo4j_uri);
    config.graph.user = stack().neo4j_user;
    let daemon = InProcess::start(config, Registry::built_in()).await;

    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let bodies: Vec<String> = [a, b]
        .iter()
        .map(|t| wrapped(&envelope(*t, Uuid::new_v4(), "acct-shared", TRANSCRIPT)))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;
    eventually("both processed", Duration::from_secs(60), async || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        ) == 2.0
    })
    .await;
    for t in [a, b] {
        let counts = graph_counts(&graph, t).await;
        assert_eq!(counts["Account"], 1);
        assert_eq!(counts["ActionItem"], 3);
        let t = t.to_string();
        assert_eq!(
            scalar(
                &graph,
                "MATCH (x {tenant_id: $t})-[r]-(y) WHERE y.tenant_id <> $t RETURN count(r) AS n",
                &[("t", &t)]
            )
            .await,
            0,
            "no relationship leaves the tenant"
        );
    }
    let (ta, tb) = (a.to_string(), b.to_string());
    assert_eq!(
        scalar(
            &graph,
            "MATCH (x:Account) WHERE x.account_id = 'acct-shared' AND x.tenant_id IN [$a, $b] \
             RETURN count(DISTINCT x.key) AS n",
            &[("a", &ta), ("b", &tb)]
        )
        .await,
        2,
        "one Account node per tenant"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_429_then_500_then_malformed_reply_retries_with_backoff_and_extracts_once() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-llm-errors", 10).await;
    let llm = FakeLlm::start().await;
    llm.script([
        Scripted::Status {
            status: 429,
            retry_after: Some(3),
        },
        Scripted::Status {
            status: 500,
            retry_after: None,
        },
        Scripted::Malformed,
    ]);
    let pool = pg().await;
    let k = unique("l").replace('-', "_").to_lowercase();
    let config = config(&k, &q.url, "[\"projection\"]", &llm, "");
    let daemon = InProcess::start(config, Registry::built_in()).await;

    let tenant = Uuid::new_v4();
    send_all(
        &sqs,
        &q.url,
        &[wrapped(&envelope(
            tenant,
            Uuid::new_v4(),
            "acct-1",
            TRANSCRIPT,
        ))],
    )
    .await;
    eventually("processed", Duration::from_secs(60), async || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        ) == 1.0
    })
    .await;
    let calls = llm.calls();
    assert_eq!(
        calls.len(),
        4,
        "429, 500, malformed, then the in-place retry"
    );
    let gap = |i: usize| calls[i + 1].at - calls[i].at;
    assert!(
        gap(0) >= Duration::from_millis(2900),
        "Retry-After: 3 honoured over the 1 s backoff: {:?}",
        gap(0)
    );
    assert!(
        gap(1) >= Duration::from_millis(1900),
        "second backoff 2 s: {:?}",
        gap(1)
    );
    assert!(
        gap(2) < Duration::from_secs(1),
        "a malformed reply is asked for again at once: {:?}",
        gap(2)
    );
    assert_eq!(
        metric(
            "conveyor_messages_retried_total",
            &[&format!("queue=\"{k}\"")]
        ),
        2.0
    );
    assert_eq!(extractions_in_pg(&pool, tenant).await, 1);
    assert_eq!(items_in_pg(&pool, tenant).await, 3);
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    daemon.stop().await;
}

#[tokio::test]
async fn with_the_bolt_server_stopped_the_queue_pauses_and_both_pipelines_catch_up_once() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-bolt-down", 100).await;
    let llm = FakeLlm::start().await;
    let pool = pg().await;
    let mut bolt = PrivateBolt::start().await;
    let k = unique("b").replace('-', "_").to_lowercase();
    let config = graph_and_projection_on(&bolt, &k, &q.url, &llm);
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let tenant = Uuid::new_v4();
    let batch = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| wrapped(&envelope(tenant, Uuid::new_v4(), "acct-1", TRANSCRIPT)))
            .collect()
    };
    let interactions_in_pg = async || {
        pg_count(
            &pool,
            "SELECT count(*) FROM projection_interactions WHERE tenant_id = $1",
            tenant,
        )
        .await
    };
    let deleted = || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        )
    };

    send_all(&sqs, &q.url, &batch(5)).await;
    eventually(
        "the first five processed",
        Duration::from_secs(60),
        async || deleted() == 5.0,
    )
    .await;

    let before = graph_counts(&bolt.graph().await, tenant).await;
    assert_eq!(before["Interaction"], 5, "before the stop: {before:?}");
    bolt.stop();
    bolt.restart().await;
    assert_eq!(
        graph_counts(&bolt.graph().await, tenant).await["Interaction"],
        5,
        "after a restart"
    );
    bolt.stop();
    send_all(&sqs, &q.url, &batch(10)).await;
    // The route needs the graph: its circuit opens and the queue stops receiving, so the
    // events wait in SQS instead of spending their receives (src/breaker.rs). Events received
    // before it opened are projected already; none is deleted before its graph write.
    eventually(
        "the queue paused for the graph",
        Duration::from_secs(60),
        async || {
            let (_, body) = ops_get(daemon.ops_addr, "/readyz").await;
            body.contains("circuit:graph unready")
                && metric("conveyor_queue_paused", &[&format!("queue=\"{k}\"")]) == 1.0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        deleted(),
        5.0,
        "nothing deleted while its graph write is pending"
    );
    assert!(interactions_in_pg().await <= 15);
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));

    bolt.restart().await;
    eventually(
        "all fifteen processed",
        Duration::from_secs(120),
        async || deleted() == 15.0,
    )
    .await;
    let counts = graph_counts(&bolt.graph().await, tenant).await;
    assert_eq!(counts["Interaction"], 15, "every interaction once");
    assert_eq!(counts["ActionItem"], 45);
    assert_eq!(counts["HAS_ACTION_ITEM"], 45);
    assert_eq!(items_in_pg(&pool, tenant).await, 45);
    assert_eq!(
        llm.calls().len(),
        15,
        "one extraction per interaction, however often the graph write was retried"
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    daemon.stop().await;
}

#[tokio::test]
async fn a_600_kib_transcript_is_chunked_and_no_log_line_carries_content_or_secrets() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-big", 5).await;
    let llm = FakeLlm::start().await;
    let pool = pg().await;

    // 600 KiB of talk with a marker word on every line, and 20 action items spread through it.
    let mut text = String::new();
    let mut line = 0;
    while text.len() < 600 * 1024 {
        if line % 300 == 0 && line / 300 < 20 {
            text.push_str(&format!(
                "Rep: ACTION: Prepare zebrafinch briefing {} | owner=Quill Marker\n",
                line / 300
            ));
        } else {
            text.push_str(&format!(
                "Sarah: we discussed the bluewhale figures and the marmot roadmap, line {line}\n"
            ));
        }
        line += 1;
    }
    assert!(line / 300 >= 20, "all 20 items fit");
    let tenant = Uuid::new_v4();
    let body = wrapped(&envelope(tenant, Uuid::new_v4(), "acct-big", &text));
    // Over EventBridge's 256 KB entry limit: such events come straight to the queue
    // (SQS takes up to 1 MiB).
    send_all(&sqs, &q.url, &[body]).await;

    let k = unique("big").replace('-', "_").to_lowercase();
    let s = stack();
    let toml = format!(
        "{}\n[telemetry]\nlog_format = \"json\"\nlog_level = \"debug\"\n\
         [graph]\nuri = \"{}\"\nuser = \"{}\"\n\
         [extraction]\nextractor = \"llm\"\nbase_url = \"{}\"\nmodel = \"fake-model\"\nchunk_tokens = 6000\n",
        queue_toml(
            &k,
            &q.url,
            &format!(
                "[[queues.{k}.routes]]\nsource = \"*\"\ndetail_type = \"*\"\npipelines = [\"graph\", \"projection\"]"
            )
        ),
        s.neo4j_uri,
        s.neo4j_user,
        llm.base_url
    );
    let mut daemon = Conveyor::new(&toml)
        .env("OPENAI_API_KEY", API_KEY)
        .spawn_daemon();
    eventually("20 items projected", Duration::from_secs(120), async || {
        items_in_pg(&pool, tenant).await == 20
    })
    .await;
    eventually("the message deleted", Duration::from_secs(30), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    let chunks = llm.calls().len();
    let expected = (text.len() as f64 / (6000.0 * 4.0)).ceil() as usize;
    assert!(
        (expected..=expected + 1).contains(&chunks),
        "{} bytes in {chunks} chunks, expected about {expected}",
        text.len()
    );
    assert!(llm.calls().iter().all(|c| c.user_content_len <= 24_000));
    assert_eq!(extractions_in_pg(&pool, tenant).await, 1);

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
    let logs = daemon.logs();
    assert!(
        logs.iter().any(|l| l.contains("extracted action items")),
        "the extraction is logged (by counts)"
    );
    for needle in ["zebrafinch", "bluewhale", "marmot", "Quill", API_KEY] {
        let leaks: Vec<&String> = logs.iter().filter(|l| l.contains(needle)).collect();
        assert!(leaks.is_empty(), "{needle:?} in the logs: {leaks:?}");
    }
}

#[test]
fn check_probes_the_model_endpoint() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let llm = rt.block_on(FakeLlm::start());
    let route = "[queues.main]\nname = \"unused\"\n[[queues.main.routes]]\nsource = \"*\"\ndetail_type = \"*\"\npipelines = [\"projection\"]\n";
    let ok = Conveyor::new(&format!(
        "{route}[extraction]\nbase_url = \"{}\"\n",
        llm.base_url
    ))
    .env("OPENAI_API_KEY", API_KEY)
    .output(&["check"]);
    assert!(
        ok.stdout.contains("ok    model:"),
        "model probe passes: {}",
        ok.all()
    );
    assert!(!ok.all().contains(API_KEY), "the key is never printed");
    let port = closed_port();
    let down = Conveyor::new(&format!(
        "{route}[extraction]\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
    ))
    .env("OPENAI_API_KEY", API_KEY)
    .output(&["check"]);
    assert_eq!(down.code, Some(1), "{}", down.all());
    assert!(down.stdout.contains("FAIL  model:"), "{}", down.all());
}

/// Another tenant's transcript: two items, none of which the first tenant's has.
const OTHER_TRANSCRIPT: &str = "Lee: Welcome.\n\
    Lee: ACTION: Renew the Globex contract | owner=Lee Other\n\
    Rep: ACTION: Email the onboarding checklist\n";

/// The action-item descriptions a tenant has in PostgreSQL, sorted.
async fn descriptions_in_pg(pool: &sqlx::PgPool, tenant: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT description FROM projection_action_items WHERE tenant_id = $1 ORDER BY description",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The action-item descriptions a tenant has in the graph, sorted.
async fn descriptions_in_graph(graph: &Graph, tenant: Uuid) -> Vec<String> {
    let mut rows = graph
        .execute(
            query("MATCH (a:ActionItem {tenant_id: $t}) RETURN a.description AS d ORDER BY d")
                .param("t", tenant.to_string()),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.unwrap() {
        out.push(row.get::<String>("d").unwrap());
    }
    out
}

const MINE: [&str; 3] = [
    "Book the security review",
    "Send the revised pricing deck",
    "Share the pilot timeline",
];
const THEIRS: [&str; 2] = [
    "Email the onboarding checklist",
    "Renew the Globex contract",
];

/// Idempotency is per tenant: another tenant reusing an `interaction_id` is a different
/// interaction, never a duplicate of the first.
#[tokio::test]
async fn two_tenants_with_one_interaction_id_are_both_processed_each_with_its_own_items() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-tenant-key", 5).await;
    let llm = FakeLlm::start().await;
    let (pool, graph) = (pg().await, graph().await);
    let k = unique("tk").replace('-', "_").to_lowercase();
    let mut config = config(&k, &q.url, "[\"graph\", \"projection\"]", &llm, "");
    config.graph.uri = Some(stack().neo4j_uri);
    config.graph.user = stack().neo4j_user;
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let deleted = || {
        metric(
            "conveyor_messages_deleted_total",
            &[&format!("queue=\"{k}\"")],
        )
    };

    let (a, b, interaction) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    send_all(
        &sqs,
        &q.url,
        &[wrapped(&envelope(a, interaction, "acct-1", TRANSCRIPT))],
    )
    .await;
    eventually(
        "the first tenant's event",
        Duration::from_secs(60),
        async || deleted() == 1.0,
    )
    .await;
    send_all(
        &sqs,
        &q.url,
        &[wrapped(&envelope(
            b,
            interaction,
            "acct-1",
            OTHER_TRANSCRIPT,
        ))],
    )
    .await;
    eventually(
        "the second tenant's event",
        Duration::from_secs(60),
        async || deleted() == 2.0,
    )
    .await;

    assert_eq!(descriptions_in_pg(&pool, a).await, MINE);
    assert_eq!(descriptions_in_pg(&pool, b).await, THEIRS);
    assert_eq!(descriptions_in_graph(&graph, a).await, MINE);
    assert_eq!(descriptions_in_graph(&graph, b).await, THEIRS);
    assert_eq!(extractions_in_pg(&pool, a).await, 1);
    assert_eq!(extractions_in_pg(&pool, b).await, 1);
    assert_eq!(
        llm.calls().len(),
        2,
        "one extraction per tenant's interaction"
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    daemon.stop().await;
}

/// The leak this guards against: the first tenant's extraction is stored while its graph
/// write waits for the Bolt server; a second tenant's event with the same `interaction_id`
/// must get its own extraction, not the stored one.
#[tokio::test]
async fn with_the_graph_down_a_second_tenant_reusing_an_interaction_id_gets_none_of_the_firsts_items()
 {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-tenant-leak", 100).await;
    let llm = FakeLlm::start().await;
    let pool = pg().await;
    let mut bolt = PrivateBolt::start().await;
    let k = unique("tl").replace('-', "_").to_lowercase();
    let config = graph_and_projection_on(&bolt, &k, &q.url, &llm);
    bolt.stop();
    let daemon = InProcess::start(config, Registry::built_in()).await;

    let (a, b, interaction) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // The first tenant's event is extracted (and its extraction stored) if it is received
    // before the graph's circuit opens and pauses the queue; either way one tenant's result
    // is stored or in flight while the other's is looked up.
    send_all(
        &sqs,
        &q.url,
        &[wrapped(&envelope(a, interaction, "acct-1", TRANSCRIPT))],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    send_all(
        &sqs,
        &q.url,
        &[wrapped(&envelope(
            b,
            interaction,
            "acct-1",
            OTHER_TRANSCRIPT,
        ))],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    bolt.restart().await;
    eventually(
        "both written to the graph",
        Duration::from_secs(120),
        async || {
            metric(
                "conveyor_messages_deleted_total",
                &[&format!("queue=\"{k}\"")],
            ) == 2.0
        },
    )
    .await;
    let graph = bolt.graph().await;
    assert_eq!(descriptions_in_graph(&graph, a).await, MINE);
    assert_eq!(descriptions_in_graph(&graph, b).await, THEIRS);
    assert_eq!(descriptions_in_pg(&pool, a).await, MINE);
    assert_eq!(
        descriptions_in_pg(&pool, b).await,
        THEIRS,
        "no item of the first tenant"
    );
    assert_eq!(
        llm.calls().len(),
        2,
        "each tenant's interaction extracted once"
    );
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    daemon.stop().await;
}

/// A chunk that fails does not cost the chunks that finished: the retry asks the model only
/// for the missing one.
#[tokio::test]
async fn a_failed_chunk_is_the_only_one_asked_for_again() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-chunks", 5).await;
    let llm = FakeLlm::start().await;
    // The first answer is a 500: one of the three chunks fails, whichever asks first.
    llm.script([Scripted::Status {
        status: 500,
        retry_after: None,
    }]);
    let pool = pg().await;
    let k = unique("ck").replace('-', "_").to_lowercase();
    // 256 tokens ≈ 1 KiB per chunk.
    let mut config = config(&k, &q.url, "[\"projection\"]", &llm, "chunk_tokens = 256\n");
    config.extraction.max_concurrent_requests = 1;
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let tenant = Uuid::new_v4();
    let text: String = (0..3)
        .map(|part| {
            format!("Rep: ACTION: Deliver part {part}\n")
                + &format!("Rep: filler words for chunk {part}.\n").repeat(25)
        })
        .collect();
    send_all(
        &sqs,
        &q.url,
        &[wrapped(&envelope(tenant, Uuid::new_v4(), "acct-1", &text))],
    )
    .await;
    eventually("projected", Duration::from_secs(60), async || {
        items_in_pg(&pool, tenant).await == 3
    })
    .await;
    assert_eq!(
        llm.calls().len(),
        4,
        "three chunks, then only the one that failed"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn an_envelope_published_to_an_sns_topic_is_processed_like_an_eventbridge_one() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-sns", 5).await;
    let sns = aws_sdk_sns::Client::new(&aws_sdk().await);
    let topic = sns
        .create_topic()
        .name(unique("it-sns-topic"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(queue_arn(&sqs, &q.url).await)
        .send()
        .await
        .unwrap();
    let llm = FakeLlm::start().await;
    let (pool, graph) = (pg().await, graph().await);
    let k = unique("sns").replace('-', "_").to_lowercase();
    let mut config = config(&k, &q.url, "[\"graph\", \"projection\"]", &llm, "");
    config.graph.uri = Some(stack().neo4j_uri);
    config.graph.user = stack().neo4j_user;
    let queue = config.queues.get_mut(&k).unwrap();
    queue.format = conveyor::input::Format::Sns;
    queue.routes[0].source = topic.clone();
    queue.routes[0].contract = conveyor::contract::Contract::EnvelopeV1;
    config
        .validate()
        .expect("graph and projection take envelope_v1");
    let daemon = InProcess::start(config, Registry::built_in()).await;

    let tenant = Uuid::new_v4();
    let detail = envelope(tenant, Uuid::new_v4(), "acct-sns", TRANSCRIPT);
    sns.publish()
        .topic_arn(&topic)
        .subject("EnvelopeV1.transcript")
        .message(detail.to_string())
        .send()
        .await
        .unwrap();
    eventually(
        "the notification deleted",
        Duration::from_secs(60),
        async || {
            metric(
                "conveyor_messages_deleted_total",
                &[&format!("queue=\"{k}\"")],
            ) == 1.0
        },
    )
    .await;
    let counts = graph_counts(&graph, tenant).await;
    assert_eq!(counts["Interaction"], 1);
    assert_eq!(counts["ActionItem"], 3);
    assert_eq!(items_in_pg(&pool, tenant).await, 3);
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    daemon.stop().await;
}
