//! The sandbox launcher: one path from an OCI [`Spec`] to a running, supervised sandbox and its [`Outcome`].
//!
//! `launch` compiles the seccomp filter, plans the filesystem, prepares the cgroup, then clone3()s pid 1 into
//! new user and pid namespaces. Pid 1 writes a one-id map itself and unshares mount/ipc/uts/net while the
//! supervisor runs newuidmap/newgidmap for a range map (the two overlap), then waits to be released; the
//! cgroup namespace comes after release. `Sandbox::wait`
//! forwards the supervisor's signals, enforces the timeout (SIGKILL of pid 1 tears the whole pid namespace
//! down) and collects the outcome. pid 1 dies with the supervisor (PR_SET_PDEATHSIG), so nothing outlives it.

pub mod child;
pub mod idmap;
pub mod plan;

use crate::cgroup::{self, Cgroup, LimitsReport};
use crate::profile::LaunchOptions;
use crate::seccomp;
use child::ChildConfig;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Spec};
use serde::Serialize;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A sandbox could not be started; exit status 125 at the CLI.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}")]
    Spec(String),
    #[error("user namespaces are unavailable: {0}")]
    UserNamespaces(String),
    #[error("{0}")]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("{0}")]
    Plan(#[from] plan::PlanError),
    #[error("id mapping: {0}")]
    IdMap(#[from] idmap::IdMapError),
    #[error("{0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{what}: {errno}")]
    Sys { what: &'static str, errno: Errno },
}

fn sys(what: &'static str) -> impl Fn(Errno) -> LaunchError {
    move |errno| LaunchError::Sys { what, errno }
}

/// How a sandbox ended (`--json` writes this; field names are the API contract).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// `null` when no cgroup could tell.
    pub oom_killed: Option<bool>,
    pub wall_ms: u64,
    pub cpu_usec: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub pids_peak: Option<u64>,
    pub limits: LimitsReport,
    /// Why jobcell itself failed (exit 125/126/127 before the command ran); not part of the contract's fields.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Signals the supervisor forwards to the payload.
pub fn forwarded_signals() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        s.add(sig);
    }
    s
}

/// A running sandbox, owned by the supervisor.
pub struct Sandbox {
    pid: i32,
    pidfd: OwnedFd,
    status: std::fs::File,
    started: Instant,
    timeout: Option<Duration>,
    limits: LimitsReport,
    cgroup: Option<Cgroup>,
    signals: SignalFd,
    /// pid 1 is still this handle's to kill: until it was reaped (`wait`) or handed over (`detach`).
    owned: bool,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x200000000;

/// The namespaces clone3 creates; pid 1 unshares the others itself (see `launch`).
const BORN_WITH: CloneFlags = CloneFlags::CLONE_NEWUSER.union(CloneFlags::CLONE_NEWPID);

/// Prints warnings in one write (stderr is unbuffered and eprintln! writes each piece separately).
fn print_warnings(warnings: &[String]) {
    let text: String = warnings
        .iter()
        .map(|w| format!("jobcell: warning: {w}\n"))
        .collect();
    let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
}

fn rlimit_resource(t: PosixRlimitType) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    Some(match t {
        PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => R::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => R::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
    })
}

/// Checks that this host lets an unprivileged user create user namespaces; names the knob when not.
pub fn userns_unavailable_reason() -> Option<String> {
    let read = |p: &str| {
        std::fs::read_to_string(format!("/proc/sys/{p}"))
            .ok()
            .map(|s| s.trim().to_string())
    };
    userns_reason(read, nix::unistd::geteuid().is_root())
}

/// The decision behind [`userns_unavailable_reason`], over a sysctl reader (unit-testable).
fn userns_reason(read: impl Fn(&str) -> Option<String>, root: bool) -> Option<String> {
    if read("kernel/unprivileged_userns_clone").as_deref() == Some("0") && !root {
        return Some("sysctl kernel.unprivileged_userns_clone=0 (set it to 1)".into());
    }
    if read("user/max_user_namespaces").as_deref() == Some("0") {
        return Some("sysctl user.max_user_namespaces=0 (set it above 0)".into());
    }
    if read("kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") && !root {
        return Some("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)".into());
    }
    None
}

