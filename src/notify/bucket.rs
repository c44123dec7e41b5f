//! Rate limits: a token bucket per (tenant, `rateLimitKey`) in PostgreSQL — the seed's DynamoDB
//! conditional update, in the database conveyor already runs.
//!
//! **Reservations.** A send makes one decision on its bucket: it takes the next token, refilled
//! for the time since the bucket was last touched, under the row's lock, so any number of
//! daemons sharing the database obey one bucket. A token that is not there yet is reserved all
//! the same: the bucket goes below zero, and the caller learns when its token is due (the k-th
//! reserved ahead is due k / refill seconds on). The caller waits until then — in place, or
//! deferred with the reservation recorded on its delivery record — and sends without asking
//! again. Waiters never wake to find the bucket empty: no backlog stampedes.
//!
//! **Leases.** A hot bucket would still cost a statement per send on one row. So a daemon
//! leases a slice of a bucket's tokens at once — as many as it took in the last `lease`
//! (1 s) there, at most `lease` worth of the refill — in the same one statement, and hands
//! them out from memory in order, each with its own due time. A quiet bucket leases one token
//! at a time, exactly as before. A leased token unused a tenth of a second past its due time is
//! dropped, never returned: the bucket only ever grants less.
//!
//! **The bound.** Every token leaves the bucket once, and a send never goes before its token is
//! due, so over any run the sends of all daemons are at most `capacity + refill_per_sec × t`.
//! A leased token may be spent up to [`STALE`] after its due time, so a window as short as a
//! second may see up to `refill_per_sec × STALE` more than a single daemon would send.
//!
//! **Provider buckets.** SES's send rate and SNS's SMS rate are the account's, not a tenant's:
//! `notify.provider_rate_limits` gives each a bucket of its own (tenant nil, key
//! `provider:<name>`), which every send on that provider takes from in the same statement as
//! its tenant's. 100 tenants at 14/s each then still send at most the account's rate together.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Limit;
use crate::telemetry::otel;

/// A leased token not spent this long after its due time is dropped.
pub const STALE: Duration = Duration::from_millis(100);

/// When a send may go: its token is there, or reserved and due later.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reservation {
    /// A token was there: send now.
    Now,
    /// The bucket was empty: the token reserved for this send is due in this long.
    Ahead(Duration),
}

/// A send's tokens, one of each bucket it takes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub reservation: Reservation,
    /// Whether the database was asked (a statement on the buckets), or every token came from
    /// this daemon's leases.
    pub statement: bool,
}

#[derive(Clone)]
pub struct Buckets {
    pool: PgPool,
    /// How much of a bucket's refill one statement may lease; zero: one token per statement.
    lease: Duration,
    leases: Arc<Mutex<HashMap<(Uuid, String), Lease>>>,
}

/// This daemon's unspent tokens of one bucket, and how fast it has been taking them.
#[derive(Debug)]
struct Lease {
    /// Leased slices, oldest first (two statements racing may each add one).
    slices: VecDeque<Slice>,
    /// Takes per second here, decayed over a second.
    demand: f64,
    last_take: Instant,
    /// Held by the one send leasing more for this bucket.
    leasing: Arc<tokio::sync::Mutex<()>>,
}

impl Buckets {
    /// Buckets leasing up to `lease` of a bucket's refill per statement (zero: per take).
    pub fn new(pool: PgPool, lease: Duration) -> Self {
        Self {
            pool,
            lease,
            leases: Arc::default(),
        }
    }

