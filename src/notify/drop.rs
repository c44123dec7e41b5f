//! A drop: a JSON-lines object of NotificationEvents uploaded to `notify.bucket`. Read in byte
//! ranges (`src/notify/drop_ranges.rs`), each as a stream of lines of bounded length (an object
//! far larger than memory is never held), each line validated on its own: valid ones become
//! EventBridge-shaped `NotificationRequested` messages for the `incoming` queue carrying the
//! line's own bytes, invalid ones a [`Reject`] — line number, field and reason, never content —
//! for the rejects object written next to the drop.
//!
//! **Ranges.** A range `[start, end)` owns the lines that *begin* in it. Its reader starts one
//! byte early: unless that byte is a line break, the first bytes belong to the previous range's
//! last line and are skipped. Its last line may run past `end`; it is read to its end. So the
//! ranges of a drop, read on their own by any daemons, yield each line exactly once, and a
//! line's number is its number within its range plus the lines of the ranges before it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::contract::notification::{NOTIFICATION_REQUESTED, NotificationEvent};

/// The suffix of a rejects object; objects with it are never read as drops.
pub const REJECTS_SUFFIX: &str = ".rejects.jsonl";
/// The `source` of the EventBridge-shaped messages a drop becomes.
pub const DROP_SOURCE: &str = "conveyor.notify.drop";
/// The largest message a line may become: SQS's 256 KiB (a queue may take 1 MiB since 2025,
/// but its MaximumMessageSize may still say 256 KiB). A line whose message would be larger is
/// rejected with the reason, never sent to be refused.
pub const MAX_MESSAGE_BYTES: usize = 262_144;
/// Rejects listed in one rejects object; past this they are counted in a last line.
pub const MAX_REJECTS_LISTED: usize = 100_000;
/// The UTF-8 byte order mark some editors write at the start of a file: not part of line 1.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One line of a drop.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// The line's bytes, without the line break (nor a `\r` before it, nor a BOM).
    Text(Vec<u8>),
    /// Longer than the maximum: skipped to its end, never buffered whole. `bytes` is its
    /// length, or as far as it was read when it runs past its range's end.
    TooLong { bytes: u64 },
}

/// A line read from a range: its number within the range (from 1), the offset of its first
/// byte in the drop, and the line.
#[derive(Debug, PartialEq)]
pub struct Read {
    pub number: u64,
    pub offset: u64,
    pub line: Line,
}

/// The lines that begin in one range of a drop.
pub struct Lines<R> {
    reader: R,
    max_bytes: usize,
    number: u64,
    /// The drop's offset of the next byte the reader yields.
    offset: u64,
    /// The range's end: a line beginning here or later is the next range's.
    end: u64,
    /// Whether the reader still has to skip the previous range's last line.
    aligned: bool,
    done: bool,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    /// The lines of a whole stream.
    pub fn new(reader: R, max_bytes: usize) -> Self {
        Self::range(reader, 0, u64::MAX, max_bytes)
    }

    /// The lines beginning in `[start, end)`, from a reader that yields the drop's bytes from
    /// [`Lines::read_from`]`(start)` on.
    pub fn range(reader: R, start: u64, end: u64, max_bytes: usize) -> Self {
        Self {
            reader,
            max_bytes,
            number: 0,
            offset: Self::read_from(start),
            end,
            aligned: start == 0,
            done: false,
        }
    }

    /// Where a range's reader starts: one byte early, to see whether a line begins at `start`.
    pub fn read_from(start: u64) -> u64 {
        start.saturating_sub(1)
    }

    /// Bytes the reader has yielded and this consumed: how far the range read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Skips the previous range's last line: up to and including the first line break.
    async fn align(&mut self) -> std::io::Result<()> {
        while !self.aligned {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                self.done = true;
                return Ok(());
            }
            let (take, newline) = match memchr::memchr(b'\n', available) {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            self.reader.consume(take);
            self.offset += take as u64;
            self.aligned = newline;
            // A line that began before this range and runs through all of it: no line begins
            // here.
            if !newline && self.offset >= self.end {
                self.done = true;
                return Ok(());
            }
        }
        Ok(())
    }

