//! Every dependency error, mapped once to its [`Class`]: PostgreSQL ([`postgres`]), the Bolt
//! graph ([`bolt`]), any AWS service ([`aws`]: SQS, S3, SES, SNS, EventBridge share one error
//! type), and an HTTP status from the model ([`model_status`]) or a webhook receiver
//! ([`receiver_status`]). Callers keep what only they know (a missing S3 key, a provider's
//! list of codes that mean "this address") and ask here for everything else. The table, with
//! the reasons, is docs/faults.md; the tests below hold one row per rule.

use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

use super::{Class, Dependency, PipelineError};

/// A PostgreSQL error's class.
///
/// - Outage: no connection (I/O, TLS, the pool closed, protocol), SQLSTATE class 08
///   (connection), 53 (out of resources), 57P01–57P03 (shutting down, not accepting), and the
///   waits: 55P03 `lock_not_available` (a `lock_timeout` ran out) and 57014 `query_canceled`
///   (a `statement_timeout` ran out). A lock held by a migration or a stuck session is the
///   database being unavailable to us, not the message being wrong; when it hits one message
///   only, the breaker stays closed and the message is retried without spending its receives.
/// - Configuration: 28 (credentials refused), 3D000 (no such database), 42501 (permission
///   denied), 42P01 (a table missing: migrations not applied).
/// - Message: 22 (data exception) and 23 (integrity violation).
/// - Transient: everything else, serialization failures and deadlocks among them, and a wait
///   for a pooled connection (`PoolTimedOut`): back-pressure of our own pool, never counted
///   against the database (its health probe, on a connection of its own, decides that).
pub fn postgres(error: &sqlx::Error) -> Class {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Class::Outage,
        sqlx::Error::PoolTimedOut => Class::Transient,
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => postgres_code(&code),
            None => Class::Transient,
        },
        _ => Class::Transient,
    }
}

/// What a failed PostgreSQL call while `doing` something means for the pipeline, by its class.
pub fn postgres_failure(doing: &str, error: &sqlx::Error) -> PipelineError {
    PipelineError::classified(
        Dependency::Postgres,
        postgres(error),
        format!("{doing}: {}", crate::safe::error_chain(error)),
    )
}

/// A SQLSTATE's class (see [`postgres`]).
pub fn postgres_code(code: &str) -> Class {
    match code {
        "55P03" | "57014" | "57P01" | "57P02" | "57P03" => Class::Outage,
        "3D000" | "42501" | "42P01" => Class::Configuration,
        _ if code.starts_with("08") || code.starts_with("53") => Class::Outage,
        _ if code.starts_with("28") => Class::Configuration,
        _ if code.starts_with("22") || code.starts_with("23") => Class::Message,
        _ => Class::Transient,
    }
}

/// A Bolt error's class.
///
/// - Outage: no connection, the connection lost mid-exchange, a routing table that cannot be
///   had, the database unavailable.
/// - Configuration: authentication refused, a security error (permissions).
/// - Message: a statement the server rejects (not a vanished entity) or a constraint violation
///   other than uniqueness: the data is bad. A uniqueness violation is a race between two
///   MERGEs of one key ([`is_uniqueness_race`]), which a retry wins.
/// - Transient: everything else.
pub fn bolt(error: &neo4rs::Error) -> Class {
    match error {
        neo4rs::Error::IOError { .. }
        | neo4rs::Error::ConnectionError
        | neo4rs::Error::IncompleteBoltExchange
        | neo4rs::Error::RoutingTableError(_) => Class::Outage,
        neo4rs::Error::AuthenticationError(_) => Class::Configuration,
        neo4rs::Error::Neo4j(e) => {
            if e.code().starts_with("Neo.ClientError.Security.") {
                Class::Configuration
            } else if e.code() == "Neo.TransientError.General.DatabaseUnavailable" {
                Class::Outage
            } else if (e.code().contains("ConstraintValidationFailed") && !is_uniqueness_race(e))
                || (e.code().starts_with("Neo.ClientError.Statement.") && !is_entity_race(e))
            {
                Class::Message
            } else {
                Class::Transient
            }
        }
        _ => Class::Transient,
    }
}

/// `EntityNotFound`: an entity the statement reached vanished under it — deleted by another
/// transaction in Neo4j; in ArcadeDB also seen under concurrent writes right after a restart.
/// conveyor deletes nothing, so it is a race, never bad data.
pub fn is_entity_race(e: &neo4rs::Neo4jError) -> bool {
    e.code() == "Neo.ClientError.Statement.EntityNotFound"
}

