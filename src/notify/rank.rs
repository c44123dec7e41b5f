//! Ranking's decisions, as pure functions of the event, the user's preferences, the score and
//! the clock: which channel is tried first and which fail over after it, and when the
//! notification may be sent. The `notify-rank` pipeline (`src/pipeline/notify_rank.rs`) feeds
//! them and sends the result.
//!
//! **Channel policy.** The candidates are the channels the event allows (`user.channels`) that
//! the user has an address for and has not opted out of. They are ordered by the user's own
//! `failoverOrder` (channels it does not list follow), else by `notify.urgent_channel_order`
//! for priorities from `notify.urgent_priority` on, else by `notify.channel_order`. The first
//! is the channel; the rest, in order, the failover.
//!
//! **Quiet hours.** A notification ranked inside the user's quiet hours (local time in their
//! zone) is sent after they end, unless its priority is at least
//! `notify.quiet_hours_bypass_priority`.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use super::prefs::{Preferences, QuietHours};
use crate::config::{NotifyConfig, Scorer};
use crate::contract::notification::Channel;
use crate::contract::notification::NotificationEvent;
use crate::contract::ranked::{Delivery, RankedNotification, Target};

/// A notification's priority and how it came about.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// 1 (lowest) to 5 (highest).
    pub priority: u8,
    /// Named components and their values.
    pub breakdown: Map<String, Value>,
    pub scorer: Scorer,
    /// The model's short explanation (derived from content: stored, never logged).
    pub reason: Option<String>,
}

/// Ranking's verdict.
#[derive(Debug)]
pub struct Ranked {
    pub notification: RankedNotification,
    /// Held back by quiet hours (`sendAfter` is their end) in this IANA zone.
    pub quiet_hours: Option<&'static str>,
}

/// Nothing to send on: permanent for this event (until its preferences change and it is
/// redriven). Names channels, never addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no usable channel for user {user}: the event allows [{allowed}], the user has addresses for [{reachable}] and opted out of [{opted_out}]"
)]
pub struct NoChannel {
    pub user: String,
    pub allowed: String,
    pub reachable: String,
    pub opted_out: String,
}

/// Ranks `event` for the user whose preferences are `prefs`.
pub fn rank(
    event: &NotificationEvent,
    prefs: &Preferences,
    score: Score,
    config: &NotifyConfig,
    now: DateTime<Utc>,
) -> Result<Ranked, NoChannel> {
    let mut targets = channel_order(prefs, score.priority, config)
        .into_iter()
        .filter(|c| event.user.channels.contains(c))
        .filter_map(|channel| {
            prefs.usable(channel).map(|address| Target {
                channel,
                address: address.to_owned(),
            })
        });
    let Some(first) = targets.next() else {
        let names = |channels: &mut dyn Iterator<Item = &Channel>| {
            channels.map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
        };
        return Err(NoChannel {
            user: crate::safe::token(&event.user.id),
            allowed: names(&mut event.user.channels.iter()),
            reachable: names(&mut prefs.channels.keys()),
            opted_out: names(&mut prefs.opt_out.iter()),
        });
    };
    let failover: Vec<Target> = targets.collect();
    let quiet = (score.priority < config.quiet_hours_bypass_priority)
        .then(|| {
            prefs
                .quiet_hours
                .as_ref()
                .and_then(|q| quiet_until(q, now).map(|until| (until, q.time_zone.name())))
        })
        .flatten();
    let quiet_until = quiet.map(|(until, _)| until);
    Ok(Ranked {
        quiet_hours: quiet.map(|(_, zone)| zone),
        notification: RankedNotification {
            event_id: event.event_id.clone(),
            tenant_id: event.tenant_id,
            user_id: event.user.id.clone(),
            occurred_at: event.occurred_at,
            priority: score.priority,
            send_after: quiet_until.unwrap_or(now),
            score_breakdown: score.breakdown,
            scorer: score.scorer.as_str().to_owned(),
            channel: first.channel,
            delivery: Delivery {
                address: first.address,
                provider: None,
                rate_limit_key: crate::contract::ranked::rate_limit_key(
                    first.channel,
                    event.tenant_id,
                ),
            },
            failover,
            attempt: 0,
            content: event.content.clone(),
        },
    })
}

/// Every channel, in the order they are tried for this user at this priority.
fn channel_order(prefs: &Preferences, priority: u8, config: &NotifyConfig) -> Vec<Channel> {
    let policy = if priority >= config.urgent_priority {
        &config.urgent_channel_order
    } else {
        &config.channel_order
    };
    let mut order = prefs.failover_order.clone();
    order.extend(policy.iter().filter(|c| !prefs.failover_order.contains(c)));
    order
}

