//! The offline extractor (`extraction.extractor = "patterns"`): explicit rules, no network.
//! For local runs and demos; a model finds far more. The rules, applied per sentence:
//!
//! 1. **Markers** — a sentence containing `action item:`, `todo:`, `to do:`, `next step:` or
//!    `follow-up:` yields the text after the marker (confidence 0.9).
//! 2. **Commitments** — a sentence or clause starting with `I'll`, `I will`, `I'm going to`,
//!    `I am going to`, `let me`, `we'll`, `we will`, `we're going to` or `we are going to`
//!    yields the rest of it (confidence 0.7). Questions are skipped.
//! 3. **Owner** — for a first-person singular commitment after a speaker label (`Name: text`,
//!    at a line's or sentence's start), the speaker; otherwise none.
//! 4. **Due date** — `by <weekday>` (the next such day after the interaction's date),
//!    `by tomorrow`, `by today` / `by end of day` / `by EOD`, `by end of week` / `by EOW`
//!    (that week's Friday), or `by YYYY-MM-DD`.
//! 5. **Priority** — `urgent`, `asap`, `as soon as possible` or `critical` → high; else none.
//!    Status is always open.

use chrono::{Datelike, Duration, NaiveDate, Weekday};

use super::{ActionItem, Extraction, MAX_DESCRIPTION_CHARS, Owner, Priority, Status};
use crate::contract::envelope::Interaction;

/// Part of the stored extraction's key: bump when a rule changes.
pub const RULES_VERSION: &str = "patterns/1";

const MARKERS: &[&str] = &[
    "action item:",
    "todo:",
    "to do:",
    "next step:",
    "follow-up:",
    "follow up:",
];
/// Commitment openers; `true` when the speaker alone is committing.
const COMMITMENTS: &[(&str, bool)] = &[
    ("i'll ", true),
    ("i will ", true),
    ("i'm going to ", true),
    ("i am going to ", true),
    ("let me ", true),
    ("we'll ", false),
    ("we will ", false),
    ("we're going to ", false),
    ("we are going to ", false),
];

/// Applies the rules to the interaction's content.
pub fn extract(interaction: &Interaction) -> Extraction {
    let today = interaction.timestamp.date_naive();
    let mut items = Vec::new();
    for line in interaction.content.text.lines() {
        let (speaker, text) = split_speaker(line.trim_start_matches(['-', '*', ' ']));
        for sentence in sentences(text) {
            // Speakers can also change mid-line ("… today. Sarah: I'll send it.").
            let (inline, sentence) = split_speaker(sentence);
            let sentence = sentence.trim_start_matches(['-', '*', ' ']);
            if let Some(item) = match_sentence(sentence, inline.or(speaker), today) {
                items.push(item);
            }
        }
    }
    Extraction {
        items: super::merge(items),
        model: "patterns".to_owned(),
        prompt_version: RULES_VERSION.to_owned(),
        chunks: 1,
        prompt_tokens: 0,
        completion_tokens: 0,
    }
}

/// `"Ann Lee: I'll send it"` → (`Some("Ann Lee")`, `"I'll send it"`). A speaker is one to four
/// words of letters; marker lines (`Action item: …`) are not speakers.
fn split_speaker(line: &str) -> (Option<&str>, &str) {
    if let Some((name, rest)) = line.split_once(':') {
        let name = name.trim();
        let words = name.split_whitespace().count();
        let lower = format!("{}:", name.to_lowercase());
        if (1..=4).contains(&words)
            && name
                .chars()
                .all(|c| c.is_alphabetic() || c == ' ' || c == '.' || c == '\'' || c == '-')
            && !MARKERS.contains(&lower.as_str())
        {
            return (Some(name), rest.trim());
        }
    }
    (None, line.trim())
}

/// Sentences: split after `.`, `!` or `?` followed by a space or the end, keeping the mark.
fn sentences(text: &str) -> impl Iterator<Item = &str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?') && bytes.get(i + 1).is_none_or(|b| *b == b' ') {
            out.push(text[start..=i].trim());
            start = i + 1;
        }
    }
    out.push(text[start..].trim());
    out.into_iter().filter(|s| !s.is_empty())
}

fn match_sentence(sentence: &str, speaker: Option<&str>, today: NaiveDate) -> Option<ActionItem> {
    if sentence.ends_with('?') {
        return None;
    }
    let lower = sentence.to_lowercase();
    // Lower-casing can change byte lengths outside ASCII; only use offsets when it did not.
    if lower.len() != sentence.len() {
        return None;
    }
    let (rest, owner, confidence) = if let Some((at, marker)) = MARKERS
        .iter()
        .filter_map(|m| lower.find(m).map(|at| (at, m)))
        .min()
    {
        (&sentence[at + marker.len()..], None, 0.9)
    } else {
        let (at, solo, opener) = clause_starts(&lower).find_map(|at| {
            COMMITMENTS
                .iter()
                .find(|(opener, _)| lower[at..].starts_with(opener))
                .map(|(opener, solo)| (at, *solo, *opener))
        })?;
        let owner = solo.then_some(speaker).flatten().map(|name| Owner {
            name: name.to_owned(),
            email: None,
        });
        (&sentence[at + opener.len()..], owner, 0.7)
    };
    let description = tidy(rest)?;
    let lower_description = description.to_lowercase();
    Some(ActionItem {
        due_date: due_date(&lower_description, today),
        priority: ["urgent", "asap", "as soon as possible", "critical"]
            .iter()
            .any(|w| lower_description.contains(w))
            .then_some(Priority::High),
        description,
        owner,
        status: Status::Open,
        confidence,
    })
}

