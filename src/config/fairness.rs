//! `[fairness]`: how a queue's messages share its handlers between tenants.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Problems;

/// `[fairness]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FairnessConfig {
    /// The part of each standard queue's `max_in_flight` kept as look-ahead: that many of its
    /// messages may wait, received, for their tenant's turn while the rest run. 0 turns
    /// tenant-fair scheduling off (every received message runs at once).
    pub lookahead_percent: u32,
    /// A tenant's weight (tenant id → weight; 1 when not listed): tenants with messages
    /// waiting get turns in proportion to it.
    pub weights: BTreeMap<String, f64>,
}

impl Default for FairnessConfig {
    fn default() -> Self {
        Self {
            lookahead_percent: 20,
            weights: BTreeMap::new(),
        }
    }
}

impl FairnessConfig {
    /// How many of `max_in_flight` messages run at once under fair scheduling (all of them
    /// when it is off or the queue is too small to keep any look-ahead).
    pub fn running(&self, max_in_flight: u32) -> usize {
        let lookahead = (max_in_flight * self.lookahead_percent).div_ceil(100);
        max_in_flight.saturating_sub(lookahead).max(1) as usize
    }

    pub(super) fn validate(&self, problems: &mut Problems) {
        if self.lookahead_percent > 90 {
            problems.bad(
                "fairness.lookahead_percent",
                &self.lookahead_percent,
                "0–90 (the part of max_in_flight that waits for its tenant's turn; 0: off)",
            );
        }
        for (tenant, weight) in &self.weights {
            if !(weight.is_finite() && (0.01..=1000.0).contains(weight)) {
                problems.bad(
                    &format!("fairness.weights.\"{tenant}\""),
                    weight,
                    "a weight from 0.01 to 1000 (1 is everyone's default)",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifth_of_a_queue_waits_its_turn_and_a_small_queue_still_runs() {
        let fairness = FairnessConfig::default();
        assert_eq!(fairness.running(100), 80);
        assert_eq!(fairness.running(10), 8);
        assert_eq!(fairness.running(1), 1);
        let off = FairnessConfig {
            lookahead_percent: 0,
            ..FairnessConfig::default()
        };
        assert_eq!(off.running(100), 100);
    }
}
