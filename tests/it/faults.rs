//! The fault contract (docs/faults.md) against real components, with the defaults users get
//! (`infra up`'s maxReceiveCount of 3, the shipped backoff and breaker): a table lock held
//! while messages arrive, S3 and SNS refusing conveyor's role (answered by a fault proxy in
//! front of LocalStack, as the services would), `/readyz` from the first instant, and the
//! operator commands with an empty environment.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor::config::Secret;
use conveyor::pipeline::Registry;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::fault_proxy::FaultProxy;
use crate::helpers::*;
use crate::notifications::{Delivering, Stages, ranked, send_ranked};

/// `infra up`'s RedrivePolicy.
const MAX_RECEIVE_COUNT: u32 = 3;

/// The ops port for a daemon not started yet, so `/readyz` can be asked from its first instant.
async fn free_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_never_200_before_every_queue_has_answered_a_receive() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let (a, b) = (
        queue_with_dlq(&sqs, "it-ready-a", MAX_RECEIVE_COUNT).await,
        queue_with_dlq(&sqs, "it-ready-b", MAX_RECEIVE_COUNT).await,
    );
    let proxy = FaultProxy::start().await;
    // Queue b's receives fail (SQS answering 500) until the fix; its lookup passes.
    let b_url = b.url.clone();
    proxy.refuse(
        move |r| {
            let body = String::from_utf8_lossy(r.body);
            body.contains("MaxNumberOfMessages") && body.contains(&b_url)
        },
        500,
        FaultProxy::query_error("InternalError"),
    );
    let key = |p: &str| unique(p).replace('-', "_").to_lowercase();
    let (ka, kb) = (key("ra"), key("rb"));
    let route = |k: &str| format!("[[queues.{k}.routes]]\npipelines = [\"log\"]");
    let mut config = test_config(&format!(
        "{}{}",
        queue_toml(&ka, &a.url, &route(&ka)),
        queue_toml(&kb, &b.url, &route(&kb))
    ));
    config.aws.endpoint_url = Some(proxy.url.clone());
    let addr = free_port().await;
    config.ops.listen_addr = addr;

    // /readyz every 20 ms from before the daemon exists.
    let seen: Arc<Mutex<Vec<(Duration, u16, String)>>> = Arc::default();
    let started = Instant::now();
    let watching = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let answer = http
                    .get(format!("http://{addr}/readyz"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                if let Ok(answer) = answer {
                    let status = answer.status().as_u16();
                    let body = answer.text().await.unwrap_or_default();
                    seen.lock().unwrap().push((started.elapsed(), status, body));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let daemon = InProcess::start(config, Registry::built_in()).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let healed_at = started.elapsed();
    proxy.heal();
    eventually(
        "ready once b answers",
        Duration::from_secs(30),
        async || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|(_, status, _)| *status == 200)
        },
    )
    .await;
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    let first_ready = seen.iter().find(|(_, s, _)| *s == 200).unwrap().0;
    assert!(
        first_ready >= healed_at,
        "200 at {first_ready:?}, before queue b ever answered (fixed at {healed_at:?})"
    );
    let before: Vec<_> = seen.iter().filter(|(at, _, _)| *at < healed_at).collect();
    assert!(before.len() > 100, "asked often: {}", before.len());
    assert!(before.iter().all(|(_, s, _)| *s == 503));
    let named = |text: &str| {
        before
            .iter()
            .any(|(_, _, body)| body.contains(&format!("sqs:{kb}:receive unready ({text}")))
    };
    assert!(named("receive failing"), "{:?}", before.last());
    let (_, _, last) = before.last().unwrap();
    assert!(
        !last.contains(&format!("sqs:{ka}:receive unready")),
        "queue a answered: not named: {last}"
    );
    eprintln!(
        "{} answers before the fix, all 503; first 200 {:?} after it",
        before.len(),
        first_ready - healed_at
    );
    daemon.stop().await;
}

