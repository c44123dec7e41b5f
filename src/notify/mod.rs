//! The notification system: intake, ranking and delivery as stages of this daemon — preferences,
//! scores, rate-limit buckets, providers, the delivery record and the outbox to the next stage.
//! Its two wire contracts, NotificationEvent v1 and RankedNotification v1, live with the other
//! contracts in `contract/`, below config.

pub mod binding;
pub mod bucket;
pub mod deliver;
pub mod deliveries;
pub mod drop;
pub mod drop_ranges;
pub mod outbox;
pub mod pack;
pub mod prefs;
pub mod rank;
pub mod score;
