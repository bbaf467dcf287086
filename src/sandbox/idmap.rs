//! User-namespace id mapping for rootless sandboxes.
//!
//! Two shapes: a single-id map (the caller's uid/gid appear as the job's uid/gid, `setgroups` denied), or, when
//! `/etc/subuid`/`/etc/subgid` grant the caller a range and `newuidmap`/`newgidmap` exist, a full map in which
//! the job's id is still the caller (so files written to `--bind ...:rw` belong to the caller) and every other
//! inside id, root included, is a distinct subordinate id. The decision is pure; [`apply`] writes it.

use std::path::Path;
use std::process::{Command, Stdio};

/// One `inside outside count` line of a uid_map or gid_map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How the sandbox's ids are mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMap {
    /// Full ranges, written by the setuid helpers newuidmap/newgidmap.
    Range { uid: Vec<Extent>, gid: Vec<Extent> },
    /// Maps written directly: as root any maps; unprivileged only the caller's own ids, one each, with
    /// setgroups denied (the kernel's rule, and then the sandbox's pid 1 writes them itself).
    Direct {
        uid: Vec<Extent>,
        gid: Vec<Extent>,
        deny_setgroups: bool,
    },
}

impl IdMap {
    /// The caller's own ids as the job's (`inside`), one each, setgroups denied: the map an unprivileged
    /// process may write without help.
    pub fn single(uid: Extent, gid: Extent) -> IdMap {
        IdMap::Direct {
            uid: vec![uid],
            gid: vec![gid],
            deny_setgroups: true,
        }
    }

    /// Whether setuid helpers write this map (pid 1 then waits for them to start before its own work).
    pub fn helpers_first(&self) -> bool {
        matches!(self, IdMap::Range { .. })
    }

    /// Whether the sandbox's pid 1 writes this map itself (its own single ids, as bubblewrap does). The
    /// supervisor's writes to /proc/PID would wait for pid 1 to finish creating its other namespaces.
    pub fn written_by_child(&self) -> bool {
        self.denies_setgroups()
    }

    /// Whether setgroups(2) is denied inside (single-id maps written by an unprivileged caller).
    pub fn denies_setgroups(&self) -> bool {
        matches!(
            self,
            IdMap::Direct {
                deny_setgroups: true,
                ..
            }
        )
    }
}

fn lines(ext: &[Extent]) -> String {
    ext.iter()
        .map(|e| format!("{} {} {}\n", e.inside, e.outside, e.count))
        .collect()
}

/// Mapping failed.
#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{tool} failed: {message}")]
    Helper { tool: &'static str, message: String },
}

/// Finds the caller's subordinate range in an /etc/subuid-format text (by name or numeric id).
pub fn find_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        if Some(who) != name && who != id.to_string() {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse().ok()?);
        (count > 0).then_some((start, count))
    })
}

/// The "keep id" layout: `job` maps to the caller, the rest of 0..=count to the subordinate range.
pub fn keep_id(job: u32, caller: u32, sub: (u32, u32)) -> Vec<Extent> {
    let (start, count) = sub;
    let mut v = Vec::new();
    if job > 0 {
        v.push(Extent {
            inside: 0,
            outside: start,
            count: job.min(count),
        });
    }
    v.push(Extent {
        inside: job,
        outside: caller,
        count: 1,
    });
    if count > job {
        v.push(Extent {
            inside: job + 1,
            outside: start + job,
            count: count - job,
        });
    }
    v
}

