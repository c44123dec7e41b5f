//! Circuit breakers, one per dependency. A dependency outage must not spend the retry budget
//! of every message that arrives while it lasts and then fill the DLQ: consecutive failures
//! attributed to a dependency (or its health probe failing) **open** its breaker, and the
//! queues whose routes need it stop receiving. After a cooldown the breaker is **half-open**:
//! one message is let through as a trial; its success closes the breaker and the queues
//! resume, its failure opens it again. A failing probe keeps it open.
//!
//! ```text
//!   closed ──(failures_to_open consecutive outages, one configuration fault, a failing probe)──▶ open
//!   open ──(cooldown passed: a passing probe, or a receive asking)──▶ half-open
//!   half-open ──(the trial succeeds, or a passing probe)──▶ closed
//!   half-open ──(the trial fails)──▶ open
//! ```
//!
//! What a failure *is* is decided once, in `fault::classify`: an outage (unreachable, timed
//! out, 5xx, throttled, a lock wait) counts; a configuration fault (credentials, a permission)
//! opens the breaker at once, since every message fails alike. Bad input never counts. The
//! engine, not the pipelines, reports: every success of a pipeline is a success of each
//! dependency it declares (see `dispatch::run::feedback`), so whatever a daemon's routes, a
//! dependency that is back is used at full rate within a cooldown and a probe interval.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::fault::Dependency;
use crate::ops::Readiness;
use crate::telemetry;

#[derive(Debug, Clone, PartialEq)]
enum State {
    Closed,
    Open {
        since: SystemTime,
        /// Not before this does it become half-open.
        until: Instant,
    },
    HalfOpen {
        since: SystemTime,
        /// When the trial was handed out; another is handed out if it gives no verdict
        /// within a cooldown (its message was dropped, or used no call of the dependency).
        trial: Option<Instant>,
    },
}

#[derive(Debug)]
struct Breaker {
    consecutive_failures: u32,
    state: State,
    /// The last failure's reason (no content: see `safe`), for `/readyz` and the log.
    last_error: String,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            consecutive_failures: 0,
            state: State::Closed,
            last_error: String::new(),
        }
    }
}

/// May a queue that needs some dependencies receive now?
pub enum Admission {
    /// Every dependency is closed: receive as usual.
    Go,
    /// A dependency is half-open and this caller holds its trial: receive one message.
    Trial,
    /// A dependency is open (or its trial is out): resolves when it is worth asking again.
    Wait {
        /// The dependency that is blocking.
        dependency: Dependency,
        wake: BoxFuture<'static, ()>,
    },
}

/// Every breaker of one daemon.
#[derive(Clone)]
pub struct Breakers {
    inner: Arc<Inner>,
}

struct Inner {
    config: BreakerConfig,
    breakers: Mutex<BTreeMap<Dependency, Breaker>>,
    /// Bumped on every state change, waking waiting pollers.
    changed: watch::Sender<u64>,
    readiness: Readiness,
}

