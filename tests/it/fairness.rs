//! One tenant's backlog against another tenant's latency, end to end on the stack: drops go
//! through intake, ranking and delivery to a local webhook receiver, with the shipped
//! defaults (the tenant buckets, fairness, leases).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::delivery::{Receiver, drop_events, new_secret, notification};
use crate::helpers::*;
use crate::notifications::{Delivering, Stages};

/// Whether a webhook-id is one of tenant A's.
fn is_a(id: &str) -> bool {
    id.contains("-tenant-a-")
}

/// p99 of `latencies`, in seconds.
fn p99(mut latencies: Vec<f64>) -> f64 {
    latencies.sort_by(f64::total_cmp);
    latencies[((latencies.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)]
}

/// Drops `n` webhooks for tenant `b` and waits for all: each one's time from the drop's upload
/// to its arrival at the receiver.
async fn b_latencies(s: &Stages, receiver: &Receiver, b: uuid::Uuid, round: &str) -> Vec<f64> {
    let ids: Vec<String> = (0..100)
        .map(|i| format!("{}-b-{round}-{i}", s.prefix))
        .collect();
    let events: Vec<Value> = ids
        .iter()
        .map(|id| notification(b, id, "u-b", &["webhook"]))
        .collect();
    let uploaded = Instant::now();
    drop_events(s, &events);
    eventually(
        &format!("B's 100 ({round}) delivered"),
        Duration::from_secs(120),
        async || {
            let delivered = receiver.delivered();
            ids.iter().all(|id| delivered.contains_key(id))
        },
    )
    .await;
    let delivered = receiver.delivered();
    ids.iter()
        .map(|id| (delivered[id][0].at - uploaded).as_secs_f64())
        .collect()
}

/// Tenant A has 1,000 webhooks queued behind its bucket of 10/s (the first pass over them
/// done: each reserved and deferred to its token); tenant B then drops 100. B's p99 from drop
/// to delivered stays within 1.5× of its p99 alone, and A's backlog costs the database less
/// than one bucket statement per notification delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_backlog_behind_its_bucket_does_not_move_another_tenants_latency() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start(|_, _| 200).await;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let s = Stages::provision_with(
        "it-fair",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{a}={},{b}={}", new_secret().0, new_secret().0),
        }),
    )
    .await;
    s.import_prefs(&[
        serde_json::json!({"tenantId": a, "userId": "u-a",
            "channels": {"webhook": format!("{}/a", receiver.base)}}),
        serde_json::json!({"tenantId": b, "userId": "u-b",
            "channels": {"webhook": format!("{}/b", receiver.base)}}),
    ]);
    // Its own process: its /metrics are this test's alone (in-process daemons of one test run
    // share one recorder).
    let mut daemon = s.cli(&format!(
        "[notify.tenant_rate_limits.\"{a}\"]\nwebhook = {{ capacity = 10, refill_per_sec = 10 }}\n"
    ))
    .spawn_daemon();
    daemon.wait_for_log("consuming queue", Duration::from_secs(60));

    let alone = p99(b_latencies(&s, &receiver, b, "alone").await);

    let events: Vec<Value> = (0..1000)
        .map(|i| {
            notification(
                a,
                &format!("{}-tenant-a-{i}", s.prefix),
                "u-a",
                &["webhook"],
            )
        })
        .collect();
    drop_events(&s, &events);
    // Queued behind the bucket: ranked, every one reserved, the queues drained of them.
    eventually(
        "A's backlog reserved and deferred",
        Duration::from_secs(180),
        async || {
            let (reserved,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM notify_deliveries WHERE tenant_id = $1 AND (state = 'delivered' OR reserved_at IS NOT NULL)",
            )
            .bind(a)
            .fetch_one(&s.pool)
            .await
            .unwrap();
            reserved >= 990
                && queue_depth(&s.sqs, &s.incoming_url).await == (0, 0)
        },
    )
    .await;
    let a_before = receiver.delivered().keys().filter(|id| is_a(id)).count();
    let decisions_before = daemon
        .metric("conveyor_notify_bucket_decisions_total", &[])
        .await;
    let started = Instant::now();
    let with_backlog = p99(b_latencies(&s, &receiver, b, "beside-backlog").await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a_delivered = receiver.delivered().keys().filter(|id| is_a(id)).count() - a_before;
    let decisions = daemon
        .metric("conveyor_notify_bucket_decisions_total", &[])
        .await
        - decisions_before;
    eprintln!(
        "B's p99 drop → delivered: {alone:.2} s alone, {with_backlog:.2} s beside A's backlog ({:.2}×); A delivered {a_delivered} in the {:.1} s since, with {decisions} bucket statements (B's 100 included)",
        with_backlog / alone,
        started.elapsed().as_secs_f64()
    );
    assert!(
        with_backlog <= alone * 1.5 + 0.25,
        "B's p99 {with_backlog:.2} s beside A's backlog, {alone:.2} s alone"
    );
    assert!(a_delivered > 0, "A's backlog was being delivered meanwhile");
    // And A's receiver never saw more than A's bucket allows (10 at once + 10/s), within the
    // lateness a reserved or leased token may be spent with (`STALE`) and a little for the
    // receiver's clock against the daemon's.
    let mut a_hits: Vec<Instant> = receiver
        .delivered()
        .iter()
        .filter(|(id, _)| is_a(id))
        .map(|(_, hits)| hits[0].at)
        .collect();
    a_hits.sort();
    let stale = conveyor::notify::bucket::STALE.as_secs_f64();
    let mut worst = f64::MIN;
    for i in 0..a_hits.len() {
        for j in i..a_hits.len() {
            let window = (a_hits[j] - a_hits[i]).as_secs_f64();
            let seen = (j - i + 1) as f64;
            worst = worst.max(seen - (10.0 + 10.0 * (window + stale)));
        }
    }
    eprintln!("A's fullest window: {worst:.2} sends from its bucket's bound (≤ 2)");
    assert!(
        worst <= 2.0,
        "A's receiver saw {worst:.2} more than its bucket allows"
    );
    assert!(
        decisions <= (a_delivered + 100) as f64 * 1.1,
        "{decisions} bucket statements for {a_delivered} of A's and B's 100"
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(30));
}
