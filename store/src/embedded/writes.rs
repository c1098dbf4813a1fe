//! A transaction's buffered writes, and how reads see them (read-your-writes).

use crate::tx::add_le;
use bytes::Bytes;
use std::{
    collections::BTreeMap,
    ops::Bound::{Excluded, Included, Unbounded},
};

/// The final buffered mutation of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Set(Bytes),
    Clear,
    /// FoundationDB `ADD` on whatever value the key has at commit time.
    Add(i64),
}

/// Writes of one transaction: per-key mutations plus cleared ranges.
///
/// Invariant: `ops` holds only mutations issued after the last `clear_range` covering their
/// key, and an `Add` never sits on a key covered by `clears` (it is folded into a `Set`
/// there), so a commit applies `clears` first and `ops` second.
#[derive(Debug, Default)]
pub(crate) struct WriteBuffer {
    ops: BTreeMap<Vec<u8>, Op>,
    /// Disjoint `begin -> end` ranges.
    clears: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What a read of one key learns from the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The buffer decides the value.
    Known(Option<Bytes>),
    /// The buffer holds an `ADD` of this delta on the stored value.
    AddTo(i64),
    /// The buffer does not touch the key: read the snapshot.
    Untouched,
}

impl WriteBuffer {
    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.clears.is_empty()
    }

    pub(crate) fn ops(&self) -> &BTreeMap<Vec<u8>, Op> {
        &self.ops
    }

    pub(crate) fn clears(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.clears
            .iter()
            .map(|(b, e)| (b.as_slice(), e.as_slice()))
    }

    /// Number of buffered mutations (keys and cleared ranges).
    pub(crate) fn len(&self) -> usize {
        self.ops.len() + self.clears.len()
    }

    pub(crate) fn set(&mut self, key: &[u8], value: Bytes) {
        self.ops.insert(key.to_vec(), Op::Set(value));
    }

    pub(crate) fn clear(&mut self, key: &[u8]) {
        self.ops.insert(key.to_vec(), Op::Clear);
    }

    pub(crate) fn add(&mut self, key: &[u8], delta: i64) {
        let cleared = self.cleared(key);
        match self.ops.get_mut(key) {
            Some(Op::Set(v)) => *v = Bytes::copy_from_slice(&add_le(Some(v), delta)),
            Some(Op::Add(d)) => *d = d.wrapping_add(delta),
            Some(op @ Op::Clear) => *op = Op::Set(Bytes::copy_from_slice(&add_le(None, delta))),
            None if cleared => {
                let value = Bytes::copy_from_slice(&add_le(None, delta));
                self.ops.insert(key.to_vec(), Op::Set(value));
            }
            None => {
                self.ops.insert(key.to_vec(), Op::Add(delta));
            }
        }
    }

    /// Clears `[begin, end)`; `begin < end`.
    pub(crate) fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        let doomed: Vec<Vec<u8>> = self
            .ops
            .range::<[u8], _>((Included(begin), Excluded(end)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.ops.remove(&k);
        }
        // Merge with every stored range that overlaps or touches [begin, end).
        let mut new_begin = begin.to_vec();
        let mut new_end = end.to_vec();
        let touching: Vec<Vec<u8>> = self
            .clears
            .range::<[u8], _>((Unbounded, Included(end)))
            .rev()
            .take_while(|(_, e)| e.as_slice() >= begin)
            .map(|(b, _)| b.clone())
            .collect();
        for b in touching {
            if let Some(e) = self.clears.remove(&b) {
                new_begin = new_begin.min(b);
                new_end = new_end.max(e);
            }
        }
        self.clears.insert(new_begin, new_end);
    }

    /// True when a buffered `clear_range` covers `key`.
    pub(crate) fn cleared(&self, key: &[u8]) -> bool {
        self.clears
            .range::<[u8], _>((Unbounded, Included(key)))
            .next_back()
            .is_some_and(|(_, end)| key < end.as_slice())
    }

    pub(crate) fn lookup(&self, key: &[u8]) -> Lookup {
        match self.ops.get(key) {
            Some(Op::Set(v)) => Lookup::Known(Some(v.clone())),
            Some(Op::Clear) => Lookup::Known(None),
            Some(Op::Add(d)) => Lookup::AddTo(*d),
            None if self.cleared(key) => Lookup::Known(None),
            None => Lookup::Untouched,
        }
    }

    /// Merges stored pairs of `[begin, end)` (in `reverse` order or not) with the buffer:
    /// the pairs a read of that range sees, at most `limit` of them.
    pub(crate) fn merge_range<E>(
        &self,
        begin: &[u8],
        end: &[u8],
        stored: impl Iterator<Item = Result<(Bytes, Bytes), E>>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, E> {
        let limit = limit.unwrap_or(usize::MAX);
        let bounds = (Included(begin), Excluded(end));
        let mut buffered: Box<dyn Iterator<Item = (&Vec<u8>, &Op)>> = if reverse {
            Box::new(self.ops.range::<[u8], _>(bounds).rev())
        } else {
            Box::new(self.ops.range::<[u8], _>(bounds))
        };
        let mut stored = stored.peekable();
        let mut next_buffered = buffered.next();
        let mut out = Vec::new();
        // `before(a, b)`: a comes first in iteration order.
        let before = |a: &[u8], b: &[u8]| if reverse { a > b } else { a < b };
        loop {
            if out.len() >= limit {
                return Ok(out);
            }
            let stored_key = match stored.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => match stored.next() {
                    Some(Err(e)) => return Err(e),
                    _ => None,
                },
                None => None,
            };
            match (next_buffered, stored_key) {
                (None, None) => return Ok(out),
                (Some((bk, op)), sk) if sk.as_ref().is_none_or(|sk| !before(sk, bk)) => {
                    // The buffer's key comes first, or both sources hold the same key.
                    let base = match sk {
                        Some(sk) if sk.as_ref() == bk.as_slice() => {
                            stored.next().and_then(Result::ok).map(|(_, v)| v)
                        }
                        _ => None,
                    };
                    match op {
                        Op::Set(v) => out.push((Bytes::copy_from_slice(bk), v.clone())),
                        Op::Clear => {}
                        Op::Add(d) => out.push((
                            Bytes::copy_from_slice(bk),
                            Bytes::copy_from_slice(&add_le(base.as_deref(), *d)),
                        )),
                    }
                    next_buffered = buffered.next();
                }
                (_, Some(_)) => {
                    if let Some(Ok((k, v))) = stored.next()
                        && !self.cleared(&k)
                    {
                        out.push((k, v));
                    }
                }
                (Some(_), None) => unreachable!("the guard above takes the buffered key"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn stored(pairs: &[(&str, &str)], reverse: bool) -> Vec<Result<(Bytes, Bytes), Infallible>> {
        let mut v: Vec<_> = pairs.iter().map(|(k, v)| Ok((b(k), b(v)))).collect();
        if reverse {
            v.reverse();
        }
        v
    }

    fn keys(pairs: &[(Bytes, Bytes)]) -> Vec<String> {
        pairs
            .iter()
            .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), v.len()))
            .collect()
    }

    #[test]
    fn clear_ranges_merge_and_drop_covered_ops() {
        let mut w = WriteBuffer::default();
        w.set(b"b", b("1"));
        w.set(b"x", b("1"));
        w.clear_range(b"a", b"c");
        w.clear_range(b"c", b"e"); // touches [a, c): merged
        w.clear_range(b"g", b"h");
        assert_eq!(
            w.clears()
                .map(|(b, e)| (b.to_vec(), e.to_vec()))
                .collect::<Vec<_>>(),
            vec![
                (b"a".to_vec(), b"e".to_vec()),
                (b"g".to_vec(), b"h".to_vec())
            ]
        );
        assert_eq!(w.lookup(b"b"), Lookup::Known(None));
        assert_eq!(w.lookup(b"x"), Lookup::Known(Some(b("1"))));
        assert_eq!(w.lookup(b"e"), Lookup::Untouched);
        w.clear_range(b"0", b"z"); // swallows everything
        assert_eq!(w.clears().count(), 1);
        assert_eq!(w.lookup(b"x"), Lookup::Known(None));
    }

    #[test]
    fn adds_fold_into_sets_where_the_base_is_known() {
        let mut w = WriteBuffer::default();
        w.add(b"n", 2);
        w.add(b"n", 3);
        assert_eq!(w.lookup(b"n"), Lookup::AddTo(5));
        w.set(b"s", Bytes::copy_from_slice(&10i64.to_le_bytes()));
        w.add(b"s", 1);
        assert_eq!(
            w.lookup(b"s"),
            Lookup::Known(Some(Bytes::copy_from_slice(&11i64.to_le_bytes())))
        );
        w.clear_range(b"c", b"d");
        w.add(b"c1", 4);
        assert_eq!(
            w.lookup(b"c1"),
            Lookup::Known(Some(Bytes::copy_from_slice(&4i64.to_le_bytes())))
        );
    }

    #[test]
    fn merge_sees_buffer_over_store_both_directions_with_limit() {
        let mut w = WriteBuffer::default();
        w.set(b"b", b("new"));
        w.clear(b"c");
        w.set(b"e", b("ee"));
        w.clear_range(b"f", b"h");
        let data = [
            ("a", "1"),
            ("b", "22"),
            ("c", "333"),
            ("d", "4"),
            ("g", "5"),
            ("i", "6"),
        ];
        let out = w
            .merge_range(b"a", b"z", stored(&data, false).into_iter(), None, false)
            .unwrap();
        assert_eq!(keys(&out), ["a=1", "b=3", "d=1", "e=2", "i=1"]);
        let out = w
            .merge_range(b"a", b"z", stored(&data, true).into_iter(), Some(3), true)
            .unwrap();
        assert_eq!(keys(&out), ["i=1", "e=2", "d=1"]);
        let out = w
            .merge_range(
                b"c",
                b"f",
                stored(&data[2..4], false).into_iter(),
                None,
                false,
            )
            .unwrap();
        assert_eq!(keys(&out), ["d=1", "e=2"]);
    }

    #[test]
    fn merge_applies_adds_to_stored_values() {
        let mut w = WriteBuffer::default();
        w.add(b"a", 5);
        w.add(b"b", 1);
        let a = 10i64.to_le_bytes();
        let data: Vec<Result<(Bytes, Bytes), Infallible>> =
            vec![Ok((b("a"), Bytes::copy_from_slice(&a)))];
        let out = w
            .merge_range(b"a", b"c", data.into_iter(), None, false)
            .unwrap();
        assert_eq!(out[0].1.as_ref(), 15i64.to_le_bytes());
        assert_eq!(out[1].1.as_ref(), 1i64.to_le_bytes());
    }
}
