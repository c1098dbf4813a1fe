//! The `roam-store.meta` marker: how an embedded data directory is recognised as ours.
//!
//! Layout of a data directory:
//!
//! ```text
//! <dir>/roam-store.meta   format name, schema version, engine, initialized flag
//! <dir>/engine/           the fjall database (`engine/version` is fjall's own marker)
//! ```
//!
//! Opening a directory that holds anything else without the marker, a marker of another
//! format, schema or engine, or an `initialized` marker without its engine directory, is
//! refused with [`StoreError::Refused`]; nothing in the directory is touched.

use crate::StoreError;
use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

pub(crate) const META_FILE: &str = "roam-store.meta";
const META_TMP: &str = "roam-store.meta.tmp";
const ENGINE_DIR: &str = "engine";
/// The file fjall writes first when it creates a database (its format version).
const ENGINE_MARKER: &str = "version";
const FORMAT: &str = "roam-store";
/// The on-disk schema this build reads and writes.
pub(crate) const SCHEMA_VERSION: u32 = 1;
const ENGINE: &str = "fjall-3";

/// A directory checked and claimed for the store.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Where the engine's files live.
    pub(crate) engine_dir: PathBuf,
    /// The engine has not yet been opened successfully here: call [`mark_initialized`]
    /// once it has.
    pub(crate) fresh: bool,
}

/// Checks `dir` (creating it when absent) and returns where to open the engine.
pub(crate) fn prepare(dir: &Path) -> Result<Prepared, StoreError> {
    let refuse = |reason: String| StoreError::Refused {
        path: dir.to_path_buf(),
        reason,
    };
    match fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(refuse("it is not a directory".into())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        Err(e) => return Err(StoreError::io(dir, e)),
    }
    let engine_dir = dir.join(ENGINE_DIR);
    let meta_path = dir.join(META_FILE);
    match fs::read(&meta_path) {
        Ok(bytes) => {
            let initialized =
                parse(&bytes).map_err(|reason| refuse(format!("{META_FILE}: {reason}")))?;
            // fjall treats a directory without its `version` file as new and would write a
            // fresh database over whatever is left: never let it.
            let engine_marker = engine_dir.join(ENGINE_MARKER);
            if initialized && !engine_marker.is_file() {
                return Err(refuse(format!(
                    "{META_FILE} says the store is initialized but {} is missing",
                    engine_marker.display()
                )));
            }
            Ok(Prepared {
                engine_dir,
                fresh: !initialized,
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let foreign = foreign_entries(dir)?;
            if !foreign.is_empty() {
                return Err(refuse(format!(
                    "it is not empty and has no {META_FILE}, so it is not a Roam store \
                     (found: {}); use an empty or new directory",
                    foreign.join(", ")
                )));
            }
            write(dir, false)?;
            Ok(Prepared {
                engine_dir,
                fresh: true,
            })
        }
        Err(e) => Err(StoreError::io(meta_path, e)),
    }
}

/// Records that the engine directory now holds a database.
pub(crate) fn mark_initialized(dir: &Path) -> Result<(), StoreError> {
    write(dir, true)
}

/// Names in `dir` other than our own leftovers (at most a few, for the message).
fn foreign_entries(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != META_TMP {
            names.push(name);
        }
    }
    names.sort();
    if names.len() > 5 {
        let more = names.len() - 5;
        names.truncate(5);
        names.push(format!("and {more} more"));
    }
    Ok(names)
}

/// Parses the marker; returns its `initialized` flag.
fn parse(bytes: &[u8]) -> Result<bool, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let (mut format, mut schema, mut engine, mut initialized) = (None, None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        let slot = match key.trim() {
            "format" => &mut format,
            "schema" => &mut schema,
            "engine" => &mut engine,
            "initialized" => &mut initialized,
            other => return Err(format!("unknown field {other:?}")),
        };
        *slot = Some(value.trim().to_owned());
    }
    match format.as_deref() {
        Some(FORMAT) => {}
        Some(other) => return Err(format!("format is {other:?}, not {FORMAT:?}")),
        None => return Err("no format field".into()),
    }
    let schema: u32 = schema
        .ok_or("no schema field")?
        .parse()
        .map_err(|_| "schema is not a number".to_string())?;
    if schema != SCHEMA_VERSION {
        return Err(format!(
            "schema version {schema} is not supported by this build (it reads version {SCHEMA_VERSION})"
        ));
    }
    match engine.as_deref() {
        Some(ENGINE) => {}
        other => return Err(format!("engine is {other:?}, this build runs {ENGINE:?}")),
    }
    match initialized.as_deref() {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        other => Err(format!("initialized is {other:?}, expected true or false")),
    }
}

/// Writes the marker atomically: temporary file, fsync, rename, fsync of the directory.
fn write(dir: &Path, initialized: bool) -> Result<(), StoreError> {
    let text = format!(
        "# Roam store data directory: do not edit or delete.\n\
         format = {FORMAT}\nschema = {SCHEMA_VERSION}\nengine = {ENGINE}\ninitialized = {initialized}\n"
    );
    let tmp = dir.join(META_TMP);
    let mut file = fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| StoreError::io(&tmp, e))?;
    let path = dir.join(META_FILE);
    fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_is_claimed_then_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new");
        let p = prepare(&dir).unwrap();
        assert!(p.fresh);
        assert_eq!(p.engine_dir, dir.join(ENGINE_DIR));
        // Crash before the engine existed: the directory is still ours and still fresh.
        assert!(prepare(&dir).unwrap().fresh);
        fs::create_dir(&p.engine_dir).unwrap();
        fs::write(p.engine_dir.join(ENGINE_MARKER), b"").unwrap();
        mark_initialized(&dir).unwrap();
        assert!(!prepare(&dir).unwrap().fresh);
    }

    #[test]
    fn foreign_contents_are_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("photo.jpg"), b"not a store").unwrap();
        let err = prepare(tmp.path()).unwrap_err();
        assert!(err.is_refused(), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("photo.jpg") && msg.contains(&tmp.path().display().to_string()));
        assert!(!tmp.path().join(META_FILE).exists());
        assert_eq!(
            fs::read(tmp.path().join("photo.jpg")).unwrap(),
            b"not a store"
        );
    }

    #[test]
    fn bad_markers_are_refused_with_the_fault() {
        for (text, needle) in [
            (
                "format = postgres\nschema = 1\nengine = fjall-3\ninitialized = true\n",
                "format",
            ),
            (
                "format = roam-store\nschema = 9\nengine = fjall-3\ninitialized = true\n",
                "schema version 9",
            ),
            (
                "format = roam-store\nschema = 1\nengine = rocks\ninitialized = true\n",
                "engine",
            ),
            ("\u{0}\u{1}garbage", "malformed"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            fs::write(tmp.path().join(META_FILE), text).unwrap();
            let err = prepare(tmp.path()).unwrap_err();
            assert!(
                err.is_refused() && err.to_string().contains(needle),
                "{err}"
            );
        }
    }

    #[test]
    fn an_initialized_marker_without_engine_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), true).unwrap();
        let err = prepare(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(
            prepare(&file)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }
}
