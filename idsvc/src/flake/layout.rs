//! The bit layouts of Snowflake and Sonyflake IDs: encode, decode, and time ↔ tick.
//!
//! ```text
//! Snowflake  0 | 41 bits ms since epoch     | 10 bits worker  | 12 bits sequence
//! Sonyflake  0 | 39 bits 10 ms since epoch  | 8 bits sequence | 16 bits machine
//! ```
//!
//! Both leave the sign bit 0 (IDs fit an `i64`) and use 63 bits, so both pass 2^53 soon after
//! their epoch (Snowflake after 2^31 ms ≈ 24.9 days, Sonyflake after 2^29 ticks ≈ 62 days):
//! the JSON API returns them as strings.

use crate::IdError;
use serde::Serialize;

/// Which time-based generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Generator {
    /// Twitter's layout: ms, 10-bit worker, 12-bit sequence.
    Snowflake,
    /// Sony's layout: 10 ms, 8-bit sequence, 16-bit machine.
    Sonyflake,
}

impl Generator {
    /// `snowflake` or `sonyflake` (metric labels, store keys, API names).
    pub fn name(self) -> &'static str {
        match self {
            Self::Snowflake => "snowflake",
            Self::Sonyflake => "sonyflake",
        }
    }

    /// Parses an API name (empty means Snowflake, as `DecodeRequest.generator` documents).
    pub fn parse(name: &str) -> Result<Self, IdError> {
        match name {
            "" | "snowflake" => Ok(Self::Snowflake),
            "sonyflake" => Ok(Self::Sonyflake),
            other => Err(IdError::invalid(format!(
                "generator {other:?}: expected \"snowflake\" or \"sonyflake\""
            ))),
        }
    }
}

/// A layout with its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    generator: Generator,
    epoch_ms: u64,
    tick_ms: u64,
    time_bits: u32,
    seq_bits: u32,
    worker_bits: u32,
}

/// An ID taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decoded {
    /// Start of the ID's tick, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The worker (Snowflake) or machine (Sonyflake) id.
    pub worker: u32,
    /// The sequence number within the tick.
    pub sequence: u32,
}

/// Why a time has no tick in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TickError {
    /// Before the epoch.
    BeforeEpoch,
    /// After the last tick the time field holds.
    PastEnd,
}

impl Layout {
    /// Snowflake with the given epoch (ms since the Unix epoch).
    pub const fn snowflake(epoch_ms: u64) -> Self {
        Self {
            generator: Generator::Snowflake,
            epoch_ms,
            tick_ms: 1,
            time_bits: 41,
            seq_bits: 12,
            worker_bits: 10,
        }
    }

    /// Sonyflake with the given epoch (ms since the Unix epoch).
    pub const fn sonyflake(epoch_ms: u64) -> Self {
        Self {
            generator: Generator::Sonyflake,
            epoch_ms,
            tick_ms: 10,
            time_bits: 39,
            seq_bits: 8,
            worker_bits: 16,
        }
    }

    /// The layout of `generator`.
    pub const fn of(generator: Generator, epoch_ms: u64) -> Self {
        match generator {
            Generator::Snowflake => Self::snowflake(epoch_ms),
            Generator::Sonyflake => Self::sonyflake(epoch_ms),
        }
    }

    /// Which generator this is.
    pub fn generator(&self) -> Generator {
        self.generator
    }

    /// The largest sequence number.
    pub fn max_seq(&self) -> u32 {
        (1 << self.seq_bits) - 1
    }

    /// The largest worker id.
    pub fn max_worker(&self) -> u32 {
        (1 << self.worker_bits) - 1
    }

    /// The largest tick.
    pub fn max_tick(&self) -> u64 {
        (1 << self.time_bits) - 1
    }

    /// Most IDs one worker can issue per second (4,096,000 for Snowflake, 25,600 for
    /// Sonyflake).
    pub fn ceiling_per_sec(&self) -> u64 {
        (u64::from(self.max_seq()) + 1) * 1000 / self.tick_ms
    }

    /// The tick `now_ms` falls in.
    pub(crate) fn tick_of(&self, now_ms: u64) -> Result<u64, TickError> {
        let since = now_ms
            .checked_sub(self.epoch_ms)
            .ok_or(TickError::BeforeEpoch)?;
        let tick = since / self.tick_ms;
        if tick > self.max_tick() {
            return Err(TickError::PastEnd);
        }
        Ok(tick)
    }

    /// The first ms of `tick`.
    pub(crate) fn ms_of(&self, tick: u64) -> u64 {
        self.epoch_ms + tick * self.tick_ms
    }

    /// The ID of (`tick`, `worker`, `seq`); each is masked to its field.
    pub fn encode(&self, tick: u64, worker: u32, seq: u32) -> u64 {
        let tick = tick & self.max_tick();
        let worker = u64::from(worker & self.max_worker());
        let seq = u64::from(seq & self.max_seq());
        match self.generator {
            Generator::Snowflake => {
                (tick << (self.worker_bits + self.seq_bits)) | (worker << self.seq_bits) | seq
            }
            Generator::Sonyflake => {
                (tick << (self.seq_bits + self.worker_bits)) | (seq << self.worker_bits) | worker
            }
        }
    }