/// clone3 with `flags` plus CLONE_PIDFD, into `cgroup` when given. Returns the child's pid and pidfd in the
/// parent, and `(0, None)` in the child, which runs on a copy of the caller's stack like after fork.
fn clone3(flags: u64, cgroup: Option<&Cgroup>) -> Result<(i32, Option<OwnedFd>), Errno> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(c) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = c.dir_fd() as u64;
    }
    // SAFETY: clone3 with a fully initialised clone_args of the size we pass; stack 0 means the child runs on
    // a copy of our stack, like fork. Callers are single-threaded, so the child may run Rust code.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        p if p < 0 => Err(Errno::last()),
        0 => Ok((0, None)),
        // SAFETY: clone3 with CLONE_PIDFD stored a new pidfd that we now own.
        p => Ok((p as i32, Some(unsafe { OwnedFd::from_raw_fd(pidfd) }))),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))
}

/// Everything an OCI container launch adds to a plain one.
pub struct ContainerLaunch {
    /// O_PATH descriptor of the container's `exec.fifo`.
    pub fifo: OwnedFd,
    /// Connected `--console-socket`, for `process.terminal`.
    pub console: Option<OwnedFd>,
    /// Name of the container's cgroup under `<base>/jobcell/`.
    pub cgroup_name: String,
    /// Builds the OCI state JSON handed to hooks on stdin, given pid 1's host pid.
    pub state_json: Box<dyn Fn(i32) -> Vec<u8>>,
}

/// How pid 1 behaves after setup.
pub enum Mode {
    /// `jobcell run`: a reaper pid 1 supervised until the payload ends.
    Supervised,
    /// OCI `create`: pid 1 waits on the exec FIFO and outlives the caller.
    Container(ContainerLaunch),
}

fn ns_flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

fn to_caps(
    set: Option<&oci_spec::runtime::Capabilities>,
) -> Result<Vec<caps::Capability>, LaunchError> {
    let mut v = Vec::new();
    for c in set.into_iter().flatten() {
        let name = c.to_string();
        let name = if name.starts_with("CAP_") {
            name
        } else {
            format!("CAP_{name}")
        };
        v.push(
            caps::Capability::from_str(&name)
                .map_err(|_| LaunchError::Spec(format!("unknown capability {name}")))?,
        );
    }
    Ok(v)
}

fn to_hooks(hooks: Option<&Vec<oci_spec::runtime::Hook>>) -> Vec<child::HookCmd> {
    hooks
        .into_iter()
        .flatten()
        .map(|h| child::HookCmd {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h
                .timeout()
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0),
        })
        .collect()
}

/// Runs host-side hooks (prestart, createRuntime, poststart, poststop) in order.
pub fn run_host_hooks(
    hooks: Option<&Vec<oci_spec::runtime::Hook>>,
    kind: &str,
    state: &[u8],
) -> Result<(), LaunchError> {
    for h in to_hooks(hooks) {
        child::run_hook(&h, state, None)
            .map_err(|e| LaunchError::Spec(format!("{kind} hook {}: {e}", h.path.display())))?;
    }
    Ok(())
}

/// The id mapping: the spec's own mappings when it has them, else jobcell's default for this caller.
fn id_map(spec: &Spec, uid: u32, gid: u32) -> (idmap::IdMap, Option<String>) {
    let linux = spec.linux().as_ref();
    let ext = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<idmap::Extent> {
        m.iter()
            .flatten()
            .map(|e| idmap::Extent {
                inside: e.container_id(),
                outside: e.host_id(),
                count: e.size(),
            })
            .collect()
    };
    let (u, g) = (
        ext(linux.map(|l| l.uid_mappings()).unwrap_or(&None)),
        ext(linux.map(|l| l.gid_mappings()).unwrap_or(&None)),
    );
    let host_uid = nix::unistd::getuid().as_raw();
    let host_gid = nix::unistd::getgid().as_raw();
    if !u.is_empty() && !g.is_empty() {
        let own_single = u.len() == 1
            && g.len() == 1
            && u[0].count == 1
            && g[0].count == 1
            && u[0].outside == host_uid
            && g[0].outside == host_gid;
        if own_single || host_uid == 0 {
            return (
                idmap::IdMap::Direct {
                    uid: u,
                    gid: g,
                    deny_setgroups: own_single && host_uid != 0,
                },
                None,
            );
        }
        return (idmap::IdMap::Range { uid: u, gid: g }, None);
    }
    let user = idmap::user_name(host_uid);
    idmap::choose(host_uid, host_gid, user.as_deref(), uid, gid)
}

