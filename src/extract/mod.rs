//! Action-item extraction: what the `graph` and `projection` pipelines write. An interaction's
//! content goes to an extractor — an OpenAI-compatible model ([`llm`]) or offline rules
//! ([`patterns`]) — in chunks within a token budget; each chunk's items are validated, the
//! chunks merged without duplicates, and the result stored once per interaction, model and
//! prompt version ([`store`]) so every pipeline and every redelivery reuses it.
//!
//! Action items are derived from content, so they are never logged: their `Debug` prints
//! lengths, and logs carry counts.

pub mod llm;
pub mod patterns;
pub mod store;

use std::fmt;
use std::time::Duration;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{ExtractionConfig, ExtractorKind, Secret};
use crate::contract::envelope::Interaction;
use crate::fault::Dependency;
use crate::fault::PipelineError;

pub use store::Extractions;

/// Longest description kept; longer ones are dropped as `description_too_long`.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Estimated bytes per token, for chunking (English text averages about four).
pub const BYTES_PER_TOKEN: usize = 4;

/// One action item, validated.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionItem {
    pub description: String,
    pub owner: Option<Owner>,
    pub due_date: Option<NaiveDate>,
    pub status: Status,
    pub priority: Option<Priority>,
    /// 0.0..=1.0.
    pub confidence: f32,
}

impl fmt::Debug for ActionItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionItem")
            .field("description_len", &self.description.len())
            .field("owner", &self.owner.is_some())
            .field("due_date", &self.due_date)
            .field("status", &self.status)
            .field("priority", &self.priority)
            .field("confidence", &self.confidence)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub name: String,
    pub email: Option<String>,
}

impl Owner {
    /// The person's stable key within a tenant: the email when known, else the name, folded.
    pub fn key(&self) -> String {
        match &self.email {
            Some(email) => format!("email:{}", email.to_lowercase()),
            None => format!("name:{}", normalise(&self.name)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Done,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
        }
    }
}

impl ActionItem {
    /// Stable id: the same tenant, interaction and (normalised) description always give the
    /// same id, so re-running an interaction rewrites the same item instead of adding one.
    pub fn id(&self, tenant_id: Uuid, interaction_key: &str) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            tenant_id.to_string().as_str(),
            interaction_key,
            &normalise(&self.description),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }
}

/// Lower case, letters and digits only, single spaces: "Send the deck!" and "send  the deck"
/// are one item.
pub fn normalise(text: &str) -> String {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One action item as a model wrote it: every field optional, checked by [`validate`].
#[derive(Debug, Default, Deserialize)]
pub struct RawItem {
    pub description: Option<String>,
    pub owner: Option<RawOwner>,
    pub due_date: Option<String>,
    pub status: Option<String>,
    pub priority: Option<String>,
    pub confidence: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawOwner {
    pub name: Option<String>,
    pub email: Option<String>,
}

/// Checks one raw item. The error is a short stable reason, used as a metric label.
pub fn validate(raw: RawItem) -> Result<ActionItem, &'static str> {
    let description = raw
        .description
        .map(|d| d.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|d| !d.is_empty())
        .ok_or("missing_description")?;
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err("description_too_long");
    }
    let owner = match raw.owner {
        None => None,
        Some(o) => {
            let name = o.name.map(|n| n.trim().to_owned()).unwrap_or_default();
            let email = o
                .email
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty());
            if let Some(e) = &email
                && !(e.contains('@') && !e.starts_with('@') && !e.ends_with('@'))
            {
                return Err("bad_owner_email");
            }
            match (name.is_empty(), email) {
                (true, None) => None,
                (true, Some(email)) => Some(Owner {
                    name: email.clone(),
                    email: Some(email),
                }),
                (false, email) => Some(Owner { name, email }),
            }
        }
    };
    let due_date = match raw.due_date.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(d) => Some(NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| "bad_due_date")?),
    };
    let status = match raw.status.as_deref().map(str::trim) {
        None | Some("") | Some("open") => Status::Open,
        Some("done") => Status::Done,
        Some(_) => return Err("bad_status"),
    };
    let priority = match raw.priority.as_deref().map(str::trim) {
        None | Some("") => None,
        Some("low") => Some(Priority::Low),
        Some("medium") => Some(Priority::Medium),
        Some("high") => Some(Priority::High),
        Some(_) => return Err("bad_priority"),
    };
    let confidence = match raw.confidence {
        Some(c) if (0.0..=1.0).contains(&c) => c as f32,
        None => return Err("missing_confidence"),
        Some(_) => return Err("bad_confidence"),
    };
    Ok(ActionItem {
        description,
        owner,
        due_date,
        status,
        priority,
        confidence,
    })
}

