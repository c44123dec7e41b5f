//! Folding results into the one outcome the engine applies. A message's pipelines: success
//! when every one succeeded (with `ack = "any"`, when one did); only deferrals → defer until the
//! latest; only permanent failures → dead-letter; anything else → retry, no sooner than a busy
//! claim or a `Retry-After` asked, marked an outage when every failure was one. A message of
//! several events takes its most serious event's outcome ([`combine`]).

use super::run::{Failure, PipelineResult};
use crate::config::Ack;
use crate::engine::Outcome;
use crate::pipeline::PipelineError;

/// All succeeded (or were skipped) → Success; any retryable failure → Retry; only permanent
/// failures → DeadLetter naming them; only deferrals → Defer until the latest. With
/// `ack = any`, one success is enough. When the only thing to wait for is another delivery's
/// run, come back when it will be done.
pub(super) fn fold(results: &[PipelineResult], ack: Ack) -> Outcome {
    let failed: Vec<&PipelineResult> = results.iter().filter(|r| r.result.is_err()).collect();
    if failed.is_empty() || (ack == Ack::Any && failed.len() < results.len()) {
        return Outcome::Success;
    }
    let deferred_until = |r: &&PipelineResult| match &r.result {
        Err(Failure::Pipeline(PipelineError::Defer { until, .. })) => Some(*until),
        _ => None,
    };
    if failed.iter().all(|r| deferred_until(r).is_some()) {
        let until = failed.iter().filter_map(deferred_until).max();
        let reason = failed
            .iter()
            .map(|r| format!("{}: {}", r.pipeline, r.result.as_ref().unwrap_err()))
            .collect::<Vec<_>>()
            .join("; ");
        return Outcome::Defer {
            until: until.expect("every failure is a deferral"),
            reason,
        };
    }
    let names = failed
        .iter()
        .map(|r| r.pipeline)
        .collect::<Vec<_>>()
        .join(",");
    let reasons = failed
        .iter()
        .map(|r| format!("{}: {}", r.pipeline, r.result.as_ref().unwrap_err()))
        .collect::<Vec<_>>()
        .join("; ");
    let permanent = |r: &&PipelineResult| {
        matches!(
            r.result,
            Err(Failure::Pipeline(PipelineError::Permanent(_)))
        )
    };
    if failed.iter().all(permanent) {
        return Outcome::DeadLetter {
            reason: reasons,
            label: "permanent",
            pipeline: Some(names),
        };
    }
    // Come back no sooner than another delivery's run will be done, or than a dependency
    // asked (Retry-After); the engine takes the longer of this and the backoff.
    // A deferral among other failures: the message is retried, and no sooner than it asked.
    let after = failed
        .iter()
        .filter_map(|r| match &r.result {
            Err(Failure::Busy(d)) | Err(Failure::Pipeline(PipelineError::RetryAfter(_, d))) => {
                Some(*d)
            }
            Err(Failure::Pipeline(PipelineError::Defer { until, .. })) => Some(
                until
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default(),
            ),
            _ => None,
        })
        .max();
    // Only dependency outages or configuration faults: nothing is wrong with the message.
    let outage = failed.iter().all(|r| {
        matches!(
            r.result,
            Err(Failure::Pipeline(
                PipelineError::Unavailable(..) | PipelineError::Denied(..)
            ))
        )
    });
    Outcome::Retry {
        reason: reasons,
        pipeline: Some(names),
        after,
        outage,
    }
}

/// One outcome for a message that carried several events (an S3 notification's records): any
/// retry retries the message (events already done are skipped by the ledger next time), else
/// any dead letter dead-letters it, else any deferral defers it (until the latest), else it
/// succeeded.
pub(super) fn combine(outcomes: Vec<Outcome>) -> Outcome {
    let rank = |o: &Outcome| match o {
        Outcome::Success => 0,
        Outcome::Defer { .. } => 1,
        Outcome::DeadLetter { .. } => 2,
        // Never an event's outcome: only a batch's (see `split`).
        Outcome::Retry { .. } | Outcome::Split(_) => 3,
    };
    let mut combined = Outcome::Success;
    for outcome in outcomes {
        combined = match (&combined, &outcome) {
            (Outcome::Defer { until: a, .. }, Outcome::Defer { until: b, .. }) if b > a => outcome,
            _ if rank(&outcome) > rank(&combined) => outcome,
            _ => combined,
        };
    }
    combined
}

