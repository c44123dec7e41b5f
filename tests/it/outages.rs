//! Dependency outages with the defaults users get — `infra up`'s maxReceiveCount of 3 and
//! `config/default.toml`'s backoff (5 s base, full jitter) and breaker — while events keep
//! arriving: nothing is dead-lettered, and everything is processed once after recovery.
//! (Before circuit breakers, a 120 s PostgreSQL outage dead-lettered every event that arrived
//! during it: `retries exhausted`.)
//!
//! Each outage is real as the daemon sees it: a PostgreSQL reached through a proxy the test
//! cuts, a Bolt server of the test's own that it stops, a model endpoint answering 503 and
//! then 401. Each test runs its outage on its own dependency, so they run side by side.

use std::time::Duration;

use conveyor::config::{Config, Secret};
use conveyor::pipeline::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::fake_llm::FakeLlm;
use crate::helpers::*;

/// How long each outage lasts: longer than the whole retry budget of the defaults.
const OUTAGE: Duration = Duration::from_secs(150);
/// `infra up`'s RedrivePolicy.
const MAX_RECEIVE_COUNT: u32 = 3;

/// A route of `pipelines` on the test queue, everything else the built-in defaults.
pub(crate) fn defaults(k: &str, url: &str, pipelines: &str, llm: &FakeLlm) -> Config {
    let mut config = test_config(&format!(
        "{}\n[extraction]\nextractor = \"llm\"\nbase_url = \"{}\"\nmodel = \"fake-model\"\n",
        queue_toml(
            k,
            url,
            &format!("[[queues.{k}.routes]]\npipelines = {pipelines}")
        ),
        llm.base_url
    ));
    config.secrets.openai_api_key = Some(Secret::new("sk-outage-test"));
    config
}

pub(crate) fn wrapped(tenant: Uuid, interaction: Uuid) -> String {
    let detail = json!({"schema_version":"v1","tenant_id": tenant,"user_id":"auth0|rep-1",
        "interaction_type":"transcript",
        "content":{"text": "Rep: ACTION: Send the revised pricing deck\n","format":"diarized"},
        "timestamp":"2026-11-18T10:30:00Z","source":"web-mic","interaction_id": interaction});
    json!({"version":"0","id": Uuid::new_v4(),"detail-type":"EnvelopeV1.transcript",
        "source":"com.yourapp.transcription","account":"000000000000",
        "time":"2026-11-18T10:30:00Z","region":"us-east-1","resources":[],"detail": detail})
    .to_string()
}

