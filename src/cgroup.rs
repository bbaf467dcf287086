//! cgroup v2: finding a subtree this user may write, one cgroup per sandbox, limits, figures, cleanup.
//!
//! Layout: `<base>/jobcell/<creator-pid>-<n>` where `<base>` is, in order, `$JOBCELL_CGROUP_PARENT`
//! (or `--cgroup-parent`), the parent of the caller's own cgroup when the caller may write it (the caller sits
//! in a leaf of a delegated directory; cgroup v2 forbids processes in inner nodes), systemd's delegated
//! `user@UID.service`, or the caller's own cgroup as root. Where none is usable the report says
//! `enforced: false` with the reason, and rlimits are the only limits. Stale cgroups of dead supervisors are
//! removed by the next start.

use oci_spec::runtime::LinuxResources;
use serde::Serialize;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What enforces a sandbox's limits (the `limits` object of the outcome).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LimitsReport {
    pub enforced: bool,
    /// `cgroup2` or `rlimit`.
    pub mechanism: String,
    pub reason: Option<String>,
}

/// Figures read from the cgroup when the sandbox ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub oom_killed: Option<bool>,
    pub cpu_usec: Option<u64>,
    pub memory_peak: Option<u64>,
    pub pids_peak: Option<u64>,
}

/// A cgroup problem that stops a launch.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("--require-limits: cgroup limits cannot be enforced here: {0}")]
    Required(String),
    #[error("--cgroup-parent {0}: {1}")]
    Parent(PathBuf, String),
    #[error("cgroup {path}: {what}: {source} ({hint})")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
        hint: &'static str,
    },
}

const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// Where cgroup v2 is mounted, if anywhere: the two usual places (pure v2, and systemd's hybrid layout) are
/// asked with statfs, anything else is found in /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    for p in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if nix::sys::statfs::statfs(p)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        {
            return Some(PathBuf::from(p));
        }
    }
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(pre.split(' ').nth(4)?))
    })
}

/// The caller's cgroup v2 path relative to the mount ("/" for the root).
pub fn own_cgroup() -> Option<String> {
    let s = fs::read_to_string("/proc/self/cgroup").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::").map(|p| p.to_string()))
}

/// Which of the controllers jobcell needs `dir` does not offer.
fn missing_controllers(dir: &Path) -> Vec<&'static str> {
    let have = controllers(dir);
    CONTROLLERS
        .iter()
        .copied()
        .filter(|k| !have.iter().any(|h| h == k))
        .collect()
}

fn writable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn controllers(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Finds a writable cgroup v2 directory with the needed controllers, or says why there is none.
pub fn find_base() -> Result<PathBuf, String> {
    find_base_in(
        std::env::var_os("JOBCELL_CGROUP_PARENT")
            .map(PathBuf::from)
            .as_deref(),
    )
}

/// [`find_base`] with an explicit parent (`--cgroup-parent`), which then is the only candidate.
pub fn find_base_in(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let Some(mnt) = cgroup2_mount() else {
        return Err("no cgroup v2 filesystem is mounted".into());
    };
    let hybrid = mnt != Path::new("/sys/fs/cgroup");
    let missing = missing_controllers(&mnt);
    if !missing.is_empty() {
        return Err(if hybrid {
            format!(
                "cgroup v2 at {} lacks the {} controllers (hybrid v1/v2 host: they are bound to cgroup v1, which jobcell does not use)",
                mnt.display(),
                missing.join(", ")
            )
        } else {
            format!(
                "cgroup v2 at {} lacks the {} controllers",
                mnt.display(),
                missing.join(", ")
            )
        });
    }

    let own = own_cgroup().unwrap_or_else(|| "/".into());
    let own_dir = mnt.join(own.trim_start_matches('/'));
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(if p.starts_with(&mnt) {
            p.to_path_buf()
        } else {
            mnt.join(p.strip_prefix("/").unwrap_or(p))
        });
    } else {
        if nix::unistd::geteuid().is_root() {
            candidates.push(own_dir.clone());
        }
        if let Some(parent) = own_dir.parent().filter(|p| p.starts_with(&mnt)) {
            candidates.push(parent.to_path_buf());
        }
        let uid = nix::unistd::getuid().as_raw();
        let marker = format!("user@{uid}.service");
        if let Some(i) = own.find(&marker) {
            candidates.push(mnt.join(own[..i + marker.len()].trim_start_matches('/')));
        }
    }
    let mut why = Vec::new();
    for c in candidates {
        let missing = missing_controllers(&c);
        if !writable(&c) || !writable(&c.join("cgroup.subtree_control")) {
            why.push(format!(
                "{} is not writable by this user (no delegation)",
                c.display()
            ));
        } else if !missing.is_empty() {
            why.push(format!(
                "{} lacks controllers {} (enable them in its parent's cgroup.subtree_control)",
                c.display(),
                missing.join(",")
            ));
        } else {
            return Ok(c);
        }
    }
    if why.is_empty() {
        why.push(format!("no delegated cgroup found above {} (set JOBCELL_CGROUP_PARENT to a directory delegated to this user)", own_dir.display()));
    }
    Err(why.join("; "))
}

