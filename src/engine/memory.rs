//! An in-memory SQS behind the engine's [`QueueApi`] seam, for the engine's unit tests (with
//! tokio's paused clock: a test of minutes of backoff runs in milliseconds) and its in-process
//! benchmark. It models what the engine relies on: visibility timeouts, receipt handles that
//! go stale when a message is received again, receive counts, redrive to a DLQ once a receive
//! would pass maxReceiveCount, delays, long polls, and FIFO queues: message groups (a group's
//! later messages are not handed out while an earlier one is in flight), deduplication ids
//! (within SQS's 5-minute window) and receive request attempt ids (a receive repeated with the
//! same id returns the same messages while none of them was touched). LocalStack and real SQS
//! stay the reference: the integration tests run against them.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::DeadLetterQueue;
use super::queue::{EntryFailure, FifoIds, QueueApi, ReceiveError, SendError};
use crate::config::QueueConfig;
use crate::sqs::{QueueInfo, QueueLookupError, RedrivePolicy};

/// A set of in-memory queues, addressed as `memory://<name>`.
#[derive(Clone, Default)]
pub struct MemoryQueues {
    state: Arc<Mutex<State>>,
    /// Woken on every send and visibility change, for long polls.
    changed: Arc<Notify>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, MemoryQueue>,
    next_id: u64,
}

struct MemoryQueue {
    name: String,
    fifo: bool,
    redrive: Option<RedrivePolicy>,
    messages: HashMap<u64, Stored>,
    /// Standard queues: ids believed visible, oldest first (entries may be stale).
    ready: VecDeque<u64>,
    /// Ids hidden until an instant (entries may be stale: the message's own `visible_at` rules).
    hidden: BTreeSet<(Instant, u64)>,
    /// FIFO queues: every id in send order.
    order: BTreeMap<u64, ()>,
    /// FIFO queues: deduplication ids seen, with when they were sent.
    deduplication: HashMap<String, Instant>,
    /// FIFO queues: what each receive request attempt id returned (message id, receipt).
    attempts: HashMap<String, Vec<(u64, u64)>>,
}

/// SQS's FIFO deduplication window.
const DEDUPLICATION_WINDOW: Duration = Duration::from_secs(300);

struct Stored {
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    group: Option<String>,
    receive_count: u32,
    visible_at: Instant,
    /// The current receipt's number; older receipts are stale.
    receipt: Option<u64>,
    first_received_ms: Option<i64>,
}

/// A message as it sits in a queue, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub body: String,
    pub receive_count: u32,
    pub in_flight: bool,
    pub attributes: HashMap<String, String>,
    /// `MessageGroupId`, on FIFO queues.
    pub group: Option<String>,
}

impl MemoryQueues {
    pub fn new() -> Self {
        Self::default()
    }

    /// The URL of queue `name`.
    pub fn url(name: &str) -> String {
        format!("memory://{name}")
    }

    /// Creates a queue (a name ending in `.fifo` is a FIFO queue), with a DLQ after
    /// `max_receive_count` receives when `dlq` names one. Returns its URL.
    pub fn create(&self, name: &str, dlq: Option<(&str, u32)>) -> String {
        let url = Self::url(name);
        let queue = MemoryQueue {
            name: name.to_owned(),
            fifo: name.ends_with(".fifo"),
            redrive: dlq.map(|(dlq, max_receive_count)| RedrivePolicy {
                dead_letter_target_arn: arn(dlq),
                max_receive_count,
            }),
            messages: HashMap::new(),
            ready: VecDeque::new(),
            hidden: BTreeSet::new(),
            order: BTreeMap::new(),
            deduplication: HashMap::new(),
            attempts: HashMap::new(),
        };
        self.lock().queues.insert(url.clone(), queue);
        url
    }

    /// Sends a message (as a producer would).
    pub fn push(&self, url: &str, body: impl Into<String>, group: Option<&str>) {
        let mut state = self.lock();
        state.insert(
            url,
            body.into(),
            HashMap::new(),
            group.map(str::to_owned),
            None,
            0,
        );
        drop(state);
        self.changed.notify_waiters();
    }