/// One outcome for a batch (`conveyor.batch`), from each element's body and outcome. All
/// succeeded: success. None succeeded and all are to be retried: the batch is retried whole
/// (one message, its receives counted as one). Otherwise it is split: the successes are done;
/// the retries go on as one part; the deferrals as one part per second they wait until; each
/// dead letter as a part of its own, with its own reason.
pub(super) fn split(elements: Vec<(String, Outcome)>) -> Outcome {
    let total = elements.len();
    let pending: Vec<(String, Outcome)> = elements
        .into_iter()
        .filter(|(_, o)| *o != Outcome::Success)
        .collect();
    if pending.is_empty() {
        return Outcome::Success;
    }
    let retries = pending
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Retry { .. }))
        .count();
    if retries == total {
        let outcomes = pending.into_iter().map(|(_, o)| o).collect();
        return counted(combine(outcomes), total, total);
    }
    let body = |texts: &[&str]| match texts {
        [one] => (*one).to_owned(),
        many => format!("[{}]", many.join(",")),
    };
    let mut parts = Vec::new();
    let mut retry_texts = Vec::new();
    let mut retry_outcomes = Vec::new();
    let mut deferred: std::collections::BTreeMap<u64, (Vec<&str>, Vec<Outcome>)> =
        Default::default();
    for (text, outcome) in &pending {
        match outcome {
            Outcome::Retry { .. } => {
                retry_texts.push(text.as_str());
                retry_outcomes.push(outcome.clone());
            }
            Outcome::Defer { until, .. } => {
                let second = until
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64()
                    .ceil() as u64;
                let group = deferred.entry(second).or_default();
                group.0.push(text);
                group.1.push(outcome.clone());
            }
            _ => parts.push(crate::engine::Part {
                body: text.clone(),
                events: 1,
                outcome: outcome.clone(),
            }),
        }
    }
    if !retry_texts.is_empty() {
        let n = retry_texts.len();
        let outcome = counted(combine(retry_outcomes), n, total);
        parts.push(crate::engine::Part {
            body: body(&retry_texts),
            events: n,
            outcome,
        });
    }
    for (texts, outcomes) in deferred.into_values() {
        parts.push(crate::engine::Part {
            body: body(&texts),
            events: texts.len(),
            outcome: combine(outcomes),
        });
    }
    Outcome::Split(parts)
}

