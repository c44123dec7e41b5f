//! What may be written where operators read — logs, error reasons, the ledger's `last_error`,
//! DLQ attributes: positions, kinds, ids and lengths, never values taken from content, and
//! only characters SQS accepts in a message attribute.

/// A serde_json error as its kind and position. serde_json's own message can quote the input
/// (`invalid type: string "…", expected a sequence`), so it is never used as is.
pub fn json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match error.classify() {
        Category::Eof => "unexpected end",
        Category::Syntax => "syntax error",
        Category::Data => "wrong type or value",
        Category::Io => "read error",
    };
    format!("{kind} at line {} column {}", error.line(), error.column())
}

/// Longest value [`token`] shows.
const MAX_TOKEN_CHARS: usize = 40;

/// A value taken from input, quoted only when it is a short token (letters, digits and
/// `. - _ : / |`) — an enum typo such as `"transcrpt"` stays visible, free text never is.
pub fn token(value: &str) -> String {
    let is_token = !value.is_empty()
        && value.chars().count() <= MAX_TOKEN_CHARS
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:/|".contains(c));
    if is_token {
        format!("{value:?}")
    } else {
        format!("a value of {} chars (not shown)", value.chars().count())
    }
}

/// `reason` as one line SQS accepts in a message attribute, at most `max_chars` characters:
/// line breaks and tabs become spaces; other control characters and anything outside SQS's
/// allowed set (#x9 #xA #xD #x20–#xD7FF #xE000–#xFFFD #x10000–#x10FFFF) become U+FFFD.
pub fn one_line(reason: &str, max_chars: usize) -> String {
    reason
        .chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c if ('\u{20}'..='\u{D7FF}').contains(&c)
                || ('\u{E000}'..='\u{FFFD}').contains(&c)
                || c >= '\u{10000}' =>
            {
                c
            }
            _ => '\u{FFFD}',
        })
        .take(max_chars)
        .collect()
}

/// An error and its causes on one line, each cause once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_position_never_the_value() {
        let e = serde_json::from_str::<Vec<String>>(r#""secret words here""#).unwrap_err();
        assert!(
            e.to_string().contains("secret"),
            "serde_json quotes it: {e}"
        );
        let safe = json_error(&e);
        assert_eq!(safe, "wrong type or value at line 1 column 19");
        let e = serde_json::from_str::<serde_json::Value>("{\"a\": secret").unwrap_err();
        assert!(!json_error(&e).contains("secret"));
    }

    #[test]
    fn tokens_are_shown_and_free_text_is_not() {
        assert_eq!(token("transcrpt"), "\"transcrpt\"");
        assert_eq!(token("EnvelopeV1.note"), "\"EnvelopeV1.note\"");
        assert_eq!(token("my private note"), "a value of 15 chars (not shown)");
        assert_eq!(token("a\u{7}b"), "a value of 3 chars (not shown)");
        assert_eq!(token(&"x".repeat(41)), "a value of 41 chars (not shown)");
        assert_eq!(token(""), "a value of 0 chars (not shown)");
    }

    #[test]
    fn reasons_become_one_line_of_characters_sqs_accepts() {
        assert_eq!(
            one_line("a\nb\tc\u{7}d\u{FFFF}e", 100),
            "a b c\u{FFFD}d\u{FFFD}e"
        );
        assert_eq!(one_line("héllo wörld", 5), "héllo");
        assert_eq!(one_line("😀 ok", 10), "😀 ok");
    }
}
