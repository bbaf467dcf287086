//! Job profiles and `jobcell run` flags, compiled into the one sandbox model: an OCI runtime-spec [`Spec`].
//!
//! A profile (`profiles/*.toml`) is a preset; flags override it field by field. The result is a `Spec` plus the
//! few launch settings the runtime-spec has no field for ([`LaunchOptions`]). Nothing here touches the system
//! beyond reading the profile and seccomp files, so every bad input is reported before a sandbox exists.

use crate::seccomp;
use crate::units::{self, UnitError};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Annotation that marks a spec whose root is the generated read-only host-system view.
pub const ANNOTATION_ROOT: &str = "run.jobcell.root";
/// Value of [`ANNOTATION_ROOT`] for the host-system view.
pub const ROOT_HOST_SYSTEM: &str = "host-system";
/// Host directories that make up the default root filesystem (bound read-only, or recreated as symlinks).
pub const HOST_SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// Default PATH inside a sandbox.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("default", include_str!("../profiles/default.toml")),
    ("strict", include_str!("../profiles/strict.toml")),
];

/// A bad profile, flag or file; the message is one line naming the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile {0:?} not found: use a name from profiles/ (default, strict) or a path to a .toml file")]
    NotFound(String),
    #[error("cannot read profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid profile {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field}: {source}")]
    Unit { field: String, source: UnitError },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("cannot build the sandbox spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

/// A profile file: every field optional, layered over the built-in `default` profile.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub user: Option<String>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub pids: Option<i64>,
    pub tmpfs_size: Option<String>,
    pub network: Option<String>,
    pub seccomp: Option<String>,
    pub read_only_root: Option<bool>,
    pub hostname: Option<String>,
    pub nofile: Option<u64>,
    pub max_file_size: Option<String>,
    pub timeout: Option<String>,
    pub require_limits: Option<bool>,
}

impl Profile {
    fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        toml::from_str(text).map_err(|e| {
            // Name the field and line the error points at; toml's message alone may not.
            let at = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
            let line_no = text[..at].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("");
            let field = line.split('=').next().unwrap_or("").trim();
            let message = e.message().trim().to_string();
            let message = if field.is_empty() || message.contains(field) {
                format!("{message} (line {line_no})")
            } else {
                format!("field `{field}`: {message} (line {line_no})")
            };
            ProfileError::Parse {
                path: origin.to_string(),
                message,
            }
        })
    }

    /// Fields of `over` win over fields of `self`.
    fn layer(self, over: Profile) -> Profile {
        Profile {
            user: over.user.or(self.user),
            cpus: over.cpus.or(self.cpus),
            memory: over.memory.or(self.memory),
            pids: over.pids.or(self.pids),
            tmpfs_size: over.tmpfs_size.or(self.tmpfs_size),
            network: over.network.or(self.network),
            seccomp: over.seccomp.or(self.seccomp),
            read_only_root: over.read_only_root.or(self.read_only_root),
            hostname: over.hostname.or(self.hostname),
            nofile: over.nofile.or(self.nofile),
            max_file_size: over.max_file_size.or(self.max_file_size),
            timeout: over.timeout.or(self.timeout),
            require_limits: over.require_limits.or(self.require_limits),
        }
    }
}

