//! Tenant-fair scheduling of one queue's handlers. Of a standard queue's `max_in_flight`
//! messages, `fairness.lookahead_percent` may wait, received, for their tenant's turn while
//! the rest run. When a handler finishes, the next turn goes to the tenant with messages
//! waiting whose running share is smallest against its weight (`fairness.weights`, 1 by
//! default): one tenant's backlog cannot hold every handler while another's message waits,
//! and a message of a tenant with nothing running starts at the next free handler. With no
//! one waiting, a message runs at once — a lone tenant uses every handler.
//!
//! What this cannot do is reach a message SQS has not handed over yet: with a deep backlog of
//! one tenant in front of another's, the queue's own order decides. That is what the tenant
//! as `MessageGroupId` on an SQS fair queue is for (docs/notifications.md, "Tenant fairness").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// One queue's handlers, shared between tenants.
pub struct Fair {
    running_max: usize,
    weights: BTreeMap<String, f64>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    running: usize,
    tenants: HashMap<String, Tenant>,
}

#[derive(Default)]
struct Tenant {
    running: usize,
    waiting: VecDeque<oneshot::Sender<Turn>>,
}

/// A tenant's turn at a handler: held while its message runs, given on when dropped.
pub struct Turn {
    fair: Arc<Fair>,
    tenant: String,
    /// Whether dropping it gives the handler on (a turn never delivered is undone by hand).
    armed: bool,
    /// Whether the message waited for it.
    pub waited: bool,
}

impl Fair {
    pub fn new(running_max: usize, weights: BTreeMap<String, f64>) -> Arc<Self> {
        Arc::new(Self {
            running_max: running_max.max(1),
            weights,
            state: Mutex::default(),
        })
    }

    /// Waits for `tenant`'s turn at a handler. Cancel-safe: a turn granted to a waiter that
    /// has gone is given on.
    pub async fn turn(self: &Arc<Self>, tenant: &str) -> Turn {
        let waiting = {
            let mut state = self.lock();
            let anyone_waiting = state.tenants.values().any(|t| !t.waiting.is_empty());
            if state.running < self.running_max && !anyone_waiting {
                state.running += 1;
                state.tenants.entry(tenant.to_owned()).or_default().running += 1;
                return self.turn_for(tenant, false);
            }
            let (tx, rx) = oneshot::channel();
            state
                .tenants
                .entry(tenant.to_owned())
                .or_default()
                .waiting
                .push_back(tx);
            rx
        };
        // A sender is only dropped unsent with the whole scheduler, which outlives its queue's
        // messages; were it ever, the message runs without a turn to give back.
        waiting.await.unwrap_or_else(|_| {
            let mut turn = self.turn_for(tenant, true);
            turn.armed = false;
            turn
        })
    }

