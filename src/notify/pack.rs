//! Many events in one SQS message: a batch (`conveyor.batch` = how many), whose body is a JSON
//! array of the bodies the events would have had on their own. One message per few hundred
//! events instead of one each: SQS calls — and what SQS bills — fall by as much. The consuming
//! queue's handler runs each element on its own with its own outcome, and splits the batch
//! when they differ (`dispatch::fold::split`, `engine::split`): nothing that succeeded runs
//! again, and each event keeps its own retries and its own dead letter.
//!
//! - [`Packs`] packs the messages one run produces (a drop's range), one pack per tenant (a
//!   message has one `MessageGroupId`).
//! - [`Packer`] packs the messages concurrent runs produce (ranking's), waiting at most a
//!   linger for company; each run learns whether its own message was sent.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::outbox::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, Outbox, Outgoing};
use crate::engine::BATCH_ATTRIBUTE;
use crate::fault::PipelineError;

/// The largest pack: SQS's 256 KiB for a message (and for a SendMessageBatch call).
pub const MAX_PACK_BYTES: usize = MAX_BATCH_BYTES;

/// Messages being packed, by message group (tenant).
#[derive(Default)]
pub struct Packs {
    open: HashMap<Option<String>, Pack>,
}

/// A pack being filled: its elements, their bytes, and the attributes and group they share.
struct Pack {
    bodies: Vec<String>,
    bytes: usize,
    attributes: Vec<(&'static str, String)>,
}

impl Pack {
    /// The pack's message; one element is sent as it is, without `conveyor.batch`.
    fn seal(self, group: Option<String>) -> Outgoing {
        let mut attributes = self.attributes;
        let body = if self.bodies.len() == 1 {
            self.bodies.into_iter().next().unwrap_or_default()
        } else {
            attributes.push((BATCH_ATTRIBUTE, self.bodies.len().to_string()));
            format!("[{}]", self.bodies.join(","))
        };
        Outgoing {
            body,
            attributes,
            group,
        }
    }

    /// Bytes SQS would count for the pack's message with `body` added.
    fn size_with(&self, body: &str, group: Option<&String>) -> usize {
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| name.len() + "String".len() + value.len())
            .sum();
        let batch = BATCH_ATTRIBUTE.len() + "String".len() + 6;
        // Brackets and a comma per element.
        self.bytes
            + body.len()
            + self.bodies.len()
            + 2
            + attributes
            + batch
            + group.map_or(0, String::len)
    }
}

impl Packs {
    /// Adds a message; returns a pack that is full now (the message opens the next one).
    pub fn push(&mut self, message: Outgoing) -> Option<Outgoing> {
        let Outgoing {
            body,
            attributes,
            group,
        } = message;
        let full = match self.open.get(&group) {
            Some(pack) if pack.size_with(&body, group.as_ref()) > MAX_PACK_BYTES => self
                .open
                .remove(&group)
                .map(|pack| pack.seal(group.clone())),
            _ => None,
        };
        let pack = self.open.entry(group).or_insert_with(|| Pack {
            bodies: Vec::new(),
            bytes: 0,
            attributes: attributes.clone(),
        });
        // A pack carries only the attributes all its elements share (ranking's `source` and
        // `type`, a drop's key), never one element's (its `eventId`).
        pack.attributes.retain(|a| attributes.contains(a));
        pack.bytes += body.len();
        pack.bodies.push(body);
        full
    }

    /// Every pack still open.
    pub fn drain(&mut self) -> Vec<Outgoing> {
        self.open
            .drain()
            .map(|(group, pack)| pack.seal(group))
            .collect()
    }
}

/// Packs messages sent by concurrent runs into batches for one queue.
#[derive(Clone)]
pub struct Packer {
    tx: mpsc::Sender<Waiting>,
}

impl Packer {
    /// A packer sending to `outbox`: a message waits at most `linger` for others to share its
    /// message with. Runs until every clone is dropped.
    pub fn new(outbox: Outbox, linger: Duration) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(pack_and_send(outbox, linger, rx));
        Self { tx }
    }

    /// Sends `message` in a pack; the result is its pack's.
    pub async fn send(&self, message: Outgoing) -> Result<(), PipelineError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send((message, done, tracing::Span::current()))
            .await
            .map_err(|_| PipelineError::Retryable("the packer has stopped".into()))?;
        result
            .await
            .unwrap_or_else(|_| Err(PipelineError::Retryable("the packer has stopped".into())))
    }
}

