//! What an in-memory queue keeps and how it behaves like SQS: visibility timeouts, receive
//! counts, receipts that go stale, FIFO groups held while one of theirs is in flight, the
//! five-minute deduplication window, and redrive to a DLQ after maxReceiveCount.

use super::super::queue::EntryFailure;
use crate::sqs::RedrivePolicy;
use aws_sdk_sqs::types::{Message, MessageAttributeValue, MessageSystemAttributeName};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
pub(super) struct State {
    pub(super) queues: HashMap<String, MemoryQueue>,
    pub(super) next_id: u64,
}

pub(super) struct MemoryQueue {
    pub(super) name: String,
    pub(super) fifo: bool,
    pub(super) redrive: Option<RedrivePolicy>,
    pub(super) messages: HashMap<u64, Stored>,
    /// Standard queues: ids believed visible, oldest first (entries may be stale).
    pub(super) ready: VecDeque<u64>,
    /// Ids hidden until an instant (entries may be stale: the message's own `visible_at` rules).
    pub(super) hidden: BTreeSet<(Instant, u64)>,
    /// FIFO queues: every id in send order.
    pub(super) order: BTreeMap<u64, ()>,
    /// FIFO queues: deduplication ids seen, with when they were sent.
    pub(super) deduplication: HashMap<String, Instant>,
    /// FIFO queues: what each receive request attempt id returned (message id, receipt).
    pub(super) attempts: HashMap<String, Vec<(u64, u64)>>,
}

/// SQS's FIFO deduplication window.
pub(super) const DEDUPLICATION_WINDOW: Duration = Duration::from_secs(300);

pub(super) struct Stored {
    pub(super) body: String,
    pub(super) attributes: HashMap<String, MessageAttributeValue>,
    pub(super) group: Option<String>,
    pub(super) receive_count: u32,
    pub(super) visible_at: Instant,
    /// The current receipt's number; older receipts are stale.
    pub(super) receipt: Option<u64>,
    pub(super) first_received_ms: Option<i64>,
}

/// A message as a receive returns it.
pub(super) fn built(id: u64, receipt: u64, message: &Stored) -> Message {
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

pub(super) fn arn(name: &str) -> String {
    format!("arn:aws:sqs:memory:000000000000:{name}")
}

impl State {
    pub(super) fn insert(
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
    pub(super) fn take(
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
    pub(super) fn by_receipt(&mut self, url: &str, receipt: &str) -> Result<u64, EntryFailure> {
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
    pub(super) fn pick_standard(&mut self, now: Instant, max: usize) -> Vec<u64> {
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
    pub(super) fn pick_fifo(&mut self, now: Instant, max: usize) -> Vec<u64> {
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

    pub(super) fn next_visible(&self, now: Instant) -> Option<Instant> {
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

    pub(super) fn hide(&mut self, id: u64, until: Instant) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.visible_at = until;
            if !self.fifo {
                self.hidden.insert((until, id));
            }
        }
    }
}