    fn turn_for(self: &Arc<Self>, tenant: &str, waited: bool) -> Turn {
        Turn {
            fair: self.clone(),
            tenant: tenant.to_owned(),
            armed: true,
            waited,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weight(&self, tenant: &str) -> f64 {
        self.weights.get(tenant).copied().unwrap_or(1.0)
    }

    /// A handler came free: the next turns, to the waiting tenants least served for their
    /// weight.
    fn release(self: &Arc<Self>, tenant: &str) {
        let mut state = self.lock();
        state.running -= 1;
        if let Some(t) = state.tenants.get_mut(tenant) {
            t.running -= 1;
        }
        while state.running < self.running_max {
            let next = state
                .tenants
                .iter()
                .filter(|(_, t)| !t.waiting.is_empty())
                .min_by(|(a, ta), (b, tb)| {
                    let share = |name: &str, t: &Tenant| t.running as f64 / self.weight(name);
                    share(a, ta).total_cmp(&share(b, tb)).then(a.cmp(b))
                })
                .map(|(name, _)| name.clone());
            let Some(next) = next else { break };
            let t = state.tenants.get_mut(&next).expect("picked from the map");
            let tx = t.waiting.pop_front().expect("picked for its waiters");
            t.running += 1;
            state.running += 1;
            if let Err(mut undelivered) = tx.send(self.turn_for(&next, true)) {
                // Its waiter has gone (its message was cancelled): undone here, under the lock.
                undelivered.armed = false;
                state.running -= 1;
                if let Some(t) = state.tenants.get_mut(&next) {
                    t.running -= 1;
                }
            }
        }
        state
            .tenants
            .retain(|_, t| t.running > 0 || !t.waiting.is_empty());
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.armed {
            self.fair.clone().release(&self.tenant);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Starts `tenant`'s message: it runs once it has its turn, until `done` is notified.
    fn start(
        fair: &Arc<Fair>,
        tenant: &'static str,
        started: &Arc<Mutex<Vec<&'static str>>>,
    ) -> tokio::sync::oneshot::Sender<()> {
        let (done, finish) = oneshot::channel::<()>();
        let (fair, started) = (fair.clone(), started.clone());
        tokio::spawn(async move {
            let _turn = fair.turn(tenant).await;
            started.lock().unwrap().push(tenant);
            let _ = finish.await;
        });
        done
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_tenant_with_nothing_running_gets_the_next_free_handler_before_a_backlog() {
        let fair = Fair::new(2, BTreeMap::new());
        let started = Arc::new(Mutex::new(Vec::new()));
        // A holds both handlers and has three more waiting; then B's one arrives.
        let mut a: VecDeque<_> = (0..5).map(|_| start(&fair, "a", &started)).collect();
        settle().await;
        let b = start(&fair, "b", &started);
        settle().await;
        assert_eq!(*started.lock().unwrap(), ["a", "a"]);
        a.pop_front().unwrap().send(()).unwrap();
        settle().await;
        assert_eq!(
            *started.lock().unwrap(),
            ["a", "a", "b"],
            "B ran next, ahead of A's three"
        );
        drop(b);
        settle().await;
        assert_eq!(started.lock().unwrap().len(), 4, "then A again");
        drop(a);
    }

    #[tokio::test]
    async fn turns_follow_the_weights_and_a_lone_tenant_uses_every_handler() {
        let weights = BTreeMap::from([("a".to_owned(), 3.0)]);
        let fair = Fair::new(4, weights);
        let started = Arc::new(Mutex::new(Vec::new()));
        let a: Vec<_> = (0..4).map(|_| start(&fair, "a", &started)).collect();
        settle().await;
        assert_eq!(
            started.lock().unwrap().len(),
            4,
            "alone, A runs on all four"
        );
        // Both wait from now on; every handler freed goes to whoever is below its share.
        let waiting_a: Vec<_> = (0..8).map(|_| start(&fair, "a", &started)).collect();
        let waiting_b: Vec<_> = (0..8).map(|_| start(&fair, "b", &started)).collect();
        settle().await;
        drop(a);
        settle().await;
        let running: Vec<&str> = started.lock().unwrap()[4..].to_vec();
        let b = running.iter().filter(|t| **t == "b").count();
        assert_eq!(
            (running.len() - b, b),
            (3, 1),
            "A weighs 3, B 1: of four handlers A gets three ({running:?})"
        );
        drop((waiting_a, waiting_b));
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_gives_its_turn_on() {
        let fair = Fair::new(1, BTreeMap::new());
        let started = Arc::new(Mutex::new(Vec::new()));
        let first = start(&fair, "a", &started);
        settle().await;
        let gone = {
            let fair = fair.clone();
            tokio::spawn(async move { fair.turn("b").await })
        };
        let _next = start(&fair, "c", &started);
        settle().await;
        gone.abort();
        settle().await;
        first.send(()).unwrap();
        settle().await;
        assert_eq!(*started.lock().unwrap(), ["a", "c"]);
    }
}
