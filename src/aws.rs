//! AWS SDK configuration shared by the daemon and the operator commands.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::config::{AwsConfig, SQS_MAX_WAIT_SECS};

/// Loads the SDK configuration from the default chain (environment, profile, ECS task role,
/// instance metadata) with conveyor's region, endpoint and timeouts applied.
pub async fn sdk_config(config: &AwsConfig) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(config.connect_timeout_secs))
        // A long poll legitimately takes up to 20 s; anything beyond it plus the call budget
        // means the endpoint is frozen, and the attempt is abandoned and retried.
        .operation_attempt_timeout(Duration::from_secs(
            u64::from(SQS_MAX_WAIT_SECS) + config.call_timeout_secs,
        ))
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &config.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    loader.load().await
}

/// An S3 client. With a custom endpoint (LocalStack, MinIO) it addresses buckets by path, as
/// bucket host names do not resolve there.
pub fn s3_client(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    let path_style = sdk.endpoint_url().is_some();
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build(),
    )
}

/// The region the SDK will sign with, or an error naming how to set it. Without one, every
/// request fails at send time ("missing signing region"), so it is checked up front.
pub fn require_region(sdk: &SdkConfig) -> Result<String, String> {
    sdk.region().map(|r| r.to_string()).ok_or_else(|| {
        "no AWS region: set aws.region in the config or AWS_REGION in the environment".to_owned()
    })
}