/// The process part of a child configuration (identity, capabilities, rlimits, seccomp, argv), shared by
/// `launch` and `exec_in`; filesystem and namespace fields are left empty for the caller to fill.
fn process_config(
    spec: &Spec,
    process: &oci_spec::runtime::Process,
    strict: bool,
    setgroups_allowed: bool,
    mode: child::ChildMode,
    warnings: &mut Vec<String>,
) -> Result<ChildConfig, LaunchError> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(LaunchError::Spec(
            "process.args is empty: give a command".into(),
        ));
    }
    let env = process.env().clone().unwrap_or_default();
    let path_dirs = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(crate::profile::DEFAULT_PATH)
        .split(':')
        .filter(|d| !d.is_empty())
        .map(String::from)
        .collect();
    let filter = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => {
            let (f, w) = seccomp::compile_cached(profile, strict)?;
            warnings.extend(w.into_iter().map(|w| format!("seccomp: {w}")));
            Some(f)
        }
        None => None,
    };
    let caps = process.capabilities().as_ref();
    let user = process.user();
    Ok(ChildConfig {
        fs: plan::FsPlan::default(),
        hostname: None,
        domainname: None,
        args: child::cstrings(&args, "process.args").map_err(LaunchError::Spec)?,
        env: child::cstrings(&env, "process.env").map_err(LaunchError::Spec)?,
        path_dirs,
        cwd: process.cwd().clone(),
        ids: child::Identity {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            setgroups_allowed,
        },
        caps: child::CapSets {
            bounding: to_caps(caps.and_then(|c| c.bounding().as_ref()))?,
            effective: to_caps(caps.and_then(|c| c.effective().as_ref()))?,
            permitted: to_caps(caps.and_then(|c| c.permitted().as_ref()))?,
            inheritable: to_caps(caps.and_then(|c| c.inheritable().as_ref()))?,
            ambient: to_caps(caps.and_then(|c| c.ambient().as_ref()))?,
        },
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        rlimits: process
            .rlimits()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|r| Some((rlimit_resource(r.typ())?, r.soft(), r.hard())))
            .collect(),
        seccomp: filter,
        umask: user.umask().unwrap_or(0o022),
        oom_score_adj: process.oom_score_adj(),
        join: Vec::new(),
        join_pidfd: None,
        userns_map: None,
        unshare: CloneFlags::empty(),
        unshare_cgroup: false,
        new_netns: false,
        forward: forwarded_signals(),
        mode,
    })
}