/// Where a sender learns its message's fate.
type Done = oneshot::Sender<Result<(), PipelineError>>;
/// A message, who waits on it, and the span it was sent from.
type Waiting = (Outgoing, Done, tracing::Span);
/// A sealed pack and the senders waiting on it.
type Sealed = (Outgoing, Vec<(Done, tracing::Span)>);

/// The packer's task: gathers what arrives within `linger` of the first message, packs it by
/// group, sends the packs (several per SendMessageBatch call where they fit) and answers each
/// sender with its pack's result.
async fn pack_and_send(outbox: Outbox, linger: Duration, mut rx: mpsc::Receiver<Waiting>) {
    while let Some(first) = rx.recv().await {
        let mut gathered = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            gathered.push(next);
        }
        // Packs with the senders waiting on each.
        let mut packs = Packs::default();
        let mut sealed: Vec<Sealed> = Vec::new();
        let mut waiting: HashMap<Option<String>, Vec<(Done, tracing::Span)>> = HashMap::new();
        for (message, done, span) in gathered {
            let group = message.group.clone();
            if let Some(full) = packs.push(message) {
                // The message opened a new pack: its sender waits on that one.
                let senders = waiting.remove(&group).unwrap_or_default();
                sealed.push((full, senders));
            }
            waiting.entry(group).or_default().push((done, span));
        }
        for pack in packs.drain() {
            let senders = waiting.remove(&pack.group).unwrap_or_default();
            sealed.push((pack, senders));
        }
        // As many packs per call as SQS takes (10 entries, 256 KiB in all), sent side by side.
        let mut calls: Vec<Vec<Sealed>> = Vec::new();
        let mut bytes = 0;
        for (pack, senders) in sealed {
            let size = pack.size();
            match calls.last_mut() {
                Some(call) if call.len() < MAX_BATCH_ENTRIES && bytes + size <= MAX_BATCH_BYTES => {
                    bytes += size;
                    call.push((pack, senders));
                }
                _ => {
                    bytes = size;
                    calls.push(vec![(pack, senders)]);
                }
            }
        }
        let sends = calls.into_iter().map(|call| {
            let outbox = outbox.clone();
            async move {
                let (messages, senders): (Vec<Outgoing>, Vec<_>) = call.into_iter().unzip();
                let senders: Vec<(Done, tracing::Span)> = senders.into_iter().flatten().collect();
                // A message carries one trace header: the batch is its first event's trace.
                let span = senders
                    .first()
                    .map_or_else(tracing::Span::none, |(_, span)| span.clone());
                let result = outbox.send_batch(messages).instrument(span).await;
                for (done, _) in senders {
                    let _ = done.send(result.clone());
                }
            }
        });
        futures::future::join_all(sends).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(group: &str, body: &str) -> Outgoing {
        Outgoing {
            body: body.to_owned(),
            attributes: vec![("source", "s".to_owned())],
            group: Some(group.to_owned()),
        }
    }

    #[test]
    fn messages_are_packed_per_group_up_to_the_size_sqs_takes() {
        let mut packs = Packs::default();
        let element = format!("{{\"x\":\"{}\"}}", "a".repeat(1000));
        let mut full = Vec::new();
        for _ in 0..600 {
            full.extend(packs.push(message("t1", &element)));
        }
        assert!(packs.push(message("t2", "{}")).is_none());
        let rest = packs.drain();
        assert_eq!(full.len(), 2, "600 KB in packs of at most 256 KiB");
        for pack in full.iter().chain(&rest) {
            assert!(pack.size() <= MAX_PACK_BYTES, "{}", pack.size());
        }
        let t2 = rest
            .iter()
            .find(|p| p.group.as_deref() == Some("t2"))
            .unwrap();
        assert_eq!(t2.body, "{}", "one element travels as it is");
        assert!(t2.attributes.iter().all(|(n, _)| *n != BATCH_ATTRIBUTE));
        let first = &full[0];
        let n: usize = first
            .attributes
            .iter()
            .find(|(n, _)| *n == BATCH_ATTRIBUTE)
            .unwrap()
            .1
            .parse()
            .unwrap();
        let elements: Vec<serde_json::Value> = serde_json::from_str(&first.body).unwrap();
        assert_eq!(elements.len(), n);
        assert!(n > 200, "{n}");
        let total: usize = full
            .iter()
            .chain(&rest)
            .map(|p| {
                serde_json::from_str::<Vec<serde_json::Value>>(&p.body)
                    .map(|v| v.len())
                    .unwrap_or(1)
            })
            .sum();
        assert_eq!(total, 601, "every message in exactly one pack");
    }
}