/// One sandbox's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    dir: OwnedFd,
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
    hint: &'static str,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        what,
        source,
        hint,
    }
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let have = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let available = controllers(dir);
    let want: Vec<String> = CONTROLLERS
        .iter()
        .chain(["io"].iter())
        .filter(|c| !have.split_whitespace().any(|h| h == **c) && available.iter().any(|a| a == *c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    fs::write(dir.join("cgroup.subtree_control"), want.join(" ")).map_err(io_err(
        dir,
        "enabling controllers",
        "the directory must hold no processes itself (cgroup v2 no-internal-process rule)",
    ))
}

/// Removes cgroups under `<base>/jobcell` whose creating supervisor is gone.
pub fn remove_stale(jobcell_dir: &Path) {
    let Ok(rd) = fs::read_dir(jobcell_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            == Err(nix::errno::Errno::ESRCH)
        {
            let p = e.path();
            // Processes still inside (a crashed supervisor's sandbox) are killed first.
            let _ = fs::write(p.join("cgroup.kill"), "1");
            remove_dir_retry(&p);
        }
    }
}

fn remove_dir_retry(p: &Path) {
    for i in 0..50 {
        match fs::remove_dir(p) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(if i < 10 {
                1
            } else {
                10
            })),
        }
    }
}

/// Prepares the sandbox cgroup, or reports why limits are not enforced.
/// `name` names the cgroup (OCI containers use their id); by default `<supervisor pid>-<n>`.
pub fn prepare(
    res: Option<&LinuxResources>,
    name: Option<&str>,
    parent: Option<&Path>,
) -> Result<(Option<Cgroup>, LimitsReport), CgroupError> {
    let found = match parent {
        Some(p) => find_base_in(Some(p)),
        None => find_base(),
    };
    let base = match (found, parent) {
        (Ok(b), _) => b,
        // A parent the user named explicitly must work: refuse instead of running without limits.
        (Err(reason), Some(p)) => return Err(CgroupError::Parent(p.to_path_buf(), reason)),
        (Err(reason), None) => {
            return Ok((
                None,
                LimitsReport {
                    enforced: false,
                    mechanism: "rlimit".into(),
                    reason: Some(reason),
                },
            ))
        }
    };
    enable_controllers(&base)?;
    let top = base.join("jobcell");
    match fs::create_dir(&top) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => remove_stale(&top),
        Err(e) => {
            return Err(io_err(
                &top,
                "mkdir",
                "delegate the parent directory to this user",
            )(e))
        }
    }
    enable_controllers(&top)?;
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = match name {
        Some(n) => format!("oci-{n}"),
        None => format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ),
    };
    let path = top.join(name);
    fs::create_dir(&path).map_err(io_err(
        &path,
        "mkdir",
        "delegate the parent directory to this user",
    ))?;
    let dir = nix::fcntl::open(
        &path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io_err(&path, "open", "check permissions")(e.into()))?;
    let cg = Cgroup { path, dir };
    if let Err(e) = cg.apply(res) {
        cg.remove();
        return Err(e);
    }
    Ok((
        Some(cg),
        LimitsReport {
            enforced: true,
            mechanism: "cgroup2".into(),
            reason: None,
        },
    ))
}

