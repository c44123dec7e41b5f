//! Drops read in ranges (`notify-ingest`): lines as their producer wrote them, delivered with
//! their bytes intact or listed in the rejects object with their line number; a drop split
//! across daemons, killed mid-read, read again no further than the ranges in flight; a new
//! upload of a key abandoning the old one's unread ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::delivery::{Receiver, new_secret};
use crate::helpers::*;
use crate::notifications::{Delivering, Stages, settled};

/// A NotificationEvent line for `tenant`'s user `u-1`, on the webhook channel.
fn event(tenant: uuid::Uuid, id: &str, title: &str, metadata: &str) -> String {
    format!(
        r#"{{"eventId":"{id}","source":"billing","occurredAt":"2026-11-23T10:00:00Z","tenantId":"{tenant}","user":{{"id":"u-1","channels":["webhook"]}},"content":{{"title":"{title}","body":"BODY-MARK","metadata":{metadata}}}}}"#
    )
}

/// Waits for the daemon's `n`th "drop ingested" line.
fn ingested(daemon: &Daemon, n: usize, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<String> = daemon
            .logs()
            .into_iter()
            .filter(|l| l.contains("drop ingested"))
            .collect();
        if lines.len() >= n {
            return lines[n - 1].clone();
        }
        assert!(
            Instant::now() < deadline,
            "drop {n} not ingested:\n{}",
            daemon.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A drop whose lines hold what SQS refuses raw (U+FFFF), escapes (U+0000), numbers no
/// float holds (1e400, a 30-digit integer), a lone surrogate, a BOM, CRLF, a blank line, a
/// line longer than `notify.max_line_bytes` and no final newline: each valid line reaches
/// the webhook receiver with its bytes intact, each invalid one is in the rejects object with
/// its line number, and the rest flows. A clean upload of the same key leaves no rejects
/// object behind; an empty drop is read (as nothing).
#[tokio::test]
async fn every_valid_line_is_delivered_with_its_bytes_intact_and_every_invalid_one_is_listed_with_its_number()
 {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start(|_, _| 200).await;
    let (secret, _) = new_secret();
    let tenant = uuid::Uuid::new_v4();
    let s = Stages::provision_with(
        "it-lines",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    s.import_prefs(&[json!({"tenantId": tenant, "userId": "u-1",
        "channels": {"webhook": format!("{}/lines", receiver.base)}})]);
    let p = &s.prefix;
    let id = |n: u32| format!("{p}-{n}");
    let mut drop = Vec::new();
    drop.extend_from_slice(b"\xEF\xBB\xBF");
    drop.extend(event(tenant, &id(1), "a\u{FFFF}b", "{}").bytes());
    drop.extend_from_slice(b"\r\n");
    drop.extend(event(tenant, &id(2), r"nul \u0000 here", "{}").bytes());
    drop.extend_from_slice(b"\r\n");
    drop.extend(event(tenant, &id(3), "huge", r#"{"huge":1e400}"#).bytes());
    drop.extend_from_slice(b"\n");
    drop.extend(
        event(
            tenant,
            &id(4),
            "big",
            r#"{"big":123456789012345678901234567890}"#,
        )
        .bytes(),
    );
    drop.extend_from_slice(b"\n");
    drop.extend(event(tenant, &id(5), r"lone \ud800 surrogate", "{}").bytes());
    drop.extend_from_slice(b"\n\n");
    let long = format!(r#"{{"padding":"{}"}}"#, "x".repeat(1024 * 1024));
    drop.extend(event(tenant, &id(7), "long", &long).bytes());
    drop.extend_from_slice(b"\n");
    drop.extend(event(tenant, &id(8), "last", r#"{"n":1.50}"#).bytes());

    let mut daemon = s.cli("").spawn_daemon();
    let key = "lines/special.jsonl";
    s.upload_drop(key, &drop);
    let line = ingested(&daemon, 1, Duration::from_secs(120));
    assert!(
        line.contains("accepted=5") && line.contains("rejected=2"),
        "{line}"
    );

    eventually("five webhooks", Duration::from_secs(120), async || {
        receiver.delivered().len() >= 5
    })
    .await;
    let bodies: BTreeMap<String, String> = receiver
        .delivered()
        .into_values()
        .map(|hits| {
            assert_eq!(hits.len(), 1, "each delivered once");
            let body = String::from_utf8(hits[0].body.clone()).unwrap();
            let event: Value = serde_json::from_str(&body).unwrap();
            (
                event["data"]["eventId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                body,
            )
        })
        .collect();
    assert_eq!(
        bodies.keys().cloned().collect::<BTreeSet<_>>(),
        [1, 2, 3, 4, 8].map(id).into_iter().collect()
    );
    let content = |n: u32| -> Value {
        let body: Value = serde_json::from_str(&bodies[&id(n)]).unwrap();
        body["data"]["content"].clone()
    };
    assert_eq!(content(1)["title"], "a\u{FFFF}b");
    assert_eq!(content(2)["title"], "nul \u{0} here");
    // Every digit kept; the exponent written with its sign (serde_json's one canonical form).
    assert!(
        bodies[&id(3)].contains(r#""huge":1e+400"#),
        "{}",
        bodies[&id(3)]
    );
    assert!(bodies[&id(4)].contains(r#""big":123456789012345678901234567890"#));
    assert!(bodies[&id(8)].contains(r#""n":1.50"#));

    let text = s.rejects(key).await.expect("a rejects object");
    let listed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{text}");
    assert_eq!(listed[0]["line"], 5);
    assert!(
        listed[0]["reason"].as_str().unwrap().contains("not JSON"),
        "{text}"
    );
    assert_eq!(listed[1]["line"], 7);
    assert!(
        listed[1]["reason"]
            .as_str()
            .unwrap()
            .contains("notify.max_line_bytes"),
        "{text}"
    );

    // A clean upload of the same key: the earlier rejects do not stay as this upload's.
    s.upload_drop(key, event(tenant, &id(9), "clean", "{}").as_bytes());
    ingested(&daemon, 2, Duration::from_secs(60));
    assert_eq!(
        s.rejects(key).await,
        None,
        "the earlier upload's rejects object is removed"
    );
    // An empty drop is read as nothing.
    s.upload_drop("lines/empty.jsonl", b"");
    let line = ingested(&daemon, 3, Duration::from_secs(60));
    assert!(
        line.contains("ranges=0") && line.contains("accepted=0"),
        "{line}"
    );
    eventually(
        "the clean line delivered",
        Duration::from_secs(60),
        async || receiver.delivered().len() == 6,
    )
    .await;
    for line in daemon.logs() {
        for mark in ["BODY-MARK", "special.jsonl", "/lines"] {
            assert!(!line.contains(mark), "{mark} logged: {line}");
        }
    }
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
}

/// The peak resident memory of a process so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// How many of the drop's ranges are finished.
async fn finished_ranges(s: &Stages, drop_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM notify_drop_ranges WHERE drop_id = $1 AND finished_at IS NOT NULL",
    )
    .bind(drop_id)
    .fetch_one(&s.pool)
    .await
    .unwrap()
}

/// A 50 MB drop (7 ranges of the default 8 MiB) read by two daemons, one of them killed with
/// SIGKILL twice mid-read: every valid event ranked once, the ranges re-read no more than the
/// killed daemon had in flight (`notify.ingest_ranges_in_flight`, 2, per kill), both daemons
/// read ranges, and neither went above 150 MB of resident memory.
#[tokio::test]
async fn a_50_mb_drop_is_split_across_two_daemons_and_a_kill_re_reads_only_the_ranges_in_flight() {
    let _ls = localstack_shared().await;
    let s = Stages::provision("it-scale").await;
    s.import_prefs(
        &(0..20)
            .map(|u| s.prefs(&format!("u-{u}"), json!({})))
            .collect::<Vec<_>>(),
    );
    let padding = "p".repeat(3_900);
    let mut drop = Vec::with_capacity(52 << 20);
    let mut lines = 0u64;
    while drop.len() < 50_000_000 {
        lines += 1;
        let mut event = s.event(
            &format!("e-{lines}"),
            &format!("u-{}", lines % 20),
            json!({ "padding": padding }),
        );
        event["user"]["channels"] = json!(["email"]);
        drop.extend(event.to_string().bytes());
        drop.push(b'\n');
    }

    let cli = || s.cli("").env("CONVEYOR_TELEMETRY__LOG_LEVEL", "info");
    let mut a = cli().spawn_daemon();
    let b = cli().spawn_daemon();
    let key = "scale/50mb.jsonl";
    s.upload_drop(key, &drop);
    let mut drop_id = String::new();
    eventually("the drop planned", Duration::from_secs(60), async || {
        let id: Option<String> =
            sqlx::query_scalar("SELECT drop_id FROM notify_drops WHERE key = $1")
                .bind(key)
                .fetch_optional(&s.pool)
                .await
                .unwrap();
        drop_id = id.unwrap_or_default();
        !drop_id.is_empty()
    })
    .await;
    let ranges: i32 = sqlx::query_scalar("SELECT ranges FROM notify_drops WHERE drop_id = $1")
        .bind(&drop_id)
        .fetch_one(&s.pool)
        .await
        .unwrap();
    assert_eq!(ranges, 6, "50,000,000 bytes in 8 MiB ranges");

    // Kill -9 the first daemon once a range is finished, and again two ranges later.
    let mut peaks = Vec::new();
    let mut range_lines = 0;
    for after in [1, 3] {
        eventually("ranges finished", Duration::from_secs(120), async || {
            finished_ranges(&s, &drop_id).await >= after
        })
        .await;
        peaks.push(peak_rss(a.child.id()));
        a.signal(nix::sys::signal::Signal::SIGKILL);
        a.wait_exit(Duration::from_secs(10));
        range_lines += a
            .logs()
            .iter()
            .filter(|l| l.contains("range ingested"))
            .count();
        a = cli().spawn_daemon();
    }
    eventually("the drop ingested", Duration::from_secs(300), async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT reported_at IS NOT NULL FROM notify_drops WHERE drop_id = $1",
        )
        .bind(&drop_id)
        .fetch_one(&s.pool)
        .await
        .unwrap()
    })
    .await;
    eventually("every event ranked", Duration::from_secs(300), async || {
        let scored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM notify_scores WHERE tenant_id = $1")
                .bind(s.tenant)
                .fetch_one(&s.pool)
                .await
                .unwrap();
        scored == lines as i64
    })
    .await;
    settled(&s.sqs, &s.incoming_url, Duration::from_secs(120)).await;
    assert_eq!(queue_depth(&s.sqs, &s.incoming_dlq_url).await, (0, 0));

    let rereads: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(reads - 1), 0)::bigint FROM notify_drop_ranges WHERE drop_id = $1",
    )
    .bind(&drop_id)
    .fetch_one(&s.pool)
    .await
    .unwrap();
    assert!(rereads <= 4, "{rereads} ranges read again after two kills");
    range_lines += a
        .logs()
        .iter()
        .filter(|l| l.contains("range ingested"))
        .count();
    let by_b = b
        .logs()
        .iter()
        .filter(|l| l.contains("range ingested"))
        .count();
    assert!(
        by_b >= 1 && range_lines >= 1,
        "both daemons read ranges: {by_b} and {range_lines}"
    );
    peaks.push(peak_rss(a.child.id()));
    peaks.push(peak_rss(b.child.id()));
    assert!(
        peaks.iter().all(|&p| p <= 150 << 20),
        "peak RSS {peaks:?} bytes"
    );
    eprintln!(
        "50 MB drop: {lines} lines, {ranges} ranges, {rereads} re-read after 2 kills, ranges read by B {by_b}, by A {range_lines}, peak RSS MiB {:?}",
        peaks.iter().map(|p| p >> 20).collect::<Vec<_>>()
    );
}
