//! Benchmark helper for `scripts/bench` (not part of the daemon):
//!
//!   bench create NAME            create a queue, print its URL
//!   bench create-fifo NAME       create the FIFO queue NAME.fifo, print its URL
//!   bench fill URL COUNT         send COUNT EventBridge-wrapped ~1 KiB messages
//!   bench fill-fifo URL COUNT GROUPS
//!                                the same into a FIFO queue, spread round-robin over GROUPS
//!                                message groups
//!   bench fill-transcripts URL COUNT
//!                                send COUNT EnvelopeV1.transcript events (~2 KiB transcripts,
//!                                three `ACTION:` lines each for the fake model), one fresh
//!                                tenant and interaction id each run
//!   bench depth URL              print "visible in_flight"
//!   bench raw-loop URL TASKS N   the least work that drains a queue with aws-sdk-sqs: TASKS
//!                                tasks each receive 10 / delete-batch until N are deleted;
//!                                prints the SQS requests it made
//!   bench buckets LEASE_MS TASKS SECS
//!                                TASKS tasks take tokens of one hot rate-limit bucket
//!                                (PostgreSQL at DATABASE_URL, a fresh key) for SECS seconds,
//!                                leasing up to LEASE_MS of its refill per statement (0: a
//!                                statement per take); prints decisions/s and statements
//!
//! Endpoint, region and credentials come from the environment (`scripts/stack env`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    conveyor::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = Client::new(&sdk);
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["create", name] => {
            let url = client
                .create_queue()
                .queue_name(*name)
                .send()
                .await?
                .queue_url
                .unwrap_or_default();
            println!("{url}");
        }
        ["create-fifo", name] => {
            use aws_sdk_sqs::types::QueueAttributeName as A;
            let url = client
                .create_queue()
                .queue_name(format!("{name}.fifo"))
                .attributes(A::FifoQueue, "true")
                .send()
                .await?
                .queue_url
                .unwrap_or_default();
            println!("{url}");
        }
        ["fill", url, count] => fill(&client, url, bodies(count.parse()?), None).await?,
        ["fill-fifo", url, count, groups] => {
            fill(&client, url, bodies(count.parse()?), Some(groups.parse()?)).await?
        }
        ["fill-transcripts", url, count] => {
            fill(&client, url, transcripts(count.parse()?), None).await?
        }
        ["depth", url] => {
            use aws_sdk_sqs::types::QueueAttributeName as A;
            let a = client
                .get_queue_attributes()
                .queue_url(*url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await?
                .attributes
                .unwrap_or_default();
            println!(
                "{} {}",
                a[&A::ApproximateNumberOfMessages],
                a[&A::ApproximateNumberOfMessagesNotVisible]
            );
        }
        ["raw-loop", url, tasks, total] => {
            raw_loop(client, url, tasks.parse()?, total.parse()?).await?
        }
        ["buckets", lease_ms, tasks, secs] => {
            buckets(lease_ms.parse()?, tasks.parse()?, secs.parse()?).await?
        }
        _ => anyhow::bail!(
            "usage: bench create NAME | create-fifo NAME | fill URL COUNT | fill-fifo URL COUNT GROUPS | depth URL | raw-loop URL TASKS N | buckets LEASE_MS TASKS SECS"
        ),
    }
    Ok(())
}

/// ~1 KiB EventBridge events, sent 10 per call from 8 concurrent senders.
fn bodies(count: usize) -> Vec<String> {
    let padding = "x".repeat(800);
    (0..count)
        .map(|i| {
            serde_json::json!({
                "version": "0", "id": format!("bench-{i}"), "detail-type": "Bench.event",
                "source": "conveyor.bench", "account": "000000000000",
                "time": "2025-01-23T10:30:00Z", "region": "us-east-1", "resources": [],
                "detail": {"n": i, "padding": padding},
            })
            .to_string()
        })
        .collect()
}