impl Cgroup {
    /// Directory fd for clone3's CLONE_INTO_CGROUP.
    pub fn dir_fd(&self) -> i32 {
        self.dir.as_raw_fd()
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, file: &'static str, value: &str) -> Result<(), CgroupError> {
        fs::write(self.path.join(file), value).map_err(io_err(
            &self.path,
            file,
            "the value was refused by the kernel",
        ))
    }

    fn apply(&self, res: Option<&LinuxResources>) -> Result<(), CgroupError> {
        let Some(res) = res else { return Ok(()) };
        if let Some(cpu) = res.cpu() {
            if let Some(q) = cpu.quota() {
                let period = cpu.period().unwrap_or(100_000);
                self.write("cpu.max", &format!("{q} {period}"))?;
            }
        }
        if let Some(mem) = res.memory() {
            if let Some(l) = mem.limit() {
                self.write("memory.max", &l.to_string())?;
                // Swap would let a job exceed its memory quietly; 0 unless the spec asks for more than memory.
                let swap = mem.swap().map(|s| (s - l).max(0)).unwrap_or(0);
                if self.path.join("memory.swap.max").exists() {
                    self.write("memory.swap.max", &swap.to_string())?;
                }
            }
        }
        if let Some(p) = res.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            self.write("pids.max", &v)?;
        }
        if let Some(io) = res.block_io() {
            for t in io.throttle_read_bps_device().as_deref().unwrap_or_default() {
                self.write(
                    "io.max",
                    &format!("{}:{} rbps={}", t.major(), t.minor(), t.rate()),
                )?;
            }
            for t in io
                .throttle_write_bps_device()
                .as_deref()
                .unwrap_or_default()
            {
                self.write(
                    "io.max",
                    &format!("{}:{} wbps={}", t.major(), t.minor(), t.rate()),
                )?;
            }
        }
        Ok(())
    }

    fn read_kv(&self, file: &str, key: &str) -> Option<u64> {
        fs::read_to_string(self.path.join(file))
            .ok()?
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok())?
            })
    }

    fn read_num(&self, file: &str) -> Option<u64> {
        fs::read_to_string(self.path.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Figures for the outcome.
    pub fn stats(&self) -> Stats {
        Stats {
            oom_killed: self.read_kv("memory.events", "oom_kill").map(|n| n > 0),
            cpu_usec: self.read_kv("cpu.stat", "usage_usec"),
            memory_peak: self.read_num("memory.peak"),
            pids_peak: self.read_num("pids.peak"),
        }
    }

    /// Keeps the cgroup (it outlives this process) and returns its path.
    pub fn into_path(self) -> PathBuf {
        self.path
    }

    /// Opens an existing sandbox cgroup (OCI verbs after `create`).
    pub fn open(path: &Path) -> Option<Cgroup> {
        let dir = nix::fcntl::open(
            path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        Some(Cgroup {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// Pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    /// Moves process `pid` into the cgroup (the fallback for kernels without CLONE_INTO_CGROUP).
    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        fs::write(self.path.join("cgroup.procs"), pid.to_string()).map_err(io_err(
            &self.path,
            "cgroup.procs",
            "the caller needs write access to cgroup.procs of the common ancestor",
        ))
    }

    /// Kills anything left and removes the directory.
    pub fn remove(self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        remove_dir_retry(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_reports_a_reason_or_a_writable_base() {
        match find_base() {
            Ok(b) => assert!(writable(&b)),
            Err(reason) => assert!(!reason.is_empty()),
        }
    }
}
