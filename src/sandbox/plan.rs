//! Turns a [`Spec`] into a flat, ordered list of filesystem operations the sandbox's pid 1 performs.
//!
//! This is the seam between logic and privilege: planning is pure (unit-tested without namespaces), and
//! `child::apply` executes each [`Op`] with one or two syscalls. Paths in an op are relative to the new root
//! (`dst`) or to the host's root (`src` of a bind); the executor prefixes them with its staging directories.

use crate::profile::{ANNOTATION_ROOT, HOST_SYSTEM_DIRS, ROOT_HOST_SYSTEM};
use nix::mount::MsFlags;
use oci_spec::runtime::{Mount, Spec};
use std::path::{Component, Path, PathBuf};

/// Per-mount flags the plan can ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
}

/// One filesystem operation inside the new mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Mount a fresh filesystem (`tmpfs`, `proc`, `devpts`, `mqueue`, `sysfs`) at `dst`.
    Mount {
        fstype: String,
        source: String,
        dst: PathBuf,
        flags: Flags,
        data: String,
    },
    /// Bind the host path `src` at `dst` (mountpoint created to match the source's type).
    Bind {
        src: PathBuf,
        dst: PathBuf,
        recursive: bool,
        flags: Flags,
    },
    /// Create a symlink `link` -> `target`.
    Symlink { target: PathBuf, link: PathBuf },
    /// Create directory `path` (and parents).
    Mkdir { path: PathBuf },
    /// Write a small generated file.
    WriteFile { path: PathBuf, contents: String },
    /// Hide `path`: /dev/null over a file, an empty read-only tmpfs over a directory; absent paths are skipped.
    Mask { path: PathBuf },
    /// Make `path` read-only (bind onto itself, then remount); absent paths are skipped.
    ReadOnly { path: PathBuf },
}

/// Why a spec cannot be planned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("spec has no root")]
    NoRoot,
    #[error("spec has no process")]
    NoProcess,
    #[error("mount {0}: destination must be an absolute path without '..'")]
    BadDestination(String),
    #[error("mount {dst}: unsupported mount type {typ:?}: use bind, tmpfs, proc, sysfs, devpts or mqueue")]
    UnsupportedType { dst: String, typ: String },
    #[error("mount {dst}: unsupported option {opt:?}")]
    UnsupportedOption { dst: String, opt: String },
    #[error("mount {0}: a bind mount needs a source")]
    NoSource(String),
    #[error("linux.rootfsPropagation {0:?}: use private, rprivate, slave, rslave, shared, rshared or unbindable")]
    BadPropagation(String),
    #[error("linux.sysctl {0:?}: only namespaced kernel.*, net.* and fs.mqueue.* keys can be set")]
    BadSysctl(String),
}

/// The root filesystem and everything mounted on it, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsPlan {
    /// `None`: a fresh tmpfs root (host-system view); `Some(dir)`: bind this host directory as the root.
    pub root_dir: Option<PathBuf>,
    pub root_readonly: bool,
    /// Propagation of the new root after pivot_root (OCI `rootfsPropagation`); `None` leaves it private.
    pub root_propagation: Option<MsFlags>,
    pub ops: Vec<Op>,
    /// Host path of the sandbox's cgroup (set by the launcher once it exists): bound where a cgroup2
    /// mount is refused.
    pub cgroup_dir: Option<PathBuf>,
}