/// A uniqueness violation, as Neo4j ("already exists with label") or ArcadeDB ("Duplicated
/// key") words it.
pub fn is_uniqueness_race(e: &neo4rs::Neo4jError) -> bool {
    e.code().contains("ConstraintValidationFailed")
        && (e.message().contains("Duplicated key") || e.message().contains("already exists"))
}

/// An AWS error's class, for any service (they share the SDK's error types).
///
/// - Outage: no answer (connection, DNS, timeout, a response that did not parse), a 5xx,
///   `ServiceUnavailable`, throttling (an account-level quota: every message alike).
/// - Configuration: credentials or permission refused (401/403, `AccessDenied*`,
///   `AuthorizationError`, an unknown or expired key, a bad signature), a KMS key we may not
///   use, a queue or topic that does not exist.
/// - Message: any other answer: the service refused this request (an invalid parameter, a
///   rejected address). Callers that know better (a missing S3 key is not yet written, not
///   bad) decide before asking here.
pub fn aws<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> Class {
    match error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            Class::Outage
        }
        SdkError::ServiceError(e) => aws_answer(e.raw().status().as_u16(), e.err().code()),
        _ => Class::Transient,
    }
}

/// An AWS service's answer by HTTP status and error code (see [`aws`]).
pub fn aws_answer(status: u16, code: Option<&str>) -> Class {
    if is_throttling(code) || code == Some("ServiceUnavailable") || (500..600).contains(&status) {
        return Class::Outage;
    }
    if matches!(status, 401 | 403) || is_denied_code(code) {
        return Class::Configuration;
    }
    Class::Message
}

/// Error codes that say conveyor's identity may not do this, or what it names is not there.
fn is_denied_code(code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    code.starts_with("AccessDenied")
        || code.starts_with("KMS.")
        || code.starts_with("KMSAccessDenied")
        || matches!(
            code,
            "AuthorizationError"
                | "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "ExpiredToken"
                | "ExpiredTokenException"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "MissingAuthenticationToken"
                | "AuthFailure"
                | "AllAccessDisabled"
                | "NoSuchBucket"
                | "NotFound"
                | "AWS.SimpleQueueService.NonExistentQueue"
                | "QueueDoesNotExist"
                // SES: the sender or the account, not the message.
                | "MailFromDomainNotVerified"
                | "MailFromDomainNotVerifiedException"
                | "ConfigurationSetDoesNotExist"
                | "ConfigurationSetDoesNotExistException"
                | "ConfigurationSetSendingPausedException"
                | "AccountSendingPausedException"
        )
}

/// Whether an AWS call may succeed if simply tried again: an outage ([`aws`]).
pub fn is_transient<E: ProvideErrorMetadata>(error: &SdkError<E, HttpResponse>) -> bool {
    aws(error) == Class::Outage
}

/// Whether an AWS error code says the caller is being throttled.
pub fn is_throttling(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ThrottlingException"
                | "RequestThrottled"
                | "Throttling"
                | "AWS.SimpleQueueService.RequestThrottled"
                | "SlowDown"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
        )
    ) || code.is_some_and(|c| c.contains("Throttl"))
}

/// What `/readyz` and the log say about a refused AWS call: the IAM action, the resource and
/// the service's code. `s3:GetObject on bucket/key denied (AccessDenied)`.
pub fn denied(action: &str, resource: &str, code: Option<&str>) -> String {
    format!(
        "{action} on {resource} denied ({}): grant it to conveyor's role (`conveyor policy` prints what it needs)",
        code.unwrap_or("403")
    )
}

/// What a failed call of `action` (`s3:GetObject`) on `resource` (`bucket/key`) of an AWS
/// `dependency` means for the pipeline, by its class: a refusal names the action and the
/// resource (see [`denied`]); the reason never carries the service's free-text message, which
/// may echo an address.
pub fn aws_failure<E>(
    dependency: Dependency,
    action: &str,
    resource: &str,
    error: &SdkError<E, HttpResponse>,
) -> PipelineError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let class = aws(error);
    let code = match error {
        SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    };
    let reason = match class {
        Class::Configuration => denied(action, resource, code),
        Class::Outage if code.is_none() => {
            format!(
                "{action} on {resource}: {}",
                crate::safe::error_chain(error)
            )
        }
        _ => format!("{action} on {resource}: {}", code.unwrap_or("refused")),
    };
    PipelineError::classified(dependency, class, reason)
}