    /// Takes the next token of each bucket `(tenant, key)` (created full on first use), from
    /// this daemon's lease or in one statement that leases for all buckets that need it; the
    /// send is due when its last token is. A send takes from its tenant's bucket and, where the
    /// account has one, its provider's (tenant nil). Keys must differ; every caller lists the
    /// tenant's bucket first and the provider's last, so two statements lock shared rows in the
    /// same order.
    pub async fn reserve(&self, buckets: &[(Uuid, &str, Limit)]) -> Result<Grant, sqlx::Error> {
        let now = Instant::now();
        let mut due = now;
        // Buckets whose lease is empty, with the lock that lets one send at a time lease more.
        let mut empty: Vec<(usize, Arc<tokio::sync::Mutex<()>>)> = Vec::new();
        {
            let mut leases = self.leases();
            for (i, (tenant, key, _)) in buckets.iter().enumerate() {
                let lease = leases
                    .entry((*tenant, (*key).to_owned()))
                    .or_insert_with(|| Lease {
                        slices: VecDeque::new(),
                        demand: 0.0,
                        last_take: now,
                        leasing: Arc::default(),
                    });
                lease.took(now);
                match lease.next(now) {
                    Some(d) => due = due.max(d),
                    None => empty.push((i, lease.leasing.clone())),
                }
            }
        }
        let mut statement = false;
        if !empty.is_empty() {
            // One lease statement per bucket at a time: sends finding the lease empty together
            // wait for the first one's statement and take from what it leased, instead of each
            // leasing a slice of its own (most of which would go stale unused). Locked in the
            // callers' order, tenant before provider, as the rows are. Per take (no leases),
            // every send has its own statement and nothing to wait for.
            let mut guards = Vec::with_capacity(empty.len());
            if !self.lease.is_zero() {
                for (_, leasing) in &empty {
                    guards.push(leasing.clone().lock_owned().await);
                }
            }
            let mut wanted: Vec<(usize, u32)> = Vec::new();
            {
                let now = Instant::now();
                let mut leases = self.leases();
                for (i, _) in &empty {
                    let (tenant, key, limit) = buckets[*i];
                    match leases.get_mut(&(tenant, key.to_owned())) {
                        Some(lease) => match lease.next(now) {
                            Some(d) => due = due.max(d),
                            None => {
                                wanted.push((*i, lease_size(self.lease, lease.demand, limit)));
                            }
                        },
                        // Pruned meanwhile (idle for a day): a token of its own all the same.
                        None => wanted.push((*i, 1)),
                    }
                }
            }
            if !wanted.is_empty() {
                statement = true;
                let leased = self.lease(buckets, &wanted).await?;
                let mut leases = self.leases();
                for ((i, _), mut slice) in wanted.iter().zip(leased) {
                    let (tenant, key, _) = buckets[*i];
                    // The first token is this send's; the rest are the lease's.
                    due = due.max(slice.due(slice.next));
                    slice.next += 1;
                    if let Some(lease) = leases.get_mut(&(tenant, key.to_owned()))
                        && slice.next < slice.n
                    {
                        lease.slices.push_back(slice);
                    }
                }
            }
            drop(guards);
        }
        let reservation = match due.checked_duration_since(Instant::now()) {
            Some(ahead) if !ahead.is_zero() => Reservation::Ahead(ahead),
            _ => Reservation::Now,
        };
        Ok(Grant {
            reservation,
            statement,
        })
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<(Uuid, String), Lease>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One statement: `n` tokens of each wanted bucket, as a slice each.
    async fn lease(
        &self,
        buckets: &[(Uuid, &str, Limit)],
        wanted: &[(usize, u32)],
    ) -> Result<Vec<Slice>, sqlx::Error> {
        let tenants: Vec<Uuid> = wanted.iter().map(|(i, _)| buckets[*i].0).collect();
        let keys: Vec<&str> = wanted.iter().map(|(i, _)| buckets[*i].1).collect();
        let capacities: Vec<f64> = wanted.iter().map(|(i, _)| buckets[*i].2.capacity).collect();
        let refills: Vec<f64> = wanted
            .iter()
            .map(|(i, _)| buckets[*i].2.refill_per_sec)
            .collect();
        let counts: Vec<f64> = wanted.iter().map(|(_, n)| f64::from(*n)).collect();
        // A new row's `tokens` is its capacity less n, so the update finds the capacity as
        // `EXCLUDED.tokens + n`, and its refill and n by its key's place in the arguments.
        // RETURNING gives the level after the take; the k-th of n tokens left at level
        // `after + n − k`, and is due when that level is back to zero.
        let statement = sqlx::query_as(
            r#"
            INSERT INTO notify_rate_buckets AS b (tenant_id, key, tokens, updated_at)
            SELECT tenant_id, key, capacity - n, clock_timestamp()
            FROM unnest($1::uuid[], $2::text[], $3::float8[], $5::float8[]) AS r(tenant_id, key, capacity, n)
            ON CONFLICT (tenant_id, key) DO UPDATE
            SET tokens = LEAST(EXCLUDED.tokens + ($5::float8[])[array_position($2::text[], b.key)],
                               b.tokens + ($4::float8[])[array_position($2::text[], b.key)]
                                   * GREATEST(0, EXTRACT(EPOCH FROM (EXCLUDED.updated_at - b.updated_at))))
                         - ($5::float8[])[array_position($2::text[], b.key)],
                updated_at = GREATEST(b.updated_at, EXCLUDED.updated_at)
            RETURNING b.key, b.tokens
            "#,
        )
        .bind(&tenants)
        .bind(&keys)
        .bind(&capacities)
        .bind(&refills)
        .bind(&counts)
        .fetch_all(&self.pool);
        let rows: Vec<(String, f64)> = otel::traced(
            otel::db("postgresql", "reserve", "notify_rate_buckets"),
            statement,
        )
        .await?;
        // Due times count from the answer, not the question: never earlier than the database's.
        let answered = Instant::now();
        Ok(wanted
            .iter()
            .map(|(i, n)| {
                let (_, key, limit) = buckets[*i];
                let after = rows
                    .iter()
                    .find(|(k, _)| k == key)
                    .map_or(0.0, |(_, tokens)| *tokens);
                Slice {
                    at: answered,
                    after,
                    n: *n,
                    next: 0,
                    refill: limit.refill_per_sec,
                }
            })
            .collect())
    }

    /// Deletes buckets untouched for `idle`: a bucket idle that long has refilled (for any
    /// capacity that refills within it), and one taken from next is created full. Returns how
    /// many.
    pub async fn prune(&self, idle: Duration) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM notify_rate_buckets WHERE updated_at < clock_timestamp() - make_interval(secs => $1)",
        )
        .bind(idle.as_secs_f64())
        .execute(&self.pool)
        .await?;
        // Leases of buckets idle that long are stale too.
        let now = Instant::now();
        self.leases()
            .retain(|_, lease| now.duration_since(lease.last_take) < idle);
        Ok(done.rows_affected())
    }
}

