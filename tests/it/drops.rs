//! Drops read in ranges (`notify-ingest`): lines as their producer wrote them, delivered with
//! their bytes intact or listed in the rejects object with their line number; a drop split
//! across daemons, killed mid-read, read again no further than the ranges in flight; a new
//! upload of a key abandoning the old one's unread ranges.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::delivery::{Receiver, new_secret};
use crate::helpers::*;
use crate::notifications::{Delivering, Stages};

/// A NotificationEvent line for `tenant`'s user `u-1`, on the webhook channel.
fn event(tenant: uuid::Uuid, id: &str, title: &str, metadata: &str) -> String {
    format!(
        r#"{{"eventId":"{id}","source":"billing","occurredAt":"2026-11-23T10:00:00Z","tenantId":"{tenant}","user":{{"id":"u-1","channels":["webhook"]}},"content":{{"title":"{title}","body":"BODY-MARK","metadata":{metadata}}}}}"#
    )
}

/// Uploads `bytes` as `key` with `conveyor notify drop`.
fn upload(s: &Stages, key: &str, bytes: &[u8]) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    let out = s.cli("").output(&[
        "notify",
        "drop",
        file.path().to_str().unwrap(),
        "--key",
        key,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.all());
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
    upload(&s, key, &drop);
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

    let s3 = conveyor::aws::s3_client(&aws_sdk().await);
    let rejects_key = format!("{key}.rejects.jsonl");
    let object = s3
        .get_object()
        .bucket(&s.bucket)
        .key(&rejects_key)
        .send()
        .await
        .unwrap();
    let text = String::from_utf8(object.body.collect().await.unwrap().to_vec()).unwrap();
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
    upload(&s, key, event(tenant, &id(9), "clean", "{}").as_bytes());
    ingested(&daemon, 2, Duration::from_secs(60));
    let gone = s3
        .get_object()
        .bucket(&s.bucket)
        .key(&rejects_key)
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the earlier upload's rejects object is removed"
    );
    // An empty drop is read as nothing.
    upload(&s, "lines/empty.jsonl", b"");
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
