//! Secrets kept as hex in a file of the data directory (the token secret, the API key):
//! generated once (random, owner-only), then read by every process on that directory.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
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
    /// The file may be read by other users than its owner.
    #[error(
        "secret file {path} is readable by group or others (mode {mode:o}): `chmod 600 {path}` (or delete it to generate a new secret)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// The secret in `path`: read if the file exists, otherwise `len` random bytes written there
/// as hex (mode 0600).
///
/// A new secret is written whole to a temporary file beside `path`, synced, then moved into
/// place without replacing anything (`renameat2(RENAME_NOREPLACE)` or a hard link), and the
/// directory is synced: a reader never sees half a secret, two processes starting at once
/// end up with the same one (the loser of the race reads the winner's), and after a power
/// loss the secret is either there whole or not at all. An existing file readable by group
/// or others is refused ([`SecretFileError::Exposed`]).
pub fn load_or_create(path: &Path, len: usize) -> Result<Vec<u8>, SecretFileError> {
    let io_err = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    match load(path, len) {
        Err(SecretFileError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        loaded => return loaded,
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_err)?;
    let mut key = vec![0u8; len];
    rand::fill(&mut key[..]);
    // `tempfile` creates the file with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".secret-")
        .tempfile_in(dir)
        .map_err(io_err)?;
    tmp.write_all(format!("{}\n", hex::encode(&key)).as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err)?;
            Ok(key)
        }
        // Another process created it first: use theirs (the temporary file is removed).
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => load(path, len),
        Err(e) => Err(io_err(e.error)),
    }
}

fn load(path: &Path, min_bytes: usize) -> Result<Vec<u8>, SecretFileError> {
    let io_err = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    let text = io::read_to_string(file).map_err(io_err)?;
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
    use std::sync::{Arc, Barrier};

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
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create(&path, 32).unwrap_err();
            assert!(matches!(err, SecretFileError::Malformed { .. }), "{err}");
            assert_eq!(fs::read_to_string(&path).unwrap(), bad, "left untouched");
        }
    }

    #[test]
    fn an_existing_secret_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let key = load_or_create(&path, 32).unwrap();
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = load_or_create(&path, 32).unwrap_err();
            assert!(matches!(err, SecretFileError::Exposed { .. }), "{err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(
            load_or_create(&path, 32).unwrap(),
            key,
            "owner-only is fine"
        );
    }

    /// Many processes starting at once on one data directory: every one gets the same
    /// secret, none sees a half-written file, and no temporary file is left behind.
    #[test]
    fn racing_creators_all_read_one_whole_secret() {
        const RACERS: usize = 8;
        for round in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let path = Arc::new(dir.path().join(format!("secret-{round}")));
            let start = Arc::new(Barrier::new(RACERS));
            let keys: Vec<_> = (0..RACERS)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        load_or_create(&path, 32)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect();
            let first = keys[0]
                .as_ref()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            for k in &keys {
                let k = k.as_ref().unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(k, first, "round {round}: one secret for everyone");
            }
            let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(names.len(), 1, "round {round}: no temporary file left");
        }
    }
}