/// The model endpoint's HTTP status: 5xx and 408 are an outage, 401/403 a configuration
/// fault (the key is refused: every message alike), 429/409/425 transient (one call was
/// refused for now), any other 4xx a message fault (this request is refused).
pub fn model_status(status: u16) -> Class {
    match status {
        401 | 403 => Class::Configuration,
        408 | 500..=599 => Class::Outage,
        409 | 425 | 429 => Class::Transient,
        _ => Class::Message,
    }
}

/// A webhook receiver's HTTP status. A receiver is the tenant's, one of many: nothing it
/// answers is conveyor's outage or configuration. 5xx, 408, 409, 425 and 429 are transient for
/// this notification (retried, honouring `Retry-After`); any other 4xx, 401 and 403 among
/// them, is a fault of this target (the channel fails over).
pub fn receiver_status(status: u16) -> Class {
    match status {
        408 | 409 | 425 | 429 | 500..=599 => Class::Transient,
        _ => Class::Message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes() {
        for (code, class) in [
            ("08006", Class::Outage),        // connection failure
            ("53300", Class::Outage),        // too many connections
            ("57P01", Class::Outage),        // admin shutdown
            ("57P03", Class::Outage),        // cannot connect now (starting up)
            ("55P03", Class::Outage),        // lock_not_available: lock_timeout
            ("57014", Class::Outage),        // query_canceled: statement_timeout
            ("28P01", Class::Configuration), // invalid password
            ("28000", Class::Configuration), // invalid authorization
            ("3D000", Class::Configuration), // no such database
            ("42501", Class::Configuration), // permission denied
            ("42P01", Class::Configuration), // undefined table: migrations not applied
            ("22P02", Class::Message),       // invalid text representation
            ("23502", Class::Message),       // not null violation
            ("40001", Class::Transient),     // serialization failure
            ("40P01", Class::Transient),     // deadlock
        ] {
            assert_eq!(postgres_code(code), class, "{code}");
        }
        assert_eq!(postgres(&sqlx::Error::PoolTimedOut), Class::Transient);
        assert_eq!(postgres(&sqlx::Error::PoolClosed), Class::Outage);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(postgres(&sqlx::Error::Io(io)), Class::Outage);
    }

    #[test]
    fn aws_answers() {
        for (status, code, class) in [
            (500, Some("InternalError"), Class::Outage),
            (503, None, Class::Outage),
            (400, Some("ThrottlingException"), Class::Outage),
            (400, Some("Throttling"), Class::Outage),
            (503, Some("SlowDown"), Class::Outage),
            (400, Some("ServiceUnavailable"), Class::Outage),
            (403, Some("AccessDenied"), Class::Configuration),
            (400, Some("AccessDeniedException"), Class::Configuration),
            (403, Some("AuthorizationError"), Class::Configuration),
            (400, Some("InvalidClientTokenId"), Class::Configuration),
            (400, Some("ExpiredToken"), Class::Configuration),
            (400, Some("KMS.AccessDeniedException"), Class::Configuration),
            (404, Some("NoSuchBucket"), Class::Configuration),
            (
                400,
                Some("AWS.SimpleQueueService.NonExistentQueue"),
                Class::Configuration,
            ),
            (
                400,
                Some("AccountSendingPausedException"),
                Class::Configuration,
            ),
            (
                400,
                Some("MailFromDomainNotVerifiedException"),
                Class::Configuration,
            ),
            (400, Some("MessageRejected"), Class::Message),
            (400, Some("InvalidParameter"), Class::Message),
            (400, Some("InvalidParameterValue"), Class::Message),
        ] {
            assert_eq!(aws_answer(status, code), class, "{status} {code:?}");
        }
    }

    #[test]
    fn http_statuses() {
        for (status, model, receiver) in [
            (200, Class::Message, Class::Message),
            (400, Class::Message, Class::Message),
            (401, Class::Configuration, Class::Message),
            (403, Class::Configuration, Class::Message),
            (404, Class::Message, Class::Message),
            (408, Class::Outage, Class::Transient),
            (409, Class::Transient, Class::Transient),
            (429, Class::Transient, Class::Transient),
            (500, Class::Outage, Class::Transient),
            (503, Class::Outage, Class::Transient),
        ] {
            assert_eq!(model_status(status), model, "model {status}");
            assert_eq!(receiver_status(status), receiver, "receiver {status}");
        }
    }

    #[test]
    fn a_denial_names_the_action_and_the_resource() {
        let text = denied("s3:GetObject", "drops/2026/a.ndjson", Some("AccessDenied"));
        assert!(text.starts_with("s3:GetObject on drops/2026/a.ndjson denied (AccessDenied)"));
    }
}