/// Directories searched for profile and seccomp names before the built-in ones.
pub fn config_dirs(kind: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(d) = std::env::var("JOBCELL_CONFIG_DIR") {
        dirs.push(PathBuf::from(d).join(kind));
    }
    if let Ok(d) = std::env::var("XDG_CONFIG_HOME") {
        dirs.push(PathBuf::from(d).join("jobcell").join(kind));
    } else if let Ok(h) = std::env::var("HOME") {
        dirs.push(PathBuf::from(h).join(".config/jobcell").join(kind));
    }
    dirs.push(PathBuf::from("/etc/jobcell").join(kind));
    dirs
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Loads a profile by name (config dirs, then built-in) or by file path, layered over the built-in default.
pub fn load_profile(name_or_path: &str) -> Result<Profile, ProfileError> {
    let base = Profile::parse(BUILTIN_PROFILES[0].1, "built-in default")?;
    if is_name(name_or_path) {
        for dir in config_dirs("profiles") {
            let p = dir.join(format!("{name_or_path}.toml"));
            if p.is_file() {
                return Ok(base.layer(read_profile_file(&p)?));
            }
        }
        if name_or_path == BUILTIN_PROFILES[0].0 {
            return Ok(base);
        }
        if let Some((_, text)) = BUILTIN_PROFILES.iter().find(|(n, _)| *n == name_or_path) {
            return Ok(base.layer(Profile::parse(text, &format!("built-in {name_or_path}"))?));
        }
        if !Path::new(name_or_path).exists() {
            return Err(ProfileError::NotFound(name_or_path.to_string()));
        }
    }
    Ok(base.layer(read_profile_file(Path::new(name_or_path))?))
}

fn read_profile_file(path: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Profile::parse(&text, &path.display().to_string())
}

/// Where the sandbox's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// A tmpfs holding read-only binds of the host's /usr, /bin, /sbin, /lib* and a generated /etc.
    HostSystem,
    /// A root filesystem directory (`--rootfs`, or an OCI bundle's root.path).
    Dir(PathBuf),
}

/// Launch settings that the runtime-spec has no field for.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub timeout: Option<Duration>,
    pub require_limits: bool,
    /// Unknown syscall names in a seccomp profile are an error instead of a warning.
    pub strict: bool,
    /// `--cgroup-parent`: the delegated cgroup v2 directory to create sandbox cgroups under.
    pub cgroup_parent: Option<PathBuf>,
}

/// One `jobcell run` request as the user wrote it; strings are parsed here so every error has the same shape.
#[derive(Debug, Default, Clone)]
pub struct RunRequest {
    pub profile: Option<String>,
    pub rootfs: Option<PathBuf>,
    pub user: Option<String>,
    pub cpus: Option<String>,
    pub memory: Option<String>,
    pub pids: Option<String>,
    pub tmpfs_size: Option<String>,
    pub binds: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub hostname: Option<String>,
    pub net: Option<String>,
    pub seccomp: Option<String>,
    pub cap_add: Vec<String>,
    pub read_only: Option<bool>,
    pub timeout: Option<String>,
    pub require_limits: bool,
    pub strict: bool,
    pub cgroup_parent: Option<PathBuf>,
    /// `--userns auto|single`.
    pub userns: Option<String>,
    pub args: Vec<String>,
}

/// A parsed `--bind SRC:DST[:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub rw: bool,
}

/// Parses `SRC:DST[:rw|:ro]`; SRC must exist on the host, both must be absolute.
pub fn parse_bind(s: &str) -> Result<BindSpec, ProfileError> {
    let invalid = |m: &str| ProfileError::Invalid {
        field: format!("--bind {s}"),
        message: m.to_string(),
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, rw) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "rw"] => (*src, *dst, true),
        [src, dst, "ro"] => (*src, *dst, false),
        _ => return Err(invalid("use SRC:DST or SRC:DST:rw with absolute paths")),
    };
    if !src.starts_with('/') || !dst.starts_with('/') {
        return Err(invalid("SRC and DST must be absolute paths"));
    }
    if dst.split('/').any(|c| c == "..") {
        return Err(invalid("DST must not contain '..'"));
    }
    let src = PathBuf::from(src);
    if std::fs::symlink_metadata(&src).is_err() {
        return Err(invalid("the source path does not exist on the host"));
    }
    let src = src
        .canonicalize()
        .map_err(|e| invalid(&format!("cannot resolve the source path: {e}")))?;
    Ok(BindSpec {
        src,
        dst: PathBuf::from(dst),
        rw,
    })
}

/// Parses `UID[:GID]` (GID defaults to UID).
pub fn parse_user(s: &str) -> Result<(u32, u32), ProfileError> {
    let invalid = || ProfileError::Invalid {
        field: "user".into(),
        message: format!("{s:?} is not UID[:GID] with numeric ids, e.g. 1000:1000"),
    };
    let mut it = s.splitn(2, ':');
    let uid: u32 = it.next().unwrap_or("").parse().map_err(|_| invalid())?;
    let gid: u32 = match it.next() {
        Some(g) => g.parse().map_err(|_| invalid())?,
        None => uid,
    };
    if uid == u32::MAX || gid == u32::MAX {
        return Err(invalid());
    }
    Ok((uid, gid))
}

