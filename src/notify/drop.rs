//! A drop: a JSON-lines object of NotificationEvents uploaded to `notify.bucket`. Read as a
//! stream of lines of bounded length (an object far larger than memory is never held), each
//! line validated on its own: valid ones become EventBridge-shaped `NotificationRequested`
//! messages for the `incoming` queue, invalid ones a [`Reject`] — line number, field and
//! reason, never content — for the rejects object written next to the drop.

use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::contract::notification::{NOTIFICATION_REQUESTED, NotificationEvent};

/// The suffix of a rejects object; objects with it are never read as drops.
pub const REJECTS_SUFFIX: &str = ".rejects.jsonl";
/// The `source` of the EventBridge-shaped messages a drop becomes.
pub const DROP_SOURCE: &str = "conveyor.notify.drop";
/// Longest line read: a NotificationEvent's body is at most 65,536 characters (up to four
/// bytes each) and the message carrying it must stay under SQS's 256 KiB.
pub const MAX_LINE_BYTES: usize = 240 * 1024;
/// Rejects listed in one rejects object; past this they are counted in a last line.
pub const MAX_REJECTS_LISTED: usize = 100_000;

/// One line of a drop.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// The line's bytes, without the line break.
    Text(Vec<u8>),
    /// Longer than [`MAX_LINE_BYTES`]: skipped to its end, never buffered whole.
    TooLong { bytes: usize },
}

/// Lines from a byte stream, numbered from 1, each at most `max_bytes`.
pub struct Lines<R> {
    reader: R,
    max_bytes: usize,
    number: u64,
}

impl<R: AsyncBufRead + Unpin> Lines<R> {
    pub fn new(reader: R, max_bytes: usize) -> Self {
        Self {
            reader,
            max_bytes,
            number: 0,
        }
    }

    /// The next line and its number; `None` at the end.
    pub async fn next(&mut self) -> std::io::Result<Option<(u64, Line)>> {
        let mut line = Vec::new();
        let mut bytes = 0usize;
        let mut ended = false;
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                ended = true;
                break;
            }
            let (take, newline) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (available.len(), false),
            };
            bytes += take;
            if bytes <= self.max_bytes {
                line.extend_from_slice(&available[..take]);
            } else if !line.is_empty() {
                line = Vec::new(); // too long: stop holding it
            }
            self.reader.consume(take + usize::from(newline));
            if newline {
                break;
            }
        }
        if ended && bytes == 0 {
            return Ok(None);
        }
        self.number += 1;
        if bytes > self.max_bytes {
            return Ok(Some((self.number, Line::TooLong { bytes })));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some((self.number, Line::Text(line))))
    }
}

/// An invalid line, as the rejects object lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// A valid line: the event, and its payload as it will be sent on.
pub type Accepted = (NotificationEvent, Map<String, Value>);

/// A line's verdict: the event (with its payload, re-serialized) or why not. Blank lines are
/// `None`: skipped, neither counted nor rejected.
pub fn check(number: u64, line: Line) -> Option<Result<Accepted, Reject>> {
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
                format!("line of {bytes} bytes; at most {MAX_LINE_BYTES}"),
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
    Some(match NotificationEvent::parse(&map, "line") {
        Ok(event) => Ok((event, map)),
        Err(e) => Err(reject(
            "invalid",
            e.path.strip_prefix("line.").unwrap_or(&e.path).to_owned(),
            e.problem,
        )),
    })
}

/// The message a valid line becomes on the `incoming` queue: shaped as EventBridge delivers a
/// `NotificationRequested` event, so both intakes look alike to ranking. Its id is derived from
/// the drop and the line, so reading a drop again produces the same ids.
pub fn incoming_body(
    drop_id: &str,
    line: u64,
    detail: Map<String, Value>,
    region: Option<&str>,
) -> String {
    let mut hash = Sha256::new();
    hash.update(drop_id.as_bytes());
    hash.update(line.to_le_bytes());
    let digest = hash.finalize();
    let id =
        uuid::Builder::from_random_bytes(digest[..16].try_into().unwrap_or_default()).into_uuid();
    json!({
        "version": "0",
        "id": id,
        "detail-type": NOTIFICATION_REQUESTED,
        "source": DROP_SOURCE,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "region": region,
        "resources": [],
        "detail": detail,
    })
    .to_string()
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

    async fn all(input: &[u8], max: usize) -> Vec<(u64, Line)> {
        let mut lines = Lines::new(tokio::io::BufReader::with_capacity(4, input), max);
        let mut out = Vec::new();
        while let Some(l) = lines.next().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn lines_are_numbered_bounded_and_split_across_reads() {
        let text = |s: &str| Line::Text(s.as_bytes().to_vec());
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

    #[test]
    fn each_kind_of_bad_line_is_rejected_naming_the_field_and_never_the_content() {
        let valid = json!({
            "eventId": "e-1", "source": "billing", "occurredAt": "2026-11-23T10:00:00Z",
            "tenantId": "7f1c2a4e-0000-4000-8000-000000000001",
            "user": {"id": "u-1", "channels": ["email"]},
            "content": {"title": "Invoice ready", "body": "secret body", "metadata": {}}
        });
        let line = |v: &Value| Line::Text(v.to_string().into_bytes());
        assert!(check(1, line(&valid)).unwrap().is_ok());
        assert!(check(2, Line::Text(b"  ".to_vec())).is_none());

        let r = check(3, Line::Text(b"{\"eventId\": secret".to_vec()))
            .unwrap()
            .unwrap_err();
        assert_eq!((r.kind, r.field.as_str()), ("not_json", ""));
        assert!(!r.reason.contains("secret"));
        let r = check(4, Line::Text(b"[1]".to_vec())).unwrap().unwrap_err();
        assert_eq!(r.kind, "not_an_object");

        let mut bad = valid.clone();
        bad["user"]["channels"] = json!(["email", "fax"]);
        let r = check(5, line(&bad)).unwrap().unwrap_err();
        assert_eq!(
            (r.kind, r.field.as_str(), r.top_field()),
            ("invalid", "user.channels[1]", "user")
        );
        let mut bad = valid.clone();
        bad["content"]["title"] = json!("");
        let r = check(6, line(&bad)).unwrap().unwrap_err();
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
    fn a_line_becomes_the_same_message_id_every_time_it_is_read() {
        let id = |drop: &str, line| {
            let body: Value =
                serde_json::from_str(&incoming_body(drop, line, Map::new(), None)).unwrap();
            body["id"].as_str().unwrap().to_owned()
        };
        assert_eq!(id("d", 1), id("d", 1));
        assert_ne!(id("d", 1), id("d", 2));
        assert_ne!(id("d", 1), id("e", 1));
    }
}
