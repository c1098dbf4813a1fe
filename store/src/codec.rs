//! Stored values: one schema-version byte, then a tuple (`foundationdb-tuple`), so every
//! layer's values are self-describing, versioned and identical on both backends. Public so
//! that layers in other crates (sessions in core, segments in idsvc) encode the same way.

use crate::StoreError;
use foundationdb_tuple::{TuplePack, TupleUnpack, pack_into, unpack};

/// Encodes `value` as schema `version`.
pub fn encode<T: TuplePack>(version: u8, value: &T) -> Vec<u8> {
    let mut out = vec![version];
    pack_into(value, &mut out);
    out
}

/// Decodes a value stored at `key` by [`encode`] with schema `version`.
pub fn decode<'de, T: TupleUnpack<'de>>(
    key: &[u8],
    stored: &'de [u8],
    version: u8,
) -> Result<T, StoreError> {
    match stored.split_first() {
        Some((&v, rest)) if v == version => {
            unpack(rest).map_err(|e| StoreError::corrupt(key, format!("malformed value: {e}")))
        }
        Some((&v, _)) => Err(StoreError::corrupt(
            key,
            format!("schema version {v} is not supported (this build reads {version})"),
        )),
        None => Err(StoreError::corrupt(key, "empty value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_fault() {
        let stored = encode(1, &(7u64, "x"));
        assert_eq!(
            decode::<(u64, String)>(b"k", &stored, 1).unwrap(),
            (7, "x".into())
        );
        let err = decode::<(u64, String)>(b"k", &stored, 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("schema version 1"), "{err}");
        let err = decode::<(u64, String)>(b"k", &stored[..3], 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed"), "{err}");
        assert!(decode::<(u64,)>(b"k", &[], 1).is_err());
    }
}