/// Starts a sandbox for `spec`. The caller's thread must be the only one (pid 1 is forked from it).
pub fn launch(spec: &Spec, opts: &LaunchOptions, mode: Mode) -> Result<Sandbox, LaunchError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| LaunchError::Spec("spec has no process".into()))?;
    let linux = spec.linux().as_ref();
    let host_root = nix::unistd::geteuid().is_root();

    // Namespaces: created unless the spec gives a path to join; rootless always needs its own user namespace.
    let mut flags = CloneFlags::empty();
    let mut join = Vec::new();
    for ns in linux
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
    {
        match ns.path() {
            None => flags |= ns_flag(ns.typ()),
            Some(p) if ns.typ() == LinuxNamespaceType::Pid => {
                return Err(LaunchError::Spec(format!(
                    "joining a pid namespace ({}) is not supported; create one instead",
                    p.display()
                )))
            }
            Some(p) => join.push((ns_flag(ns.typ()), p.clone())),
        }
    }
    // Joining a user namespace happens here, in the caller, so the namespaces clone3 creates belong to it.
    if let Some(i) = join
        .iter()
        .position(|(f, _)| *f == CloneFlags::CLONE_NEWUSER)
    {
        let (_, path) = join.remove(i);
        let f = std::fs::File::open(&path)
            .map_err(|e| LaunchError::Spec(format!("user namespace {}: {e}", path.display())))?;
        nix::sched::setns(f, CloneFlags::CLONE_NEWUSER).map_err(|e| {
            LaunchError::Spec(format!("joining user namespace {}: {e}", path.display()))
        })?;
    } else if !host_root {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    let new_userns = flags.contains(CloneFlags::CLONE_NEWUSER);
    let private_uts = flags.contains(CloneFlags::CLONE_NEWUTS)
        || join.iter().any(|(f, _)| *f == CloneFlags::CLONE_NEWUTS);
    let has = |f: CloneFlags| flags.contains(f) || join.iter().any(|(j, _)| *j == f);
    for key in linux
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flat_map(|m| m.keys())
    {
        let needs = if key.starts_with("net.") {
            CloneFlags::CLONE_NEWNET
        } else if key.starts_with("fs.mqueue.")
            || [
                "kernel.msgmax",
                "kernel.msgmnb",
                "kernel.msgmni",
                "kernel.sem",
                "kernel.shmall",
                "kernel.shmmax",
                "kernel.shmmni",
                "kernel.shm_rmid_forced",
            ]
            .contains(&key.as_str())
        {
            CloneFlags::CLONE_NEWIPC
        } else if key == "kernel.hostname" || key == "kernel.domainname" {
            CloneFlags::CLONE_NEWUTS
        } else {
            return Err(LaunchError::Spec(format!(
                "linux.sysctl {key:?} is not namespaced: it would change the host"
            )));
        };
        if !has(needs) {
            return Err(LaunchError::Spec(format!(
                "linux.sysctl {key:?} needs its own namespace ({needs:?}) in linux.namespaces"
            )));
        }
    }
    if !private_uts && (spec.hostname().is_some() || spec.domainname().is_some()) {
        return Err(LaunchError::Spec(
            "hostname/domainname need a private UTS namespace: add {\"type\": \"uts\"} to linux.namespaces".into(),
        ));
    }
    let user = process.user();
    // Warnings are printed only once nothing can refuse the launch any more.
    let mut warnings = Vec::new();
    let (map, warning) = id_map(spec, user.uid(), user.gid());
    if let (Some(w), true) = (warning, new_userns) {
        warnings.push(w);
    }
    let hooks = spec.hooks().as_ref();
    let (child_mode, container) = match mode {
        Mode::Supervised => (child::ChildMode::Supervised, None),
        Mode::Container(c) => (
            child::ChildMode::Container {
                fifo: c.fifo.as_raw_fd(),
                console: c.console.as_ref().map(|s| s.as_raw_fd()),
                create_container: to_hooks(hooks.and_then(|h| h.create_container().as_ref())),
                start_container: to_hooks(hooks.and_then(|h| h.start_container().as_ref())),
            },
            Some(c),
        ),
    };
    let mut cfg = ChildConfig {
        fs: plan::plan_fs(spec)?,
        hostname: spec.hostname().clone(),
        domainname: spec.domainname().clone(),
        join,
        userns_map: new_userns.then(|| map.clone()),
        unshare: flags - BORN_WITH - CloneFlags::CLONE_NEWCGROUP,
        unshare_cgroup: flags.contains(CloneFlags::CLONE_NEWCGROUP),
        new_netns: flags.contains(CloneFlags::CLONE_NEWNET),
        ..process_config(
            spec,
            process,
            opts.strict,
            !new_userns || !map.denies_setgroups(),
            child_mode,
            &mut warnings,
        )?
    };

    // cgroup first, so the child is born inside it (CLONE_INTO_CGROUP).
    let resources = linux.and_then(|l| l.resources().as_ref());
    let cg_name = container.as_ref().map(|c| c.cgroup_name.clone());
    let (cg, limits) =
        cgroup::prepare(resources, cg_name.as_deref(), opts.cgroup_parent.as_deref())?;
    cfg.fs.cgroup_dir = cg.as_ref().map(|c| c.path().to_path_buf());
    if opts.require_limits && !limits.enforced {
        return Err(LaunchError::Cgroup(cgroup::CgroupError::Required(
            limits.reason.clone().unwrap_or_default(),
        )));
    }
    if !limits.enforced && resources.is_some() {
        warnings.push(format!(
            "cgroup limits not enforced ({}); rlimits only, see `jobcell check`",
            limits.reason.as_deref().unwrap_or("unknown")
        ));
    }
    print_warnings(&warnings);

    let (sync_r, sync_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    // Block the forwarded signals before clone: the supervisor reads them from a signalfd, pid 1 inherits the
    // mask and does the same.
    let fwd = forwarded_signals();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&fwd), None).map_err(sys("sigprocmask"))?;
    let signals = SignalFd::with_flags(&fwd, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(sys("signalfd"))?;

    // clone3 creates only the user and pid namespaces. Pid 1 unshares the others itself (the network
    // namespace is the costly one) while this process runs the id-map helpers, so the two overlap; the cgroup
    // namespace comes last, once pid 1 is surely in its cgroup.
    let clone_flags = (flags & BORN_WITH).bits() as u64;
    // Kernels before 5.7 have no CLONE_INTO_CGROUP: clone outside and move pid 1 in before releasing it.
    let into_cgroup = std::env::var_os("JOBCELL_NO_CLONE_INTO_CGROUP").is_none();
    let mut cloned = clone3(clone_flags, cg.as_ref().filter(|_| into_cgroup));
    let mut move_in = !into_cgroup && cg.is_some();
    if matches!(cloned, Err(Errno::EINVAL) | Err(Errno::E2BIG)) && cg.is_some() && into_cgroup {
        cloned = clone3(clone_flags, None);
        move_in = true;
    }
    let (pid, pidfd) = match cloned {
        Ok(v) => v,
        Err(e) => {
            let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&fwd), None);
            if let Some(c) = cg {
                c.remove();
            }
            return Err(match e {
                Errno::EPERM | Errno::ENOSPC | Errno::EUSERS | Errno::EINVAL if new_userns => {
                    LaunchError::UserNamespaces(
                        userns_unavailable_reason()
                            .unwrap_or_else(|| format!("clone3 refused new namespaces: {e}")),
                    )
                }
                e => LaunchError::Sys {
                    what: "clone3",
                    errno: e,
                },
            });
        }
    };
    let Some(pidfd) = pidfd else {
        drop(sync_w);
        drop(status_r);
        drop(signals);
        child::init_main(&cfg, sync_r, status_w);
    };
    drop(sync_r);
    drop(status_w);

    let mut sandbox = Sandbox {
        pid,
        pidfd,
        status: std::fs::File::from(status_r),
        started: Instant::now(),
        timeout: opts.timeout,
        limits,
        cgroup: cg,
        signals,
        owned: true,
    };
    let state = container
        .as_ref()
        .map(|c| (c.state_json)(pid))
        .unwrap_or_default();
    let mut sync = std::fs::File::from(sync_w);
    let release = (|| {
        if new_userns && !map.written_by_child() {
            // Pid 1 starts its own work (new namespaces) only once the helpers run: started earlier, it
            // would compete with this process for a CPU and delay spawning the second helper.
            idmap::apply(pid, &map, &mut || {
                let _ = std::io::Write::write_all(&mut sync, b"s");
            })?;
        }
        if let (true, Some(c)) = (move_in, &sandbox.cgroup) {
            c.add_process(pid)?;
        }
        if container.is_some() {
            run_host_hooks(
                hooks.and_then(|h| h.prestart().as_ref()),
                "prestart",
                &state,
            )?;
            run_host_hooks(
                hooks.and_then(|h| h.create_runtime().as_ref()),
                "createRuntime",
                &state,
            )?;
        }
        let mut msg = Vec::with_capacity(1 + state.len());
        msg.push(b'g');
        msg.extend_from_slice(&state);
        std::io::Write::write_all(&mut sync, &msg)
            .map_err(|e| LaunchError::Spec(format!("releasing pid 1: {e}")))
    })();
    // EOF after the release message: pid 1 reads to the end of the pipe.
    drop(sync);
    if let Err(e) = release {
        sandbox.kill();
        let _ = sandbox.reap();
        // Pid 1 may have failed first (e.g. a namespace it could not create): its reason is the real one.
        let mut text = String::new();
        let _ = sandbox.status.read_to_string(&mut text);
        return Err(match child::parse_status(&text).0 {
            Some((_, msg)) => LaunchError::Spec(msg),
            None => e,
        });
    }
    if container.is_some() {
        sandbox.wait_ready()?;
    }
    drop(container);
    Ok(sandbox)
}

