//! SMS and mobile push over SNS `Publish`. SMS goes to an E.164 number (checked here too) with
//! the configured `AWS.SNS.SMS.SMSType` and sender id; push goes to a platform endpoint ARN with
//! one JSON message per platform (FCM/GCM, APNs). A disabled endpoint (`EndpointDisabled`: the
//! app was uninstalled, its token expired) or an invalid number fails the channel over.

use futures::future::BoxFuture;
use serde_json::json;

use super::{Provider, SendError, Sent, classify_aws, plain_text};
use crate::config::SmsConfig;
use crate::contract::ranked::RankedNotification;

/// SNS error codes that mean this address (an endpoint, a phone number) never passes. A
/// refusal of conveyor itself (`AuthorizationError`) is not among them: it is a configuration
/// fault (`fault::classify`), and nothing fails over for it.
const PERMANENT: &[&str] = &[
    "EndpointDisabled",
    "EndpointDisabledException",
    "InvalidParameter",
    "InvalidParameterValue",
    "InvalidParameterException",
    "NotFound",
    "NotFoundException",
    "PlatformApplicationDisabled",
    "PlatformApplicationDisabledException",
    "OptedOut",
];

/// SNS's longest SMS (split into parts by the carrier).
const MAX_SMS_CHARS: usize = 1_600;

pub struct Sms {
    client: aws_sdk_sns::Client,
    config: SmsConfig,
}

impl Sms {
    pub fn new(client: aws_sdk_sns::Client, config: SmsConfig) -> Self {
        Self { client, config }
    }
}

/// `+` and 2–15 digits, the first not 0.
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (2..=15).contains(&digits.len())
            && digits.chars().all(|c| c.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

impl Provider for Sms {
    fn send<'a>(
        &'a self,
        n: &'a RankedNotification,
        address: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            use aws_sdk_sns::types::MessageAttributeValue;
            if !is_e164(address) {
                return Err(SendError::permanent(
                    "invalid_address",
                    format!(
                        "the sms address is not an E.164 number ({} chars)",
                        address.chars().count()
                    ),
                ));
            }
            let attribute = |value: &str| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| SendError::permanent("invalid", format!("SNS attribute: {e}")))
            };
            let text: String = plain_text(n).chars().take(MAX_SMS_CHARS).collect();
            let mut publish = self
                .client
                .publish()
                .phone_number(address)
                .message(text)
                .message_attributes("AWS.SNS.SMS.SMSType", attribute(&self.config.sms_type)?);
            if let Some(sender_id) = &self.config.sender_id {
                publish = publish.message_attributes("AWS.SNS.SMS.SenderID", attribute(sender_id)?);
            }
            let sent = publish
                .send()
                .await
                .map_err(|e| classify_aws("SNS (SMS)", "sns:Publish", &e, PERMANENT))?;
            Ok(sent.message_id)
        })
    }
}

pub struct Push {
    client: aws_sdk_sns::Client,
}

impl Push {
    pub fn new(client: aws_sdk_sns::Client) -> Self {
        Self { client }
    }
}

/// The per-platform message (`MessageStructure = json`): every value is itself a JSON string.
pub fn push_message(n: &RankedNotification) -> String {
    let cta = n.content.cta.as_ref().map(|c| c.url.as_str());
    let fcm = json!({
        "notification": {"title": n.content.title, "body": n.content.body},
        "data": {"eventId": n.event_id, "priority": n.priority.to_string(), "url": cta},
    });
    let apns = json!({
        "aps": {"alert": {"title": n.content.title, "body": n.content.body}},
        "eventId": n.event_id,
        "url": cta,
    });
    json!({
        "default": n.content.title,
        "GCM": fcm.to_string(),
        "APNS": apns.to_string(),
        "APNS_SANDBOX": apns.to_string(),
    })
    .to_string()
}

impl Provider for Push {
    fn send<'a>(
        &'a self,
        n: &'a RankedNotification,
        address: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            if !address.starts_with("arn:") || !address.contains(":endpoint/") {
                return Err(SendError::permanent(
                    "invalid_address",
                    "the push address is not an SNS platform endpoint ARN",
                ));
            }
            let sent = self
                .client
                .publish()
                .target_arn(address)
                .message_structure("json")
                .message(push_message(n))
                .send()
                .await
                .map_err(|e| classify_aws("SNS (push)", "sns:Publish", &e, PERMANENT))?;
            Ok(sent.message_id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164_numbers() {
        assert!(is_e164("+14155550100"));
        assert!(is_e164("+442071838750"));
        assert!(!is_e164("14155550100"));
        assert!(!is_e164("+0123456"));
        assert!(!is_e164("+1 415 555 0100"));
        assert!(!is_e164("+1234567890123456"));
    }
}