/// `LOCK TABLE … IN ACCESS EXCLUSIVE MODE` on what every message writes, for 90 s while 40
/// messages arrive (the CI length; `scripts/soak` holds it for 10 minutes through
/// `CONVEYOR_TEST_LOCK_SECS`): a lock wait is an outage of PostgreSQL, so nothing is
/// dead-lettered and no message's receive count reaches maxReceiveCount; all are written once
/// after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_locked_while_40_messages_arrive_dead_letters_nothing_and_spends_no_receives() {
    let lock = Duration::from_secs(
        std::env::var("CONVEYOR_TEST_LOCK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90),
    );
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-table-lock", MAX_RECEIVE_COUNT).await;
    let (url, pool) = private_database("it_table_lock").await;
    let k = unique("tl").replace('-', "_").to_lowercase();
    let mut config = test_config(&format!(
        "{}\n[extraction]\nextractor = \"patterns\"\n",
        queue_toml(
            &k,
            &q.url,
            &format!("[[queues.{k}.routes]]\npipelines = [\"projection\"]")
        )
    ));
    config.secrets.database_url = Some(Secret::new(url));
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let tenant = Uuid::new_v4();

    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE projection_interactions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let locked_at = Instant::now();
    let bodies: Vec<String> = (0..40)
        .map(|_| crate::outages::wrapped(tenant, Uuid::new_v4()))
        .collect();
    for chunk in bodies.chunks(4) {
        send_all(&sqs, &q.url, chunk).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(lock.saturating_sub(locked_at.elapsed())).await;
    // (ACCESS EXCLUSIVE blocks reads too: nothing can be counted until the release.)
    locker.rollback().await.unwrap();
    let released = Instant::now();
    eventually("all 40 written", Duration::from_secs(120), async || {
        crate::outages::projected(&pool, tenant).await == 40
    })
    .await;
    let recovered = released.elapsed();
    eventually("the queue empty", Duration::from_secs(60), async || {
        queue_depth(&sqs, &q.url).await == (0, 0)
    })
    .await;
    assert_eq!(
        queue_depth(&sqs, &q.dlq_url).await,
        (0, 0),
        "no message reached maxReceiveCount {MAX_RECEIVE_COUNT}: SQS's redrive would have moved it"
    );
    let label = format!("queue=\"{k}\"");
    assert_eq!(
        metric("conveyor_messages_dead_lettered_total", &[&label]),
        0.0
    );
    eprintln!(
        "40 messages over a {lock:?} table lock: all written {recovered:?} after the release; {} sent back as fresh copies before their receives ran out",
        metric("conveyor_messages_requeued_total", &[&label]) as u64
    );
    daemon.stop().await;
}

/// The drop bucket refuses conveyor's role (403 AccessDenied: a role without s3:ListBucket
/// gets it even for a missing key): the drop is not retried in a hot loop, `/readyz` names the
/// permission, and once it is granted the drop is read once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_bucket_refusing_the_role_names_the_permission_and_reads_the_drop_once_fixed() {
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-s3-denied").await;
    s.import_prefs(&[s.prefs("u-1", json!({}))]);
    let proxy = FaultProxy::start().await;
    proxy.refuse(
        reads_of_drops(&s.bucket),
        403,
        FaultProxy::s3_error("AccessDenied"),
    );
    let daemon = daemon_behind(&s, &proxy).await;

    let key = "drops/denied.jsonl";
    drop_20_events(&s, "s3d", key);
    let needle = format!("s3:GetObject on {}/{key} denied (AccessDenied)", s.bucket);
    eventually(
        "/readyz names the permission",
        Duration::from_secs(60),
        async || {
            let (status, body) = ops_get(daemon.ops_addr, "/readyz").await;
            status == 503 && body.contains("circuit:s3 unready") && body.contains(&needle)
        },
    )
    .await;
    let first = proxy.refused();
    tokio::time::sleep(Duration::from_secs(45)).await;
    let during = proxy.refused() - first;
    // The breaker's cooldown is 15 s: one trial per cooldown, not a hot loop.
    assert!(during <= 4, "{during} refused reads in 45 s");
    proxy.heal();
    let ranked =
        crate::notifications::drain_ranked(&s.sqs, &s.priority_url, 20, Duration::from_secs(120))
            .await;
    assert_eq!(ranked.len(), 20, "every event of the drop ranked");
    assert!(ranked.values().all(|r| r.len() == 1), "each once");
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));
    assert_eq!(queue_depth(&s.sqs, &ingest_dlq(&s).await).await, (0, 0));
    eprintln!("{during} refused reads in 45 s of AccessDenied, then the drop read once");
    daemon.stop().await;
}