impl Sandbox {
    /// Host pid of the sandbox's pid 1.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn signal(&self, sig: i32) {
        // SAFETY: pidfd_send_signal on our own pidfd; the pidfd guarantees we never signal a recycled pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Kills the whole sandbox (SIGKILL of pid 1 ends every process of its pid namespace).
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn reap(&mut self) -> Result<(libc::c_int, libc::rusage), Errno> {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: wait4 on our own child; status and ru are valid out-pointers.
            let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
            if r == self.pid {
                self.owned = false;
                return Ok((status, ru));
            }
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
    }

    /// Container mode: waits until pid 1 reports it is set up and blocked on the exec FIFO.
    fn wait_ready(&mut self) -> Result<(), LaunchError> {
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = self
                .status
                .read(&mut buf)
                .map_err(|e| LaunchError::Spec(format!("reading setup status: {e}")))?;
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.starts_with(b"R\n") || got.ends_with(b"\n") {
                break;
            }
        }
        if got.starts_with(b"R\n") {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let _ = self.reap();
        match child::parse_status(&text).0 {
            Some((_, msg)) => Err(LaunchError::Spec(msg)),
            None => Err(LaunchError::Spec(
                "container setup failed without a message".into(),
            )),
        }
    }

    /// The sandbox's cgroup directory, if it has one.
    pub fn cgroup_path(&self) -> Option<std::path::PathBuf> {
        self.cgroup.as_ref().map(|c| c.path().to_path_buf())
    }

