//! Conflict detection for the embedded backend, in the manner of FoundationDB's resolvers.
//!
//! Every committed transaction gets a version (1, 2, ...). The resolver remembers, for each
//! key written recently, the version that last wrote it, plus recently cleared ranges. A
//! transaction that started at read version `rv` (it sees every commit `<= rv`) conflicts
//! when something it read was written by a commit `> rv`. History at or below the oldest
//! read version still in use is dropped ([`Resolver::forget_up_to`]).

use std::{
    collections::BTreeMap,
    ops::Bound::{Excluded, Included},
};

/// One read conflict: a single key or the range `[begin, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadConflict {
    Key(Vec<u8>),
    Range(Vec<u8>, Vec<u8>),
}

#[derive(Debug, Default)]
pub(crate) struct Resolver {
    /// Key -> version of the last commit that wrote it.
    keys: BTreeMap<Vec<u8>, u64>,
    /// Cleared ranges `[begin, end)` with the version that cleared them.
    clears: Vec<(Vec<u8>, Vec<u8>, u64)>,
}

impl Resolver {
    /// True when a commit after `read_version` wrote into one of `reads`.
    pub(crate) fn conflicts(&self, read_version: u64, reads: &[ReadConflict]) -> bool {
        reads.iter().any(|read| {
            let (begin, end): (&[u8], Option<&[u8]>) = match read {
                ReadConflict::Key(k) => (k, None),
                ReadConflict::Range(b, e) => (b, Some(e)),
            };
            let written = match end {
                None => self.keys.get(begin).is_some_and(|&v| v > read_version),
                Some(end) => self
                    .keys
                    .range::<[u8], _>((Included(begin), Excluded(end)))
                    .any(|(_, &v)| v > read_version),
            };
            written
                || self.clears.iter().any(|(cb, ce, v)| {
                    *v > read_version
                        && match end {
                            None => cb.as_slice() <= begin && begin < ce.as_slice(),
                            Some(end) => cb.as_slice() < end && begin < ce.as_slice(),
                        }
                })
        })
    }

    /// Records the writes of the commit at `version`.
    pub(crate) fn record<'a>(
        &mut self,
        version: u64,
        keys: impl Iterator<Item = &'a [u8]>,
        clears: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        for k in keys {
            match self.keys.get_mut(k) {
                Some(v) => *v = version,
                None => {
                    self.keys.insert(k.to_vec(), version);
                }
            }
        }
        for (b, e) in clears {
            self.clears.push((b.to_vec(), e.to_vec(), version));
        }
    }

    /// Drops history no live transaction can conflict with: writes at or below `floor`, the
    /// oldest read version in use.
    pub(crate) fn forget_up_to(&mut self, floor: u64) {
        self.keys.retain(|_, v| *v > floor);
        self.clears.retain(|(_, _, v)| *v > floor);
    }

    /// How many entries the history holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len() + self.clears.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> ReadConflict {
        ReadConflict::Key(k.as_bytes().to_vec())
    }

    fn range(b: &str, e: &str) -> ReadConflict {
        ReadConflict::Range(b.as_bytes().to_vec(), e.as_bytes().to_vec())
    }

    fn resolver() -> Resolver {
        let mut r = Resolver::default();
        r.record(5, [b"k".as_slice()].into_iter(), std::iter::empty());
        r.record(
            7,
            std::iter::empty(),
            [(b"m".as_slice(), b"p".as_slice())].into_iter(),
        );
        r
    }

    #[test]
    fn point_and_range_reads_see_later_writes_only() {
        let r = resolver();
        assert!(r.conflicts(4, &[key("k")]));
        assert!(
            !r.conflicts(5, &[key("k")]),
            "the write was visible to the reader"
        );
        assert!(!r.conflicts(4, &[key("j")]));
        assert!(r.conflicts(4, &[range("a", "l")]));
        assert!(!r.conflicts(4, &[range("a", "k")]), "end is exclusive");
        assert!(!r.conflicts(4, &[range("k\0", "l")]));
    }

    #[test]
    fn cleared_ranges_conflict_with_overlapping_reads() {
        let r = resolver();
        assert!(r.conflicts(6, &[key("m")]));
        assert!(r.conflicts(6, &[key("o")]));
        assert!(!r.conflicts(6, &[key("p")]), "clear end is exclusive");
        assert!(r.conflicts(6, &[range("a", "n")]));
        assert!(r.conflicts(6, &[range("o", "z")]));
        assert!(!r.conflicts(6, &[range("p", "z")]));
        assert!(!r.conflicts(6, &[range("a", "m")]));
        assert!(!r.conflicts(7, &[range("a", "z")]));
    }

    #[test]
    fn forgetting_drops_only_old_history() {
        let mut r = resolver();
        r.forget_up_to(5);
        assert_eq!(r.len(), 1);
        assert!(r.conflicts(6, &[key("n")]));
        r.forget_up_to(7);
        assert_eq!(r.len(), 0);
    }
}