impl Lease {
    /// Counts a take at `now` into the demand (an exponentially decayed rate, τ = 1 s).
    fn took(&mut self, now: Instant) {
        let since = now.duration_since(self.last_take).as_secs_f64();
        self.demand = self.demand * (-since).exp() + 1.0;
        self.last_take = now;
    }

    /// The due time of the next leased token not stale at `now`, taken; `None`: none left.
    fn next(&mut self, now: Instant) -> Option<Instant> {
        while let Some(slice) = self.slices.front_mut() {
            slice.skip_stale(now);
            if slice.next < slice.n {
                let due = slice.due(slice.next);
                slice.next += 1;
                return Some(due);
            }
            self.slices.pop_front();
        }
        None
    }
}

/// `n` tokens leased by one statement answered at `at`, which left the bucket at `after` (its
/// level after the take): the k-th (0-based) left at level `after + n − 1 − k`, due when that
/// is back to zero, `refill` tokens a second. Tokens `..next` are spent or dropped.
#[derive(Debug)]
struct Slice {
    at: Instant,
    after: f64,
    n: u32,
    next: u32,
    refill: f64,
}

impl Slice {
    fn due(&self, k: u32) -> Instant {
        let level = self.after + f64::from(self.n - 1 - k);
        if level >= 0.0 {
            self.at
        } else {
            self.at + Duration::from_secs_f64(-level / self.refill)
        }
    }

