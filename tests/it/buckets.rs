//! Rate-limit buckets on a real PostgreSQL: two daemons' worth of leases on one hot bucket.
//! Each `Buckets` is what one daemon holds (its own leases); both share the test's database, as
//! two daemons share one in production.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor::config::Limit;
use conveyor::notify::bucket::{Buckets, Reservation};

use crate::helpers::*;

/// 2 × 32 senders take from one bucket of 10 + 200/s for 8 s, each sending at its token's due
/// time. However the tokens were leased, the two daemons together send no more than the bucket
/// allows: over the run within 1 %, and in any second within the lateness a lease allows
/// (`STALE`). And they ask the database far less often than once per send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_leasing_one_hot_bucket_send_no_more_than_it_allows() {
    let (_, pool) = private_database("it_buckets").await;
    let limit = Limit {
        capacity: 10.0,
        refill_per_sec: 200.0,
    };
    let tenant = uuid::Uuid::new_v4();
    let run = Duration::from_secs(8);
    let sends = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let statements = Arc::new(Mutex::new(0u64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _daemon in 0..2 {
        let buckets = Buckets::new(pool.clone(), Duration::from_secs(1));
        for _ in 0..32 {
            let (buckets, sends, statements) = (buckets.clone(), sends.clone(), statements.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < run {
                    let grant = buckets
                        .reserve(&[(tenant, "webhook:hot", limit)])
                        .await
                        .unwrap();
                    if grant.statement {
                        *statements.lock().unwrap() += 1;
                    }
                    if let Reservation::Ahead(wait) = grant.reservation {
                        tokio::time::sleep(wait).await;
                    }
                    sends.lock().unwrap().push(Instant::now());
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut at = sends.lock().unwrap().clone();
    at.sort();
    let span = (*at.last().unwrap() - started).as_secs_f64();
    let allowed = limit.capacity + limit.refill_per_sec * span;
    let total = at.len() as f64;
    // The fullest one-second window against the bucket's 10 + 200 × 1.
    let mut fullest = 0;
    for (i, t) in at.iter().enumerate() {
        let end = *t + Duration::from_secs(1);
        fullest = fullest.max(at[i..].iter().take_while(|s| **s < end).count());
    }
    let statements = *statements.lock().unwrap();
    eprintln!(
        "{total} sends in {span:.2} s from two daemons ({:.1}/s; the bucket allows {allowed:.0}, over by {:.2} %); fullest second {fullest} (allows 210); {statements} statements, {:.3} per send",
        total / span,
        (total / allowed - 1.0) * 100.0,
        statements as f64 / total
    );
    assert!(
        total <= allowed * 1.01,
        "{total} sends, the bucket allows {allowed:.0}"
    );
    let stale = conveyor::notify::bucket::STALE.as_secs_f64() * limit.refill_per_sec;
    assert!(
        fullest as f64 <= 210.0 + 2.0 * stale,
        "{fullest} sends in one second"
    );
    assert!(
        (statements as f64) < total / 5.0,
        "{statements} statements for {total} sends"
    );
}
