//! `notify drop`: a JSON-lines file uploaded to the drop bucket in 8 MiB parts, with progress.

use super::{DropArgs, notify_config};
use crate::cmd::progress::{Progress, Unit};
use crate::config::Config;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use tokio::io::AsyncReadExt;

/// S3 multipart parts (5 MiB is S3's minimum part size except the last; 8 MiB keeps memory
/// small and progress fine-grained).
pub(super) const PART_BYTES: usize = 8 * 1024 * 1024;

pub(super) async fn upload(config: &Config, args: DropArgs) -> anyhow::Result<ExitCode> {
    let notify = notify_config(config)?;
    let path = &args.file;
    let origin = path.display().to_string();
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let total = file.metadata().await?.len();
    let key = match &args.key {
        Some(key) => key.clone(),
        None => format!(
            "drops/{}",
            Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "drop.jsonl".to_owned())
        ),
    };
    if key.ends_with(crate::notify::drop::REJECTS_SUFFIX) {
        anyhow::bail!(
            "--key {key:?}: keys ending in {} are rejects objects and are not read; choose another key",
            crate::notify::drop::REJECTS_SUFFIX
        );
    }
    let sdk = crate::aws::sdk_config(&config.aws).await;
    crate::aws::require_region(&sdk).map_err(anyhow::Error::msg)?;
    let s3 = crate::aws::s3_client(&sdk);
    let bucket = notify.bucket.as_str();
    let progress = Progress::new(total, "uploading", Unit::Bytes);
    let s3_error = |call: &str, e: &dyn std::error::Error| {
        anyhow::anyhow!(
            "{call} s3://{bucket}/{key}: {}",
            crate::safe::error_chain(e)
        )
    };
    if total as usize <= PART_BYTES {
        let mut body = Vec::with_capacity(total as usize);
        file.read_to_end(&mut body).await?;
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .body(body.into())
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &aws_sdk_s3::Error::from(e)))?;
        progress.advance(total);
    } else {
        let upload = s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", &aws_sdk_s3::Error::from(e)))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let parts = upload_parts(&s3, bucket, &key, &upload_id, &mut file, &progress).await;
        let parts = match parts {
            Ok(parts) => parts,
            Err(e) => {
                // Leave no half-uploaded parts behind (they cost storage until aborted).
                let _ = s3
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(&key)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(e);
            }
        };
        s3.complete_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", &aws_sdk_s3::Error::from(e)))?;
    }
    progress.finish();
    tracing::info!(bytes = total, "drop uploaded");
    println!(
        "{}",
        json!({"bucket": bucket, "key": key, "bytes": total, "rejects_key": format!("{key}{}", crate::notify::drop::REJECTS_SUFFIX)})
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn upload_parts(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    file: &mut tokio::fs::File,
    progress: &Progress,
) -> anyhow::Result<Vec<aws_sdk_s3::types::CompletedPart>> {
    let mut parts = Vec::new();
    for number in 1.. {
        let mut part = Vec::with_capacity(PART_BYTES);
        (&mut *file)
            .take(PART_BYTES as u64)
            .read_to_end(&mut part)
            .await?;
        if part.is_empty() {
            break;
        }
        let len = part.len() as u64;
        let out = s3
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(part.into())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "UploadPart {number} of s3://{bucket}/{key}: {}",
                    crate::safe::error_chain(&aws_sdk_s3::Error::from(e))
                )
            })?;
        parts.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build(),
        );
        progress.advance(len);
    }
    Ok(parts)
}
