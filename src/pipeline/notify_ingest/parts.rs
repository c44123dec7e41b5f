//! A range of a drop, fetched in parts: each a ranged `GetObject` of the same version
//! (`If-Match` its ETag), read whole at once. No download stays open while lines are sent (one
//! read slowly over minutes was cut part-way on LocalStack, and S3 closes connections that
//! stall), and memory stays bounded by one part.

use aws_sdk_s3::Client as S3;
use bytes::Bytes;
use futures::Stream;

use crate::fault::{Dependency, PipelineError};

/// A failed S3 call on a drop, by its class (see `fault::classify`): a refused permission
/// names the action and the object, so `/readyz` says what the role lacks.
pub(super) fn s3_error<E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static>(
    action: &str,
    resource: &str,
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> PipelineError {
    crate::fault::classify::aws_failure(Dependency::S3, action, resource, e)
}

/// Bytes asked for per GET within the range.
const PART_BYTES: u64 = 1024 * 1024;
/// Bytes asked for per GET past the range's end, where only its last line's rest is read.
const TAIL_BYTES: u64 = 64 * 1024;
/// Tries of one part whose body broke off mid-read (the SDK retries only failed requests).
const PART_TRIES: u32 = 3;

/// A range's parts, in order: [`PART_BYTES`] at a time up to `end`, then [`TAIL_BYTES`] at a
/// time to the object's end for as long as they are asked for.
pub(super) struct Parts {
    pub s3: S3,
    pub bucket: String,
    pub key: String,
    /// `If-Match`: every part of the same version.
    pub etag: Option<String>,
    /// The first byte not read yet.
    pub next: u64,
    /// The range's end.
    pub end: u64,
    /// The object's size.
    pub size: u64,
}

/// Why the drop could not be read on.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadFailure {
    /// Overwritten or deleted since the notification (412, NoSuchKey).
    #[error("the drop was overwritten or deleted")]
    Superseded,
    #[error("{0}")]
    Failed(PipelineError),
}

impl Parts {
    /// The parts as a stream of bytes, failures carried as I/O errors holding a
    /// [`ReadFailure`] (see [`ReadFailure::from_io`]).
    pub fn stream(self) -> impl Stream<Item = std::io::Result<Bytes>> {
        futures::stream::try_unfold(self, |mut parts| async move {
            match parts.next_part().await {
                Ok(Some(bytes)) => Ok(Some((bytes, parts))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e)),
            }
        })
    }

    /// The next part; `None` past the end.
    async fn next_part(&mut self) -> Result<Option<Bytes>, ReadFailure> {
        if self.next >= self.size {
            return Ok(None);
        }
        let mut pause = std::time::Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let want = if self.next < self.end {
                PART_BYTES.min(self.end - self.next)
            } else {
                TAIL_BYTES
            };
            let last = (self.next + want).min(self.size) - 1;
            let answer = self
                .s3
                .get_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .range(format!("bytes={}-{last}", self.next))
                .set_if_match(self.etag.clone())
                .send()
                .await;
            let object = match answer {
                Ok(object) => object,
                Err(e) => {
                    if superseded(&e) {
                        return Err(ReadFailure::Superseded);
                    }
                    // A role without s3:ListBucket is told 403 for a missing key too.
                    let resource = format!("{}/{}", self.bucket, self.key);
                    return Err(ReadFailure::Failed(s3_error("s3:GetObject", &resource, &e)));
                }
            };
            match object.body.collect().await {
                Ok(body) => {
                    let bytes = body.into_bytes();
                    self.next += bytes.len() as u64;
                    if bytes.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(bytes));
                }
                Err(e) if attempt < PART_TRIES => {
                    tracing::warn!(error = %crate::safe::error_chain(&e), attempt, "a part of the drop broke off mid-read; asking for it again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    let reason = format!(
                        "reading the drop at byte {}: {}",
                        self.next,
                        crate::safe::error_chain(&e)
                    );
                    return Err(ReadFailure::Failed(PipelineError::Unavailable(
                        Dependency::S3,
                        reason,
                    )));
                }
            }
        }
    }
}

/// Whether a GET of the drop failed because the drop was overwritten (`If-Match`: 412) or
/// deleted since its notification.
pub(super) fn superseded(
    e: &aws_sdk_s3::error::SdkError<
        aws_sdk_s3::operation::get_object::GetObjectError,
        aws_sdk_s3::config::http::HttpResponse,
    >,
) -> bool {
    e.raw_response().map(|r| r.status().as_u16()) == Some(412)
        || e.as_service_error()
            .is_some_and(aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key)
}

impl ReadFailure {
    /// The failure a reader's I/O error carries; any other I/O error is retryable.
    pub fn from_io(e: std::io::Error) -> ReadFailure {
        match e.into_inner().map(|inner| inner.downcast::<ReadFailure>()) {
            Some(Ok(failure)) => *failure,
            Some(Err(other)) => ReadFailure::Failed(PipelineError::Retryable(format!(
                "reading the drop: {}",
                crate::safe::error_chain(other.as_ref())
            ))),
            None => ReadFailure::Failed(PipelineError::Retryable("reading the drop failed".into())),
        }
    }
}