    /// The next line beginning in the range; `None` past its last.
    pub async fn next(&mut self) -> std::io::Result<Option<Read>> {
        self.align().await?;
        if self.done || self.offset >= self.end {
            return Ok(None);
        }
        let start = self.offset;
        let mut line = Vec::new();
        let mut bytes = 0u64;
        let mut ended = false;
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                ended = true;
                break;
            }
            let (take, newline) = match memchr::memchr(b'\n', available) {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            bytes += take as u64;
            if bytes <= self.max_bytes as u64 {
                line.extend_from_slice(&available[..take]);
            } else if !line.is_empty() {
                line = Vec::new(); // too long: stop holding it
            }
            self.reader.consume(take + usize::from(newline));
            self.offset += (take + usize::from(newline)) as u64;
            if newline {
                break;
            }
            // Too long and past the range's end: the range's last line, whatever its length.
            if bytes > self.max_bytes as u64 && self.offset >= self.end {
                self.done = true;
                break;
            }
        }
        if ended && bytes == 0 {
            self.done = true;
            return Ok(None);
        }
        self.number += 1;
        let line = if bytes > self.max_bytes as u64 {
            Line::TooLong { bytes }
        } else {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if start == 0 && line.starts_with(BOM) {
                line.drain(..BOM.len());
            }
            Line::Text(line)
        };
        Ok(Some(Read {
            number: self.number,
            offset: start,
            line,
        }))
    }
}

/// An invalid line, as the rejects object lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reject {
    pub line: u64,
    /// The field's path in the line (`user.channels[1]`), or empty when the line as a whole is
    /// wrong.
    pub field: String,
    pub reason: String,
    /// Short and stable, for the metric: `not_json`, `not_an_object`, `too_long`, `invalid`.
    #[serde(skip)]
    pub kind: &'static str,
}

impl Reject {
    /// The top-level field, for the metric's low-cardinality label.
    pub fn top_field(&self) -> &str {
        self.field.split(['.', '[']).next().unwrap_or_default()
    }
}

/// A valid line: the event, and the line's text as it is forwarded.
pub type Accepted = (NotificationEvent, String);

/// A line's verdict: the event (with the line's own text) or why not. Blank lines are `None`:
/// skipped, neither counted nor rejected. `max_bytes` is the longest line read, for the
/// reason given to one longer.
pub fn check(number: u64, line: Line, max_bytes: usize) -> Option<Result<Accepted, Reject>> {
    let reject = |kind, field: String, reason: String| Reject {
        line: number,
        field,
        reason,
        kind,
    };
    let text = match line {
        Line::TooLong { bytes } => {
            return Some(Err(reject(
                "too_long",
                String::new(),
                format!(
                    "a line of {bytes} bytes or more; at most {max_bytes} (notify.max_line_bytes)"
                ),
            )));
        }
        Line::Text(text) => text,
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let value: Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => {
            return Some(Err(reject(
                "not_json",
                String::new(),
                format!("not JSON: {}", crate::safe::json_error(&e)),
            )));
        }
    };
    let Value::Object(map) = value else {
        return Some(Err(reject(
            "not_an_object",
            String::new(),
            "expected a JSON object (one NotificationEvent per line)".to_owned(),
        )));
    };
    let event = match NotificationEvent::parse(&map, "line") {
        Ok(event) => event,
        Err(e) => {
            return Some(Err(reject(
                "invalid",
                e.path.strip_prefix("line.").unwrap_or(&e.path).to_owned(),
                e.problem,
            )));
        }
    };
    // Parsed JSON is UTF-8 throughout: strings are checked, and anything else is ASCII.
    let Ok(text) = String::from_utf8(text) else {
        return Some(Err(reject(
            "not_json",
            String::new(),
            "not UTF-8".to_owned(),
        )));
    };
    Some(Ok((event, text)))
}

/// The message a valid line becomes on the `incoming` queue: shaped as EventBridge delivers a
/// `NotificationRequested` event, so both intakes look alike to ranking, with the line's own
/// text as its `detail` — numbers, escapes and key order as the producer wrote them. Its id is
/// derived from the drop and the line's offset, so reading a drop again produces the same ids.
pub fn incoming_body(drop_id: &str, offset: u64, line: &str, region: Option<&str>) -> String {
    let mut hash = Sha256::new();
    hash.update(drop_id.as_bytes());
    hash.update(offset.to_le_bytes());
    let digest = hash.finalize();
    let id =
        uuid::Builder::from_random_bytes(digest[..16].try_into().unwrap_or_default()).into_uuid();
    let mut body = json!({
        "version": "0",
        "id": id,
        "detail-type": NOTIFICATION_REQUESTED,
        "source": DROP_SOURCE,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": region,
        "resources": [],
    })
    .to_string();
    let line = super::outbox::sqs_safe(line);
    body.reserve(line.len() + 12);
    body.pop(); // the closing brace: the detail goes last
    body.push_str(",\"detail\":");
    body.push_str(&line);
    body.push('}');
    body
}