/// SNS refusing the role (`AuthorizationError` on Publish) is conveyor's configuration, not
/// the notifications': none fails over or is dead-lettered, and all are delivered once the
/// permission is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_refusing_the_role_fails_nothing_over_and_delivers_everything_once_fixed() {
    provider_fault_fails_nothing_over(
        "it-sns-denied",
        Provider::Sns,
        403,
        "AuthorizationError",
        &["circuit:sns unready", "sns:Publish"],
    )
    .await;
}

/// SES throttling the account (`Throttling`, "Maximum sending rate exceeded.", on SendEmail)
/// is an outage of the provider: the channel waits behind the SES breaker, and none fails over
/// to SMS or is dead-lettered. (Failing over on throttling sends the excess to the next
/// channel's provider, which is the wrong answer to "slow down".) SNS's `Throttling` is
/// classified by the same code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ses_throttling_fails_nothing_over_and_delivers_everything_once_it_eases() {
    provider_fault_fails_nothing_over(
        "it-ses-throttled",
        Provider::Ses,
        400,
        "Throttling",
        &["circuit:ses unready"],
    )
    .await;
}

/// SES answering 503 (`ServiceUnavailable`) is an outage too: its breaker opens on the
/// repeated 5xx, and nothing fails over or spends its attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ses_answering_503_opens_its_breaker_and_fails_nothing_over() {
    provider_fault_fails_nothing_over(
        "it-ses-5xx",
        Provider::Ses,
        503,
        "ServiceUnavailable",
        &["circuit:ses unready"],
    )
    .await;
}

#[derive(Clone, Copy)]
enum Provider {
    /// SMS first, email the failover; the fault on SNS `Publish`.
    Sns,
    /// Email first, SMS the failover; the fault on SES `SendEmail`.
    Ses,
}

/// Ten notifications for the provider's channel with the other as failover, while the
/// provider answers every send `status` with `code` for 30 s after `/readyz` shows `readyz`:
/// afterwards each is delivered once on its first channel, none on the other, none failed or
/// dead-lettered.
async fn provider_fault_fails_nothing_over(
    prefix: &str,
    provider: Provider,
    status: u16,
    code: &str,
    readyz: &[&str],
) {
    let _ls = localstack_shared().await;
    let s = Stages::provision_with(
        prefix,
        Some(Delivering {
            allow_private: true,
            secrets: String::new(),
        }),
    )
    .await;
    let (first, action) = match provider {
        Provider::Sns => ("sms", "Action=Publish"),
        Provider::Ses => ("email", "Action=SendEmail"),
    };
    let order = match provider {
        Provider::Sns => json!(["sms", "email"]),
        Provider::Ses => json!(["email", "sms"]),
    };
    s.import_prefs(
        &(0..10)
            .map(|u| {
                json!({"tenantId": s.tenant, "userId": format!("u-{u}"),
                       "channels": {"sms": format!("+1555010{u:04}"),
                                    "email": format!("addr-mark-{u}@example.com")},
                       "failoverOrder": order})
            })
            .collect::<Vec<_>>(),
    );
    let proxy = FaultProxy::start().await;
    proxy.refuse(
        move |r| r.method.as_str() == "POST" && String::from_utf8_lossy(r.body).contains(action),
        status,
        FaultProxy::query_error(code),
    );
    let daemon = daemon_behind(&s, &proxy).await;
    for n in 0..10 {
        let mut event = s.event(&format!("fault-{n}"), &format!("u-{n}"), json!({}));
        event["user"]["channels"] = order.clone();
        s.publish(&event).await;
    }
    eventually(
        &format!("/readyz names {readyz:?}"),
        Duration::from_secs(90),
        async || {
            let (status, body) = ops_get(daemon.ops_addr, "/readyz").await;
            status == 503 && readyz.iter().all(|needle| body.contains(needle))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let refused = proxy.refused();
    proxy.heal();
    let delivered = async || -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'delivered' AND channel = $1), \
                    count(*) FILTER (WHERE channel <> $1), \
                    count(*) FILTER (WHERE state = 'failed') FROM notify_deliveries",
        )
        .bind(first)
        .fetch_one(&s.pool)
        .await
        .unwrap()
    };
    eventually(
        &format!("all ten delivered by {first}"),
        Duration::from_secs(120),
        async || delivered().await.0 == 10,
    )
    .await;
    let (_, other_channels, failed) = delivered().await;
    assert_eq!(other_channels, 0, "nothing failed over");
    assert_eq!(failed, 0);
    assert_eq!(queue_depth(&s.sqs, &s.priority_dlq_url).await, (0, 0));
    eprintln!("{refused} sends answered {status} {code}; then all 10 delivered by {first} once");
    daemon.stop().await;
}

