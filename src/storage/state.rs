//! The state file (`<state_dir>/state.json`, in tmpfs) recording which setup steps have
//! begun and completed, and the lock that serialises setup and teardown. The state
//! file makes setup idempotent and tells teardown and rollback what to undo; it holds
//! no secret.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::StorageConfig;
use super::error::{Step, StorageError};

const STATE_VERSION: u32 = 1;

/// The recorded progress of one setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The resolved device path.
    pub device: String,
    pub mapper_name: String,
    pub mount_point: PathBuf,
    pub header_path: PathBuf,
    pub integrity: bool,
    /// Steps begun, in order (a step is recorded before it runs).
    pub begun: Vec<Step>,
    /// Steps completed, in order.
    pub done: Vec<Step>,
    /// Set once every step has completed.
    pub complete: bool,
}

impl State {
    pub fn new(cfg: &StorageConfig, device: &Path) -> Self {
        State {
            version: STATE_VERSION,
            device: device.to_string_lossy().into_owned(),
            mapper_name: cfg.mapper_name.clone(),
            mount_point: cfg.mount_point.clone(),
            header_path: cfg.header_path(),
            integrity: cfg.integrity,
            begun: Vec::new(),
            done: Vec::new(),
            complete: false,
        }
    }

    /// Reads the state file; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<State>, StorageError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(Step::State, "cannot read", path, e)),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| {
            StorageError::Inconsistent(format!("state file {} is unreadable: {e}", path.display()))
        })?;
        if state.version != STATE_VERSION {
            return Err(StorageError::Inconsistent(format!(
                "state file {} has version {}, expected {STATE_VERSION}",
                path.display(),
                state.version
            )));
        }
        Ok(Some(state))
    }

    /// Writes the state file atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), StorageError> {
        let err = |what: &str, e| StorageError::io(Step::State, what, path, e);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| err("cannot encode", io::Error::other(e)))?;
        let tmp = path.with_extension("json.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err("cannot create", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| err("cannot write", e))?;
        fs::rename(&tmp, path).map_err(|e| err("cannot rename into place", e))
    }

    /// Removes the state file; a missing file is fine.
    pub fn remove(path: &Path) -> Result<bool, StorageError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(Step::State, "cannot remove", path, e)),
        }
    }
}

/// Creates the state directory (mode 0700) if needed.
pub fn ensure_state_dir(dir: &Path) -> Result<(), StorageError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StorageError::io(Step::Preflight, "cannot create state directory", dir, e))
}

/// An exclusive advisory lock on `<state_dir>/lock`, held for the duration of a setup
/// or teardown so that the relay's teardown and a CLI setup do not interleave.
pub struct StateLock {
    _file: File,
}

impl StateLock {
    pub fn acquire(path: &Path) -> Result<StateLock, StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| StorageError::io(Step::State, "cannot open lock file", path, e))?;
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(StorageError::io(Step::State, "cannot lock", path, e));
            }
        }
        // The lock is released when the file is closed (on drop).
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_missing_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        assert_eq!(State::load(&path).expect("load"), None);
        let cfg = StorageConfig {
            state_dir: dir.path().to_path_buf(),
            ..StorageConfig::default()
        };
        let mut s = State::new(&cfg, Path::new("/dev/vdb"));
        s.begun.push(Step::Format);
        s.done.push(Step::Format);
        s.save(&path).expect("save");
        assert_eq!(State::load(&path).expect("load"), Some(s.clone()));
        assert!(State::remove(&path).expect("remove"));
        assert!(!State::remove(&path).expect("remove again"));
    }

    #[test]
    fn garbage_state_is_inconsistent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        fs::write(&path, "{not json").expect("write");
        let e = State::load(&path).expect_err("garbage");
        assert!(matches!(e, StorageError::Inconsistent(_)), "{e}");
    }

    #[test]
    fn lock_can_be_taken_again_after_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        drop(StateLock::acquire(&path).expect("first"));
        let _l = StateLock::acquire(&path).expect("second");
    }
}
