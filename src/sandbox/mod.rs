//! The sandbox launcher: one path from an OCI [`Spec`] to a running, supervised sandbox and its [`Outcome`].
//!
//! `launch` compiles the seccomp filter, plans the filesystem, prepares the cgroup, then clone3()s pid 1 into
//! new user/mount/pid/ipc/uts/net/cgroup namespaces, writes its id maps and releases it. `Sandbox::wait`
//! forwards the supervisor's signals, enforces the timeout (SIGKILL of pid 1 tears the whole pid namespace
//! down) and collects the outcome. pid 1 dies with the supervisor (PR_SET_PDEATHSIG), so nothing outlives it.

pub mod child;
pub mod idmap;
pub mod plan;

use crate::cgroup::{self, Cgroup, LimitsReport};
use crate::profile::{LaunchOptions, NetMode};
use crate::seccomp;
use child::ChildConfig;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use oci_spec::runtime::{PosixRlimitType, Spec};
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
    #[error("--net egress is not available yet: only --net none (own namespace, lo only) is implemented")]
    EgressUnsupported,
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
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") && !nix::unistd::geteuid().is_root() {
        return Some("sysctl kernel.unprivileged_userns_clone=0 (set it to 1)".into());
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("sysctl user.max_user_namespaces=0 (set it above 0)".into());
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return Some("AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns=1)".into());
    }
    None
}

fn pipe() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))
}

/// Starts a sandbox for `spec`. The caller's thread must be the only one (pid 1 is forked from it).
pub fn launch(spec: &Spec, opts: &LaunchOptions) -> Result<Sandbox, LaunchError> {
    if opts.network == NetMode::Egress {
        return Err(LaunchError::EgressUnsupported);
    }
    let process = spec.process().as_ref().ok_or_else(|| LaunchError::Spec("spec has no process".into()))?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(LaunchError::Spec("process.args is empty: give a command".into()));
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
    let linux = spec.linux().as_ref();

    let filter = match linux.and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some(seccomp::compile(profile, opts.strict)?.0),
        None => None,
    };
    let mut keep_caps = Vec::new();
    if let Some(set) = process.capabilities().as_ref().and_then(|c| c.bounding().as_ref()) {
        for c in set {
            let name = c.to_string();
            let name = if name.starts_with("CAP_") { name } else { format!("CAP_{name}") };
            keep_caps.push(caps::Capability::from_str(&name).map_err(|_| LaunchError::Spec(format!("unknown capability {name}")))?);
        }
    }
    let rlimits = process
        .rlimits()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| Some((rlimit_resource(r.typ())?, r.hard().max(r.soft()))))
        .collect();
    let cfg = ChildConfig {
        fs: plan::plan_fs(spec)?,
        hostname: spec.hostname().clone(),
        args: child::cstrings(&args, "process.args").map_err(LaunchError::Spec)?,
        env: child::cstrings(&env, "process.env").map_err(LaunchError::Spec)?,
        path_dirs,
        cwd: process.cwd().clone(),
        drop_supplementary_groups: false,
        keep_caps,
        rlimits,
        seccomp: filter,
        umask: process.user().umask().unwrap_or(0o022),
        forward: forwarded_signals(),
    };

    // cgroup first, so the child is born inside it (CLONE_INTO_CGROUP).
    let resources = linux.and_then(|l| l.resources().as_ref());
    let (cg, limits) = cgroup::prepare(resources)?;
    if opts.require_limits && !limits.enforced {
        return Err(LaunchError::Cgroup(cgroup::CgroupError::Required(
            limits.reason.clone().unwrap_or_default(),
        )));
    }
    if !limits.enforced {
        eprintln!(
            "jobcell: warning: cgroup limits not enforced ({}); rlimits only, see `jobcell check`",
            limits.reason.as_deref().unwrap_or("unknown")
        );
    }

    let host_uid = nix::unistd::getuid().as_raw();
    let host_gid = nix::unistd::getgid().as_raw();
    let user = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.name);
    let (map, warning) = idmap::choose(host_uid, host_gid, user.as_deref(), process.user().uid(), process.user().gid());
    if let Some(w) = warning {
        eprintln!("jobcell: warning: {w}");
    }
    let cfg = ChildConfig {
        drop_supplementary_groups: matches!(map, idmap::IdMap::Range { .. }),
        ..cfg
    };

    let (sync_r, sync_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    // Block the forwarded signals before clone: the supervisor reads them from a signalfd, pid 1 inherits the
    // mask and does the same.
    let fwd = forwarded_signals();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&fwd), None).map_err(sys("sigprocmask"))?;
    let signals = SignalFd::with_flags(&fwd, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(sys("signalfd"))?;

    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: (libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP
            | libc::CLONE_PIDFD) as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(c) = &cg {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = c.dir_fd() as u64;
    }
    // SAFETY: clone3 with a fully initialised clone_args of the size we pass; stack 0 means the child runs on
    // a copy of our stack, like fork. This process is single-threaded here, so the child may run Rust code.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    if pid < 0 {
        let e = Errno::last();
        let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&fwd), None);
        if let Some(c) = cg {
            c.remove();
        }
        return Err(match e {
            Errno::EPERM | Errno::ENOSPC | Errno::EUSERS | Errno::EINVAL => LaunchError::UserNamespaces(
                userns_unavailable_reason().unwrap_or_else(|| format!("clone3 refused new namespaces: {e}")),
            ),
            e => LaunchError::Sys { what: "clone3", errno: e },
        });
    }
    if pid == 0 {
        drop(sync_w);
        drop(status_r);
        drop(signals);
        child::init_main(&cfg, sync_r, status_w);
    }
    let pid = pid as i32;
    // SAFETY: clone3 with CLONE_PIDFD stored a new, owned pidfd in `pidfd`.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(sync_r);
    drop(status_w);

    let sandbox = Sandbox {
        pid,
        pidfd,
        status: std::fs::File::from(status_r),
        started: Instant::now(),
        timeout: opts.timeout,
        limits,
        cgroup: cg,
        signals,
    };
    let release = idmap::apply(pid, &map)
        .map_err(LaunchError::from)
        .and_then(|_| nix::unistd::write(&sync_w, b"g").map(|_| ()).map_err(sys("releasing pid 1")));
    if let Err(e) = release {
        sandbox.kill();
        let _ = sandbox.reap();
        return Err(e);
    }
    Ok(sandbox)
}

