//! Large payloads by reference (the claim-check pattern). The AWS extended clients (Java's
//! `amazon-sqs-java-extended-client-lib`, Python's and JavaScript's ports) put a body over the
//! SQS limit in S3 and send a pointer instead:
//!
//! ```text
//! ["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"…","s3Key":"…"}]
//! ```
//!
//! (older Java clients: `com.amazon.sqs.javamessaging.MessageS3Pointer`). Such a body is
//! resolved here before decoding, in any format. The message itself keeps the pointer, so a
//! dead-lettered or redriven message stays small and resolvable. `conveyor publish
//! --offload-over` writes the same pointers.

use serde_json::{Value, json};

use crate::input::PoisonError;

const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";
/// The message attribute the extended clients set to the offloaded body's size.
pub const SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";

/// Where an offloaded body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub bucket: String,
    pub key: String,
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

impl Pointer {
    /// The pointer in `body`, if it is one (`None`: an ordinary body). A body that starts like
    /// a pointer but is not a valid one is poison.
    pub fn in_body(body: &str) -> Option<Result<Pointer, PoisonError>> {
        let head = body.trim_start().strip_prefix('[')?.trim_start();
        let head = head.strip_prefix('"')?;
        if !(head.starts_with(POINTER_CLASS) || head.starts_with(LEGACY_POINTER_CLASS)) {
            return None;
        }
        let invalid = || {
            PoisonError::WrongFormat(
                "an S3 pointer without s3BucketName and s3Key strings: cannot fetch the payload"
                    .into(),
            )
        };
        let parsed = crate::input::json(body).and_then(|value| {
            let fields = value.get(1).ok_or_else(invalid)?;
            let field = |name: &str| {
                fields
                    .get(name)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .ok_or_else(invalid)
            };
            Ok(Pointer {
                bucket: field("s3BucketName")?,
                key: field("s3Key")?,
            })
        });
        Some(parsed)
    }

    /// The body that stands for the payload on the queue.
    pub fn to_body(&self) -> String {
        json!([POINTER_CLASS, {"s3BucketName": self.bucket, "s3Key": self.key}]).to_string()
    }
}

/// Why an offloaded body could not be fetched. Every case is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Written just after its pointer, or deleted: retried up to the queue's maxReceiveCount,
    /// then dead-lettered.
    #[error("claim check {0}: no such object")]
    Missing(Pointer),
    /// Any other refusal (a bucket policy, a wrong bucket name): as `Missing`.
    #[error("claim check {0}: {1}")]
    Failed(Pointer, String),
    /// S3 unreachable, failing (5xx, throttling), or refusing conveyor's credentials or role
    /// (named: `s3:GetObject on bucket/key denied`): nothing wrong with the message, which is
    /// never dead-lettered for it.
    #[error("claim check {0}: S3 unavailable: {1}")]
    Unavailable(Pointer, String),
}

/// Resolves pointers with S3.
#[derive(Clone)]
pub struct ClaimCheck {
    s3: aws_sdk_s3::Client,
}

impl ClaimCheck {
    pub fn new(s3: aws_sdk_s3::Client) -> Self {
        Self { s3 }
    }

    /// The offloaded body. Not UTF-8 is poison: no retry makes it text.
    pub async fn fetch(
        &self,
        pointer: &Pointer,
    ) -> Result<Result<String, PoisonError>, FetchError> {
        let object = self
            .s3
            .get_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .send()
            .await
            .map_err(|e| {
                let missing = e
                    .as_service_error()
                    .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key);
                if missing {
                    return FetchError::Missing(pointer.clone());
                }
                let resource = format!("{}/{}", pointer.bucket, pointer.key);
                let failure = crate::fault::classify::aws_failure(
                    crate::fault::Dependency::S3,
                    "s3:GetObject",
                    &resource,
                    &e,
                );
                match failure.dependency() {
                    Some(_) => FetchError::Unavailable(pointer.clone(), failure.to_string()),
                    None => FetchError::Failed(pointer.clone(), failure.to_string()),
                }
            })?;
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| FetchError::Unavailable(pointer.clone(), e.to_string()))?
            .into_bytes();
        Ok(String::from_utf8(bytes.to_vec()).map_err(|_| {
            PoisonError::WrongFormat(format!("the payload at {pointer} is not UTF-8 text"))
        }))
    }

    /// Puts `body` in `bucket` under a fresh key and returns its pointer.
    pub async fn offload(&self, bucket: &str, body: String) -> anyhow::Result<Pointer> {
        let pointer = Pointer {
            bucket: bucket.to_owned(),
            key: uuid::Uuid::new_v4().to_string(),
        };
        self.s3
            .put_object()
            .bucket(&pointer.bucket)
            .key(&pointer.key)
            .content_type("application/json")
            .body(body.into_bytes().into())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}", crate::safe::error_chain(&aws_sdk_s3::Error::from(e)))
            })?;
        Ok(pointer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_pointer_classes_are_recognised_and_ordinary_bodies_are_not() {
        let p = Pointer {
            bucket: "b".into(),
            key: "k/1".into(),
        };
        assert_eq!(Pointer::in_body(&p.to_body()).unwrap().unwrap(), p);
        let legacy = r#" [ "com.amazon.sqs.javamessaging.MessageS3Pointer", {"s3BucketName":"b","s3Key":"k/1"}]"#;
        assert_eq!(Pointer::in_body(legacy).unwrap().unwrap(), p);
        assert!(Pointer::in_body(r#"{"detail":{}}"#).is_none());
        assert!(Pointer::in_body(r#"["other", {}]"#).is_none());
        let broken = r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3Key":"k"}]"#;
        assert!(Pointer::in_body(broken).unwrap().is_err());
    }
}