/// The end of the quiet hours `now` falls in, if it falls in them.
pub fn quiet_until(quiet: &QuietHours, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = now.with_timezone(&quiet.time_zone);
    let time = local.time();
    let (start, end) = (quiet.start, quiet.end);
    let inside = if start < end {
        start <= time && time < end
    } else {
        time >= start || time < end
    };
    if !inside {
        return None;
    }
    // Overnight quiet hours entered before midnight end tomorrow.
    let date = if start > end && time >= start {
        local.date_naive() + Duration::days(1)
    } else {
        local.date_naive()
    };
    Some(resolve(quiet.time_zone, date.and_time(end), now))
}

/// A local wall-clock time as the first instant after `now` that shows it: on a repeated hour
/// (DST fall-back) the earlier of the two unless it has passed — quiet hours entered in the
/// second pass through the hour end at its second passing of their end — and on a skipped one
/// (a DST gap) the first instant after the gap.
fn resolve(zone: chrono_tz::Tz, local: NaiveDateTime, now: DateTime<Utc>) -> DateTime<Utc> {
    let mut at = local;
    loop {
        match zone.from_local_datetime(&at) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, second) => {
                let first = first.with_timezone(&Utc);
                return if first > now {
                    first
                } else {
                    second.with_timezone(&Utc)
                };
            }
            // Gaps are at most a few hours; step by minutes to the first valid one.
            LocalResult::None => at += Duration::minutes(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::notification::Content;
    use crate::contract::notification::User;
    use chrono::NaiveTime;
    use chrono_tz::Tz;
    use std::collections::BTreeMap;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn quiet(start: &str, end: &str, zone: Tz) -> QuietHours {
        QuietHours {
            start: NaiveTime::parse_from_str(start, "%H:%M").unwrap(),
            end: NaiveTime::parse_from_str(end, "%H:%M").unwrap(),
            time_zone: zone,
        }
    }

    #[test]
    fn overnight_quiet_hours_end_the_next_morning_in_the_users_zone() {
        let q = quiet("22:00", "07:00", chrono_tz::Europe::Berlin);
        // 23:30 in Berlin (UTC+1 in January) → 07:00 Berlin the next day.
        assert_eq!(
            quiet_until(&q, at("2026-01-10T22:30:00Z")),
            Some(at("2026-01-11T06:00:00Z"))
        );
        // 03:00 in Berlin → 07:00 the same day.
        assert_eq!(
            quiet_until(&q, at("2026-01-11T02:00:00Z")),
            Some(at("2026-01-11T06:00:00Z"))
        );
        assert_eq!(quiet_until(&q, at("2026-01-11T06:00:00Z")), None, "ended");
        assert_eq!(quiet_until(&q, at("2026-01-11T12:00:00Z")), None);
        // A zone on a quarter hour: 13:00 in Kathmandu (UTC+5:45) is inside 12:00–14:00.
        let q = quiet("12:00", "14:00", chrono_tz::Asia::Kathmandu);
        assert_eq!(
            quiet_until(&q, at("2026-01-11T07:15:00Z")),
            Some(at("2026-01-11T08:15:00Z"))
        );
    }

    #[test]
    fn an_end_inside_a_dst_gap_is_the_first_instant_after_it() {
        // 2026-03-29 Berlin skips 02:00–03:00; quiet hours ending 02:30 end at 03:00 CEST.
        let q = quiet("22:00", "02:30", chrono_tz::Europe::Berlin);
        assert_eq!(
            quiet_until(&q, at("2026-03-28T23:00:00Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn dst_fall_back_ends_quiet_hours_at_the_right_local_time() {
        // 2026-11-01 New York repeats 01:00–02:00: EDT (05:00–06:00Z), then EST (06:00–07:00Z).
        let q = quiet("22:00", "07:00", chrono_tz::America::New_York);
        for now in [
            "2026-11-01T03:00:00Z", // 23:00 EDT
            "2026-11-01T05:30:00Z", // 01:30 EDT, the first pass
            "2026-11-01T06:30:00Z", // 01:30 EST, the second pass
        ] {
            assert_eq!(
                quiet_until(&q, at(now)),
                Some(at("2026-11-01T12:00:00Z")),
                "07:00 EST, from {now}"
            );
        }
        // Quiet hours ending inside the repeated hour: in its first pass they end at its first
        // 01:30; entered in the second pass, at the second 01:30 — never at an instant passed.
        let q = quiet("22:00", "01:30", chrono_tz::America::New_York);
        assert_eq!(
            quiet_until(&q, at("2026-11-01T05:10:00Z")),
            Some(at("2026-11-01T05:30:00Z"))
        );
        assert_eq!(
            quiet_until(&q, at("2026-11-01T06:10:00Z")),
            Some(at("2026-11-01T06:30:00Z"))
        );
        assert_eq!(quiet_until(&q, at("2026-11-01T06:40:00Z")), None, "ended");
    }

    fn config() -> NotifyConfig {
        NotifyConfig::default()
    }

    fn event(channels: &[Channel]) -> NotificationEvent {
        NotificationEvent {
            event_id: "evt-1".into(),
            source: "test".into(),
            occurred_at: at("2026-01-11T12:00:00Z"),
            tenant_id: uuid::Uuid::from_u128(7),
            user: User {
                id: "u-1".into(),
                segment: None,
                channels: channels.to_vec(),
            },
            content: Content {
                title: "t".into(),
                body: "b".into(),
                cta: None,
                metadata: Map::new(),
            },
        }
    }

    fn prefs(addresses: &[(Channel, &str)]) -> Preferences {
        Preferences {
            tenant_id: uuid::Uuid::from_u128(7),
            user_id: "u-1".into(),
            segment: None,
            channels: addresses
                .iter()
                .map(|(c, a)| (*c, a.to_string()))
                .collect::<BTreeMap<_, _>>(),
            opt_out: vec![],
            failover_order: vec![],
            quiet_hours: None,
        }
    }

    fn score(priority: u8) -> Score {
        Score {
            priority,
            breakdown: Map::new(),
            scorer: Scorer::Rules,
            reason: None,
        }
    }

    const ALL: &[Channel] = &[
        Channel::Email,
        Channel::Sms,
        Channel::Push,
        Channel::Webhook,
    ];

    fn reachable_everywhere() -> Preferences {
        prefs(&[
            (Channel::Email, "a@b.co"),
            (Channel::Sms, "+4915112345678"),
            (Channel::Push, "arn:aws:sns:r:1:endpoint/GCM/a/b"),
            (Channel::Webhook, "https://h.example/x"),
        ])
    }

    fn order(r: &Ranked) -> Vec<Channel> {
        std::iter::once(r.notification.channel)
            .chain(r.notification.failover.iter().map(|t| t.channel))
            .collect()
    }

    #[test]
    fn the_policy_orders_channels_by_urgency_and_the_users_order_wins() {
        let now = at("2026-01-11T12:00:00Z");
        let p = reachable_everywhere();
        let normal = rank(&event(ALL), &p, score(2), &config(), now).unwrap();
        assert_eq!(order(&normal), config().channel_order);
        assert_eq!(
            normal.notification.delivery.rate_limit_key,
            format!("email:{}", uuid::Uuid::from_u128(7))
        );
        let urgent = rank(&event(ALL), &p, score(4), &config(), now).unwrap();
        assert_eq!(order(&urgent), config().urgent_channel_order);
        let mut own = reachable_everywhere();
        own.failover_order = vec![Channel::Webhook, Channel::Sms];
        let r = rank(&event(ALL), &own, score(4), &config(), now).unwrap();
        assert_eq!(
            order(&r),
            [
                Channel::Webhook,
                Channel::Sms,
                Channel::Push,
                Channel::Email
            ]
        );
    }

    #[test]
    fn only_channels_the_event_allows_and_the_user_has_not_refused_are_used() {
        let now = at("2026-01-11T12:00:00Z");
        let mut p = reachable_everywhere();
        p.opt_out = vec![Channel::Email];
        let r = rank(
            &event(&[Channel::Email, Channel::Sms]),
            &p,
            score(2),
            &config(),
            now,
        )
        .unwrap();
        assert_eq!(order(&r), [Channel::Sms]);
        assert_eq!(r.notification.delivery.address, "+4915112345678");

        let e = rank(&event(&[Channel::Email]), &p, score(2), &config(), now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no usable channel for user \"u-1\": the event allows [email], the user has addresses for [email, sms, push, webhook] and opted out of [email]"
        );
        assert!(!e.to_string().contains("a@b.co"));
    }

    #[test]
    fn quiet_hours_hold_a_notification_unless_its_priority_bypasses_them() {
        let now = at("2026-01-10T22:30:00Z"); // 23:30 in Berlin
        let mut p = reachable_everywhere();
        p.quiet_hours = Some(quiet("22:00", "07:00", chrono_tz::Europe::Berlin));
        let held = rank(&event(ALL), &p, score(3), &config(), now).unwrap();
        assert_eq!(held.quiet_hours, Some("Europe/Berlin"));
        assert_eq!(held.notification.send_after, at("2026-01-11T06:00:00Z"));
        let bypass = rank(&event(ALL), &p, score(5), &config(), now).unwrap();
        assert_eq!(bypass.quiet_hours, None);
        assert_eq!(bypass.notification.send_after, now);
    }
}
