//! The store spec string of the configuration: `embedded:<dir>` or `fdb:<cluster file>`.

use crate::StoreError;
use std::{fmt, path::PathBuf, str::FromStr};

/// Which backend to open, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// The embedded engine in a data directory (created if absent).
    Embedded(PathBuf),
    /// A FoundationDB cluster, by its cluster file (needs the `fdb` cargo feature).
    Fdb(PathBuf),
}

impl FromStr for StoreSpec {
    type Err = StoreError;

    fn from_str(spec: &str) -> Result<Self, StoreError> {
        let invalid = |reason| StoreError::InvalidSpec {
            spec: spec.to_owned(),
            reason,
        };
        let (scheme, rest) = spec.split_once(':').ok_or_else(|| {
            invalid("expected `embedded:<dir>` or `fdb:<cluster file>` (no `:` found)")
        })?;
        if rest.trim().is_empty() {
            return Err(invalid("the path after the `:` is empty"));
        }
        match scheme.trim() {
            "embedded" => Ok(Self::Embedded(PathBuf::from(rest))),
            "fdb" => Ok(Self::Fdb(PathBuf::from(rest))),
            _ => Err(invalid("unknown backend; expected `embedded` or `fdb`")),
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded(dir) => write!(f, "embedded:{}", dir.display()),
            Self::Fdb(file) => write!(f, "fdb:{}", file.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_backends() {
        assert_eq!(
            "embedded:./data/store".parse::<StoreSpec>().unwrap(),
            StoreSpec::Embedded("./data/store".into())
        );
        assert_eq!(
            "fdb:/etc/foundationdb/fdb.cluster"
                .parse::<StoreSpec>()
                .unwrap(),
            StoreSpec::Fdb("/etc/foundationdb/fdb.cluster".into())
        );
        // Only the first `:` separates; the rest is the path.
        assert_eq!(
            "embedded:C:/x".parse::<StoreSpec>().unwrap(),
            StoreSpec::Embedded("C:/x".into())
        );
    }

    #[test]
    fn rejects_malformed_specs_with_a_reason() {
        for (spec, needle) in [
            ("./data", "no `:`"),
            ("embedded:", "empty"),
            ("fdb:  ", "empty"),
            ("rocks:/x", "unknown backend"),
        ] {
            let err = spec.parse::<StoreSpec>().unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains(spec), "{spec}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for spec in ["embedded:/tmp/x", "fdb:/etc/fdb.cluster"] {
            assert_eq!(spec.parse::<StoreSpec>().unwrap().to_string(), spec);
        }
    }
}