/// Merges chunks' items: one item per normalised description, keeping the most confident
/// version's fields and filling its gaps from the others. Order: first appearance.
pub fn merge(items: impl IntoIterator<Item = ActionItem>) -> Vec<ActionItem> {
    let mut merged: Vec<ActionItem> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for item in items {
        let key = normalise(&item.description);
        match index.get(&key) {
            None => {
                index.insert(key, merged.len());
                merged.push(item);
            }
            Some(&i) => {
                let kept = &mut merged[i];
                let (mut best, other) = if item.confidence > kept.confidence {
                    (item, kept.clone())
                } else {
                    (kept.clone(), item)
                };
                best.owner = best.owner.or(other.owner);
                best.due_date = best.due_date.or(other.due_date);
                best.priority = best.priority.or(other.priority);
                if other.status == Status::Done {
                    best.status = Status::Done;
                }
                *kept = best;
            }
        }
    }
    merged
}

/// Splits `text` into chunks of at most `max_bytes`, at line breaks where possible, then at
/// spaces, and only as a last resort inside a word (always on a character boundary).
pub fn chunks(text: &str, max_bytes: usize) -> Vec<&str> {
    let max_bytes = max_bytes.max(4);
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max_bytes {
        let mut cut = max_bytes;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let window = &rest[..cut];
        let at = window
            .rfind('\n')
            .or_else(|| window.rfind(' '))
            .map(|i| i + 1)
            .filter(|&i| i > 0)
            .unwrap_or(cut);
        out.push(&rest[..at]);
        rest = &rest[at..];
    }
    if !rest.trim().is_empty() || out.is_empty() {
        out.push(rest);
    }
    out.retain(|c| !c.trim().is_empty());
    out
}

/// Why an extraction failed, split by what the message's fate should be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExtractError {
    /// May pass later: a rate limit, a server error, a timeout, output that did not parse.
    #[error("{reason}")]
    Retryable {
        reason: String,
        /// The endpoint asked not to be called again for this long (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Will fail the same way every time (the endpoint refused this request).
    #[error("{0}")]
    Permanent(String),
    /// The model endpoint is down (unreachable, timed out, 5xx): an outage of the model, not
    /// a property of the content.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The endpoint refuses conveyor (the key rejected, 401/403): a configuration fault,
    /// alike for every message.
    #[error("{0}")]
    Denied(String),
}