fn unit<T>(field: &str, r: Result<T, UnitError>) -> Result<T, ProfileError> {
    r.map_err(|source| ProfileError::Unit {
        field: field.to_string(),
        source,
    })
}

fn mount(dst: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount, ProfileError> {
    Ok(MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The mounts every jobcell sandbox gets: fresh /proc, minimal /dev, size-limited /tmp and workdir.
fn base_mounts(
    tmpfs_bytes: u64,
    uid: u32,
    gid: u32,
    workdir: &str,
) -> Result<Vec<Mount>, ProfileError> {
    let size = format!("size={tmpfs_bytes}");
    let mut m = vec![
        mount("/proc", "proc", "proc", &["nosuid", "nodev", "noexec"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "noexec", "mode=755", "size=64k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "nodev", "mode=1777", &size],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "nodev", "noexec"],
        )?,
        mount(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=1777", &size],
        )?,
    ];
    if workdir != "/tmp" {
        let owner = [format!("uid={uid}"), format!("gid={gid}")];
        m.push(mount(
            workdir,
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=755", &size, &owner[0], &owner[1]],
        )?);
    }
    Ok(m)
}

/// Paths under /proc and /sys hidden from the sandbox (files become /dev/null, directories an empty ro tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/sysrq-trigger",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths under /proc made read-only.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Compiles a request (profile + flags) into the sandbox spec and launch options.
pub fn build(req: &RunRequest) -> Result<(Spec, LaunchOptions), ProfileError> {
    let p = load_profile(req.profile.as_deref().unwrap_or("default"))?;
    let missing = |f: &str| ProfileError::Invalid {
        field: f.into(),
        message: "missing from the profile".into(),
    };

    if req.args.is_empty() {
        return Err(ProfileError::Invalid {
            field: "COMMAND".into(),
            message: "no command given: use `jobcell run [OPTIONS] -- COMMAND [ARGS...]`".into(),
        });
    }
    let (uid, gid) = parse_user(
        req.user
            .as_deref()
            .or(p.user.as_deref())
            .unwrap_or("1000:1000"),
    )?;
    let cpus = match &req.cpus {
        Some(s) => unit("--cpus", units::parse_cpus(s))?,
        None => {
            let c = p.cpus.ok_or_else(|| missing("cpus"))?;
            unit("cpus", units::parse_cpus(&c.to_string()))?
        }
    };
    // A size from the flag or else the profile, with a lower bound the kernel needs.
    let size = |flag: &str,
                field: &str,
                from_flag: &Option<String>,
                from_profile: &Option<String>,
                min: u64,
                min_text: &str| {
        let text = from_flag
            .as_deref()
            .or(from_profile.as_deref())
            .ok_or_else(|| missing(field))?;
        let v = unit(flag, units::parse_size(text))?;
        if v < min {
            return Err(ProfileError::Invalid {
                field: flag.into(),
                message: format!("{v} bytes is below the minimum of {min_text}"),
            });
        }
        Ok(v)
    };
    let memory = size(
        "--memory",
        "memory",
        &req.memory,
        &p.memory,
        4 << 20,
        "4M a process needs",
    )?;
    let pids: i64 = match &req.pids {
        Some(s) => s.parse().map_err(|_| ProfileError::Invalid {
            field: "--pids".into(),
            message: format!("{s:?} is not a whole number of processes, e.g. 100"),
        })?,
        None => p.pids.ok_or_else(|| missing("pids"))?,
    };
    if pids < 1 {
        return Err(ProfileError::Invalid {
            field: "--pids".into(),
            message: "must be at least 1".into(),
        });
    }
    let tmpfs = size(
        "--tmpfs-size",
        "tmpfs_size",
        &req.tmpfs_size,
        &p.tmpfs_size,
        4096,
        "4k",
    )?;
    let fsize = unit(
        "max_file_size",
        units::parse_size(p.max_file_size.as_deref().unwrap_or("1G")),
    )?;
    let nofile = p.nofile.unwrap_or(1024);
    let timeout = match req.timeout.as_deref().or(p.timeout.as_deref()) {
        Some(t) => Some(unit("--timeout", units::parse_duration(t))?),
        None => None,
    };
    // The only mode there is: an own network namespace with only `lo` up (the spec's network namespace).
    match req
        .net
        .as_deref()
        .or(p.network.as_deref())
        .unwrap_or("none")
    {
        "none" => {}
        "egress" => {
            return Err(ProfileError::Invalid {
                field: "--net egress".into(),
                message: "is not available yet: only none (own namespace, lo only) is implemented; use --net none".into(),
            })
        }
        other => {
            return Err(ProfileError::Invalid {
                field: "--net".into(),
                message: format!("{other:?} is not a network mode: use none or egress"),
            })
        }
    }
    let hostname = req
        .hostname
        .clone()
        .or(p.hostname.clone())
        .unwrap_or_else(|| "jobcell".into());
    if hostname.is_empty()
        || hostname.len() > 64
        || !hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(ProfileError::Invalid {
            field: "--hostname".into(),
            message: format!(
                "{hostname:?} is not a valid host name (letters, digits, '-', '.', at most 64)"
            ),
        });
    }
    let workdir = req.workdir.clone().unwrap_or_else(|| "/workspace".into());
    if !workdir.starts_with('/') || workdir.split('/').any(|c| c == "..") || workdir == "/" {
        return Err(ProfileError::Invalid {
            field: "--workdir".into(),
            message: "must be an absolute path below / without '..', e.g. /workspace".into(),
        });
    }
    let read_only = req.read_only.or(p.read_only_root).unwrap_or(true);
    let root = match &req.rootfs {
        Some(dir) => {
            let md = std::fs::metadata(dir).map_err(|e| ProfileError::Invalid {
                field: "--rootfs".into(),
                message: format!("{}: {e}", dir.display()),
            })?;
            if !md.is_dir() {
                return Err(ProfileError::Invalid {
                    field: "--rootfs".into(),
                    message: format!("{} is not a directory", dir.display()),
                });
            }
            RootSource::Dir(dir.canonicalize().map_err(|e| ProfileError::Invalid {
                field: "--rootfs".into(),
                message: e.to_string(),
            })?)
        }
        None => RootSource::HostSystem,
    };

    // Environment: a minimal default, then --env.
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), workdir.clone()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    for kv in &req.env {
        // `K=V` sets a value; a bare `K` passes jobcell's own value (keeps secrets out of argv).
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k, v.to_string()),
            None => match std::env::var(kv) {
                Ok(v) => (kv.as_str(), v),
                Err(_) => {
                    return Err(ProfileError::Invalid {
                        field: format!("--env {kv}"),
                        message: "use K=V, or K alone to pass a variable set in jobcell's own environment (this one is not set)".into(),
                    })
                }
            },
        };
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(ProfileError::Invalid {
                field: format!("--env {kv}"),
                message: "the name must be non-empty and neither part may contain NUL".into(),
            });
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v));
    }

    // Capabilities: none unless --cap-add.
    let mut caps: HashSet<Capability> = HashSet::new();
    for c in &req.cap_add {
        let name = c.to_ascii_uppercase();
        let cap =
            Capability::from_str(name.strip_prefix("CAP_").unwrap_or(&name)).map_err(|_| {
                ProfileError::Invalid {
                    field: format!("--cap-add {c}"),
                    message: "unknown capability: use a name like NET_BIND_SERVICE or CAP_CHOWN"
                        .into(),
                }
            })?;
        caps.insert(cap);
    }

    // Seccomp: resolved and parsed now (bad files fail here); compiled once by the launcher.
    let sc_name = req
        .seccomp
        .clone()
        .or(p.seccomp.clone())
        .unwrap_or_else(|| "default".into());
    let sc = seccomp::resolve(&sc_name, &config_dirs("seccomp"))?;

    let mut mounts = base_mounts(tmpfs, uid, gid, &workdir)?;
    if root == RootSource::HostSystem {
        // All of them: the planner binds those that are directories here, recreates symlinks and skips
        // the absent ones (one readlink each, instead of a stat here and a readlink there).
        for d in HOST_SYSTEM_DIRS {
            mounts.push(mount(d, "bind", d, &["rbind", "ro", "nosuid", "nodev"])?);
        }
    }
    for b in &req.binds {
        let b = parse_bind(b)?;
        let src = b.src.to_string_lossy().into_owned();
        let dst = b.dst.to_string_lossy().into_owned();
        let rw = if b.rw { "rw" } else { "ro" };
        mounts.push(mount(
            &dst,
            "bind",
            &src,
            &["rbind", rw, "nosuid", "nodev"],
        )?);
    }

    let rlimit = |typ, v: u64| {
        PosixRlimitBuilder::default()
            .typ(typ)
            .soft(v)
            .hard(v)
            .build()
    };
    let process = ProcessBuilder::default()
        .args(req.args.clone())
        .env(
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )
        .cwd(workdir.clone())
        .user(UserBuilder::default().uid(uid).gid(gid).build()?)
        .no_new_privileges(true)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                .inheritable(caps.clone())
                .ambient(caps)
                .build()?,
        )
        .rlimits(vec![
            rlimit(PosixRlimitType::RlimitNproc, pids as u64)?,
            rlimit(PosixRlimitType::RlimitFsize, fsize)?,
            rlimit(PosixRlimitType::RlimitNofile, nofile)?,
            rlimit(PosixRlimitType::RlimitCore, 0)?,
            rlimit(PosixRlimitType::RlimitData, memory)?,
        ])
        .build()?;

    let period: u64 = 100_000;
    let ns = |t| LinuxNamespaceBuilder::default().typ(t).build();
    let linux = LinuxBuilder::default()
        .namespaces(vec![
            ns(LinuxNamespaceType::User)?,
            ns(LinuxNamespaceType::Mount)?,
            ns(LinuxNamespaceType::Pid)?,
            ns(LinuxNamespaceType::Ipc)?,
            ns(LinuxNamespaceType::Uts)?,
            ns(LinuxNamespaceType::Network)?,
            ns(LinuxNamespaceType::Cgroup)?,
        ])
        .resources(
            LinuxResourcesBuilder::default()
                .cpu(
                    LinuxCpuBuilder::default()
                        .quota((cpus * period as f64).round().max(1000.0) as i64)
                        .period(period)
                        .build()?,
                )
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(memory as i64)
                        .swap(memory as i64)
                        .build()?,
                )
                .pids(LinuxPidsBuilder::default().limit(pids).build()?)
                .build()?,
        )
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        );
    let linux = match sc {
        Some(s) => linux.seccomp(s),
        None => linux,
    };
    // `--userns single`: the spec names the one-id map itself (the caller as the job's ids), so the launcher
    // skips /etc/subuid and the setuid helpers.
    let linux = match req.userns.as_deref() {
        None | Some("auto") => linux,
        Some("single") => {
            let one = |inside: u32, outside: u32| {
                LinuxIdMappingBuilder::default()
                    .container_id(inside)
                    .host_id(outside)
                    .size(1u32)
                    .build()
            };
            linux
                .uid_mappings(vec![one(uid, nix::unistd::getuid().as_raw())?])
                .gid_mappings(vec![one(gid, nix::unistd::getgid().as_raw())?])
        }
        Some(other) => {
            return Err(ProfileError::Invalid {
                field: "--userns".into(),
                message: format!("{other:?} is not a mapping mode: use auto or single"),
            })
        }
    }
    .build()?;

    let mut annotations = std::collections::HashMap::new();
    let root_path = match &root {
        RootSource::HostSystem => {
            annotations.insert(ANNOTATION_ROOT.to_string(), ROOT_HOST_SYSTEM.to_string());
            PathBuf::from("/")
        }
        RootSource::Dir(d) => d.clone(),
    };
    let mut spec = Spec::default();
    spec.set_hostname(Some(hostname))
        .set_root(Some(
            RootBuilder::default()
                .path(root_path)
                .readonly(read_only)
                .build()?,
        ))
        .set_process(Some(process))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux))
        .set_annotations(Some(annotations));

    let opts = LaunchOptions {
        timeout,
        require_limits: req.require_limits || p.require_limits.unwrap_or(false),
        strict: req.strict,
        cgroup_parent: req.cgroup_parent.clone(),
    };
    Ok((spec, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> RunRequest {
        RunRequest {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn builtin_profiles_parse() {
        for (name, _) in BUILTIN_PROFILES {
            let p = load_profile(name).unwrap();
            assert!(p.memory.is_some() && p.pids.is_some(), "{name}");
        }
    }

    #[test]
    fn default_spec_matches_the_contract() {
        let (spec, _) = build(&req(&["/bin/true"])).unwrap();
        assert_eq!(
            spec.annotations().as_ref().unwrap()[ANNOTATION_ROOT],
            ROOT_HOST_SYSTEM
        );
        // Only an own network namespace (lo only) exists; egress is refused naming the flag.
        assert!(spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network)));
        let mut egress = req(&["/bin/true"]);
        egress.net = Some("egress".into());
        let e = build(&egress).unwrap_err().to_string();
        assert!(
            e.contains("--net egress") && e.contains("--net none"),
            "{e}"
        );
        let proc_ = spec.process().as_ref().unwrap();
        assert_eq!(proc_.user().uid(), 1000);
        assert_eq!(proc_.user().gid(), 1000);
        assert_eq!(proc_.cwd(), Path::new("/workspace"));
        assert!(proc_
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .is_empty());
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(512 << 20));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 100);
        let tmp = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .unwrap();
        assert!(tmp
            .options()
            .as_ref()
            .unwrap()
            .contains(&format!("size={}", 100 << 20)));
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
    }

    #[test]
    fn flags_override_profile() {
        let mut r = req(&["x"]);
        r.profile = Some("strict".into());
        r.cpus = Some("1.5".into());
        r.user = Some("0".into());
        r.env = vec!["A=b=c".into(), "PATH=/x".into()];
        r.cap_add = vec!["net_bind_service".into()];
        let (spec, opts) = build(&r).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
        let env = p.env().as_ref().unwrap();
        assert!(env.contains(&"A=b=c".to_string()) && env.contains(&"PATH=/x".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("PATH=")).count(), 1);
        assert_eq!(opts.timeout, Some(Duration::from_secs(600)));
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(150_000));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 32);
        assert!(p
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::NetBindService));
    }

    #[test]
    fn bad_input_names_the_field() {
        type Mutate = dyn Fn(&mut RunRequest);
        let cases: &[(&Mutate, &str)] = &[
            (&|r| r.memory = Some("lots".into()), "--memory"),
            (&|r| r.memory = Some("1M".into()), "--memory"),
            (&|r| r.cpus = Some("0".into()), "--cpus"),
            (&|r| r.pids = Some("-3".into()), "--pids"),
            (&|r| r.tmpfs_size = Some("1X".into()), "--tmpfs-size"),
            (&|r| r.timeout = Some("soon".into()), "--timeout"),
            (&|r| r.net = Some("host".into()), "--net"),
            (&|r| r.user = Some("root".into()), "user"),
            (
                &|r| r.binds = vec!["/definitely/not/here:/x".into()],
                "--bind",
            ),
            (&|r| r.binds = vec!["relative:/x".into()], "--bind"),
            (
                &|r| r.env = vec!["JOBCELL_SURELY_UNSET_VAR".into()],
                "--env",
            ),
            (&|r| r.cap_add = vec!["FLY".into()], "--cap-add"),
            (
                &|r| r.rootfs = Some("/definitely/not/here".into()),
                "--rootfs",
            ),
            (&|r| r.workdir = Some("rel".into()), "--workdir"),
            (
                &|r| r.profile = Some("nosuchprofile".into()),
                "nosuchprofile",
            ),
        ];
        for (mutate, field) in cases {
            let mut r = req(&["/bin/true"]);
            mutate(&mut r);
            let msg = build(&r).unwrap_err().to_string();
            assert!(msg.contains(field), "{msg:?} should name {field}");
            assert!(!msg.contains('\n'), "one line: {msg:?}");
        }
    }

    #[test]
    fn profile_file_errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "memry = \"1G\"\n").unwrap();
        let msg = load_profile(f.to_str().unwrap()).unwrap_err().to_string();
        assert!(msg.contains("p.toml") && msg.contains("memry"), "{msg}");
        std::fs::write(&f, "pids = \"many\"\n").unwrap();
        let msg = load_profile(f.to_str().unwrap()).unwrap_err().to_string();
        assert!(msg.contains("p.toml") && msg.contains("`pids`"), "{msg}");
    }
}
