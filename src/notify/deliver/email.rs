//! Email over SES (the v1 `SendEmail` API): from `notify.email.sender`, subject = the title,
//! a text body with the call to action's link, through `notify.email.configuration_set` when
//! set. A rejected message or an unverified sender fails the channel over; throttling and
//! SES's 5xx wait for SES (its breaker), never failing over.

use futures::future::BoxFuture;

use super::{Provider, SendError, Sent, classify_aws, plain_text};
use crate::config::EmailConfig;
use crate::contract::ranked::RankedNotification;

/// SES error codes that mean this message or this address never passes. The sender's and the
/// account's own faults (an unverified MAIL FROM domain, a missing configuration set, sending
/// paused) are configuration faults (`fault::classify`): every email fails alike, so nothing
/// fails over for them.
const PERMANENT: &[&str] = &["MessageRejected", "InvalidParameterValue"];

pub struct Email {
    client: aws_sdk_ses::Client,
    config: EmailConfig,
}

impl Email {
    pub fn new(client: aws_sdk_ses::Client, config: EmailConfig) -> Self {
        Self { client, config }
    }
}

impl Provider for Email {
    fn send<'a>(
        &'a self,
        n: &'a RankedNotification,
        address: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            use aws_sdk_ses::types::{Body, Content, Destination, Message};
            if self.config.sender.is_empty() {
                return Err(SendError::permanent(
                    "not_configured",
                    "notify.email.sender is not set: set it to a verified SES identity",
                ));
            }
            let text = |data: String| {
                Content::builder()
                    .data(data)
                    .charset("UTF-8")
                    .build()
                    .map_err(|e| SendError::permanent("invalid", format!("SES content: {e}")))
            };
            let message = Message::builder()
                .subject(text(n.content.title.clone())?)
                .body(Body::builder().text(text(plain_text(n))?).build())
                .build();
            let sent = self
                .client
                .send_email()
                .source(&self.config.sender)
                .destination(Destination::builder().to_addresses(address).build())
                .message(message)
                .set_configuration_set_name(self.config.configuration_set.clone())
                .send()
                .await
                .map_err(|e| classify_aws("SES", "ses:SendEmail", &e, PERMANENT))?;
            Ok(Some(sent.message_id))
        })
    }
}