/// A daemon whose only route is `notify-deliver` — nothing else of it would ever tell its
/// PostgreSQL breaker that the database is back — loses PostgreSQL for 10 s. A cooldown and a
/// second after the database returns, 200 notifications go out at the rate 200 did before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliver_only_daemon_is_back_at_full_rate_a_cooldown_after_a_postgres_blip() {
    let _ls = localstack_shared().await;
    let receiver = crate::delivery::Receiver::start(|_, _| 200).await;
    let (secret, _) = crate::delivery::new_secret();
    let tenant = Uuid::new_v4();
    let s = Stages::provision_with(
        "it-pg-blip",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    // The daemon itself, not the tenant's bucket, sets the pace.
    let extra = format!(
        "[notify.tenant_rate_limits.\"{tenant}\"]\nwebhook = {{ capacity = 10000, refill_per_sec = 10000 }}\n"
    );
    let mut config = test_config(&s.toml(&extra));
    config.queues.retain(|key, _| key == "priority");
    let (server, database) = s.database_url.rsplit_once('/').unwrap();
    let (credentials, host) = server.rsplit_once('@').unwrap();
    let proxy = Proxy::start(host).await;
    config.secrets.database_url = Some(Secret::new(format!(
        "{credentials}@127.0.0.1:{}/{database}",
        proxy.port
    )));
    config.secrets.notify_webhook_secrets = Some(Secret::new(format!("{tenant}={secret}")));
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let to = format!("{}/blip", receiver.base);

    // The rate of 200 deliveries: from the first to the last accepted request.
    let rate = async |ids: Vec<String>| -> f64 {
        let before = receiver.hits().len();
        let ranked: Vec<Value> = ids
            .iter()
            .map(|id| ranked(tenant, id, "webhook", &to))
            .collect();
        send_ranked(&s.sqs, &s.priority_url, &ranked).await;
        eventually("200 delivered", Duration::from_secs(120), async || {
            receiver.hits().len() >= before + 200
        })
        .await;
        let at: Vec<Instant> = receiver.hits()[before..].iter().map(|h| h.at).collect();
        let span = (*at.iter().max().unwrap() - *at.iter().min().unwrap()).as_secs_f64();
        200.0 / span.max(0.001)
    };
    let ids = |phase: &str| (0..200).map(|i| format!("{phase}-{i}")).collect::<Vec<_>>();
    let before = rate(ids("before")).await;

    proxy.cut();
    let cut = Instant::now();
    crate::outages::circuit_opens(&daemon, "postgres").await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;
    proxy.restore().await;
    // The breaker's cooldown (15 s) and a second.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let after = rate(ids("after")).await;
    let (_, body) = ops_get(daemon.ops_addr, "/readyz").await;
    assert!(!body.contains("circuit:postgres unready"), "closed: {body}");
    let hits = receiver.hits();
    assert_eq!(hits.len(), 400, "each once");
    assert!(hits.iter().all(|h| h.status == 200));
    eprintln!(
        "deliver-only daemon: {before:.0}/s before a 10 s PostgreSQL blip, {after:.0}/s from 16 s after it ({:.0}%)",
        100.0 * after / before
    );
    // Measured, not held to 10 %: CI runs other tests beside this one on two cores, and 200
    // webhooks to a local receiver take a quarter of a second, so one scheduling hiccup halves
    // a figure (a fresh-machine run measured 830/s, then 414/s). A breaker that stays
    // half-open lets one message through per cooldown (15 s): 0.07/s, thousands of times less.
    assert!(
        after >= before * 0.25,
        "{after:.1}/s after, {before:.1}/s before"
    );
    daemon.stop().await;
}