    /// Waits for pid 1 (OCI `run`, `exec`), forwarding signals; returns its exit status (128+N when killed).
    pub fn wait_exit_code(mut self) -> Result<i32, LaunchError> {
        self.timeout = None;
        self.wait_pid1()?;
        let (status, _) = self.reap().map_err(sys("wait4"))?;
        let _ = self.cgroup.take().map(|c| c.into_path());
        Ok(if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            libc::WEXITSTATUS(status)
        })
    }

    /// Lets the sandbox outlive this handle (OCI `create`); returns its cgroup directory.
    pub fn detach(mut self) -> Option<std::path::PathBuf> {
        self.owned = false;
        self.cgroup.take().map(|c| c.into_path())
    }

    /// Polls until pid 1 exits, forwarding signals and enforcing the timeout; true when it timed out.
    fn wait_pid1(&mut self) -> Result<bool, LaunchError> {
        let deadline = self.timeout.map(|t| self.started + t);
        let mut timed_out = false;
        loop {
            let wait_ms = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() && !timed_out {
                        timed_out = true;
                        self.kill();
                    }
                    if timed_out {
                        PollTimeout::NONE
                    } else {
                        PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1)
                            .unwrap_or(PollTimeout::MAX)
                    }
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [
                PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, wait_ms) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(LaunchError::Sys {
                        what: "poll",
                        errno: e,
                    })
                }
            }
            if fds[1]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN))
            {
                while let Ok(Some(si)) = self.signals.read_signal() {
                    self.signal(si.ssi_signo as i32);
                }
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                return Ok(timed_out);
            }
        }
    }

    /// Waits for the sandbox to end, forwarding signals and enforcing the timeout.
    pub fn wait(mut self) -> Result<Outcome, LaunchError> {
        let timed_out = self.wait_pid1()?;
        let (status, ru) = self.reap().map_err(sys("wait4"))?;
        let wall_ms = self.started.elapsed().as_millis() as u64;
        let mut text = String::new();
        let _ = self.status.read_to_string(&mut text);
        let (err, done) = child::parse_status(&text);

        let stats = self.cgroup.as_ref().map(|c| c.stats()).unwrap_or_default();
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
        let rusage_cpu = (ru.ru_utime.tv_sec as u64 * 1_000_000 + ru.ru_utime.tv_usec as u64)
            + (ru.ru_stime.tv_sec as u64 * 1_000_000 + ru.ru_stime.tv_usec as u64);
        let (exit_code, signal, error) = if timed_out {
            (124, Some(libc::SIGKILL), None)
        } else if let Some((code, msg)) = err {
            (code, None, Some(msg))
        } else if let Some((code, sig)) = done {
            (code, (sig != 0).then_some(sig), None)
        } else if libc::WIFSIGNALED(status) {
            // pid 1 itself was killed (e.g. by the OOM killer or an administrator).
            let s = libc::WTERMSIG(status);
            (128 + s, Some(s), None)
        } else {
            (libc::WEXITSTATUS(status), None, None)
        };
        Ok(Outcome {
            exit_code,
            signal,
            timed_out,
            oom_killed: stats.oom_killed,
            wall_ms,
            cpu_usec: stats.cpu_usec.or(Some(rusage_cpu)),
            memory_peak_bytes: stats.memory_peak,
            pids_peak: stats.pids_peak,
            limits: self.limits.clone(),
            error,
        })
    }
}