    /// Sends many messages at once.
    pub fn push_many(&self, url: &str, bodies: impl IntoIterator<Item = String>) {
        let mut state = self.lock();
        for body in bodies {
            state.insert(url, body, HashMap::new(), None, None, 0);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Messages in the queue (visible, hidden or in flight), oldest first.
    pub fn messages(&self, url: &str) -> Vec<Snapshot> {
        let state = self.lock();
        let now = Instant::now();
        let queue = &state.queues[url];
        let mut ids: Vec<&u64> = queue.messages.keys().collect();
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let m = &queue.messages[id];
                Snapshot {
                    body: m.body.clone(),
                    receive_count: m.receive_count,
                    in_flight: m.receipt.is_some() && m.visible_at > now,
                    attributes: m
                        .attributes
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.string_value()?.to_owned())))
                        .collect(),
                    group: m.group.clone(),
                }
            })
            .collect()
    }

    /// How many messages the queue holds.
    pub fn len(&self, url: &str) -> usize {
        self.lock().queues[url].messages.len()
    }

    pub fn is_empty(&self, url: &str) -> bool {
        self.len(url) == 0
    }

    /// Acts on each entry whose receipt handle is still current, as a batch call does: one
    /// result per entry, in order. Wakes long polls afterwards (a FIFO group may be free now).
    fn each_current<T>(
        &self,
        url: &str,
        entries: Vec<(&str, T)>,
        mut act: impl FnMut(&mut MemoryQueue, u64, T),
    ) -> Vec<Option<EntryFailure>> {
        let mut state = self.lock();
        let results = entries
            .into_iter()
            .map(|(receipt, value)| match state.by_receipt(url, receipt) {
                Ok(id) => {
                    act(state.queues.get_mut(url).expect("checked"), id, value);
                    None
                }
                Err(failure) => Some(failure),
            })
            .collect();
        drop(state);
        self.changed.notify_waiters();
        results
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A message as a receive returns it.
fn built(id: u64, receipt: u64, message: &Stored) -> Message {
    let mut built = Message::builder()
        .message_id(id.to_string())
        .receipt_handle(format!("{id}#{receipt}"))
        .body(message.body.clone())
        .set_message_attributes(Some(message.attributes.clone()))
        .attributes(
            MessageSystemAttributeName::ApproximateReceiveCount,
            message.receive_count.to_string(),
        )
        .attributes(
            MessageSystemAttributeName::ApproximateFirstReceiveTimestamp,
            message.first_received_ms.unwrap_or_default().to_string(),
        );
    if let Some(group) = &message.group {
        built = built.attributes(MessageSystemAttributeName::MessageGroupId, group);
    }
    built.build()
}

fn arn(name: &str) -> String {
    format!("arn:aws:sqs:memory:000000000000:{name}")
}

impl State {
    fn insert(
        &mut self,
        url: &str,
        body: String,
        attributes: HashMap<String, MessageAttributeValue>,
        group: Option<String>,
        deduplication_id: Option<String>,
        delay_secs: u32,
    ) {
        self.next_id += 1;
        let id = self.next_id;
        let queue = self.queues.get_mut(url).expect("no such in-memory queue");
        let visible_at = Instant::now() + Duration::from_secs(delay_secs.into());
        if let Some(deduplication_id) = deduplication_id {
            let now = Instant::now();
            queue
                .deduplication
                .retain(|_, sent| now.duration_since(*sent) < DEDUPLICATION_WINDOW);
            if queue.deduplication.insert(deduplication_id, now).is_some() {
                // Accepted, and dropped: SQS answers a duplicate send with success.
                return;
            }
        }
        queue.messages.insert(
            id,
            Stored {
                body,
                attributes,
                group,
                receive_count: 0,
                visible_at,
                receipt: None,
                first_received_ms: None,
            },
        );
        if queue.fifo {
            queue.order.insert(id, ());
        } else if delay_secs > 0 {
            queue.hidden.insert((visible_at, id));
        } else {
            queue.ready.push_back(id);
        }
    }

    /// Hands out up to `max` visible messages; `None` when none is visible now, with the
    /// instant the next one may become visible.
    fn take(
        &mut self,
        url: &str,
        max: usize,
        visibility: Duration,
        attempt: Option<&str>,
    ) -> Result<Vec<Message>, Option<Instant>> {
        let now = Instant::now();
        let queue = self.queues.get_mut(url).expect("no such in-memory queue");
        if let Some(returned) = attempt.and_then(|a| queue.attempts.get(a)) {
            // The same attempt again: the same messages, as long as none was touched since.
            let unchanged = returned.iter().all(|(id, receipt)| {
                queue
                    .messages
                    .get(id)
                    .is_some_and(|m| m.receipt == Some(*receipt) && m.visible_at > now)
            });
            if unchanged && !returned.is_empty() {
                return Ok(returned
                    .iter()
                    .map(|(id, receipt)| built(*id, *receipt, &queue.messages[id]))
                    .collect());
            }
        }
        let picked = if queue.fifo {
            queue.pick_fifo(now, max)
        } else {
            queue.pick_standard(now, max)
        };
        let mut out = Vec::new();
        let mut redriven = Vec::new();
        for id in picked {
            let message = queue.messages.get_mut(&id).expect("picked ids exist");
            if let Some(redrive) = &queue.redrive
                && message.receive_count >= redrive.max_receive_count
            {
                let message = queue.messages.remove(&id).expect("picked ids exist");
                queue.order.remove(&id);
                redriven.push((redrive.dead_letter_target_arn.clone(), message));
                continue;
            }
            message.receive_count += 1;
            message.visible_at = now + visibility;
            message
                .first_received_ms
                .get_or_insert_with(|| chrono::Utc::now().timestamp_millis());
            self.next_id += 1;
            message.receipt = Some(self.next_id);
            if !queue.fifo {
                queue.hidden.insert((message.visible_at, id));
            }
            out.push(built(id, self.next_id, message));
        }
        if let Some(attempt) = attempt {
            let returned = out
                .iter()
                .filter_map(|m| {
                    let (id, receipt) = m.receipt_handle()?.split_once('#')?;
                    Some((id.parse().ok()?, receipt.parse().ok()?))
                })
                .collect();
            queue.attempts.insert(attempt.to_owned(), returned);
        }
        let next = queue.next_visible(now);
        for (dlq_arn, message) in redriven {
            let dlq_url = self
                .queues
                .iter()
                .find(|(_, q)| arn(&q.name) == dlq_arn)
                .map(|(url, _)| url.clone())
                .expect("the redrive target exists");
            self.insert(
                &dlq_url,
                message.body,
                message.attributes,
                message.group,
                None,
                0,
            );
        }
        if out.is_empty() { Err(next) } else { Ok(out) }
    }

    /// Finds the message a receipt handle names, if the handle is still current.
    fn by_receipt(&mut self, url: &str, receipt: &str) -> Result<u64, EntryFailure> {
        let invalid = || ("ReceiptHandleIsInvalid".to_owned(), true);
        let (id, number) = receipt.split_once('#').ok_or_else(invalid)?;
        let (id, number) = (
            id.parse::<u64>().map_err(|_| invalid())?,
            number.parse::<u64>().map_err(|_| invalid())?,
        );
        let queue = self.queues.get(url).expect("no such in-memory queue");
        match queue.messages.get(&id) {
            Some(m) if m.receipt == Some(number) => Ok(id),
            _ => Err(invalid()),
        }
    }
}

impl MemoryQueue {
    fn pick_standard(&mut self, now: Instant, max: usize) -> Vec<u64> {
        // Hidden messages whose time has come are visible again.
        while let Some(&(at, id)) = self.hidden.first() {
            if at > now {
                break;
            }
            self.hidden.pop_first();
            if self.messages.get(&id).is_some_and(|m| m.visible_at == at) {
                self.ready.push_back(id);
            }
        }
        let mut picked = Vec::new();
        while picked.len() < max {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if self.messages.get(&id).is_some_and(|m| m.visible_at <= now) {
                picked.push(id);
            }
        }
        picked
    }

    /// In send order; a group with a message in flight is skipped entirely (as SQS does),
    /// and a group's messages are taken in order.
    fn pick_fifo(&mut self, now: Instant, max: usize) -> Vec<u64> {
        let group = |m: &Stored| m.group.clone().unwrap_or_default();
        let mut blocked: std::collections::HashSet<String> = self
            .messages
            .values()
            .filter(|m| m.receipt.is_some() && m.visible_at > now)
            .map(group)
            .collect();
        let mut picked = Vec::new();
        for id in self.order.keys() {
            if picked.len() == max {
                break;
            }
            let m = &self.messages[id];
            let g = group(m);
            if blocked.contains(&g) {
                continue;
            }
            if m.visible_at > now {
                // Delayed: the group's later messages wait behind it.
                blocked.insert(g);
                continue;
            }
            picked.push(*id);
        }
        picked
    }

    fn next_visible(&self, now: Instant) -> Option<Instant> {
        let hidden = if self.fifo {
            self.messages
                .values()
                .map(|m| m.visible_at)
                .filter(|at| *at > now)
                .min()
        } else {
            self.hidden.first().map(|(at, _)| *at)
        };
        hidden.filter(|at| *at > now)
    }

    fn hide(&mut self, id: u64, until: Instant) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.visible_at = until;
            if !self.fifo {
                self.hidden.insert((until, id));
            }
        }
    }
}