fn transcripts(count: usize) -> Vec<String> {
    let tenant = uuid::Uuid::new_v4();
    let talk = "Sarah: We went through the pilot results and the rollout questions in detail.\n"
        .repeat(20);
    (0..count)
        .map(|i| {
            let text = format!(
                "{talk}Rep: ACTION: Send the revised pricing deck {i} | owner=Dana Rep | due=2026-12-01\n\
                 Sarah: ACTION: Book the security review {i} | owner=Sarah Lee\n\
                 Rep: ACTION: Share the pilot timeline {i}\n"
            );
            serde_json::json!({
                "version": "0", "id": uuid::Uuid::new_v4(), "detail-type": "EnvelopeV1.transcript",
                "source": "com.yourapp.transcription", "account": "000000000000",
                "time": "2026-11-18T10:30:00Z", "region": "us-east-1", "resources": [],
                "detail": {"schema_version": "v1", "tenant_id": tenant, "user_id": format!("user-{}", i % 20),
                    "interaction_type": "transcript", "content": {"text": text, "format": "diarized"},
                    "timestamp": "2026-11-18T10:30:00Z", "source": "web-mic",
                    "interaction_id": uuid::Uuid::new_v4(), "account_id": format!("acct-{}", i % 50),
                    "extras": {"opportunity_id": format!("opp-{}", i % 100), "contact_ids": [format!("contact-{}", i % 200)]}},
            })
            .to_string()
        })
        .collect()
}

/// Sends 10 per call from 8 concurrent senders; into a FIFO queue (`groups` set), message `i`
/// goes to group `i % groups`, deduplicated by its index.
async fn fill(
    client: &Client,
    url: &str,
    bodies: Vec<String>,
    groups: Option<usize>,
) -> anyhow::Result<()> {
    let numbered: Vec<(usize, String)> = bodies.into_iter().enumerate().collect();
    let chunks: Vec<Vec<(usize, String)>> = numbered.chunks(10).map(<[_]>::to_vec).collect();
    let chunks = Arc::new(std::sync::Mutex::new(chunks));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url, chunks) = (client.clone(), url.to_owned(), chunks.clone());
        senders.spawn(async move {
            loop {
                let Some(chunk) = chunks.lock().unwrap().pop() else {
                    return Ok::<_, anyhow::Error>(());
                };
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, (n, b))| {
                        let entry = SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(b);
                        match groups {
                            Some(groups) => entry
                                .message_group_id(format!("group-{}", n % groups))
                                .message_deduplication_id(n.to_string()),
                            None => entry,
                        }
                        .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let out = client
                    .send_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
                anyhow::ensure!(out.failed.is_empty(), "send failed: {:?}", out.failed);
            }
        });
    }
    while let Some(r) = senders.join_next().await {
        r??;
    }
    Ok(())
}

async fn raw_loop(client: Client, url: &str, tasks: usize, total: u64) -> anyhow::Result<()> {
    let deleted = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (client, url, deleted, requests) = (
            client.clone(),
            url.to_owned(),
            deleted.clone(),
            requests.clone(),
        );
        set.spawn(async move {
            while deleted.load(Ordering::Relaxed) < total {
                requests.fetch_add(1, Ordering::Relaxed);
                let messages = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await?
                    .messages
                    .unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                requests.fetch_add(1, Ordering::Relaxed);
                client
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
                deleted.fetch_add(messages.len() as u64, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    println!("{}", requests.load(Ordering::Relaxed));
    Ok(())
}

/// Token decisions per second on one hot bucket (its refill far above what is asked, so every
/// decision is a token now): `RESULT decisions_per_s=… statements_per_decision=…`.
async fn buckets(lease_ms: u64, tasks: usize, secs: u64) -> anyhow::Result<()> {
    use conveyor::config::Limit;
    use conveyor::notify::bucket::Buckets;
    let url = std::env::var("DATABASE_URL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await?;
    conveyor::postgres::migrate(&pool).await?;
    let buckets = Buckets::new(pool, std::time::Duration::from_millis(lease_ms));
    let limit = Limit {
        capacity: 1e6,
        refill_per_sec: 1e6,
    };
    let key = format!("bench:{}", uuid::Uuid::new_v4());
    let (decisions, statements) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = std::time::Instant::now();
    let until = started + std::time::Duration::from_secs(secs);
    let mut running = Vec::new();
    for _ in 0..tasks {
        let (buckets, key, decisions, statements) = (
            buckets.clone(),
            key.clone(),
            decisions.clone(),
            statements.clone(),
        );
        running.push(tokio::spawn(async move {
            while std::time::Instant::now() < until {
                let grant = buckets
                    .reserve(&[(uuid::Uuid::nil(), key.as_str(), limit)])
                    .await?;
                decisions.fetch_add(1, Ordering::Relaxed);
                if grant.statement {
                    statements.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in running {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (d, s) = (
        decisions.load(Ordering::Relaxed) as f64,
        statements.load(Ordering::Relaxed) as f64,
    );
    println!(
        "RESULT decisions_per_s={:.0} statements_per_decision={:.6}",
        d / elapsed,
        s / d
    );
    Ok(())
}
