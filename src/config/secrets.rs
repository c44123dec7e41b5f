//! Secrets: read from the environment only, never from files; printed as `***`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use serde::Serialize;
use uuid::Uuid;

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
            notify_webhook_secrets: var(WEBHOOK_SECRETS_ENV),
        }
    }

    /// Fills every unset secret conveyor's own config may require with a placeholder, for a
    /// command that needs none of their values (`conveyor policy`). The AWS keys stay as they
    /// are: the SDK reads its own chain.
    pub fn stand_in_for_missing(&mut self) {
        const UNUSED: &str = "(not read by this command)";
        for secret in [
            &mut self.database_url,
            &mut self.neo4j_password,
            &mut self.openai_api_key,
        ] {
            secret.get_or_insert_with(|| Secret(UNUSED.to_owned()));
        }
    }
}

/// The environment variable holding every tenant's secret: `<tenant id>=whsec_<base64>`,
/// comma-separated.
pub const WEBHOOK_SECRETS_ENV: &str = "NOTIFY_WEBHOOK_SECRETS";

/// Webhook signing keys by tenant (Standard Webhooks), parsed from [`WEBHOOK_SECRETS_ENV`].
#[derive(Clone, Default)]
pub struct SigningSecrets(Arc<HashMap<Uuid, Vec<u8>>>);

impl std::fmt::Debug for SigningSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningSecrets({} tenants)", self.0.len())
    }
}

impl SigningSecrets {
    /// Parses `<tenant id>=whsec_<base64>[,…]`. Errors name the entry by position, never a
    /// secret.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for (i, entry) in value.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let n = i + 1;
            let (tenant, secret) = entry.split_once('=').ok_or_else(|| {
                format!("{WEBHOOK_SECRETS_ENV}: entry {n} is not <tenant id>=whsec_<base64>")
            })?;
            let tenant: Uuid = tenant.trim().parse().map_err(|_| {
                format!("{WEBHOOK_SECRETS_ENV}: entry {n} does not start with a tenant id (a UUID)")
            })?;
            keys.insert(
                tenant,
                decode_secret(secret.trim()).map_err(|e| {
                    format!("{WEBHOOK_SECRETS_ENV}: entry {n} (tenant {tenant}): {e}")
                })?,
            );
        }
        Ok(Self(Arc::new(keys)))
    }

    pub fn get(&self, tenant: Uuid) -> Option<&[u8]> {
        self.0.get(&tenant).map(Vec::as_slice)
    }
}

/// `whsec_<base64>` → the key bytes (Standard Webhooks' secret format).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("a secret starts with whsec_ followed by base64 (24–64 random bytes)")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the part after whsec_ is not valid base64")?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "the key is {} bytes; use 24–64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_per_tenant_and_errors_never_show_them() {
        let t = Uuid::new_v4();
        let s = SigningSecrets::parse(&format!(" {t}=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ,"))
            .unwrap();
        assert!(s.get(t).is_some());
        assert!(s.get(Uuid::new_v4()).is_none());
        let e = SigningSecrets::parse(&format!("{t}=hunter2hunter2")).unwrap_err();
        assert!(e.contains("entry 1") && !e.contains("hunter2"), "{e}");
        let e = SigningSecrets::parse("nobody=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err();
        assert!(e.contains("tenant id"), "{e}");
    }
}