    /// Drops the tokens more than [`STALE`] past their due time at `now` (due times only
    /// grow with k, so they are the first ones).
    fn skip_stale(&mut self, now: Instant) {
        let Some(past) = now
            .checked_duration_since(self.at + STALE)
            .filter(|p| !p.is_zero())
        else {
            return;
        };
        // Token k is stale when its due time is before now − STALE: level(k) < 0 with
        // −level(k) / refill < past, i.e. k < n − 1 + after + refill × past; and tokens due at
        // once (level ≥ 0) are stale too, the whole slice being past `at + STALE`.
        let bound = f64::from(self.n) - 1.0 + self.after + self.refill * past.as_secs_f64();
        let first_fresh = bound.ceil().clamp(0.0, f64::from(self.n)) as u32;
        self.next = self.next.max(first_fresh);
    }
}

/// Tokens to lease: what this daemon took in the last lease period (`demand` per second),
/// within [1, the refill over a lease period].
fn lease_size(lease: Duration, demand: f64, limit: Limit) -> u32 {
    let most = (limit.refill_per_sec * lease.as_secs_f64()).floor();
    (demand * lease.as_secs_f64())
        .ceil()
        .min(most)
        .clamp(1.0, 100_000.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit {
        capacity: 10.0,
        refill_per_sec: 20.0,
    };

    fn slice(at: Instant, after: f64, n: u32) -> Slice {
        Slice {
            at,
            after,
            n,
            next: 0,
            refill: LIMIT.refill_per_sec,
        }
    }

    #[test]
    fn the_kth_token_reserved_ahead_is_due_k_refills_from_now() {
        let at = Instant::now();
        // One token, as a per-take bucket leases.
        assert_eq!(slice(at, 9.0, 1).due(0), at);
        assert_eq!(slice(at, 0.0, 1).due(0), at);
        assert_eq!(slice(at, -1.0, 1).due(0), at + Duration::from_millis(50));
        assert_eq!(slice(at, -40.0, 1).due(0), at + Duration::from_secs(2));
        // Four leased from a bucket of 2: two there, then one every 50 ms.
        let four = slice(at, -2.0, 4);
        assert_eq!(
            (0..4).map(|k| four.due(k)).collect::<Vec<_>>(),
            [
                at,
                at,
                at + Duration::from_millis(50),
                at + Duration::from_millis(100)
            ]
        );
    }

    #[test]
    fn leased_tokens_go_in_order_and_stale_ones_are_dropped_never_spent() {
        let at = Instant::now();
        let mut lease = Lease {
            slices: VecDeque::from([slice(at, -2.0, 4)]),
            demand: 0.0,
            last_take: at,
            leasing: Arc::default(),
        };
        assert_eq!(lease.next(at), Some(at));
        // 160 ms on: the second token (due at once) and the third (due at 50 ms) are more
        // than 100 ms late; the fourth (due at 100 ms) is not.
        let later = at + Duration::from_millis(160);
        assert_eq!(lease.next(later), Some(at + Duration::from_millis(100)));
        assert_eq!(lease.next(later), None, "the slice is spent");
        assert!(lease.slices.is_empty());
    }

    #[test]
    fn a_lease_follows_demand_up_to_the_refill_of_one_lease_period() {
        let second = Duration::from_secs(1);
        assert_eq!(lease_size(second, 1.0, LIMIT), 1, "a quiet bucket: one");
        assert_eq!(lease_size(second, 7.2, LIMIT), 8);
        assert_eq!(
            lease_size(second, 500.0, LIMIT),
            20,
            "at most a second of refill"
        );
        assert_eq!(lease_size(Duration::ZERO, 500.0, LIMIT), 1, "per take");
    }
}