    /// Takes an ID apart; IDs with the sign bit set are not of this layout.
    pub fn decode(&self, id: u64) -> Result<Decoded, IdError> {
        if id >> 63 != 0 {
            return Err(IdError::invalid(format!(
                "{id} is not a {} ID (the sign bit is set)",
                self.generator.name()
            )));
        }
        let (tick, worker, seq) = self.fields(id);
        Ok(Decoded {
            timestamp_ms: self.ms_of(tick),
            worker,
            sequence: seq,
        })
    }

    fn fields(&self, id: u64) -> (u64, u32, u32) {
        let seq_mask = u64::from(self.max_seq());
        let worker_mask = u64::from(self.max_worker());
        // The masks keep both fields within u32.
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        match self.generator {
            Generator::Snowflake => (
                id >> (self.worker_bits + self.seq_bits),
                narrow((id >> self.seq_bits) & worker_mask),
                narrow(id & seq_mask),
            ),
            Generator::Sonyflake => (
                id >> (self.seq_bits + self.worker_bits),
                narrow(id & worker_mask),
                narrow((id >> self.worker_bits) & seq_mask),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: u64 = crate::config::DEFAULT_EPOCH_MS;

    #[test]
    fn fields_sit_where_the_layouts_say() {
        let s = Layout::snowflake(EPOCH);
        assert_eq!(s.encode(1, 0, 0), 1 << 22);
        assert_eq!(s.encode(0, 1, 0), 1 << 12);
        assert_eq!(s.encode(0, 0, 1), 1);
        assert_eq!(
            s.encode(s.max_tick(), s.max_worker(), s.max_seq()),
            i64::MAX as u64
        );
        assert_eq!(s.ceiling_per_sec(), 4_096_000);

        let y = Layout::sonyflake(EPOCH);
        assert_eq!(y.encode(1, 0, 0), 1 << 24);
        assert_eq!(y.encode(0, 0, 1), 1 << 16);
        assert_eq!(y.encode(0, 1, 0), 1);
        assert_eq!(
            y.encode(y.max_tick(), y.max_worker(), y.max_seq()),
            i64::MAX as u64
        );
        assert_eq!(y.ceiling_per_sec(), 25_600);
    }

    #[test]
    fn ticks_and_their_bounds() {
        let y = Layout::sonyflake(EPOCH);
        assert_eq!(y.tick_of(EPOCH + 25), Ok(2));
        assert_eq!(y.ms_of(2), EPOCH + 20);
        assert_eq!(y.tick_of(EPOCH - 1), Err(TickError::BeforeEpoch));
        let last = EPOCH + y.max_tick() * 10;
        assert_eq!(y.tick_of(last), Ok(y.max_tick()));
        assert_eq!(y.tick_of(last + 10), Err(TickError::PastEnd));
        assert!(Layout::snowflake(EPOCH).decode(1 << 63).is_err());
    }

    #[test]
    fn generator_names() {
        assert_eq!(Generator::parse("").unwrap(), Generator::Snowflake);
        assert_eq!(Generator::parse("sonyflake").unwrap(), Generator::Sonyflake);
        assert!(Generator::parse("uuid").is_err());
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(tick: u64, worker: u32, seq: u32, sony: bool) {
            let l = if sony { Layout::sonyflake(EPOCH) } else { Layout::snowflake(EPOCH) };
            let (tick, worker, seq) = (tick & l.max_tick(), worker & l.max_worker(), seq & l.max_seq());
            let id = l.encode(tick, worker, seq);
            prop_assert!(id < 1 << 63);
            prop_assert_eq!(l.fields(id), (tick, worker, seq));
            let d = l.decode(id).unwrap();
            prop_assert_eq!((d.timestamp_ms, d.worker, d.sequence), (l.ms_of(tick), worker, seq));
        }

        #[test]
        fn ids_order_by_time_then_position(a: (u64, u32, u32), b: (u64, u32, u32), sony: bool) {
            let l = if sony { Layout::sonyflake(EPOCH) } else { Layout::snowflake(EPOCH) };
            let norm = |(t, w, s): (u64, u32, u32)| (t & l.max_tick(), w & l.max_worker(), s & l.max_seq());
            let (a, b) = (norm(a), norm(b));
            let (ia, ib) = (l.encode(a.0, a.1, a.2), l.encode(b.0, b.1, b.2));
            // Time dominates; equal fields give equal IDs and distinct fields distinct IDs.
            if a.0 != b.0 {
                prop_assert_eq!(a.0.cmp(&b.0), ia.cmp(&ib));
            }
            prop_assert_eq!(a == b, ia == ib);
        }
    }
}