/// Sends one event every two seconds until `stop`; yields the interaction ids sent.
pub(crate) fn trickle(
    url: &str,
    tenant: Uuid,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Uuid>> {
    let url = url.to_owned();
    tokio::spawn(async move {
        let sqs = sqs_client().await;
        let mut sent = Vec::new();
        while !stop.is_cancelled() {
            let id = Uuid::new_v4();
            send_all(&sqs, &url, &[wrapped(tenant, id)]).await;
            sent.push(id);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
        sent
    })
}

/// Waits for `/readyz` to name `dependency`'s open circuit.
pub(crate) async fn circuit_opens(daemon: &InProcess, dependency: &str) {
    let needle = format!("circuit:{dependency} unready (open since");
    eventually(
        "/readyz names the open circuit",
        Duration::from_secs(60),
        async || {
            let (status, body) = ops_get(daemon.ops_addr, "/readyz").await;
            status == 503 && body.contains(&needle)
        },
    )
    .await;
}

/// Projection rows of `tenant`.
pub(crate) async fn projected(pool: &sqlx::PgPool, tenant: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM projection_interactions WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// After recovery: every one of `sent` events has its effect (`effects` counts them) once,
/// the queue is empty, and nothing was dead-lettered.
pub(crate) async fn all_processed_once(
    sqs: &aws_sdk_sqs::Client,
    q: &TestQueue,
    k: &str,
    sent: usize,
    mut effects: impl AsyncFnMut() -> i64,
) {
    eventually(
        "every event's effect after recovery",
        Duration::from_secs(240),
        async || effects().await == sent as i64,
    )
    .await;
    eventually("the queue empty", Duration::from_secs(60), async || {
        queue_depth(sqs, &q.url).await == (0, 0)
    })
    .await;
    assert_eq!(effects().await, sent as i64, "each once");
    nothing_dead_lettered(sqs, q, k).await;
}

/// What every outage test asserts at the end.
async fn nothing_dead_lettered(sqs: &aws_sdk_sqs::Client, q: &TestQueue, k: &str) {
    assert_eq!(
        queue_depth(sqs, &q.dlq_url).await,
        (0, 0),
        "nothing dead-lettered: no message reached maxReceiveCount {MAX_RECEIVE_COUNT} \
         (SQS's native redrive would have moved it)"
    );
    assert_eq!(
        metric(
            "conveyor_messages_dead_lettered_total",
            &[&format!("queue=\"{k}\"")]
        ),
        0.0
    );
    assert_eq!(
        metric("conveyor_queue_paused", &[&format!("queue=\"{k}\"")]),
        0.0,
        "receiving again"
    );
    eprintln!(
        "{k}: {} requeued at maxReceiveCount",
        metric(
            "conveyor_messages_requeued_total",
            &[&format!("queue=\"{k}\"")]
        ) as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_s_postgres_outage_pauses_the_queue_and_dead_letters_nothing() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-pg-outage", MAX_RECEIVE_COUNT).await;
    let llm = FakeLlm::start().await;
    let (url, pool) = private_database("it_pg_outage").await;
    let (server, database) = url.rsplit_once('/').unwrap();
    let proxy = Proxy::start(server.rsplit_once('@').unwrap().1).await;
    let through_proxy = format!(
        "{}@127.0.0.1:{}/{database}",
        server.rsplit_once('@').unwrap().0,
        proxy.port
    );
    let k = unique("pgo").replace('-', "_").to_lowercase();
    let mut config = defaults(&k, &q.url, "[\"projection\"]", &llm);
    config.secrets.database_url = Some(Secret::new(through_proxy));
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let tenant = Uuid::new_v4();

    let stop = CancellationToken::new();
    let sending = trickle(&q.url, tenant, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.cut();
    circuit_opens(&daemon, "postgres").await;
    tokio::time::sleep(OUTAGE).await;
    proxy.restore().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    let sent = sending.await.unwrap();
    all_processed_once(&sqs, &q, &k, sent.len(), async || {
        projected(&pool, tenant).await
    })
    .await;
    eprintln!("{} events over a {OUTAGE:?} PostgreSQL outage", sent.len());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_150_s_bolt_server_outage_pauses_the_queue_and_dead_letters_nothing() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-bolt-outage", MAX_RECEIVE_COUNT).await;
    let llm = FakeLlm::start().await;
    let mut bolt = PrivateBolt::start().await;
    let k = unique("bo").replace('-', "_").to_lowercase();
    let mut config = defaults(&k, &q.url, "[\"graph\"]", &llm);
    config.graph.uri = Some(bolt.uri());
    config.graph.user = "root".into();
    config.secrets.neo4j_password = Some(Secret::new("private-bolt-pw"));
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let tenant = Uuid::new_v4();

    let stop = CancellationToken::new();
    let sending = trickle(&q.url, tenant, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    bolt.stop();
    circuit_opens(&daemon, "graph").await;
    tokio::time::sleep(OUTAGE).await;
    bolt.restart().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    let sent = sending.await.unwrap();
    let graph = bolt.graph().await;
    let t = tenant.to_string();
    let interactions = async || -> i64 {
        let mut rows = graph
            .execute(
                neo4rs::query("MATCH (i:Interaction {tenant_id: $t}) RETURN count(i) AS n")
                    .param("t", t.as_str()),
            )
            .await
            .unwrap();
        rows.next().await.unwrap().unwrap().get::<i64>("n").unwrap()
    };
    all_processed_once(&sqs, &q, &k, sent.len(), interactions).await;
    eprintln!("{} events over a {OUTAGE:?} Bolt server outage", sent.len());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_answering_503_for_150_s_then_401_for_60_s_dead_letters_nothing() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-model-outage", MAX_RECEIVE_COUNT).await;
    let llm = FakeLlm::start().await;
    let (url, pool) = private_database("it_model_outage").await;
    let k = unique("mo").replace('-', "_").to_lowercase();
    let mut config = defaults(&k, &q.url, "[\"projection\"]", &llm);
    config.secrets.database_url = Some(Secret::new(url));
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let tenant = Uuid::new_v4();

    let stop = CancellationToken::new();
    let sending = trickle(&q.url, tenant, stop.clone());
    tokio::time::sleep(Duration::from_secs(10)).await;
    llm.fail_for(503, OUTAGE);
    circuit_opens(&daemon, "model").await;
    tokio::time::sleep(OUTAGE).await;
    // The key is rotated and the new one not yet deployed: every call is refused.
    llm.fail_for(401, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.cancel();
    let sent = sending.await.unwrap();
    all_processed_once(&sqs, &q, &k, sent.len(), async || {
        projected(&pool, tenant).await
    })
    .await;
    let extractions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM extractions WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(extractions, sent.len() as i64, "each extracted once");
    eprintln!(
        "{} events over 150 s of 503 and 60 s of 401; {} model calls",
        sent.len(),
        llm.calls().len()
    );
    daemon.stop().await;
}