/// A retry of `n` of a batch's `total` events, its reason saying so.
fn counted(outcome: Outcome, n: usize, total: usize) -> Outcome {
    match outcome {
        Outcome::Retry {
            reason,
            pipeline,
            after,
            outage,
        } => Outcome::Retry {
            reason: format!("{n} of {total} events: {reason}"),
            pipeline,
            after,
            outage,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dispatch::run::Ran;
    use crate::fault::Dependency;

    fn r(pipeline: &'static str, result: Result<Ran, Failure>) -> PipelineResult {
        PipelineResult { pipeline, result }
    }

    #[test]
    fn a_message_of_several_events_takes_its_most_serious_outcome() {
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let defer = |secs| Outcome::Defer {
            until: at(secs),
            reason: "later".into(),
        };
        let dead = || Outcome::DeadLetter {
            reason: "bad".into(),
            label: "permanent",
            pipeline: None,
        };
        let retry = || Outcome::Retry {
            reason: "down".into(),
            pipeline: None,
            after: None,
            outage: false,
        };
        assert_eq!(combine(vec![]), Outcome::Success);
        assert_eq!(combine(vec![Outcome::Success, defer(5)]), defer(5));
        assert_eq!(combine(vec![defer(5), Outcome::Success]), defer(5));
        assert_eq!(combine(vec![defer(5), defer(9), defer(7)]), defer(9));
        assert_eq!(combine(vec![defer(5), dead(), Outcome::Success]), dead());
        assert_eq!(combine(vec![dead(), retry(), defer(5)]), retry());
    }

    #[test]
    fn deferrals_fold_into_a_deferral_until_the_latest_unless_something_failed() {
        let at = |secs| std::time::SystemTime::now() + Duration::from_secs(secs);
        let (soon, later) = (at(60), at(600));
        let defer = |until| {
            Err(Failure::Pipeline(PipelineError::Defer {
                until,
                reason: "rate limited".into(),
            }))
        };
        assert!(
            matches!(fold(&[r("a", defer(soon)), r("b", defer(later))], Ack::All), Outcome::Defer { until, .. } if until == later)
        );
        assert!(
            matches!(fold(&[r("a", Ok(Ran::Succeeded)), r("b", defer(soon))], Ack::All), Outcome::Defer { until, .. } if until == soon)
        );
        let retried = fold(
            &[
                r("a", defer(later)),
                r(
                    "b",
                    Err(Failure::Pipeline(PipelineError::Retryable("down".into()))),
                ),
            ],
            Ack::All,
        );
        assert!(
            matches!(retried, Outcome::Retry { after: Some(d), outage: false, .. } if d > Duration::from_secs(590)),
            "{retried:?}"
        );
    }

    #[test]
    fn outcome_folding() {
        let ok = || Ok(Ran::Succeeded);
        let retry = || Err(Failure::Pipeline(PipelineError::Retryable("down".into())));
        let perm = || Err(Failure::Pipeline(PipelineError::Permanent("bad".into())));
        let busy = |s| Err(Failure::Busy(Duration::from_secs(s)));
        assert_eq!(
            fold(&[r("a", Ok(Ran::Skipped)), r("b", ok())], Ack::All),
            Outcome::Success
        );
        assert!(
            matches!(fold(&[r("a", ok()), r("b", busy(7)), r("c", busy(9))], Ack::All), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(9))
        );
        assert!(
            matches!(fold(&[r("a", retry()), r("b", busy(7))], Ack::All), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(7))
        );
        assert!(matches!(
            fold(&[r("a", retry()), r("b", ok())], Ack::All),
            Outcome::Retry { after: None, .. }
        ));
        let throttled = Err(Failure::Pipeline(PipelineError::RetryAfter(
            "429".into(),
            Duration::from_secs(30),
        )));
        assert!(
            matches!(fold(&[r("a", throttled), r("b", busy(7))], Ack::All), Outcome::Retry { after: Some(d), .. } if d == Duration::from_secs(30))
        );
        assert_eq!(
            fold(&[r("a", ok()), r("b", ok())], Ack::All),
            Outcome::Success
        );
        assert!(
            matches!(fold(&[r("a", ok()), r("b", retry())], Ack::All), Outcome::Retry { pipeline: Some(p), .. } if p == "b")
        );
        assert!(matches!(
            fold(&[r("a", perm()), r("b", retry())], Ack::All),
            Outcome::Retry { .. }
        ));
        assert!(
            matches!(fold(&[r("a", ok()), r("b", perm())], Ack::All), Outcome::DeadLetter { pipeline: Some(p), .. } if p == "b")
        );
        assert_eq!(
            fold(&[r("a", ok()), r("b", perm())], Ack::Any),
            Outcome::Success
        );
        assert!(matches!(
            fold(&[r("a", perm()), r("b", perm())], Ack::Any),
            Outcome::DeadLetter { .. }
        ));
        let down = |d| {
            Err(Failure::Pipeline(PipelineError::Unavailable(
                d,
                "down".into(),
            )))
        };
        assert!(matches!(
            fold(&[r("a", down(Dependency::Graph)), r("b", ok())], Ack::All),
            Outcome::Retry { outage: true, .. }
        ));
        assert!(
            matches!(
                fold(
                    &[r("a", down(Dependency::Graph)), r("b", retry())],
                    Ack::All
                ),
                Outcome::Retry { outage: false, .. }
            ),
            "a failure that is not an outage spends the retry budget as usual"
        );
        assert!(matches!(
            fold(&[r("a", down(Dependency::Graph)), r("b", perm())], Ack::All),
            Outcome::Retry { outage: false, .. }
        ));
    }

    #[test]
    fn a_batch_is_split_by_its_events_outcomes_and_retried_whole_only_when_all_are_retried() {
        let at = |secs: f64| std::time::UNIX_EPOCH + Duration::from_secs_f64(secs);
        let retry = || Outcome::Retry {
            reason: "503".into(),
            pipeline: Some("notify-deliver".into()),
            after: None,
            outage: false,
        };
        let defer = |secs| Outcome::Defer {
            until: at(secs),
            reason: "rate limit".into(),
        };
        let dead = |why: &str| Outcome::DeadLetter {
            reason: why.into(),
            label: "permanent",
            pipeline: None,
        };
        let el = |text: &str, o: Outcome| (text.to_owned(), o);
        assert_eq!(
            split(vec![el("1", Outcome::Success), el("2", Outcome::Success)]),
            Outcome::Success
        );
        let Outcome::Retry { reason, .. } = split(vec![el("1", retry()), el("2", retry())]) else {
            panic!("all retried: the batch is retried whole")
        };
        assert_eq!(reason, "2 of 2 events: 503");
        let Outcome::Split(parts) = split(vec![
            el("1", Outcome::Success),
            el("2", retry()),
            el("3", dead("bad address")),
            el("4", retry()),
            el("5", defer(10.2)),
            el("6", defer(10.9)),
            el("7", defer(30.0)),
            el("8", dead("no channel")),
        ]) else {
            panic!("split expected")
        };
        let summary: Vec<(&str, usize)> =
            parts.iter().map(|p| (p.body.as_str(), p.events)).collect();
        assert_eq!(
            summary,
            [("3", 1), ("8", 1), ("[2,4]", 2), ("[5,6]", 2), ("7", 1)],
            "one dead letter each, the retries together, deferrals by the second they wait until"
        );
        assert!(
            matches!(&parts[2].outcome, Outcome::Retry { reason, .. } if reason == "2 of 8 events: 503")
        );
        assert!(matches!(parts[3].outcome, Outcome::Defer { until, .. } if until == at(10.9)));
    }
}