/// The rejects object's body: one JSON object per reject, and a last line counting the rejects
/// past [`MAX_REJECTS_LISTED`].
pub fn rejects_body(rejects: &[Reject], unlisted: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(rejects.len() * 96);
    for r in rejects {
        // Serializing a struct of strings and an integer cannot fail.
        if let Ok(line) = serde_json::to_vec(r) {
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
    }
    if unlisted > 0 {
        out.extend_from_slice(
            json!({"unlisted": unlisted, "reason": format!("more than {MAX_REJECTS_LISTED} rejects; the rest are counted, not listed")})
                .to_string()
                .as_bytes(),
        );
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The lines beginning in `[start, end)` of `input`, read as a range is: from one byte early.
    async fn range(input: &[u8], start: u64, end: u64, max: usize) -> Vec<(u64, u64, Line)> {
        let from = Lines::<&[u8]>::read_from(start) as usize;
        let reader = tokio::io::BufReader::with_capacity(4, &input[from.min(input.len())..]);
        let mut lines = Lines::range(reader, start, end, max);
        let mut out = Vec::new();
        while let Some(r) = lines.next().await.unwrap() {
            out.push((r.number, r.offset, r.line));
        }
        out
    }

    async fn all(input: &[u8], max: usize) -> Vec<(u64, Line)> {
        range(input, 0, u64::MAX, max)
            .await
            .into_iter()
            .map(|(n, _, l)| (n, l))
            .collect()
    }

    fn text(s: &str) -> Line {
        Line::Text(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn lines_are_numbered_bounded_and_split_across_reads() {
        assert_eq!(
            all(b"ab\r\n\nlonger line\nlast", 8).await,
            vec![
                (1, text("ab")),
                (2, text("")),
                (3, Line::TooLong { bytes: 11 }),
                (4, text("last")),
            ]
        );
        assert_eq!(all(b"", 8).await, vec![]);
        assert_eq!(all(b"x\n", 8).await, vec![(1, text("x"))]);
    }

    #[tokio::test]
    async fn a_byte_order_mark_crlf_and_a_missing_last_newline_are_not_part_of_the_lines() {
        assert_eq!(
            all(b"\xEF\xBB\xBF{}\r\n{}\r\n{}", 64).await,
            vec![(1, text("{}")), (2, text("{}")), (3, text("{}"))]
        );
        // Only at the start of the drop: elsewhere it is the line's own (and not JSON).
        assert_eq!(
            all(b"{}\n\xEF\xBB\xBF{}\n", 64).await[1],
            (2, Line::Text(b"\xEF\xBB\xBF{}".to_vec()))
        );
    }

    #[tokio::test]
    async fn a_range_owns_the_lines_that_begin_in_it() {
        let input = b"aa\nbbbb\ncc\n";
        // Line starts: 0, 3, 8.
        assert_eq!(range(input, 0, 3, 64).await, vec![(1, 0, text("aa"))]);
        assert_eq!(
            range(input, 3, 4, 64).await,
            vec![(1, 3, text("bbbb"))],
            "its last line is read past its end"
        );
        assert_eq!(
            range(input, 4, 8, 64).await,
            vec![],
            "no line begins in 4..8"
        );
        assert_eq!(range(input, 8, 11, 64).await, vec![(1, 8, text("cc"))]);
        // A line too long that runs past the range's end stops being read there.
        let long = b"x\nyyyyyyyyyyyyyyyyyyyy\nz\n";
        let read = range(long, 1, 6, 4).await;
        assert!(
            matches!(read[..], [(1, 2, Line::TooLong { bytes })] if (5..20).contains(&bytes)),
            "{read:?}"
        );
        assert_eq!(range(long, 6, 20, 4).await, vec![]);
        assert_eq!(range(long, 20, 30, 4).await, vec![(1, 23, text("z"))]);
    }

    proptest! {
        /// Cut anywhere, the ranges of a drop yield each of its lines once, in order, at the
        /// offset where it begins.
        #[test]
        fn ranges_yield_every_line_once(
            text in "[ab\n\r]{0,80}",
            size in 1u64..20,
            max in 1usize..12,
        ) {
            let input = text.as_bytes();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let whole = runtime.block_on(range(input, 0, input.len() as u64, max));
            let mut pieces = Vec::new();
            let mut start = 0;
            while start < input.len() as u64 {
                let end = (start + size).min(input.len() as u64);
                pieces.extend(runtime.block_on(range(input, start, end, max)));
                start = end;
            }
            let strip = |v: Vec<(u64, u64, Line)>| -> Vec<(u64, String)> {
                v.into_iter().map(|(_, offset, line)| (offset, match line {
                    Line::Text(t) => String::from_utf8(t).unwrap(),
                    Line::TooLong { .. } => "<too long>".to_owned(),
                })).collect()
            };
            prop_assert_eq!(strip(pieces), strip(whole));
        }
    }

    fn valid() -> Value {
        json!({
            "eventId": "e-1", "source": "billing", "occurredAt": "2026-11-23T10:00:00Z",
            "tenantId": "7f1c2a4e-0000-4000-8000-000000000001",
            "user": {"id": "u-1", "channels": ["email"]},
            "content": {"title": "Invoice ready", "body": "secret body", "metadata": {}}
        })
    }

    #[test]
    fn each_kind_of_bad_line_is_rejected_naming_the_field_and_never_the_content() {
        let valid = valid();
        let line = |v: &Value| Line::Text(v.to_string().into_bytes());
        assert!(check(1, line(&valid), 1024).unwrap().is_ok());
        assert!(check(2, Line::Text(b"  ".to_vec()), 1024).is_none());

        let r = check(3, Line::Text(b"{\"eventId\": secret".to_vec()), 1024)
            .unwrap()
            .unwrap_err();
        assert_eq!((r.kind, r.field.as_str()), ("not_json", ""));
        assert!(!r.reason.contains("secret"));
        let r = check(4, Line::Text(b"[1]".to_vec()), 1024)
            .unwrap()
            .unwrap_err();
        assert_eq!(r.kind, "not_an_object");
        let r = check(4, Line::TooLong { bytes: 2000 }, 1024)
            .unwrap()
            .unwrap_err();
        assert!(r.reason.contains("notify.max_line_bytes"), "{}", r.reason);

        let mut bad = valid.clone();
        bad["user"]["channels"] = json!(["email", "fax"]);
        let r = check(5, line(&bad), 1024).unwrap().unwrap_err();
        assert_eq!(
            (r.kind, r.field.as_str(), r.top_field()),
            ("invalid", "user.channels[1]", "user")
        );
        let mut bad = valid.clone();
        bad["content"]["title"] = json!("");
        let r = check(6, line(&bad), 1024).unwrap().unwrap_err();
        assert_eq!(r.field, "content.title");
        assert!(!r.reason.contains("Invoice"));

        let body = rejects_body(&[r], 2);
        let text = String::from_utf8(body).unwrap();
        assert!(
            text.starts_with("{\"line\":6,\"field\":\"content.title\",\"reason\":"),
            "{text}"
        );
        assert!(text.contains("\"unlisted\":2"));
    }

    #[test]
    fn a_line_travels_as_its_own_bytes_with_what_sqs_refuses_escaped() {
        let line = r#"{"eventId":"e-1","source":"billing","occurredAt":"2026-11-23T10:00:00Z","tenantId":"7f1c2a4e-0000-4000-8000-000000000001","user":{"id":"u-1","channels":["email"]},"content":{"title":"a\uffff b \u0000","body":"x","metadata":{"big":123456789012345678901234567890,"huge":1e400,"keep":1.50}}}"#;
        let line = line.replace("\\uffff", "\u{FFFF}");
        let Some(Ok((_, text))) = check(1, Line::Text(line.clone().into_bytes()), 4096) else {
            panic!("valid");
        };
        assert_eq!(text, line);
        let body = incoming_body("d", 7, &text, Some("eu-west-1"));
        assert!(!body.contains('\u{FFFF}'), "escaped for SQS");
        assert!(body.contains(r#""title":"a\uFFFF b \u0000""#), "{body}");
        assert!(body.contains(r#""big":123456789012345678901234567890,"huge":1e400,"keep":1.50"#));
        let parsed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["detail"]["content"]["title"], "a\u{FFFF} b \u{0}");
        assert_eq!(
            parsed["detail"]["content"]["metadata"]["big"].to_string(),
            "123456789012345678901234567890"
        );
        assert_eq!(parsed["source"], DROP_SOURCE);
        // A lone surrogate is no string at all: rejected, with its line.
        let lone = line.replace("\u{FFFF}", r"\ud800");
        let r = check(9, Line::Text(lone.into_bytes()), 4096)
            .unwrap()
            .unwrap_err();
        assert_eq!((r.line, r.kind), (9, "not_json"));
    }

    #[test]
    fn a_line_becomes_the_same_message_id_every_time_it_is_read() {
        let id = |drop: &str, offset| {
            let body: Value =
                serde_json::from_str(&incoming_body(drop, offset, "{}", None)).unwrap();
            body["id"].as_str().unwrap().to_owned()
        };
        assert_eq!(id("d", 1), id("d", 1));
        assert_ne!(id("d", 1), id("d", 2));
        assert_ne!(id("d", 1), id("e", 1));
    }
}