/// The model answering 30 s late for 90 s while an event arrives every 2 s (its calls allow
/// `extraction.timeout_secs`, 60 s): slow is not down; every event is processed once and
/// nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_answering_30_s_late_for_90_s_dead_letters_nothing() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-model-slow", MAX_RECEIVE_COUNT).await;
    let llm = crate::fake_llm::FakeLlm::start().await;
    let (url, pool) = private_database("it_model_slow").await;
    let k = unique("ms").replace('-', "_").to_lowercase();
    let mut config = crate::outages::defaults(&k, &q.url, "[\"projection\"]", &llm);
    config.secrets.database_url = Some(Secret::new(url));
    let daemon = InProcess::start(config, Registry::built_in()).await;
    let tenant = Uuid::new_v4();
    let stop = tokio_util::sync::CancellationToken::new();
    let sending = crate::outages::trickle(&q.url, tenant, stop.clone());
    tokio::time::sleep(Duration::from_secs(6)).await;
    llm.slow_for(Duration::from_secs(30), Duration::from_secs(90));
    tokio::time::sleep(Duration::from_secs(90)).await;
    stop.cancel();
    let sent = sending.await.unwrap();
    crate::outages::all_processed_once(&sqs, &q, &k, sent.len(), async || {
        crate::outages::projected(&pool, tenant).await
    })
    .await;
    eprintln!(
        "{} events over 90 s of a model answering 30 s late",
        sent.len()
    );
    daemon.stop().await;
}

/// S3 answering a drop's reads 35 s late for 90 s — past an AWS call attempt's 30 s
/// (`aws.call_timeout_secs` on top of the longest long poll): a timeout is an outage. The drop
/// is read once S3 is quick again, and nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_answering_35_s_late_for_90_s_reads_the_drop_once_it_is_quick_again() {
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-s3-slow").await;
    s.import_prefs(&[s.prefs("u-1", json!({}))]);
    let proxy = FaultProxy::start().await;
    proxy.delay(reads_of_drops(&s.bucket), Duration::from_secs(35));
    let daemon = daemon_behind(&s, &proxy).await;
    drop_20_events(&s, "s3s", "drops/slow.jsonl");
    tokio::time::sleep(Duration::from_secs(90)).await;
    let slowed = proxy.refused();
    assert!(slowed > 0, "the drop was asked for while S3 was slow");
    proxy.heal();
    let healed = Instant::now();
    let ranked =
        crate::notifications::drain_ranked(&s.sqs, &s.priority_url, 20, Duration::from_secs(180))
            .await;
    assert_eq!(ranked.len(), 20, "every event of the drop ranked");
    assert!(ranked.values().all(|r| r.len() == 1), "each once");
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));
    assert_eq!(queue_depth(&s.sqs, &ingest_dlq(&s).await).await, (0, 0));
    eprintln!(
        "{slowed} drop reads answered 35 s late; ranked {:?} after S3 was quick again",
        healed.elapsed()
    );
    daemon.stop().await;
}

/// A daemon of the stages' config whose AWS endpoint is `proxy`.
async fn daemon_behind(s: &Stages, proxy: &FaultProxy) -> InProcess {
    let mut config = test_config(&s.toml(""));
    config.secrets.database_url = Some(Secret::new(&s.database_url));
    config.aws.endpoint_url = Some(proxy.url.clone());
    InProcess::start(config, Registry::built_in()).await
}

/// S3 reads (GET) of the objects under `drops/` in `bucket`, as the proxy sees them.
fn reads_of_drops(bucket: &str) -> impl Fn(&crate::fault_proxy::Request) -> bool + use<> {
    let drops = format!("/{bucket}/drops/");
    move |r| r.method.as_str() == "GET" && r.uri.path().starts_with(&drops)
}

/// Uploads a drop of 20 events (`<tag>-0` … `<tag>-19`, for user `u-1`) under `key` with
/// `conveyor notify drop`.
fn drop_20_events(s: &Stages, tag: &str, key: &str) {
    let lines: String = (0..20)
        .map(|n| format!("{}\n", s.event(&format!("{tag}-{n}"), "u-1", json!({}))))
        .collect();
    s.upload_drop(key, lines.as_bytes());
}

/// The URL of the stages' `ingest` DLQ, where a drop's message would go.
async fn ingest_dlq(s: &Stages) -> String {
    s.sqs
        .get_queue_url()
        .queue_name(format!("{}-ingest-dlq", s.prefix))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// Holds one of a pool's connections for a second per message, as a slow statement does.
struct SlowStatement(sqlx::PgPool);

impl conveyor::pipeline::Pipeline for SlowStatement {
    fn name(&self) -> &'static str {
        "slow-statement"
    }

    fn dependencies(&self) -> &'static [conveyor::fault::Dependency] {
        &[conveyor::fault::Dependency::Postgres]
    }

    fn run(
        &self,
        _: Arc<conveyor::pipeline::Delivery>,
    ) -> futures::future::BoxFuture<'static, Result<(), conveyor::pipeline::PipelineError>> {
        let pool = self.0.clone();
        Box::pin(async move {
            sqlx::query("SELECT pg_sleep(1)")
                .execute(&pool)
                .await
                .map(|_| ())
                .map_err(|e| conveyor::fault::classify::postgres_failure("sleeping", &e))
        })
    }
}

