//! [`IdsConfig`]: every knob of the ID service, one table of defaults, validated once.

use crate::IdError;
use serde::{Deserialize, Serialize};

/// 2025-01-01T00:00:00Z in milliseconds since the Unix epoch: the default epoch of both
/// time-based layouts.
pub const DEFAULT_EPOCH_MS: u64 = 1_735_689_600_000;

/// The ID service's configuration (the `[ids]` section of the server's TOML). Every field has
/// a default; durations carry their unit in the name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdsConfig {
    /// Most IDs one request may ask for (`count`); at least 10,000 (docs/contract.md §5).
    pub max_count: u32,
    /// Start loading a tag's next segment once this percentage of the current one is used
    /// (Leaf: 10). 1..=100.
    pub prefetch_percent: u8,
    /// Upper bound of the dynamic step (Leaf's `MAX_STEP`). A tag's own step is never above
    /// it. Ten times Leaf's 1,000,000: a tag served in-process at 75 million IDs/s then has
    /// 120 ms (90% of a segment's life) for a load, not 12 ms.
    pub max_step: u64,
    /// A segment that lasted less than this doubles the step (Leaf: 15 minutes).
    pub step_grow_below_ms: u64,
    /// A segment that lasted more than this halves the step, not below the tag's configured
    /// step (Leaf: 30 minutes).
    pub step_shrink_above_ms: u64,
    /// How long a caller may wait for a segment load before getting `Unavailable`; also the
    /// bound of every store call the service makes.
    pub load_timeout_ms: u64,
    /// After a failed segment load, no new load for this long (doubling per further failure,
    /// up to 32 times this); callers with empty buffers get `Unavailable` meanwhile.
    pub load_retry_ms: u64,
    /// Snowflake's epoch, ms since the Unix epoch. Changing it on a running deployment can
    /// reissue IDs: set it once.
    pub snowflake_epoch_ms: u64,
    /// Sonyflake's epoch, ms since the Unix epoch (same warning).
    pub sonyflake_epoch_ms: u64,
    /// A clock step back of at most this many ms is waited out; a larger one fails fast.
    pub max_backward_ms: u64,
    /// A worker lease expires this long after its last renewal.
    pub lease_ttl_ms: u64,
    /// How often the heartbeat renews the leases. Below `reserve_ahead_ms`.
    pub heartbeat_interval_ms: u64,
    /// How far ahead of the clock each renewal reserves timestamps (persisted before any ID
    /// in them is issued). Below `lease_ttl_ms`.
    pub reserve_ahead_ms: u64,
    /// Lease only worker ids below this (default: every id the layout has: 1,024 for
    /// Snowflake, 65,536 for Sonyflake, whichever is smaller applies to each).
    pub max_workers: u32,
}

impl Default for IdsConfig {
    fn default() -> Self {
        Self {
            max_count: 10_000,
            prefetch_percent: 10,
            max_step: 10_000_000,
            step_grow_below_ms: 15 * 60 * 1000,
            step_shrink_above_ms: 30 * 60 * 1000,
            load_timeout_ms: 5_000,
            load_retry_ms: 100,
            snowflake_epoch_ms: DEFAULT_EPOCH_MS,
            sonyflake_epoch_ms: DEFAULT_EPOCH_MS,
            max_backward_ms: 5,
            lease_ttl_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            reserve_ahead_ms: 3_000,
            max_workers: 1 << 16,
        }
    }
}

impl IdsConfig {
    /// Checks the relations between fields; the service refuses to start otherwise.
    pub fn validate(&self) -> Result<(), IdError> {
        let bad = |m: String| Err(IdError::Config(m));
        if self.max_count < 10_000 {
            return bad(format!(
                "ids.max_count = {}: must be at least 10000 (docs/contract.md §5)",
                self.max_count
            ));
        }
        if !(1..=100).contains(&self.prefetch_percent) {
            return bad(format!(
                "ids.prefetch_percent = {}: must be 1..=100",
                self.prefetch_percent
            ));
        }
        if self.max_step == 0 || self.max_step > crate::segment::MAX_SEGMENT_ID / 4 {
            return bad(format!(
                "ids.max_step = {}: must be 1..={}",
                self.max_step,
                crate::segment::MAX_SEGMENT_ID / 4
            ));
        }
        if self.step_grow_below_ms > self.step_shrink_above_ms {
            return bad("ids.step_grow_below_ms must not exceed ids.step_shrink_above_ms".into());
        }
        if self.load_timeout_ms == 0 || self.load_retry_ms == 0 {
            return bad("ids.load_timeout_ms and ids.load_retry_ms must be above 0".into());
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_interval_ms >= self.reserve_ahead_ms
            || self.reserve_ahead_ms >= self.lease_ttl_ms
        {
            return bad(format!(
                "need 0 < ids.heartbeat_interval_ms ({}) < ids.reserve_ahead_ms ({}) < \
                 ids.lease_ttl_ms ({})",
                self.heartbeat_interval_ms, self.reserve_ahead_ms, self.lease_ttl_ms
            ));
        }
        if self.max_workers == 0 {
            return bad("ids.max_workers must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_relations_are_named() {
        IdsConfig::default().validate().unwrap();
        let err = IdsConfig {
            max_count: 100,
            ..IdsConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("max_count"), "{err}");
        let err = IdsConfig {
            reserve_ahead_ms: 20_000,
            ..IdsConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("lease_ttl_ms"), "{err}");
    }

    #[test]
    fn parses_from_toml_shaped_json_with_defaults() {
        let c: IdsConfig = serde_json::from_str(r#"{"max_backward_ms": 7}"#).unwrap();
        assert_eq!(c.max_backward_ms, 7);
        assert_eq!(c.max_count, 10_000);
        assert!(serde_json::from_str::<IdsConfig>(r#"{"nope": 1}"#).is_err());
    }
}
