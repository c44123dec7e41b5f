//! Reading a JSON object field by field, for the contracts (`envelope`, `notify`): every error
//! names the field's path from where the payload sits and the problem, and never quotes content
//! (an enum value is echoed only when it is a short token; free text never).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A field that failed validation: its path from where the payload sits (`detail.user.id`) and
/// the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FieldError {
    pub path: String,
    pub problem: String,
}

/// An object being validated, with its path for error messages.
pub struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    pub fn new(path: &str, map: &'a Map<String, Value>) -> Self {
        Self {
            path: path.to_owned(),
            map,
        }
    }

    pub fn error(&self, key: &str, problem: impl Into<String>) -> FieldError {
        FieldError {
            path: format!("{}.{key}", self.path),
            problem: problem.into(),
        }
    }

    /// The value, or `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn require(&self, key: &str) -> Result<&'a Value, FieldError> {
        self.get(key).ok_or_else(|| self.error(key, "missing"))
    }

    pub fn string(&self, key: &str) -> Result<&'a str, FieldError> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            other => Err(self.error(key, format!("expected a string, found {}", kind(other)))),
        }
    }

    pub fn non_empty_string(&self, key: &str) -> Result<&'a str, FieldError> {
        let s = self.string(key)?;
        if s.trim().is_empty() {
            return Err(self.error(key, "must not be empty"));
        }
        Ok(s)
    }

    pub fn optional_string(&self, key: &str) -> Result<Option<&'a str>, FieldError> {
        self.get(key).map(|_| self.string(key)).transpose()
    }

    pub fn object(&self, key: &str) -> Result<Fields<'a>, FieldError> {
        match self.require(key)? {
            Value::Object(map) => Ok(Fields {
                path: format!("{}.{key}", self.path),
                map,
            }),
            other => Err(self.error(key, format!("expected an object, found {}", kind(other)))),
        }
    }

    pub fn optional_object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>, FieldError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => {
                Err(self.error(key, format!("expected an object, found {}", kind(other))))
            }
        }
    }

    pub fn uuid(&self, key: &str, require_v4: bool) -> Result<Uuid, FieldError> {
        let s = self.string(key)?;
        let id = Uuid::parse_str(s).map_err(|_| self.error(key, "not a UUID"))?;
        if require_v4 && id.get_version_num() != 4 {
            return Err(self.error(
                key,
                format!("must be a UUID v4, found version {}", id.get_version_num()),
            ));
        }
        Ok(id)
    }

    pub fn optional_uuid(&self, key: &str) -> Result<Option<Uuid>, FieldError> {
        self.get(key).map(|_| self.uuid(key, false)).transpose()
    }

    pub fn one_of<T>(
        &self,
        key: &str,
        parse: fn(&str) -> Option<T>,
        allowed: &[&str],
    ) -> Result<T, FieldError> {
        let s = self.string(key)?;
        parse(s).ok_or_else(|| {
            self.error(
                key,
                format!(
                    "unknown variant {}, expected one of {}",
                    crate::safe::token(s),
                    allowed.join(", ")
                ),
            )
        })
    }

    /// RFC 3339 with an offset (converted to UTC), or an ISO 8601 date-time without one (taken
    /// as UTC, as the publishers' Python models do).
    pub fn timestamp(&self, key: &str) -> Result<DateTime<Utc>, FieldError> {
        let s = self.string(key)?;
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(t.with_timezone(&Utc));
        }
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
            .map(|t| t.and_utc())
            .map_err(|_| self.error(key, "not an ISO 8601 / RFC 3339 timestamp"))
    }
}

/// JSON type names for "expected …, found …".
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    /// A string of `min..=max` characters (at least one not whitespace when `min > 0`).
    pub fn bounded_string(&self, key: &str, min: usize, max: usize) -> Result<&'a str, FieldError> {
        let s = self.string(key)?;
        self.check_length(key, s, min, max)?;
        Ok(s)
    }

    pub fn optional_bounded_string(
        &self,
        key: &str,
        max: usize,
    ) -> Result<Option<&'a str>, FieldError> {
        self.get(key)
            .map(|_| self.bounded_string(key, 0, max))
            .transpose()
    }

    fn check_length(&self, key: &str, s: &str, min: usize, max: usize) -> Result<(), FieldError> {
        if min > 0 && s.trim().is_empty() {
            return Err(self.error(key, "must not be empty"));
        }
        let chars = s.chars().count();
        if chars > max {
            return Err(self.error(key, format!("{chars} characters, at most {max} allowed")));
        }
        Ok(())
    }

    /// An identifier: 1 to `max` printable ASCII characters, no spaces.
    pub fn identifier(&self, key: &str, max: usize) -> Result<&'a str, FieldError> {
        let s = self.string(key)?;
        if s.is_empty() || s.len() > max || !s.chars().all(|c| c.is_ascii_graphic()) {
            return Err(self.error(
                key,
                format!("must be 1 to {max} printable ASCII characters without spaces"),
            ));
        }
        Ok(s)
    }

    /// A UUID in its hyphenated form (`8-4-4-4-12` hex digits).
    pub fn hyphenated_uuid(&self, key: &str) -> Result<Uuid, FieldError> {
        let s = self.string(key)?;
        match Uuid::try_parse(s) {
            Ok(id) if s.len() == 36 => Ok(id),
            _ => Err(self.error(key, "not a UUID (8-4-4-4-12 hex digits)")),
        }
    }

    /// RFC 3339 with an offset (converted to UTC; years 1 to 9999 there, so that it is written
    /// back as RFC 3339 too).
    pub fn rfc3339(&self, key: &str) -> Result<DateTime<Utc>, FieldError> {
        use chrono::Datelike;
        let s = self.string(key)?;
        let t = DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| self.error(key, "not an RFC 3339 timestamp with an offset"))?;
        if !(1..=9999).contains(&t.year()) {
            return Err(self.error(key, "out of range: years 1 to 9999 in UTC"));
        }
        Ok(t)
    }

    /// A whole number in `min..=max` (`3.0` counts as 3, as JSON Schema has it).
    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<i64, FieldError> {
        let value = self.require(key)?;
        let n = match value {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(n) => Err(self.error(key, format!("{n} is out of range {min}..={max}"))),
            None => Err(self.error(
                key,
                format!("expected a whole number, found {}", kind(value)),
            )),
        }
    }

    /// An array's items with their paths (`key[0]`, …).
    pub fn array(&self, key: &str) -> Result<Vec<(String, &'a Value)>, FieldError> {
        match self.require(key)? {
            Value::Array(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{}.{key}[{i}]", self.path), v))
                .collect()),
            other => Err(self.error(key, format!("expected an array, found {}", kind(other)))),
        }
    }

    /// The object's own path (`detail.user`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The object itself.
    pub fn map(&self) -> &'a Map<String, Value> {
        self.map
    }
}

/// An array item or other value at `path` read as an object.
pub fn object_at<'a>(path: String, value: &'a Value) -> Result<Fields<'a>, FieldError> {
    match value {
        Value::Object(map) => Ok(Fields { path, map }),
        other => Err(FieldError {
            problem: format!("expected an object, found {}", kind(other)),
            path,
        }),
    }
}
