//! What holds a notification back at delivery, against the stack: a `sendAfter` too far ahead
//! (dead-lettered), quiet hours the user set after ranking (rechecked at delivery), a send in
//! doubt (held, then sent once more with the same webhook-id), and the account's SES bucket
//! shared by every tenant. Defaults are the shipped ones, except where a test says why.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::delivery::{Receiver, new_secret};
use crate::fault_proxy::FaultProxy;
use crate::helpers::*;
use crate::notifications::{Delivering, Stages, ranked, send_ranked};

/// A `sendAfter` 30 days ahead is dead-lettered naming `notify.max_defer_secs` (not deferred
/// every 15 minutes for a month); a notification ranked before its user set quiet hours is
/// held at delivery until they end, and `notify status` says until when, in UTC and the
/// user's zone.
#[tokio::test]
async fn a_send_after_30_days_ahead_is_dead_lettered_and_quiet_hours_set_after_ranking_hold_delivery()
 {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start(|_, _| 200).await;
    let (secret, _) = new_secret();
    let tenant = uuid::Uuid::new_v4();
    let s = Stages::provision_with(
        "it-holds",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    let to = format!("{}/hold/{tenant}", receiver.base);
    // Ranked a moment ago, due in 4 s; the user sets quiet hours around now in between.
    let mut quiet = ranked(tenant, &format!("{}-quiet", s.prefix), "webhook", &to);
    quiet["sendAfter"] = json!((chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc3339());
    let mut far = ranked(tenant, &format!("{}-far", s.prefix), "webhook", &to);
    far["sendAfter"] = json!((chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339());
    send_ranked(&s.sqs, &s.priority_url, &[quiet.clone(), far.clone()]).await;
    let now = chrono::Utc::now().with_timezone(&chrono_tz::Asia::Tokyo);
    let (start, end) = (
        (now - chrono::Duration::hours(1))
            .format("%H:%M")
            .to_string(),
        (now + chrono::Duration::hours(2))
            .format("%H:%M")
            .to_string(),
    );
    s.import_prefs(&[json!({"tenantId": tenant, "userId": "u-1",
        "channels": {"webhook": to},
        "quietHours": {"start": start, "end": end, "timeZone": "Asia/Tokyo"}})]);
    let daemon = s.daemon("").await;

    let dead = drain_queue(&s.sqs, &s.priority_dlq_url, 1, Duration::from_secs(60)).await;
    let reason = string_attribute(&dead[0], "conveyor.error").unwrap();
    assert!(
        reason.contains("notify.max_defer_secs") && dead[0].body().unwrap().contains("-far"),
        "{reason}"
    );
    let quiet_id = quiet["eventId"].as_str().unwrap();
    eventually(
        "the quiet-hours hold is recorded",
        Duration::from_secs(60),
        async || {
            let held: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT state, held_for FROM notify_deliveries WHERE event_id = $1")
                    .bind(quiet_id)
                    .fetch_optional(&s.pool)
                    .await
                    .unwrap();
            held == Some(("deferred".into(), Some("quiet_hours".into())))
        },
    )
    .await;
    let out = s.cli("").output(&["notify", "status", quiet_id]);
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let summary = status["summary"].as_str().unwrap();
    let local_end = format!("{} {end} Asia/Tokyo", {
        let end_at = now + chrono::Duration::hours(2);
        end_at.format("%Y-%m-%d")
    });
    assert!(
        summary.starts_with("deferred (quiet hours) on webhook until ")
            && summary.contains(&local_end),
        "{summary} (expected the end, {local_end})"
    );
    // The in-process daemons of one test run share one recorder: at least this one's.
    assert!(
        metric(
            "conveyor_notify_deferred_total",
            &["reason=\"quiet_hours_at_delivery\""]
        ) >= 1.0
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(receiver.hits().is_empty(), "nothing sent in quiet hours");
    daemon.stop().await;
}

/// A webhook receiver that takes 12 s to answer its first request (beyond the 10 s send
/// timeout): the send is in doubt. It is not retried at once (the receiver may have it), and
/// after the hold it is sent once more, with the same webhook-id, and recorded delivered.
/// The hold is 15 s here: the mechanism is the same as the default 5 minutes', which a test
/// run cannot spend.
#[tokio::test]
async fn a_send_unanswered_in_time_is_in_doubt_and_sent_again_only_after_the_hold_with_its_id() {
    let _ls = localstack_shared().await;
    let receiver = Receiver::start_slow(
        |_, _| 200,
        |_, n| Duration::from_secs(if n == 0 { 12 } else { 0 }),
    )
    .await;
    let (secret, _) = new_secret();
    let tenant = uuid::Uuid::new_v4();
    let s = Stages::provision_with(
        "it-doubt",
        Some(Delivering {
            allow_private: true,
            secrets: format!("{tenant}={secret}"),
        }),
    )
    .await;
    let id = format!("{}-doubt", s.prefix);
    let to = format!("{}/doubt/{tenant}", receiver.base);
    send_ranked(
        &s.sqs,
        &s.priority_url,
        &[ranked(tenant, &id, "webhook", &to)],
    )
    .await;
    let daemon = s.daemon("[notify.delivery]\nin_doubt_hold_secs = 15").await;

    eventually("the first request", Duration::from_secs(60), async || {
        !receiver.hits().is_empty()
    })
    .await;
    let first = receiver.hits()[0].at;
    eventually(
        "the send is in doubt",
        Duration::from_secs(30),
        async || {
            let out = s.cli("").output(&["notify", "status", &id]);
            out.stdout.contains("in doubt on webhook")
        },
    )
    .await;
    eventually("the resend", Duration::from_secs(90), async || {
        receiver.hits().len() >= 2
    })
    .await;
    let hits = receiver.hits();
    let gap = hits[1].at - first;
    assert!(
        gap >= Duration::from_secs(10 + 14),
        "sent again {gap:?} after the first: the timeout (10 s) and the hold (15 s) must pass"
    );
    assert_eq!(hits[0].id, hits[1].id, "the same webhook-id");
    eventually("recorded delivered", Duration::from_secs(30), async || {
        let state: Option<(String,)> =
            sqlx::query_as("SELECT state FROM notify_deliveries WHERE event_id = $1")
                .bind(&id)
                .fetch_optional(&s.pool)
                .await
                .unwrap();
        state == Some(("delivered".into(),))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.hits().len(), 2, "sent twice, no more");
    // The in-process daemons of one test run share one recorder: at least this one's.
    for event in ["held", "resent"] {
        let label = format!("event=\"{event}\"");
        assert!(
            metric("conveyor_notify_in_doubt_total", &[label.as_str()]) >= 1.0,
            "{event}"
        );
    }
    daemon.stop().await;
}

/// 100 tenants, each at its default email bucket (14/s), send 3 emails each at once. The
/// account's SES bucket (the default `notify.provider_rate_limits.ses`, 14/s) paces them all
/// together: SES never sees more than the bucket allows in any window, and all 300 are
/// delivered once, none failed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_tenants_together_send_email_no_faster_than_the_accounts_ses_rate() {
    let _ls = localstack_shared().await;
    let s = Stages::provision_with(
        "it-ses-rate",
        Some(Delivering {
            allow_private: true,
            secrets: String::new(),
        }),
    )
    .await;
    let proxy = FaultProxy::start().await;
    proxy.watch(|r| {
        r.method.as_str() == "POST" && String::from_utf8_lossy(r.body).contains("Action=SendEmail")
    });
    let notifications: Vec<serde_json::Value> = (0..100)
        .flat_map(|t| {
            let tenant = uuid::Uuid::new_v4();
            (0..3).map(move |n| {
                ranked(
                    tenant,
                    &format!("ses-{t}-{n}"),
                    "email",
                    &format!("addr-{t}-{n}@example.com"),
                )
            })
        })
        .collect();
    send_ranked(&s.sqs, &s.priority_url, &notifications).await;
    let mut config = test_config(&s.toml(""));
    config.secrets.database_url = Some(conveyor::config::Secret::new(&s.database_url));
    config.aws.endpoint_url = Some(proxy.url.clone());
    let daemon = InProcess::start(config, conveyor::pipeline::Registry::built_in()).await;
    let started = Instant::now();
    eventually("300 delivered", Duration::from_secs(120), async || {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM notify_deliveries WHERE state = 'delivered' AND channel = 'email'",
        )
        .fetch_one(&s.pool)
        .await
        .unwrap();
        n == 300
    })
    .await;
    let took = started.elapsed();
    let seen = proxy.seen();
    assert_eq!(seen.len(), 300, "one SendEmail per notification");
    // The bucket's bound for any window of w seconds: 14 at once + 14 × w, and one more for
    // the proxy's clock against the database's.
    let mut worst_second = 0;
    for (i, at) in seen.iter().enumerate() {
        for w in [1.0f64, 5.0] {
            let end = *at + Duration::from_secs_f64(w);
            let inside = seen[i..].iter().take_while(|t| **t < end).count();
            assert!(
                inside as f64 <= 14.0 + 14.0 * w + 1.0,
                "{inside} SendEmail calls in {w} s from call {i}"
            );
            if w == 1.0 {
                worst_second = worst_second.max(inside);
            }
        }
    }
    let (failed_over,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM notify_deliveries WHERE channel <> 'email'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
    assert_eq!(failed_over, 0);
    let span = (*seen.last().unwrap() - seen[0]).as_secs_f64();
    eprintln!(
        "300 emails from 100 tenants in {took:?}: SES saw {:.1}/s over {span:.1} s, at most {worst_second} in any second",
        299.0 / span
    );
    daemon.stop().await;
}