fn clean_dst(p: &Path) -> Result<PathBuf, PlanError> {
    let bad = || PlanError::BadDestination(p.display().to_string());
    if !p.is_absolute() {
        return Err(bad());
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    Ok(out)
}

/// Splits OCI mount options into per-mount flags, bind recursion, and filesystem data.
fn parse_options(m: &Mount) -> Result<(Flags, bool, Vec<String>), PlanError> {
    let mut f = Flags::default();
    let mut recursive = false;
    let mut data = Vec::new();
    for o in m.options().as_deref().unwrap_or_default() {
        match o.as_str() {
            "ro" => f.readonly = true,
            "rw" => f.readonly = false,
            "nosuid" => f.nosuid = true,
            "suid" => f.nosuid = false,
            "nodev" => f.nodev = true,
            "dev" => f.nodev = false,
            "noexec" => f.noexec = true,
            "exec" => f.noexec = false,
            "rbind" => recursive = true,
            "bind" => {}
            // Propagation and atime flags: the sandbox's mounts are private, atime is left to the kernel.
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" | "unbindable"
            | "runbindable" | "relatime" | "norelatime" | "strictatime" | "noatime"
            | "nodiratime" | "atime" | "diratime" | "defaults" | "async" => {}
            o if o.contains('=') || matches!(o, "newinstance") => data.push(o.to_string()),
            o => {
                return Err(PlanError::UnsupportedOption {
                    dst: m.destination().display().to_string(),
                    opt: o.to_string(),
                })
            }
        }
    }
    Ok((f, recursive, data))
}

/// Builds the filesystem plan for a spec. `passwd` is the generated /etc content for the host-system root.
pub fn plan_fs(spec: &Spec) -> Result<FsPlan, PlanError> {
    let root = spec.root().as_ref().ok_or(PlanError::NoRoot)?;
    let process = spec.process().as_ref().ok_or(PlanError::NoProcess)?;
    let host_system = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ROOT))
        .is_some_and(|v| v == ROOT_HOST_SYSTEM);
    let mut ops = Vec::new();
    let mut system_binds = Vec::new();
    let own_cgroupns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup)
        });

    if host_system {
        // The host-system view: /usr etc. come from the spec's bind mounts; merged-/usr symlinks are recreated.
        for d in HOST_SYSTEM_DIRS {
            let p = Path::new(d);
            match std::fs::read_link(p) {
                Ok(target) => ops.push(Op::Symlink {
                    target,
                    link: p.to_path_buf(),
                }),
                // EINVAL: a real directory; anything else (ENOENT): absent here, its mount is skipped.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    system_binds.push(p.to_path_buf())
                }
                Err(_) => {}
            }
        }
        ops.extend(generated_etc(
            spec,
            process.user().uid(),
            process.user().gid(),
        ));
    }

    for m in spec.mounts().as_deref().unwrap_or_default() {
        let dst = clean_dst(m.destination())?;
        if host_system
            && HOST_SYSTEM_DIRS.iter().any(|d| Path::new(d) == dst)
            && !system_binds.contains(&dst)
        {
            continue; // a symlink on this host (merged /usr): already recreated above
        }
        let typ = m.typ().as_deref().unwrap_or("bind");
        let (flags, recursive, data) = parse_options(m)?;
        let is_bind = typ == "bind"
            || m.options()
                .as_deref()
                .unwrap_or_default()
                .iter()
                .any(|o| o == "bind" || o == "rbind");
        if is_bind {
            let src = m
                .source()
                .as_ref()
                .ok_or_else(|| PlanError::NoSource(dst.display().to_string()))?;
            ops.push(Op::Bind {
                src: src.clone(),
                dst,
                recursive,
                flags,
            });
            continue;
        }
        let typ = if typ == "cgroup" { "cgroup2" } else { typ };
        match typ {
            "tmpfs" | "proc" | "devpts" | "mqueue" | "sysfs" | "cgroup2" => {}
            other => {
                return Err(PlanError::UnsupportedType {
                    dst: dst.display().to_string(),
                    typ: other.to_string(),
                })
            }
        }
        if typ == "cgroup2" && !own_cgroupns {
            // Without a cgroup namespace a fresh cgroup2 mount is refused in a user namespace; show the
            // host's hierarchy read-only instead (as runc does).
            ops.push(Op::Bind {
                src: PathBuf::from("/sys/fs/cgroup"),
                dst,
                recursive: true,
                flags: Flags {
                    readonly: true,
                    nosuid: true,
                    nodev: true,
                    noexec: true,
                },
            });
            continue;
        }
        let is_dev = typ == "tmpfs" && dst == Path::new("/dev");
        ops.push(Op::Mount {
            fstype: typ.to_string(),
            source: m
                .source()
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_else(|| typ.to_string()),
            dst,
            flags,
            data: data.join(","),
        });
        if is_dev {
            ops.extend(dev_nodes());
        }
    }

    let mut root_propagation = None;
    if let Some(linux) = spec.linux() {
        // Devices: bound from the host (mknod is impossible in a user namespace, and binding works as root too).
        for d in linux.devices().as_deref().unwrap_or_default() {
            let dst = clean_dst(d.path())?;
            ops.push(Op::Bind {
                src: dst.clone(),
                dst,
                recursive: false,
                flags: Flags {
                    nosuid: true,
                    noexec: true,
                    ..Flags::default()
                },
            });
        }
        let mut sysctls: Vec<(&String, &String)> = linux
            .sysctl()
            .as_ref()
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        sysctls.sort();
        for (k, v) in sysctls {
            let namespaced =
                k.starts_with("kernel.") || k.starts_with("net.") || k.starts_with("fs.mqueue.");
            if !namespaced || k.contains("..") || k.contains('/') {
                return Err(PlanError::BadSysctl(k.clone()));
            }
            ops.push(Op::WriteFile {
                path: PathBuf::from("/proc/sys").join(k.replace('.', "/")),
                contents: v.clone(),
            });
        }
        if let Some(p) = linux.rootfs_propagation() {
            root_propagation = Some(match p.as_str() {
                "private" | "rprivate" => MsFlags::MS_PRIVATE,
                "slave" | "rslave" => MsFlags::MS_SLAVE,
                "shared" | "rshared" => MsFlags::MS_SHARED,
                "unbindable" | "runbindable" => MsFlags::MS_UNBINDABLE,
                other => return Err(PlanError::BadPropagation(other.to_string())),
            });
        }
        for p in linux.masked_paths().as_deref().unwrap_or_default() {
            ops.push(Op::Mask {
                path: clean_dst(Path::new(p))?,
            });
        }
        for p in linux.readonly_paths().as_deref().unwrap_or_default() {
            ops.push(Op::ReadOnly {
                path: clean_dst(Path::new(p))?,
            });
        }
    }

    Ok(FsPlan {
        root_dir: if host_system {
            None
        } else {
            Some(root.path().clone())
        },
        root_readonly: root.readonly().unwrap_or(false),
        root_propagation,
        ops,
        cgroup_dir: None,
    })
}