/// Starts `process` inside the running container whose pid 1 is `target` (OCI `exec`): joins its
/// namespaces with one setns(pidfd) and clones the new process straight into its cgroup.
pub fn exec_in(
    spec: &Spec,
    process: &oci_spec::runtime::Process,
    target: i32,
    cgroup: Option<&std::path::Path>,
    console: Option<OwnedFd>,
) -> Result<Sandbox, LaunchError> {
    // SAFETY: pidfd_open with a pid and no flags returns a new fd or -1.
    let tfd = unsafe { libc::syscall(libc::SYS_pidfd_open, target, 0) };
    if tfd < 0 {
        return Err(LaunchError::Sys {
            what: "pidfd_open",
            errno: Errno::last(),
        });
    }
    // SAFETY: pidfd_open returned a new fd that we now own.
    let tfd = unsafe { OwnedFd::from_raw_fd(tfd as RawFd) };
    let cg = cgroup.and_then(Cgroup::open);
    let setgroups_denied = std::fs::read_to_string(format!("/proc/{target}/setgroups"))
        .is_ok_and(|s| s.trim() == "deny");
    let mode = child::ChildMode::Exec {
        console: console.as_ref().map(|c| c.as_raw_fd()),
    };
    let mut warnings = Vec::new();
    let cfg = process_config(spec, process, false, !setgroups_denied, mode, &mut warnings)?;
    print_warnings(&warnings);
    let mut ns = CloneFlags::empty();
    for (name, flag) in [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ] {
        let theirs = std::fs::read_link(format!("/proc/{target}/ns/{name}")).ok();
        let ours = std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        if theirs.is_some() && theirs != ours {
            ns |= flag;
        }
    }
    let (status_r, status_w) = pipe()?;
    let fwd = forwarded_signals();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&fwd), None).map_err(sys("sigprocmask"))?;
    let signals = SignalFd::with_flags(&fwd, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(sys("signalfd"))?;
    // The caller joins only the user and pid namespaces (the pid namespace applies to children, and joining it
    // needs privilege over it); the child joins the rest, so the caller keeps the host's filesystem view.
    let own = ns & (CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID);
    if !own.is_empty() {
        nix::sched::setns(&tfd, own)
            .map_err(sys("joining the container's user and pid namespaces"))?;
    }
    let cfg = ChildConfig {
        join_pidfd: Some((tfd.as_raw_fd(), ns - own)),
        ..cfg
    };
    let (pid, pidfd) = clone3(0, cg.as_ref()).map_err(sys("clone3"))?;
    let Some(pidfd) = pidfd else {
        drop(status_r);
        child::exec_main(&cfg, status_w);
    };
    drop(status_w);
    Ok(Sandbox {
        pid,
        pidfd,
        status: std::fs::File::from(status_r),
        started: Instant::now(),
        timeout: None,
        limits: LimitsReport {
            enforced: cg.is_some(),
            mechanism: if cg.is_some() {
                "cgroup2".into()
            } else {
                "rlimit".into()
            },
            reason: None,
        },
        // The container owns its cgroup: this handle must never remove it.
        cgroup: None,
        signals,
        owned: true,
    })
}

impl Drop for Sandbox {
    /// A sandbox neither waited for nor detached dies with its handle (an error path, a panic), cgroup
    /// included; OCI pid 1 has no parent-death signal, so nothing else would end it.
    fn drop(&mut self) {
        if self.owned {
            self.kill();
            let _ = self.reap();
        }
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userns_reason_names_the_knob() {
        let host = |vals: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vals.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            userns_reason(host(&[("kernel/unprivileged_userns_clone", "1")]), false),
            None
        );
        let r = userns_reason(host(&[("kernel/unprivileged_userns_clone", "0")]), false).unwrap();
        assert!(r.contains("kernel.unprivileged_userns_clone=0"), "{r}");
        assert_eq!(
            userns_reason(host(&[("kernel/unprivileged_userns_clone", "0")]), true),
            None
        );
        let r = userns_reason(host(&[("user/max_user_namespaces", "0")]), true).unwrap();
        assert!(r.contains("user.max_user_namespaces=0"), "{r}");
        let r = userns_reason(
            host(&[("kernel/apparmor_restrict_unprivileged_userns", "1")]),
            false,
        )
        .unwrap();
        assert!(r.contains("AppArmor"), "{r}");
    }
}