impl Sandbox {
    /// Host pid of the sandbox's pid 1.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn signal(&self, sig: i32) {
        // SAFETY: pidfd_send_signal on our own pidfd; the pidfd guarantees we never signal a recycled pid.
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, self.pidfd.as_raw_fd(), sig, std::ptr::null::<libc::siginfo_t>(), 0) };
    }

    /// Kills the whole sandbox (SIGKILL of pid 1 ends every process of its pid namespace).
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn reap(&self) -> Result<(libc::c_int, libc::rusage), Errno> {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: wait4 on our own child; status and ru are valid out-pointers.
            let r = unsafe { libc::wait4(self.pid, &mut status, 0, &mut ru) };
            if r == self.pid {
                return Ok((status, ru));
            }
            match Errno::last() {
                Errno::EINTR => continue,
                e => return Err(e),
            }
        }
    }

    /// Waits for the sandbox to end, forwarding signals and enforcing the timeout.
    pub fn wait(mut self) -> Result<Outcome, LaunchError> {
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
                    if timed_out { PollTimeout::NONE } else { PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1).unwrap_or(PollTimeout::MAX) }
                }
                None => PollTimeout::NONE,
            };
            let mut fds = [
                PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, wait_ms) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(LaunchError::Sys { what: "poll", errno: e }),
            }
            if fds[1].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                while let Ok(Some(si)) = self.signals.read_signal() {
                    self.signal(si.ssi_signo as i32);
                }
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                break;
            }
        }
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

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(c) = self.cgroup.take() {
            self.kill();
            let _ = self.reap();
            c.remove();
        }
    }
}
