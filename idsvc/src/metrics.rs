//! Prometheus metrics of the ID service, registered under the `roam_ids` prefix.
//!
//! Events (segment loads and their failures, clock waits and errors, time-based IDs issued)
//! are counters updated where they happen. Segment IDs issued and buffer remaining are read
//! from each tag's buffers at scrape time by a collector, so the hot path never touches a
//! shared metric.

use crate::segment::TagCell;
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

/// The `tag` label of segment metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TagLabel {
    /// The business tag.
    pub tag: String,
}

/// The `generator` label of time-based ID metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GeneratorLabel {
    /// `snowflake` or `sonyflake`.
    pub generator: &'static str,
}

/// The ID service's metrics (cheap to clone: every field is a shared handle).
#[derive(Debug, Clone, Default)]
pub struct IdMetrics {
    /// Segments taken from the store, by tag.
    pub segment_loads: Family<TagLabel, Counter>,
    /// Segment loads that failed (store error or timeout), by tag.
    pub segment_load_failures: Family<TagLabel, Counter>,
    /// Requests that found both buffers empty and waited for a load (0 in steady state:
    /// a rising count means the step is too small or the store too slow for the tag).
    pub segment_waits: Family<TagLabel, Counter>,
    /// Time-based IDs issued, by generator.
    pub flake_issued: Family<GeneratorLabel, Counter>,
    /// Requests that waited for the clock to catch up after it stepped back (within the
    /// tolerance), by generator.
    pub clock_rollback_waits: Family<GeneratorLabel, Counter>,
    /// Requests refused because the clock stepped back further than the tolerance, by
    /// generator.
    pub clock_rollback_errors: Family<GeneratorLabel, Counter>,
    /// Lease renewals that failed, by generator.
    pub lease_renewal_failures: Family<GeneratorLabel, Counter>,
    live: LiveTags,
}

impl IdMetrics {
    /// Creates the metrics and registers them in `registry` under `roam_ids_`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = IdMetrics::default();
        let r = registry.sub_registry_with_prefix("roam_ids");
        r.register(
            "segment_loads",
            "Segments taken from the store, by tag",
            m.segment_loads.clone(),
        );
        r.register(
            "segment_load_failures",
            "Segment loads that failed (store error or timeout), by tag",
            m.segment_load_failures.clone(),
        );
        r.register(
            "segment_waits",
            "Requests that waited for a segment load (both buffers empty), by tag",
            m.segment_waits.clone(),
        );
        r.register(
            "flake_issued",
            "Snowflake/Sonyflake IDs issued, by generator",
            m.flake_issued.clone(),
        );
        r.register(
            "clock_rollback_waits",
            "Requests that waited out a small clock step back, by generator",
            m.clock_rollback_waits.clone(),
        );
        r.register(
            "clock_rollback_errors",
            "Requests refused because the clock stepped back beyond the tolerance",
            m.clock_rollback_errors.clone(),
        );
        r.register(
            "lease_renewal_failures",
            "Worker lease renewals that failed, by generator",
            m.lease_renewal_failures.clone(),
        );
        r.register_collector(Box::new(m.live.clone()));
        m
    }

    /// Includes a tag's buffers in the scrape-time figures.
    pub(crate) fn track(&self, cell: &Arc<TagCell>) {
        self.live.0.write().push(Arc::downgrade(cell));
    }
}

/// The tags whose buffers the collector reads (weak: a dropped allocator's tags vanish).
#[derive(Debug, Clone, Default)]
struct LiveTags(Arc<RwLock<Vec<Weak<TagCell>>>>);

impl Collector for LiveTags {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        // Summed by tag: several allocators (tests, or a restart in one process) may share
        // one registry.
        let mut by_tag: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        {
            let mut live = self.0.write();
            live.retain(|w| w.strong_count() > 0);
            for cell in live.iter().filter_map(Weak::upgrade) {
                let s = cell.state();
                let remaining = s.remaining + s.next.map_or(0, |n| n.len());
                let e = by_tag.entry(s.tag).or_default();
                e.0 += s.issued;
                e.1 += remaining;
            }
        }
        let issued = ConstCounter::new(0u64);
        let mut family = enc.encode_descriptor(
            "segment_issued",
            "Segment IDs handed out by this process, by tag",
            None,
            issued.metric_type(),
        )?;
        for (tag, (n, _)) in &by_tag {
            let label = TagLabel { tag: tag.clone() };
            ConstCounter::new(*n).encode(family.encode_family(&label)?)?;
        }
        let gauge = ConstGauge::new(0i64);
        let mut family = enc.encode_descriptor(
            "segment_buffer_remaining",
            "IDs buffered for a tag (current segment left plus the next segment)",
            None,
            gauge.metric_type(),
        )?;
        for (tag, (_, left)) in &by_tag {
            let label = TagLabel { tag: tag.clone() };
            let left = i64::try_from(*left).unwrap_or(i64::MAX);
            ConstGauge::new(left).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}