impl ExtractError {
    pub fn retryable(reason: impl Into<String>) -> Self {
        ExtractError::Retryable {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

impl From<ExtractError> for PipelineError {
    fn from(e: ExtractError) -> Self {
        match e {
            ExtractError::Retryable {
                reason,
                retry_after: Some(after),
            } => PipelineError::RetryAfter(format!("extraction: {reason}"), after),
            ExtractError::Retryable { reason, .. } => {
                PipelineError::Retryable(format!("extraction: {reason}"))
            }
            ExtractError::Permanent(reason) => {
                PipelineError::Permanent(format!("extraction: {reason}"))
            }
            ExtractError::Unavailable { reason, .. } => {
                PipelineError::Unavailable(Dependency::Model, format!("extraction: {reason}"))
            }
            ExtractError::Denied(reason) => {
                PipelineError::Denied(Dependency::Model, format!("extraction: {reason}"))
            }
        }
    }
}

/// An interaction's extracted action items and what they cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extraction {
    pub items: Vec<ActionItem>,
    /// Which model (or `patterns`) and prompt version produced them.
    pub model: String,
    pub prompt_version: String,
    pub chunks: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The configured extractor.
pub enum Extractor {
    /// Shared with every other user of the model in the process (one client, one limiter).
    Llm(std::sync::Arc<llm::Llm>),
    Patterns,
}

impl Extractor {
    /// Builds the configured extractor. `api_key` is required for `llm` (config validation
    /// says so before this runs).
    pub fn new(config: &ExtractionConfig, api_key: Option<&Secret>) -> anyhow::Result<Self> {
        Ok(match config.extractor {
            ExtractorKind::Patterns => {
                tracing::warn!(
                    "extraction.extractor = \"patterns\": action items come from offline rules, not a model (lower recall; for local runs)"
                );
                Extractor::Patterns
            }
            ExtractorKind::Llm => {
                let key = api_key.ok_or_else(|| {
                    anyhow::anyhow!(
                        "extraction.extractor = \"llm\" needs OPENAI_API_KEY in the environment"
                    )
                })?;
                Extractor::Llm(std::sync::Arc::new(llm::Llm::new(config, key)?))
            }
        })
    }

    /// Part of the stored extraction's key.
    pub fn model(&self) -> &str {
        match self {
            Extractor::Llm(llm) => llm.model(),
            Extractor::Patterns => "patterns",
        }
    }

    /// Part of the stored extraction's key: a new prompt or rule set re-extracts.
    pub fn prompt_version(&self) -> &'static str {
        match self {
            Extractor::Llm(_) => llm::PROMPT_VERSION,
            Extractor::Patterns => patterns::RULES_VERSION,
        }
    }

    /// Extracts, validates and merges the interaction's action items.
    pub async fn extract(&self, interaction: &Interaction) -> Result<Extraction, ExtractError> {
        match self {
            Extractor::Llm(llm) => llm.extract(interaction).await,
            Extractor::Patterns => Ok(patterns::extract(interaction)),
        }
    }

    /// `check` and `/readyz`: does the endpoint answer? (`patterns` always does.)
    pub async fn probe(&self) -> Result<String, String> {
        match self {
            Extractor::Llm(llm) => llm.probe().await,
            Extractor::Patterns => Ok("offline rules (extractor = \"patterns\")".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(description: &str) -> RawItem {
        RawItem {
            description: Some(description.to_owned()),
            confidence: Some(0.8),
            ..RawItem::default()
        }
    }

    #[test]
    fn validation_names_each_problem() {
        assert!(validate(raw("Send the deck")).is_ok());
        assert_eq!(validate(raw("  ")).unwrap_err(), "missing_description");
        assert_eq!(
            validate(raw(&"x".repeat(MAX_DESCRIPTION_CHARS + 1))).unwrap_err(),
            "description_too_long"
        );
        let with = |f: fn(&mut RawItem)| {
            let mut r = raw("Send the deck");
            f(&mut r);
            validate(r)
        };
        assert_eq!(
            with(|r| r.due_date = Some("next week".into())).unwrap_err(),
            "bad_due_date"
        );
        assert_eq!(
            with(|r| r.status = Some("blocked".into())).unwrap_err(),
            "bad_status"
        );
        assert_eq!(
            with(|r| r.priority = Some("p0".into())).unwrap_err(),
            "bad_priority"
        );
        assert_eq!(
            with(|r| r.confidence = Some(1.5)).unwrap_err(),
            "bad_confidence"
        );
        assert_eq!(
            with(|r| r.confidence = None).unwrap_err(),
            "missing_confidence"
        );
        assert_eq!(
            with(|r| {
                r.owner = Some(RawOwner {
                    name: Some("Ann".into()),
                    email: Some("not-an-email".into()),
                })
            })
            .unwrap_err(),
            "bad_owner_email"
        );
        let ok = with(|r| {
            r.due_date = Some("2026-12-01".into());
            r.status = Some("done".into());
            r.priority = Some("high".into());
            r.owner = Some(RawOwner {
                name: Some(" Ann ".into()),
                email: None,
            });
        })
        .unwrap();
        assert_eq!(ok.due_date, NaiveDate::from_ymd_opt(2026, 12, 1));
        assert_eq!(ok.status, Status::Done);
        assert_eq!(ok.owner.unwrap().name, "Ann");
    }

    #[test]
    fn merge_keeps_one_item_per_normalised_description() {
        let a = validate(raw("Send the deck!")).unwrap();
        let mut b = validate(raw("send  the DECK")).unwrap();
        b.confidence = 0.95;
        b.due_date = NaiveDate::from_ymd_opt(2026, 12, 1);
        let c = validate(raw("Book the room")).unwrap();
        let merged = merge([a.clone(), c.clone(), b]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].confidence, 0.95);
        assert_eq!(merged[0].due_date, NaiveDate::from_ymd_opt(2026, 12, 1));
        assert_eq!(merged[1], c);
    }

    #[test]
    fn ids_are_stable_per_tenant_interaction_and_description() {
        let t1 = Uuid::from_u128(1);
        let t2 = Uuid::from_u128(2);
        let a = validate(raw("Send the deck")).unwrap();
        let b = validate(raw("send the deck.")).unwrap();
        assert_eq!(a.id(t1, "k"), b.id(t1, "k"));
        assert_ne!(a.id(t1, "k"), a.id(t2, "k"));
        assert_ne!(a.id(t1, "k"), a.id(t1, "other"));
    }

    #[test]
    fn chunks_cut_at_lines_then_spaces_then_anywhere_on_char_boundaries() {
        let text = "alpha beta\ngamma delta\n";
        assert_eq!(chunks(text, 100), vec![text]);
        assert_eq!(chunks(text, 12), vec!["alpha beta\n", "gamma delta\n"]);
        assert_eq!(chunks("aaaa bbbb", 6), vec!["aaaa ", "bbbb"]);
        let long = "é".repeat(10); // 20 bytes, no spaces
        let parts = chunks(&long, 5);
        assert!(parts.iter().all(|p| p.len() <= 5));
        assert_eq!(parts.concat(), long);
        assert!(chunks("   ", 10).is_empty());
    }

    #[test]
    fn debug_never_prints_a_description() {
        let item = validate(raw("secret plan")).unwrap();
        assert!(!format!("{item:?}").contains("secret"));
    }
}