impl Breakers {
    pub fn new(config: BreakerConfig, readiness: Readiness) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                breakers: Mutex::default(),
                changed: watch::channel(0).0,
                readiness,
            }),
        }
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.inner.config.cooldown_secs)
    }

    /// A call to `dependency` failed in a way that says it is unavailable.
    pub fn failure(&self, dependency: Dependency, reason: &str) {
        let mut breakers = self.lock();
        let breaker = breakers.entry(dependency).or_default();
        breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
        breaker.last_error = crate::safe::one_line(reason, 300);
        let open = match breaker.state {
            State::Closed => breaker.consecutive_failures >= self.inner.config.failures_to_open,
            // The trial failed: it is still down.
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            self.open(dependency, breaker, "consecutive failures");
        }
    }

    /// A call to `dependency` was refused for a reason of configuration (credentials, a
    /// permission, a missing identity): every message needing it fails alike, so it opens at
    /// once, and `/readyz` says what to fix.
    pub fn denied(&self, dependency: Dependency, reason: &str) {
        let mut breakers = self.lock();
        let breaker = breakers.entry(dependency).or_default();
        breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
        breaker.last_error = crate::safe::one_line(reason, 300);
        if !matches!(breaker.state, State::Open { .. }) {
            self.open(dependency, breaker, "configuration fault");
        }
    }

    /// A call to `dependency` succeeded.
    pub fn success(&self, dependency: Dependency) {
        let mut breakers = self.lock();
        let Some(breaker) = breakers.get_mut(&dependency) else {
            return;
        };
        breaker.consecutive_failures = 0;
        match breaker.state {
            State::Closed => {}
            // A call that was already under way when it opened proves as much as a trial.
            State::Open { .. } | State::HalfOpen { .. } => self.close(dependency, breaker),
        }
    }

    /// The result of `dependency`'s health probe. A failing probe opens the breaker (a
    /// probe is a call like any other, and a decisive one) and keeps it open. A passing one
    /// moves it on: open past its cooldown → half-open, half-open → closed. A daemon whose
    /// routes see no message (or whose trial message never reports) still recovers.
    pub fn probed(&self, dependency: Dependency, result: Result<(), &str>) {
        let Err(reason) = result else {
            let mut breakers = self.lock();
            let Some(breaker) = breakers.get_mut(&dependency) else {
                return;
            };
            match breaker.state {
                State::Closed => {}
                State::Open { since, until } if until <= Instant::now() => {
                    breaker.state = State::HalfOpen { since, trial: None };
                    telemetry::breaker_state(dependency, "half_open");
                    tracing::info!(dependency = %dependency, "circuit half-open: the health probe passes");
                    self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
                State::Open { .. } => {}
                State::HalfOpen { .. } => {
                    breaker.consecutive_failures = 0;
                    self.close(dependency, breaker);
                }
            }
            return;
        };
        let mut breakers = self.lock();
        let breaker = breakers.entry(dependency).or_default();
        breaker.last_error = crate::safe::one_line(reason, 300);
        match &mut breaker.state {
            State::Open { until, .. } => *until = Instant::now() + self.cooldown(),
            _ => self.open(dependency, breaker, "health probe failed"),
        }
    }

    /// Whether a queue needing `dependencies` may receive now, taking a half-open breaker's
    /// trial if it is free.
    pub fn admission(&self, dependencies: &[Dependency]) -> Admission {
        let now = Instant::now();
        let cooldown = self.cooldown();
        let mut breakers = self.lock();
        let mut trial = None;
        for dependency in dependencies {
            let Some(breaker) = breakers.get_mut(dependency) else {
                continue;
            };
            match &mut breaker.state {
                State::Closed => {}
                State::Open { since, until } if *until <= now => {
                    let since = *since;
                    breaker.state = State::HalfOpen { since, trial: None };
                    telemetry::breaker_state(*dependency, "half_open");
                    tracing::info!(dependency = %dependency, "circuit half-open: letting one message through as a trial");
                    trial.get_or_insert(*dependency);
                }
                State::Open { until, .. } => {
                    return Admission::Wait {
                        dependency: *dependency,
                        wake: self.wake_at(*until),
                    };
                }
                State::HalfOpen {
                    trial: Some(at), ..
                } if now < *at + cooldown => {
                    let wake = self.wake_at(*at + cooldown);
                    return Admission::Wait {
                        dependency: *dependency,
                        wake,
                    };
                }
                State::HalfOpen { .. } => {
                    trial.get_or_insert(*dependency);
                }
            }
        }
        let Some(_) = trial else {
            return Admission::Go;
        };
        // Every half-open dependency of this queue gets its trial from this one message.
        for dependency in dependencies {
            if let Some(Breaker {
                state: State::HalfOpen { trial, .. },
                ..
            }) = breakers.get_mut(dependency)
            {
                *trial = Some(now);
            }
        }
        Admission::Trial
    }

    /// Whether any of `dependencies` is open or half-open right now.
    pub fn any_unavailable(&self, dependencies: &[Dependency]) -> bool {
        self.first_unavailable(dependencies).is_some()
    }

    /// The first of `dependencies` whose breaker is open (not half-open) right now, and how
    /// long until its cooldown ends: a message received anyway (by a long poll sent before it
    /// opened) is not worth a call before then.
    pub fn open_for(&self, dependencies: &[Dependency]) -> Option<(Dependency, Duration)> {
        let now = Instant::now();
        let breakers = self.lock();
        dependencies
            .iter()
            .find_map(|d| match breakers.get(d)?.state {
                State::Open { until, .. } if until > now => Some((*d, until - now)),
                _ => None,
            })
    }

    /// The first of `dependencies` whose breaker is open or half-open right now.
    pub fn first_unavailable(&self, dependencies: &[Dependency]) -> Option<Dependency> {
        let breakers = self.lock();
        dependencies.iter().copied().find(|d| {
            breakers
                .get(d)
                .is_some_and(|b| !matches!(b.state, State::Closed))
        })
    }

    /// When a call to `dependency` may go out: now (closed, or this caller holds the
    /// half-open trial), or the instant worth asking again. For calls a pipeline makes only
    /// for some messages (a notification's channel), which defer the message rather than
    /// pause the queue.
    pub fn call_at(&self, dependency: Dependency) -> Result<(), Instant> {
        let now = Instant::now();
        let cooldown = self.cooldown();
        let mut breakers = self.lock();
        let Some(breaker) = breakers.get_mut(&dependency) else {
            return Ok(());
        };
        match &mut breaker.state {
            State::Closed => Ok(()),
            State::Open { until, .. } if *until > now => Err(*until),
            State::Open { since, .. } => {
                breaker.state = State::HalfOpen {
                    since: *since,
                    trial: Some(now),
                };
                telemetry::breaker_state(dependency, "half_open");
                Ok(())
            }
            State::HalfOpen {
                trial: Some(at), ..
            } if now < *at + cooldown => Err(*at + cooldown),
            State::HalfOpen { trial, .. } => {
                *trial = Some(now);
                Ok(())
            }
        }
    }

    /// Gives back the half-open trial [`call_at`](Self::call_at) granted, for a call that did
    /// not go out after all (a notification that then had to wait for its rate-limit token):
    /// the next caller takes it at once, rather than a cooldown later. No effect otherwise.
    pub fn release_trial(&self, dependency: Dependency) {
        let mut breakers = self.lock();
        if let Some(breaker) = breakers.get_mut(&dependency)
            && let State::HalfOpen { trial, .. } = &mut breaker.state
        {
            *trial = None;
        }
    }

    /// Resolves at `at`, or earlier when any breaker changes state.
    fn wake_at(&self, at: Instant) -> BoxFuture<'static, ()> {
        let mut changed = self.inner.changed.subscribe();
        Box::pin(async move {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                _ = changed.changed() => {}
            }
        })
    }

    fn open(&self, dependency: Dependency, breaker: &mut Breaker, cause: &'static str) {
        let since = match breaker.state {
            State::HalfOpen { since, .. } | State::Open { since, .. } => since,
            State::Closed => SystemTime::now(),
        };
        let reopened = !matches!(breaker.state, State::Closed);
        breaker.state = State::Open {
            since,
            until: Instant::now() + self.cooldown(),
        };
        telemetry::breaker_state(dependency, "open");
        let since_text = chrono::DateTime::<chrono::Utc>::from(since)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if reopened {
            tracing::warn!(dependency = %dependency, since = %since_text, error = %breaker.last_error, "circuit open again: the trial failed; queues that need it stay paused");
        } else {
            tracing::warn!(dependency = %dependency, since = %since_text, cause, consecutive_failures = breaker.consecutive_failures, error = %breaker.last_error, "circuit open: dependency unavailable; pausing the queues that need it");
        }
        self.inner.readiness.set_detail(
            format!("circuit:{dependency}"),
            false,
            Some(format!("open since {since_text}: {}", breaker.last_error)),
        );
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn close(&self, dependency: Dependency, breaker: &mut Breaker) {
        let since = match breaker.state {
            State::HalfOpen { since, .. } | State::Open { since, .. } => since,
            State::Closed => return,
        };
        breaker.state = State::Closed;
        let down_secs = since.elapsed().map_or(0, |d| d.as_secs());
        telemetry::breaker_state(dependency, "closed");
        tracing::info!(dependency = %dependency, down_secs, "circuit closed: dependency available again; resuming");
        self.inner
            .readiness
            .set_detail(format!("circuit:{dependency}"), true, None);
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Dependency, Breaker>> {
        // A panic mid-update leaves at worst a stale state, which the next call corrects.
        self.inner
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> Breakers {
        Breakers::new(
            BreakerConfig {
                failures_to_open: 3,
                cooldown_secs: 10,
            },
            Readiness::default(),
        )
    }

    fn is_go(a: &Admission) -> bool {
        matches!(a, Admission::Go)
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_then_a_trial_after_the_cooldown_closes() {
        let b = breakers();
        let needs = [Dependency::Postgres, Dependency::Model];
        b.failure(Dependency::Postgres, "refused");
        b.failure(Dependency::Postgres, "refused");
        b.success(Dependency::Postgres);
        b.failure(Dependency::Postgres, "refused");
        b.failure(Dependency::Postgres, "refused");
        assert!(is_go(&b.admission(&needs)), "not consecutive: closed");
        b.failure(Dependency::Postgres, "refused");
        let Admission::Wait { dependency, wake } = b.admission(&needs) else {
            panic!("open after three in a row")
        };
        assert_eq!(dependency, Dependency::Postgres);
        assert!(
            is_go(&b.admission(&[Dependency::Graph])),
            "others unaffected"
        );

        wake.await; // the cooldown
        assert!(matches!(b.admission(&needs), Admission::Trial));
        assert!(
            matches!(b.admission(&needs), Admission::Wait { .. }),
            "one trial at a time"
        );
        b.success(Dependency::Postgres);
        assert!(is_go(&b.admission(&needs)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_and_a_failing_probe_keeps_it_open() {
        let b = breakers();
        let needs = [Dependency::Graph];
        b.probed(Dependency::Graph, Err("connection refused"));
        assert!(matches!(b.admission(&needs), Admission::Wait { .. }));
        tokio::time::advance(Duration::from_secs(6)).await;
        b.probed(Dependency::Graph, Err("connection refused"));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(
            matches!(b.admission(&needs), Admission::Wait { .. }),
            "the probe pushed the cooldown on"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(b.admission(&needs), Admission::Trial));
        b.failure(Dependency::Graph, "refused again");
        assert!(matches!(b.admission(&needs), Admission::Wait { .. }));
        b.probed(Dependency::Graph, Ok(()));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(b.admission(&needs), Admission::Trial));
        // The trial's message never reports: after a cooldown another trial goes out.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(matches!(b.admission(&needs), Admission::Trial));
        b.success(Dependency::Graph);
        assert!(is_go(&b.admission(&needs)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_configuration_fault_opens_at_once_and_passing_probes_close_it() {
        let b = breakers();
        let needs = [Dependency::S3];
        b.denied(Dependency::S3, "s3:GetObject on d/k denied (AccessDenied)");
        assert!(
            matches!(b.admission(&needs), Admission::Wait { .. }),
            "one is enough"
        );
        b.probed(Dependency::S3, Ok(()));
        assert!(
            matches!(b.admission(&needs), Admission::Wait { .. }),
            "a passing probe does not cut the cooldown short"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        b.probed(Dependency::S3, Ok(()));
        b.probed(Dependency::S3, Ok(()));
        assert!(
            is_go(&b.admission(&needs)),
            "open → half-open → closed by two passing probes, no trial message needed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn open_for_names_an_open_breaker_until_its_cooldown_ends() {
        let b = breakers();
        assert_eq!(b.open_for(&[Dependency::S3]), None);
        b.denied(Dependency::S3, "denied");
        assert_eq!(
            b.open_for(&[Dependency::Postgres, Dependency::S3]),
            Some((Dependency::S3, Duration::from_secs(10)))
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(b.open_for(&[Dependency::S3]), None, "the trial may go");
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_call_waits_for_its_breaker_and_takes_the_trial() {
        let b = breakers();
        assert!(b.call_at(Dependency::Sns).is_ok());
        b.denied(Dependency::Sns, "sns:Publish denied (AuthorizationError)");
        let Err(at) = b.call_at(Dependency::Sns) else {
            panic!("open")
        };
        tokio::time::advance(at - Instant::now()).await;
        assert!(b.call_at(Dependency::Sns).is_ok(), "the trial");
        assert!(b.call_at(Dependency::Sns).is_err(), "one trial at a time");
        b.release_trial(Dependency::Sns);
        assert!(
            b.call_at(Dependency::Sns).is_ok(),
            "a trial given back goes at once"
        );
        assert!(b.call_at(Dependency::Sns).is_err(), "still one at a time");
        b.success(Dependency::Sns);
        assert!(b.call_at(Dependency::Sns).is_ok());
        b.release_trial(Dependency::Sns);
        assert!(
            b.call_at(Dependency::Sns).is_ok(),
            "closed: nothing to give back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_change_wakes_waiters_before_the_cooldown() {
        let b = breakers();
        for _ in 0..3 {
            b.failure(Dependency::Model, "503");
        }
        let Admission::Wait { wake, .. } = b.admission(&[Dependency::Model]) else {
            panic!()
        };
        let waiting = tokio::spawn(wake);
        tokio::task::yield_now().await;
        b.success(Dependency::Model);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the close")
            .unwrap();
    }
}
