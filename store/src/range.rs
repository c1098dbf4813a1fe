//! Range reads: key selectors, range options and the pairs they return.

use bytes::Bytes;
use foundationdb_tuple::Subspace;

/// The largest key FoundationDB accepts; both backends enforce it.
pub const MAX_KEY_SIZE: usize = 10_000;
/// The largest value FoundationDB accepts; both backends enforce it.
pub const MAX_VALUE_SIZE: usize = 100_000;
/// Keys from here on are FoundationDB's system keys: not writable, and range ends are
/// clamped to it.
pub const KEY_SPACE_END: &[u8] = b"\xff";

/// A key-value pair returned by a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Its value.
    pub value: Bytes,
}

/// One end of a range, as one of FoundationDB's two boundary key selectors.
///
/// A range `[begin, end)` holds the keys `k` with `begin.resolve() <= k < end.resolve()`.
/// The other FoundationDB selectors (`last_less_than`, offsets) are not offered: every layer
/// here reads boundaries, and these two map onto both backends exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySelector {
    key: Vec<u8>,
    after: bool,
}

impl KeySelector {
    /// The first key `>= key`.
    pub fn first_greater_or_equal(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            after: false,
        }
    }

    /// The first key `> key`.
    pub fn first_greater_than(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            after: true,
        }
    }

    /// The boundary as a plain key: `key`, or `key + \x00` (its successor) for
    /// `first_greater_than`.
    pub fn resolve(&self) -> Vec<u8> {
        let mut k = self.key.clone();
        if self.after {
            k.push(0);
        }
        k
    }
}

/// A range read: `[begin, end)`, optionally limited and/or reversed.
///
/// With `reverse`, pairs come from the end of the range backwards, and `limit` keeps the
/// *last* `limit` keys of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeOption {
    /// Start of the range (inclusive once resolved).
    pub begin: KeySelector,
    /// End of the range (exclusive once resolved).
    pub end: KeySelector,
    /// At most this many pairs (`None`: all).
    pub limit: Option<usize>,
    /// Newest-first (descending key) order.
    pub reverse: bool,
}

impl RangeOption {
    /// The range between two selectors, unlimited, ascending.
    pub fn new(begin: KeySelector, end: KeySelector) -> Self {
        Self {
            begin,
            end,
            limit: None,
            reverse: false,
        }
    }

    /// The keys `begin <= k < end`.
    pub fn between(begin: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self::new(
            KeySelector::first_greater_or_equal(begin),
            KeySelector::first_greater_or_equal(end),
        )
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self::between(prefix, strinc(prefix))
    }

    /// Every key inside a tuple subspace (FoundationDB's `subspace.range()`).
    pub fn subspace(subspace: &Subspace) -> Self {
        let (begin, end) = subspace.range();
        Self::between(begin, end)
    }

    /// Return at most `limit` pairs.
    #[must_use]
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Read in descending key order.
    #[must_use]
    pub fn reverse(mut self) -> Self {
        self.reverse = true;
        self
    }

    /// The range as plain `[begin, end)` keys, the end clamped to [`KEY_SPACE_END`].
    pub(crate) fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        let begin = self.begin.resolve();
        let mut end = self.end.resolve();
        if end.as_slice() > KEY_SPACE_END {
            end = KEY_SPACE_END.to_vec();
        }
        (begin, end)
    }
}

/// The first key after every key that starts with `prefix` (FoundationDB's `strinc`);
/// [`KEY_SPACE_END`] when there is none.
pub fn strinc(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xff {
            out.push(last + 1);
            return out;
        }
    }
    KEY_SPACE_END.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strinc_skips_trailing_ff() {
        assert_eq!(strinc(b"ab"), b"ac");
        assert_eq!(strinc(b"a\xff\xff"), b"b");
        assert_eq!(strinc(b"\xff"), KEY_SPACE_END);
        assert_eq!(strinc(b""), KEY_SPACE_END);
    }

    #[test]
    fn selectors_resolve_to_half_open_bounds() {
        let opt = RangeOption::new(
            KeySelector::first_greater_than(b"a".to_vec()),
            KeySelector::first_greater_than(b"c".to_vec()),
        );
        assert_eq!(opt.bounds(), (b"a\0".to_vec(), b"c\0".to_vec()));
        assert_eq!(
            RangeOption::prefix(b"").bounds(),
            (Vec::new(), KEY_SPACE_END.to_vec())
        );
        assert_eq!(
            RangeOption::between(b"a".to_vec(), b"\xff\xff".to_vec())
                .bounds()
                .1,
            KEY_SPACE_END
        );
    }
}