/// Offsets where a clause starts: the sentence start and after each `, ` or `; `.
fn clause_starts(lower: &str) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(
        lower
            .match_indices([',', ';'])
            .map(|(i, _)| i + 1)
            .map(move |i| i + (lower.len() - i - lower[i..].trim_start().len())),
    )
}

/// Trims, drops the final mark, capitalises; `None` when too short or too long to be a task.
fn tidy(rest: &str) -> Option<String> {
    let text = rest.trim().trim_end_matches(['.', '!', ';', ',']).trim();
    let mut chars = text.chars();
    let first = chars.next()?;
    let description: String = first.to_uppercase().chain(chars).collect();
    (description.chars().count() >= 3 && description.chars().count() <= MAX_DESCRIPTION_CHARS)
        .then_some(description)
}

fn due_date(lower: &str, today: NaiveDate) -> Option<NaiveDate> {
    let after_by = lower.split("by ").skip(1);
    for phrase in after_by {
        let phrase = phrase.trim_start_matches("the ");
        if let Some(date) = phrase
            .get(..10)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        {
            return Some(date);
        }
        if phrase.starts_with("tomorrow") {
            return Some(today + Duration::days(1));
        }
        if ["today", "end of day", "eod"]
            .iter()
            .any(|p| phrase.starts_with(p))
        {
            return Some(today);
        }
        if ["end of week", "end of the week", "eow"]
            .iter()
            .any(|p| phrase.starts_with(p))
        {
            return Some(on_or_after(today, Weekday::Fri));
        }
        for day in [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ] {
            if phrase.starts_with(weekday_name(day)) {
                return Some(on_or_after(today + Duration::days(1), day));
            }
        }
    }
    None
}

fn on_or_after(from: NaiveDate, day: Weekday) -> NaiveDate {
    let ahead = (7 + day.num_days_from_monday() - from.weekday().num_days_from_monday()) % 7;
    from + Duration::days(i64::from(ahead))
}

fn weekday_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Mon => "monday",
        Weekday::Tue => "tuesday",
        Weekday::Wed => "wednesday",
        Weekday::Thu => "thursday",
        Weekday::Fri => "friday",
        Weekday::Sat => "saturday",
        Weekday::Sun => "sunday",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-18 is a Wednesday.
    fn wed() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 18).unwrap()
    }

    fn items(text: &str) -> Vec<ActionItem> {
        let mut interaction = crate::extract::store::tests::interaction(text);
        interaction.timestamp = wed().and_hms_opt(10, 0, 0).unwrap().and_utc();
        extract(&interaction).items
    }

    #[test]
    fn commitments_and_markers_become_items_with_owner_and_due_date() {
        let found = items(
            "Ann Lee: Thanks all. I'll send the revised pricing deck by Friday.\n\
             Bob: Sounds good, we will book the workshop by 2026-12-03.\n\
             Action item: update the CRM by tomorrow, urgent.\n\
             Bob: Can you send it? Nothing else.",
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(
            found[0].description,
            "Send the revised pricing deck by Friday"
        );
        assert_eq!(found[0].owner.as_ref().unwrap().name, "Ann Lee");
        assert_eq!(found[0].due_date, NaiveDate::from_ymd_opt(2026, 11, 20));
        assert_eq!(found[1].description, "Book the workshop by 2026-12-03");
        assert!(found[1].owner.is_none(), "\"we\" names no single owner");
        assert_eq!(found[1].due_date, NaiveDate::from_ymd_opt(2026, 12, 3));
        assert_eq!(found[2].description, "Update the CRM by tomorrow, urgent");
        assert_eq!(found[2].due_date, NaiveDate::from_ymd_opt(2026, 11, 19));
        assert_eq!(found[2].priority, Some(Priority::High));
        assert_eq!(found[2].confidence, 0.9);
    }

    #[test]
    fn weekdays_resolve_to_the_next_such_day() {
        assert_eq!(
            due_date("by wednesday", wed()),
            NaiveDate::from_ymd_opt(2026, 11, 25)
        );
        assert_eq!(
            due_date("by monday", wed()),
            NaiveDate::from_ymd_opt(2026, 11, 23)
        );
        assert_eq!(
            due_date("by end of week", wed()),
            NaiveDate::from_ymd_opt(2026, 11, 20)
        );
        assert_eq!(due_date("by eod", wed()), Some(wed()));
        assert_eq!(due_date("soon", wed()), None);
    }

    #[test]
    fn speakers_change_mid_line_and_bullets_are_read() {
        let found = items(
            "John: Thanks for joining. Sarah: I'll send the proposal by Friday. John: Action item: book the review.\n\
             - I'll draft the pricing summary by Monday\n\
             - Action item: confirm the pilot scope",
        );
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(found[3].description, "Confirm the pilot scope");
        assert_eq!(found[0].owner.as_ref().unwrap().name, "Sarah");
        assert_eq!(found[1].description, "Book the review");
        assert_eq!(found[2].description, "Draft the pricing summary by Monday");
        assert_eq!(found[2].due_date, NaiveDate::from_ymd_opt(2026, 11, 23));
    }

    #[test]
    fn questions_and_plain_talk_are_not_items() {
        assert!(items("Will you send it? I think so. Let's see").is_empty());
        assert!(items("Note: the weather was nice.").is_empty());
    }
}
