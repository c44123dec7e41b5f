//! Secrets: read from the environment only, never from files; printed as `***`.

use std::fmt;

use serde::Serialize;

/// A secret value: never printed, never serialized in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear value, for the one call that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Secrets read from the environment by their conventional names.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Secrets {
    /// `DATABASE_URL`: may carry a password.
    pub database_url: Option<Secret>,
    /// `NEO4J_PASSWORD`.
    pub neo4j_password: Option<Secret>,
    /// `OPENAI_API_KEY`.
    pub openai_api_key: Option<Secret>,
    /// `AWS_ACCESS_KEY_ID` (read here only to report it redacted; the SDK reads its own chain).
    pub aws_access_key_id: Option<Secret>,
    /// `AWS_SECRET_ACCESS_KEY` (as above).
    pub aws_secret_access_key: Option<Secret>,
    /// `NOTIFY_WEBHOOK_SECRETS`: each tenant's webhook signing secret,
    /// `<tenant id>=whsec_<base64>[,…]`.
    pub notify_webhook_secrets: Option<Secret>,
}

impl Secrets {
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret)
        };
        Self {
            database_url: var("DATABASE_URL"),
            neo4j_password: var("NEO4J_PASSWORD"),
            openai_api_key: var("OPENAI_API_KEY"),
            aws_access_key_id: var("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            notify_webhook_secrets: var(crate::notify::deliver::webhook::SECRETS_ENV),
        }
    }
}
