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
        Outcome::Retry { .. } => 3,
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
}