/// Where the setuid helper `name` is installed (run by absolute path: no PATH search, no PATH surprises).
/// Also what `jobcell check` reports, so it says exactly what a launch will use.
pub fn helper(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The name of `uid`, as newuidmap will look it up: /etc/passwd first (one read, where nearly every
/// subuid owner is), then the system's name service (LDAP and the like).
pub fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd_name(&passwd, uid).or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// Chooses the mapping for a caller (`host_uid`, `host_gid`, user name) and the job's (`uid`, `gid`).
/// Returns a warning when falling back to a single id although the caller is unprivileged.
pub fn choose(
    host_uid: u32,
    host_gid: u32,
    user: Option<&str>,
    uid: u32,
    gid: u32,
) -> (IdMap, Option<String>) {
    let one = |inside, outside| Extent {
        inside,
        outside,
        count: 1,
    };
    let single = IdMap::single(one(uid, host_uid), one(gid, host_gid));
    if host_uid == 0 {
        return (single, None);
    }
    if helper("newuidmap").is_none() || helper("newgidmap").is_none() {
        return (
            single,
            Some("newuidmap/newgidmap not installed (package uidmap): mapping a single id, so root and the job user are the same inside".into()),
        );
    }
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let subgid = std::fs::read_to_string("/etc/subgid").unwrap_or_default();
    match (find_range(&subuid, user, host_uid), find_range(&subgid, user, host_gid)) {
        (Some(su), Some(sg)) => (
            IdMap::Range {
                uid: keep_id(uid, host_uid, su),
                gid: keep_id(gid, host_gid, sg),
            },
            None,
        ),
        _ => (
            single,
            Some(format!(
                "no range for {} in /etc/subuid and /etc/subgid: mapping a single id (add one with usermod --add-subuids)",
                user.unwrap_or("this user")
            )),
        ),
    }
}

fn write(path: String, data: &str) -> Result<(), IdMapError> {
    std::fs::write(&path, data).map_err(|source| IdMapError::Write { path, source })
}

/// Writes a map that [`IdMap::written_by_child`] says the new user namespace's first process writes to
/// /proc/self; does nothing for the other kinds.
pub fn apply_own(map: &IdMap) -> Result<(), IdMapError> {
    match map {
        IdMap::Direct { uid, gid, .. } if map.written_by_child() => {
            write_direct("self", uid, gid, true)
        }
        _ => Ok(()),
    }
}

/// Writes the mapping for process `pid` (which must still be waiting for it). `helpers_started` runs once
/// the setuid helpers of a range map are running, before they finish; it is not called for direct maps.
pub fn apply(pid: i32, map: &IdMap, helpers_started: &mut dyn FnMut()) -> Result<(), IdMapError> {
    match map {
        IdMap::Direct {
            uid,
            gid,
            deny_setgroups,
        } => write_direct(&pid.to_string(), uid, gid, *deny_setgroups),
        IdMap::Range { uid, gid } => run_helpers(pid, uid, gid, helpers_started),
    }
}

fn write_direct(
    pid: &str,
    uid: &[Extent],
    gid: &[Extent],
    deny_setgroups: bool,
) -> Result<(), IdMapError> {
    if deny_setgroups {
        write(format!("/proc/{pid}/setgroups"), "deny")?;
    }
    write(format!("/proc/{pid}/uid_map"), &lines(uid))?;
    write(format!("/proc/{pid}/gid_map"), &lines(gid))
}

fn run_helpers(
    pid: i32,
    uid: &[Extent],
    gid: &[Extent],
    helpers_started: &mut dyn FnMut(),
) -> Result<(), IdMapError> {
    // Run both helpers at once: they are setuid programs and dominate start-up time when serialised.
    let spawn = |tool: &'static str, ext: &[Extent]| {
        let mut c = Command::new(helper(tool).ok_or(IdMapError::Helper {
            tool,
            message: "not installed (package uidmap)".into(),
        })?);
        c.arg(pid.to_string());
        for e in ext {
            c.args([
                e.inside.to_string(),
                e.outside.to_string(),
                e.count.to_string(),
            ]);
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().map_err(|e| IdMapError::Helper {
            tool,
            message: e.to_string(),
        })
    };
    let u = spawn("newuidmap", uid)?;
    let g = spawn("newgidmap", gid)?;
    helpers_started();
    for (tool, child) in [("newuidmap", u), ("newgidmap", g)] {
        let out = child.wait_with_output().map_err(|e| IdMapError::Helper {
            tool,
            message: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(IdMapError::Helper {
                tool,
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_writes_which_map() {
        let e = Extent {
            inside: 1000,
            outside: 1001,
            count: 1,
        };
        let direct = |deny_setgroups| IdMap::Direct {
            uid: vec![e],
            gid: vec![e],
            deny_setgroups,
        };
        let range = IdMap::Range {
            uid: vec![e],
            gid: vec![e],
        };
        // pid 1 writes its own one-id maps; privileged maps are the supervisor's, ranges the helpers'
        assert!(IdMap::single(e, e).written_by_child());
        assert!(direct(true).written_by_child());
        assert!(!direct(false).written_by_child());
        assert!(!range.written_by_child());
        assert!(range.helpers_first() && !direct(true).helpers_first());
    }

    #[test]
    fn passwd_names_by_uid() {
        let p = "root:x:0:0:root:/root:/bin/bash\n# comment\n\njc:x:1001:1001::/home/jc:/bin/sh\n";
        assert_eq!(passwd_name(p, 1001).as_deref(), Some("jc"));
        assert_eq!(passwd_name(p, 0).as_deref(), Some("root"));
        assert_eq!(passwd_name(p, 1002), None);
        assert_eq!(passwd_name(":x:5:5::/:/bin/sh\n", 5), None);
    }

    #[test]
    fn finds_ranges_by_name_or_id() {
        let t = "alice:100000:65536\n1001:200000:1000\nbad line\n";
        assert_eq!(find_range(t, Some("alice"), 5), Some((100000, 65536)));
        assert_eq!(find_range(t, Some("bob"), 1001), Some((200000, 1000)));
        assert_eq!(find_range(t, Some("carol"), 7), None);
    }

    #[test]
    fn keep_id_maps_job_to_caller_and_root_elsewhere() {
        let m = keep_id(1000, 1001, (100000, 65536));
        assert_eq!(
            m,
            vec![
                Extent {
                    inside: 0,
                    outside: 100000,
                    count: 1000
                },
                Extent {
                    inside: 1000,
                    outside: 1001,
                    count: 1
                },
                Extent {
                    inside: 1001,
                    outside: 101000,
                    count: 64536
                },
            ]
        );
        let root_job = keep_id(0, 1001, (100000, 65536));
        assert_eq!(
            root_job[0],
            Extent {
                inside: 0,
                outside: 1001,
                count: 1
            }
        );
        assert_eq!(
            root_job[1],
            Extent {
                inside: 1,
                outside: 100000,
                count: 65536
            }
        );
    }
}
