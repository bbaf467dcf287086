//! The OCI runtime state directory: one directory per container under `--root`, guarded by a lock.
//!
//! `<root>/<id>/` holds `state.json` (what `jobcell state` reports plus what later verbs need), `config.json`
//! (the spec the container was created from, for hooks) and `exec.fifo` while the container is `created`.
//! Every verb takes an exclusive `flock` on the container directory, so concurrent invocations on one id
//! serialise; ids are validated so they can never name a path outside the root.

use nix::fcntl::{Flock, FlockArg};
use oci_spec::runtime::{ContainerState, Spec};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A state-directory problem; each message is one line for the CLI.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id {0:?}: use 1-1024 characters from [A-Za-z0-9_.+-], not starting with '.' or '-'")]
    BadId(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    Exists(String),
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state of container {id:?} is corrupt: {message}")]
    Corrupt { id: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a container id: no path separators, no leading dot or dash, bounded length.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// Default `--root`: `/run/jobcell` as root, `$XDG_RUNTIME_DIR/jobcell` rootless (or `/tmp/jobcell-<uid>`).
pub fn default_root() -> PathBuf {
    // Root of the initial user namespace only: euid 0 inside a user namespace (rootless podman) is not.
    let initial_ns = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false);
    if nix::unistd::geteuid().is_root()
        && (initial_ns || std::env::var_os("XDG_RUNTIME_DIR").is_none())
    {
        return PathBuf::from("/run/jobcell");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("jobcell"),
        _ => PathBuf::from(format!("/tmp/jobcell-{}", nix::unistd::geteuid())),
    }
}

/// What jobcell remembers about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub oci_version: String,
    pub id: String,
    /// Host pid of the container's process (pid 1 of its pid namespace).
    pub pid: i32,
    /// Start time of `pid` (field 22 of /proc/PID/stat), so a recycled pid is never mistaken for ours.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub annotations: HashMap<String, String>,
    pub created: String,
    pub cgroup: Option<PathBuf>,
    /// Set once `start` has released the container process.
    pub started: bool,
}

/// A locked container directory.
pub struct Container {
    pub dir: PathBuf,
    pub id: String,
    _lock: Flock<fs::File>,
}

fn lock_dir(dir: &Path) -> Result<Flock<fs::File>, StateError> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(io(dir))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| StateError::Io {
        path: dir.to_path_buf(),
        source: e.into(),
    })
}

/// Reads the start time of a process, or `None` when it does not exist.
pub fn pid_start_time(pid: i32) -> Option<u64> {
    proc_stat(pid).map(|(_, start)| start)
}

/// State letter and start time (clock ticks after boot) of `pid`, from one read of /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let state = rest.chars().next()?;
    Some((state, rest.split(' ').nth(19)?.parse().ok()?))
}

impl Container {
    /// Creates and locks the directory of a new container; fails if the id is taken.
    pub fn create(root: &Path, id: &str) -> Result<Container, StateError> {
        validate_id(id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io(root))?;
        let dir = root.join(id);
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.into()))
            }
            Err(e) => return Err(io(&dir)(e)),
        }
        let lock = lock_dir(&dir)?;
        Ok(Container {
            dir,
            id: id.to_string(),
            _lock: lock,
        })
    }

    /// Locks the directory of an existing container.
    pub fn open(root: &Path, id: &str) -> Result<Container, StateError> {
        validate_id(id)?;
        let dir = root.join(id);
        let lock = match lock_dir(&dir) {
            Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.into()))
            }
            other => other?,
        };
        // It may have been deleted while we waited for the lock.
        if !dir.join("state.json").exists() {
            return Err(StateError::NotFound(id.into()));
        }
        Ok(Container {
            dir,
            id: id.to_string(),
            _lock: lock,
        })
    }

    pub fn fifo_path(&self) -> PathBuf {
        self.dir.join("exec.fifo")
    }

    /// Writes `state.json` atomically (temp file + rename).
    pub fn save(&self, r: &Record) -> Result<(), StateError> {
        let tmp = self.dir.join("state.json.tmp");
        let data = serde_json::to_vec(r).map_err(|e| StateError::Corrupt {
            id: self.id.clone(),
            message: e.to_string(),
        })?;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &data))
            .map_err(io(&tmp))?;
        fs::rename(&tmp, self.dir.join("state.json")).map_err(io(&self.dir))
    }

    pub fn load(&self) -> Result<Record, StateError> {
        let p = self.dir.join("state.json");
        let data = fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&data).map_err(|e| StateError::Corrupt {
            id: self.id.clone(),
            message: e.to_string(),
        })
    }

    pub fn save_spec(&self, spec: &Spec) -> Result<(), StateError> {
        spec.save(self.dir.join("config.json"))
            .map_err(|e| StateError::Corrupt {
                id: self.id.clone(),
                message: e.to_string(),
            })
    }

    pub fn load_spec(&self) -> Result<Spec, StateError> {
        Spec::load(self.dir.join("config.json")).map_err(|e| StateError::Corrupt {
            id: self.id.clone(),
            message: e.to_string(),
        })
    }

    /// Removes the container directory (the lock dies with the struct).
    pub fn destroy(self) -> Result<(), StateError> {
        fs::remove_dir_all(&self.dir).map_err(io(&self.dir))
    }
}

impl Record {
    /// Whether the recorded process still exists (and is the same process).
    pub fn alive(&self) -> bool {
        // The same process (not a reused pid), and not a zombie.
        self.pid > 0
            && proc_stat(self.pid)
                .is_some_and(|(state, start)| start == self.pid_start && state != 'Z')
    }

    /// created (waiting on the exec FIFO), running, or stopped.
    pub fn status(&self) -> ContainerState {
        if !self.alive() {
            ContainerState::Stopped
        } else if self.started {
            ContainerState::Running
        } else {
            ContainerState::Created
        }
    }
}

/// Lists the ids under `root`.
pub fn list(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| validate_id(n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "web-1", "x.y_z+1", "A9"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "../x", "a/b", "-a", ".hidden", "a b", "a\0b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn create_is_exclusive_and_open_needs_state() {
        let d = tempfile::tempdir().unwrap();
        let c = Container::create(d.path(), "c1").unwrap();
        assert!(matches!(
            Container::create(d.path(), "c1"),
            Err(StateError::Exists(_))
        ));
        assert!(matches!(
            Container::open(d.path(), "nope"),
            Err(StateError::NotFound(_))
        ));
        let r = Record {
            oci_version: "1.0.2".into(),
            id: "c1".into(),
            pid: std::process::id() as i32,
            pid_start: pid_start_time(std::process::id() as i32).unwrap(),
            bundle: "/b".into(),
            annotations: HashMap::new(),
            created: "now".into(),
            cgroup: None,
            started: false,
        };
        c.save(&r).unwrap();
        assert_eq!(c.load().unwrap().status(), ContainerState::Created);
        drop(c);
        let c = Container::open(d.path(), "c1").unwrap();
        let mut r = c.load().unwrap();
        r.started = true;
        assert_eq!(r.status(), ContainerState::Running);
        r.pid_start += 1; // a recycled pid
        assert_eq!(r.status(), ContainerState::Stopped);
        c.destroy().unwrap();
        assert!(list(d.path()).is_empty());
    }
}
