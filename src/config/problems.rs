//! What validation found wrong: every problem names its key, its value and the fix, and all
//! of them are reported at once.

use std::fmt;
use std::path::PathBuf;

/// Every problem found while validating, each naming its key, its value and the fix.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records that `key = value` is wrong, and `want` says what would be right.
    pub fn bad(&mut self, key: &str, value: &dyn fmt::Display, want: &str) {
        self.0.push(format!("{key} = {value}: {want}"));
    }

    /// Records `key` if `value` is not an absolute http(s) URL, naming why.
    pub fn http_url(&mut self, key: &str, value: &str) {
        let why = match url::Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => return,
            Ok(u) => format!("scheme {:?} or no host", u.scheme()),
            Err(e) => e.to_string(),
        };
        self.bad(
            key,
            &format!("{value:?}"),
            &format!("not an http(s) URL ({why}); write it as https://host[:port]/path"),
        );
    }

    pub(super) fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

/// A configuration that could not be loaded or is not valid. Each problem names its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_that_is_not_one_names_the_key_and_the_fix() {
        let mut problems = Problems::default();
        problems.http_url("extraction.base_url", "https://api.openai.com/v1");
        problems.http_url("aws.endpoint_url", "http://127.0.0.1:4566");
        assert!(problems.0.is_empty(), "{problems:?}");
        problems.http_url("extraction.base_url", "not a url");
        problems.http_url("queues.main.url", "sqs.eu-west-1.amazonaws.com/1/q");
        problems.http_url("aws.endpoint_url", "ftp://host/");
        assert_eq!(problems.0.len(), 3);
        assert!(
            problems.0[0].starts_with("extraction.base_url = \"not a url\": not an http(s) URL")
        );
        assert!(problems.0[1].starts_with("queues.main.url = "));
        assert!(problems.0[2].contains("scheme \"ftp\""));
        assert!(problems.0.iter().all(|p| p.contains("https://host")));
    }
}