impl QueueApi for MemoryQueues {
    fn lookup<'a>(
        &'a self,
        _name: &'a str,
        config: &'a QueueConfig,
    ) -> BoxFuture<'a, Result<(QueueInfo, Option<DeadLetterQueue>), QueueLookupError>> {
        Box::pin(async move {
            let url = match (&config.url, &config.name) {
                (Some(url), _) => url.clone(),
                (None, Some(name)) => Self::url(name),
                (None, None) => unreachable!("validated: url or name"),
            };
            let state = self.lock();
            let queue = state.queues.get(&url).ok_or_else(|| {
                QueueLookupError::NotFound(format!("no in-memory queue at {url}"))
            })?;
            let dlq_url = match (&config.dlq_url, &queue.redrive) {
                (Some(url), _) => Some(url.clone()),
                (None, Some(r)) => Some(Self::url(
                    r.dead_letter_target_arn
                        .rsplit(':')
                        .next()
                        .unwrap_or_default(),
                )),
                (None, None) => None,
            };
            if let Some(dlq) = &dlq_url {
                let dlq_fifo = state.queues.get(dlq).is_some_and(|q| q.fifo);
                if dlq_fifo != queue.fifo {
                    return Err(QueueLookupError::DeadLetterKind {
                        queue: url.clone(),
                        dlq: dlq.clone(),
                        queue_fifo: queue.fifo,
                    });
                }
            }
            let dlq = dlq_url.map(|url| DeadLetterQueue {
                url,
                max_message_bytes: 1_048_576,
            });
            let info = QueueInfo {
                url: url.clone(),
                arn: arn(&queue.name),
                redrive: queue.redrive.clone(),
                approximate_visible: 0,
                approximate_in_flight: 0,
                max_message_bytes: 1_048_576,
                kms_key: None,
                fifo: queue.fifo,
            };
            Ok((info, dlq))
        })
    }

    fn receive<'a>(
        &'a self,
        url: &'a str,
        max: usize,
        wait_secs: u32,
        visibility_secs: u32,
        attempt: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Message>, ReceiveError>> {
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_secs(wait_secs.into());
            let visibility = Duration::from_secs(visibility_secs.into());
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let next = match self.lock().take(url, max, visibility, attempt) {
                    Ok(messages) => return Ok(messages),
                    Err(next) => next,
                };
                if Instant::now() >= deadline {
                    return Ok(Vec::new());
                }
                let wake = next.map_or(deadline, |n| n.min(deadline));
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        })
    }

    fn delete_batch<'a>(
        &'a self,
        url: &'a str,
        receipts: Vec<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>> {
        let entries = receipts.into_iter().map(|r| (r, ())).collect();
        Box::pin(async move {
            Ok(self.each_current(url, entries, |queue, id, ()| {
                queue.messages.remove(&id);
                queue.order.remove(&id);
            }))
        })
    }

    fn change_visibility_batch<'a>(
        &'a self,
        url: &'a str,
        entries: Vec<(&'a str, u32)>,
    ) -> BoxFuture<'a, Result<Vec<Option<EntryFailure>>, String>> {
        Box::pin(async move {
            let now = Instant::now();
            Ok(self.each_current(url, entries, |queue, id, secs| {
                queue.hide(id, now + Duration::from_secs(secs.into()));
            }))
        })
    }

    fn send<'a>(
        &'a self,
        url: &'a str,
        body: &'a str,
        attributes: HashMap<String, MessageAttributeValue>,
        _trace_header: Option<&'a str>,
        delay_secs: u32,
        fifo: Option<FifoIds<'a>>,
    ) -> BoxFuture<'a, Result<(), SendError>> {
        Box::pin(async move {
            let mut state = self.lock();
            let refused = |message: String| {
                Err(SendError {
                    message,
                    transient: false,
                })
            };
            let Some(queue) = state.queues.get(url) else {
                return refused(format!("AWS.SimpleQueueService.NonExistentQueue: {url}"));
            };
            // What SQS refuses: a FIFO send without a group or with a delay, a group on a
            // standard queue.
            match (queue.fifo, fifo) {
                (true, None) => {
                    return refused(
                        "MissingParameter: The request must contain the parameter MessageGroupId."
                            .to_owned(),
                    );
                }
                (true, Some(_)) if delay_secs > 0 => {
                    return refused(
                        "InvalidParameterValue: DelaySeconds is not supported per message on FIFO queues"
                            .to_owned(),
                    );
                }
                (false, Some(_)) => {
                    return refused(
                        "InvalidParameterValue: MessageGroupId is only for FIFO queues".to_owned(),
                    );
                }
                _ => {}
            }
            state.insert(
                url,
                body.to_owned(),
                attributes,
                fifo.map(|ids| ids.group_id.to_owned()),
                fifo.map(|ids| ids.deduplication_id.to_owned()),
                delay_secs,
            );
            drop(state);
            self.changed.notify_waiters();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fifo_group_waits_while_one_of_its_messages_is_in_flight_and_redrive_moves_exhausted_ones()
     {
        let queues = MemoryQueues::new();
        queues.create("dlq.fifo", None);
        let url = queues.create("q.fifo", Some(("dlq.fifo", 2)));
        for (body, group) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")] {
            queues.push(&url, body, Some(group));
        }
        let bodies = |m: &[Message]| {
            m.iter()
                .map(|m| m.body().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let first = queues.receive(&url, 10, 0, 30, None).await.unwrap();
        assert_eq!(
            bodies(&first),
            ["a1", "b1", "a2", "b2"],
            "in order, groups together"
        );
        assert!(
            queues
                .receive(&url, 10, 0, 30, None)
                .await
                .unwrap()
                .is_empty(),
            "every group in flight"
        );
        // a1 goes back (visibility 0), but a2 of its group is still in flight: the group stays
        // locked, as in SQS.
        let receipt = |m: &Message| m.receipt_handle().unwrap().to_owned();
        let (a1, a2) = (receipt(&first[0]), receipt(&first[2]));
        let failures = queues
            .change_visibility_batch(&url, vec![(&a1, 0)])
            .await
            .unwrap();
        assert_eq!(failures, [None]);
        assert!(
            queues
                .receive(&url, 10, 0, 30, None)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(queues.delete_batch(&url, vec![&a2]).await.unwrap(), [None]);
        let again = queues.receive(&url, 10, 0, 30, None).await.unwrap();
        assert_eq!(
            bodies(&again),
            ["a1"],
            "group a unlocked; b still in flight"
        );
        assert_eq!(
            queues.delete_batch(&url, vec![&a1]).await.unwrap(),
            [Some(("ReceiptHandleIsInvalid".to_owned(), true))],
            "a receipt goes stale when its message is received again"
        );
        // Received twice (maxReceiveCount 2): the next receive moves it to the DLQ instead.
        let current = receipt(&again[0]);
        queues
            .change_visibility_batch(&url, vec![(&current, 0)])
            .await
            .unwrap();
        assert!(
            queues
                .receive(&url, 10, 0, 30, None)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            queues.messages(&MemoryQueues::url("dlq.fifo"))[0].body,
            "a1"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        let last = queues.receive(&url, 10, 0, 30, None).await.unwrap();
        assert_eq!(bodies(&last), ["b1", "b2"], "b's visibility ran out");
    }
}
