//! An in-memory SQS behind the engine's [`QueueApi`] seam, for the engine's unit tests (with
//! tokio's paused clock: a test of minutes of backoff runs in milliseconds) and its in-process
//! benchmark. It models what the engine relies on: visibility timeouts, receipt handles that
//! go stale when a message is received again, receive counts, redrive to a DLQ once a receive
//! would pass maxReceiveCount, delays, long polls, and FIFO queues: message groups (a group's
//! later messages are not handed out while an earlier one is in flight), deduplication ids
//! (within SQS's 5-minute window) and receive request attempt ids (a receive repeated with the
//! same id returns the same messages while none of them was touched). LocalStack and real SQS
//! stay the reference: the integration tests run against them.

mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{Message, MessageAttributeValue};
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::DeadLetterQueue;
use super::queue::{EntryFailure, QueueApi, ReceiveError, SendError, SendIds};
use crate::config::QueueConfig;
use crate::sqs::{QueueInfo, QueueLookupError, RedrivePolicy};
use state::{MemoryQueue, State, arn};

/// A set of in-memory queues, addressed as `memory://<name>`.
#[derive(Clone, Default)]
pub struct MemoryQueues {
    state: Arc<Mutex<State>>,
    /// Woken on every send and visibility change, for long polls.
    changed: Arc<Notify>,
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
        ids: SendIds<'a>,
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
            // What SQS refuses: a FIFO send without a group or with a delay, a deduplication
            // id on a standard queue (which takes a group since fair queues).
            match (queue.fifo, ids) {
                (true, SendIds::Standard { .. }) => {
                    return refused(
                        "MissingParameter: The request must contain the parameter MessageGroupId."
                            .to_owned(),
                    );
                }
                (true, SendIds::Fifo(_)) if delay_secs > 0 => {
                    return refused(
                        "InvalidParameterValue: DelaySeconds is not supported per message on FIFO queues"
                            .to_owned(),
                    );
                }
                (false, SendIds::Fifo(_)) => {
                    return refused(
                        "InvalidParameterValue: MessageDeduplicationId is only for FIFO queues"
                            .to_owned(),
                    );
                }
                _ => {}
            }
            state.insert(
                url,
                body.to_owned(),
                attributes,
                match ids {
                    SendIds::Fifo(f) => Some(f.group_id.to_owned()),
                    SendIds::Standard { group_id } => group_id.map(str::to_owned),
                },
                match ids {
                    SendIds::Fifo(f) => Some(f.deduplication_id.to_owned()),
                    SendIds::Standard { .. } => None,
                },
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
