//! Secrets kept as hex in a file of the data directory (the token secret, the API key):
//! generated once (random, owner-only), then read by every process on that directory.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a secret file could not be used.
#[derive(Debug, Error)]
pub enum SecretFileError {
    /// The file could not be read or created.
    #[error("cannot use secret file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is too short or not hex.
    #[error("secret file {path} is malformed: expected at least {min_bytes} bytes as hex")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The minimum length.
        min_bytes: usize,
    },
}

/// The secret in `path`: read if the file exists, otherwise `len` random bytes written there
/// as hex (mode 0600). Safe when several processes start at once: one creates it, the
/// others read it.
pub fn load_or_create(path: &Path, len: usize) -> Result<Vec<u8>, SecretFileError> {
    let io_err = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut key = vec![0u8; len];
    rand::fill(&mut key[..]);
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(format!("{}\n", hex::encode(&key)).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => load(path, len),
        Err(e) => Err(io_err(e)),
    }
}

fn load(path: &Path, min_bytes: usize) -> Result<Vec<u8>, SecretFileError> {
    let text = fs::read_to_string(path).map_err(|source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    match hex::decode(text.trim()) {
        Ok(key) if key.len() >= min_bytes => Ok(key),
        _ => Err(SecretFileError::Malformed {
            path: path.to_owned(),
            min_bytes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_shared_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("secret");
        let a = load_or_create(&path, 32).unwrap();
        let b = load_or_create(&path, 32).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_malformed_file_is_an_error_not_a_new_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for bad in ["short\n", "zz".repeat(40).as_str()] {
            fs::write(&path, bad).unwrap();
            let err = load_or_create(&path, 32).unwrap_err();
            assert!(matches!(err, SecretFileError::Malformed { .. }), "{err}");
            assert_eq!(fs::read_to_string(&path).unwrap(), bad, "left untouched");
        }
    }
}