/// The minimal device set of a sandbox: host device nodes bound in (mknod is impossible in a user namespace).
fn dev_nodes() -> Vec<Op> {
    let mut ops: Vec<Op> = ["null", "zero", "full", "random", "urandom", "tty"]
        .iter()
        .map(|d| Op::Bind {
            src: PathBuf::from("/dev").join(d),
            dst: PathBuf::from("/dev").join(d),
            recursive: false,
            // No per-mount flags: nosuid and noexec mean nothing for a device node (only regular files are
            // executed or setuid), and leaving them out saves a mount_setattr per node.
            flags: Flags::default(),
        })
        .collect();
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        ops.push(Op::Symlink {
            target: target.into(),
            link: link.into(),
        });
    }
    ops
}

/// A generated /etc naming only the job user, plus read-only binds of the host's non-secret system config
/// that programs need to run at all (dynamic linker cache, Debian alternatives, CA certificates, time zone).
fn generated_etc(spec: &Spec, uid: u32, gid: u32) -> Vec<Op> {
    let host = spec.hostname().clone().unwrap_or_else(|| "jobcell".into());
    let home = spec
        .process()
        .as_ref()
        .map(|p| p.cwd().display().to_string())
        .unwrap_or_else(|| "/".into());
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    let mut group = String::from("root:x:0:\n");
    if uid != 0 {
        passwd += &format!("job:x:{uid}:{gid}:jobcell job:{home}:/bin/sh\n");
    }
    if gid != 0 {
        group += &format!("job:x:{gid}:\n");
    }
    passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    group += "nogroup:x:65534:\n";
    let mut ops = vec![Op::Mkdir {
        path: "/etc".into(),
    }];
    for (name, contents) in [
        ("passwd", passwd),
        ("group", group),
        ("hostname", format!("{host}\n")),
        (
            "hosts",
            format!("127.0.0.1\tlocalhost {host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n".into(),
        ),
        ("resolv.conf", String::new()),
    ] {
        ops.push(Op::WriteFile {
            path: PathBuf::from("/etc").join(name),
            contents,
        });
    }
    for name in [
        "ld.so.cache",
        "ld.so.conf",
        "ld.so.conf.d",
        "alternatives",
        "ssl",
        "ca-certificates",
        "localtime",
    ] {
        let p = PathBuf::from("/etc").join(name);
        match std::fs::read_link(&p) {
            Ok(target) => ops.push(Op::Symlink { target, link: p }),
            // EINVAL: it exists and is not a symlink (one syscall instead of readlink plus stat).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => ops.push(Op::Bind {
                src: p.clone(),
                dst: p,
                recursive: false,
                flags: Flags {
                    readonly: true,
                    nosuid: true,
                    nodev: true,
                    noexec: false,
                },
            }),
            Err(_) => {}
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{build, RunRequest};

    fn default_plan(extra: impl FnOnce(&mut RunRequest)) -> FsPlan {
        let mut r = RunRequest {
            args: vec!["/bin/true".into()],
            ..Default::default()
        };
        extra(&mut r);
        let (spec, _) = build(&r).unwrap();
        plan_fs(&spec).unwrap()
    }

    #[test]
    fn host_system_root_is_tmpfs_with_readonly_system_dirs() {
        let p = default_plan(|_| {});
        assert_eq!(p.root_dir, None);
        assert!(p.root_readonly);
        let usr = p
            .ops
            .iter()
            .find(|o| matches!(o, Op::Bind { dst, .. } if dst == Path::new("/usr")))
            .unwrap();
        assert!(
            matches!(usr, Op::Bind { flags, recursive: true, .. } if flags.readonly && flags.nosuid && flags.nodev)
        );
        // nothing of the host but system dirs, /etc config and device nodes is bound
        for op in &p.ops {
            if let Op::Bind { src, .. } = op {
                let s = src.to_string_lossy();
                assert!(
                    s.starts_with("/usr")
                        || s.starts_with("/etc/")
                        || s.starts_with("/dev/")
                        || HOST_SYSTEM_DIRS.contains(&s.as_ref()),
                    "unexpected bind of {s}"
                );
            }
        }
        assert!(p.ops.iter().any(|o| matches!(o, Op::WriteFile { path, contents } if path == Path::new("/etc/passwd") && contents.contains("job:x:1000:1000"))));
    }

    #[test]
    fn masks_come_after_proc_and_readonly_paths_last() {
        let p = default_plan(|_| {});
        let pos = |f: &dyn Fn(&Op) -> bool| p.ops.iter().position(f).unwrap();
        let proc_ = pos(&|o| matches!(o, Op::Mount { fstype, .. } if fstype == "proc"));
        let kcore = pos(&|o| matches!(o, Op::Mask { path } if path == Path::new("/proc/kcore")));
        let sys = pos(&|o| matches!(o, Op::ReadOnly { path } if path == Path::new("/proc/sys")));
        assert!(proc_ < kcore && kcore < sys);
    }

    #[test]
    fn binds_default_to_readonly() {
        let p = default_plan(|r| r.binds = vec!["/tmp:/data".into(), "/tmp:/out:rw".into()]);
        let find = |d: &str| {
            p.ops.iter().find_map(|o| match o {
                Op::Bind { dst, flags, .. } if dst == Path::new(d) => Some(*flags),
                _ => None,
            })
        };
        assert!(find("/data").unwrap().readonly);
        assert!(!find("/out").unwrap().readonly);
    }

    #[test]
    fn rejects_escaping_destinations_and_unknown_types() {
        let (mut spec, _) = build(&RunRequest {
            args: vec!["x".into()],
            ..Default::default()
        })
        .unwrap();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination("/a/../../etc")
                .typ("tmpfs")
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts.clone()));
        assert!(matches!(plan_fs(&spec), Err(PlanError::BadDestination(_))));
        mounts.pop();
        mounts.push(
            oci_spec::runtime::MountBuilder::default()
                .destination("/x")
                .typ("nfs")
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        assert!(matches!(
            plan_fs(&spec),
            Err(PlanError::UnsupportedType { .. })
        ));
    }
}