/// 100 messages in flight on a pool of 10 connections, each holding one for a second, with
/// PostgreSQL healthy: waiting for a connection (up to 10 s here, twice the old 5 s acquire
/// timeout) is back-pressure. The breaker never opens and no message is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_10_under_100_messages_in_flight_never_opens_the_breaker() {
    let _ls = localstack_shared().await;
    let sqs = sqs_client().await;
    let q = queue_with_dlq(&sqs, "it-pool-wait", MAX_RECEIVE_COUNT).await;
    let (url, _pool) = private_database("it_pool_wait").await;
    let k = unique("pw").replace('-', "_").to_lowercase();
    let mut config = test_config(&queue_toml(
        &k,
        &q.url,
        &format!("[[queues.{k}.routes]]\npipelines = [\"slow-statement\"]"),
    ));
    config.secrets.database_url = Some(Secret::new(&url));
    assert_eq!(config.database.max_connections, 10, "the default pool");
    assert_eq!(
        config.queues[&k].max_in_flight, 100,
        "the default in flight"
    );
    let pool = conveyor::postgres::connect(&config.database, &Secret::new(&url))
        .await
        .unwrap();
    let mut registry = Registry::built_in();
    registry.add(Arc::new(SlowStatement(pool)));
    let daemon = InProcess::start(config, registry).await;
    let bodies: Vec<String> = (0..100)
        .map(|_| event_body(&unique("pw"), json!({})))
        .collect();
    send_all(&sqs, &q.url, &bodies).await;
    let label = format!("queue=\"{k}\"");
    let mut opened = false;
    let started = Instant::now();
    eventually("all 100 done", Duration::from_secs(90), async || {
        let (_, body) = ops_get(daemon.ops_addr, "/readyz").await;
        opened |= body.contains("circuit:postgres unready");
        metric("conveyor_messages_deleted_total", &[&label]) == 100.0
    })
    .await;
    let took = started.elapsed();
    assert!(!opened, "the PostgreSQL breaker opened on pool waits");
    assert_eq!(metric("conveyor_messages_retried_total", &[&label]), 0.0);
    assert_eq!(queue_depth(&sqs, &q.dlq_url).await, (0, 0));
    eprintln!("100 messages × 1 s on 10 connections: done in {took:?}, breaker closed throughout");
    daemon.stop().await;
}

#[tokio::test]
async fn operator_commands_need_no_secret_and_print_no_database_notice() {
    // `policy` with none of the secrets set prints a valid document.
    let policy = Conveyor::new("[database]\nrequired = true\n")
        .env_remove("DATABASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("NEO4J_PASSWORD")
        .output(&["policy", "--role", "run"]);
    assert_eq!(policy.code, Some(0), "{}", policy.all());
    let document: serde_json::Value = serde_json::from_str(&policy.stdout).unwrap();
    assert_eq!(document["Version"], "2012-10-17");
    // Still required by the commands that use it.
    let check = Conveyor::new("[database]\nrequired = true\n")
        .env_remove("DATABASE_URL")
        .output(&["check"]);
    assert_ne!(check.code, Some(0));
    assert!(check.all().contains("DATABASE_URL"), "{}", check.all());

    // A migration already applied: PostgreSQL's NOTICE is not an operator's business.
    let (url, _pool) = private_database("it_notice").await;
    for _ in 0..2 {
        let migrate = Conveyor::new("")
            .env("DATABASE_URL", &url)
            .output(&["migrate"]);
        assert_eq!(migrate.code, Some(0), "{}", migrate.all());
        assert!(
            !migrate.all().contains("already exists"),
            "{}",
            migrate.all()
        );
    }
    // A CONVEYOR_ variable that names no section is not configuration.
    let bin = Conveyor::new("")
        .env("CONVEYOR_BIN", "x")
        .output(&["policy"]);
    assert_eq!(bin.code, Some(0), "{}", bin.all());
}
