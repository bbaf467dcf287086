//! Everything that runs inside the new namespaces: the filesystem setup and pivot_root, `lo` and the host
//! name, rlimits, the pid-1 reaper, and the payload's last steps (session, no_new_privs, capabilities,
//! seccomp, exec).
//!
//! Reads top to bottom like bubblewrap's setup: [`init_main`] is pid 1 and never returns. Errors are written
//! as one line to the status pipe (`E <exit code> <message>`) and end the sandbox; the payload's end is
//! reported as `W <exit code> <signal>`.

use super::plan::{Flags, FsPlan, Op};
use crate::seccomp::CompiledFilter;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, fork, pivot_root, ForkResult, Pid};
use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Where the new root is assembled (inside a private tmpfs mounted over the host's /tmp in our mount namespace).
const BASE: &str = "/tmp";
const NEWROOT: &str = "/newroot";
const OLDROOT: &str = "/oldroot";

/// Identity of the container process inside its user namespace.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// setgroups(2) is permitted (false with a single-id map, where /proc/PID/setgroups says deny).
    pub setgroups_allowed: bool,
}

/// The five capability sets of the container process.
#[derive(Debug, Clone, Default)]
pub struct CapSets {
    pub bounding: Vec<caps::Capability>,
    pub effective: Vec<caps::Capability>,
    pub permitted: Vec<caps::Capability>,
    pub inheritable: Vec<caps::Capability>,
    pub ambient: Vec<caps::Capability>,
}

/// A hook run from inside the sandbox (OCI createContainer / startContainer).
#[derive(Debug, Clone)]
pub struct HookCmd {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<u32>,
}

/// How pid 1 behaves once the sandbox is set up.
pub enum ChildMode {
    /// `jobcell run`: pid 1 is jobcell's reaper, the payload its child; dies with the supervisor.
    Supervised,
    /// OCI container: pid 1 becomes the container process after `start` opens the exec FIFO.
    Container {
        /// O_PATH descriptor of `exec.fifo` in the state directory.
        fifo: RawFd,
        /// Connected `--console-socket`, when `process.terminal` is set.
        console: Option<RawFd>,
        create_container: Vec<HookCmd>,
        start_container: Vec<HookCmd>,
    },
    /// OCI `exec`: a process started inside a running container's namespaces.
    Exec {
        /// Connected `--console-socket`, when a terminal is requested.
        console: Option<RawFd>,
    },
}

/// What pid 1 needs, prepared by the supervisor before clone (so the child mostly performs syscalls).
pub struct ChildConfig {
    pub fs: FsPlan,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub path_dirs: Vec<String>,
    pub cwd: PathBuf,
    pub ids: Identity,
    pub caps: CapSets,
    pub no_new_privs: bool,
    /// (resource, soft, hard)
    pub rlimits: Vec<(nix::sys::resource::Resource, u64, u64)>,
    pub seccomp: Option<CompiledFilter>,
    pub umask: u32,
    pub oom_score_adj: Option<i32>,
    /// Namespaces to join by path (setns) instead of creating.
    pub join: Vec<(nix::sched::CloneFlags, PathBuf)>,
    /// OCI `exec`: a pidfd of the container's pid 1 and the namespaces to join through it.
    pub join_pidfd: Option<(RawFd, nix::sched::CloneFlags)>,
    /// The map of the user namespace clone3 created: pid 1 writes it itself when it may
    /// ([`super::idmap::IdMap::written_by_child`]), or waits for the supervisor's `s` (helpers started).
    pub userns_map: Option<super::idmap::IdMap>,
    /// Namespaces pid 1 creates itself before it is released (clone3 made only the user and pid ones).
    pub unshare: nix::sched::CloneFlags,
    /// Create the cgroup namespace once released (pid 1 is then in its cgroup, also on the move-in path).
    pub unshare_cgroup: bool,
    /// A new network namespace was created: bring `lo` up.
    pub new_netns: bool,
    /// Signals pid 1 forwards to the payload (blocked by the supervisor before clone).
    pub forward: SigSet,
    pub mode: ChildMode,
}

/// Reports a failure on the status pipe and exits with `code`.
/// Set once an OCI container reported ready: `create` no longer reads the status pipe, so failures from then
/// on also go to the container's stderr (its log), where its manager can see them.
static STATUS_UNREAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn fail(status: RawFd, code: i32, msg: &str) -> ! {
    let line = format!("E {code} {}\n", msg.replace('\n', " "));
    if STATUS_UNREAD.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = std::io::stderr()
            .write_all(format!("jobcell: {}", &line[2 + code.to_string().len()..]).as_bytes());
    }
    // SAFETY: `status` is the write end of the status pipe, open for the life of this process.
    let mut f = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(status)
    });
    let _ = f.write_all(line.as_bytes());
    // SAFETY: _exit ends the process without running destructors or atexit handlers of the forked image.
    unsafe { libc::_exit(code) }
}

trait OrFail<T> {
    fn or_fail(self, status: RawFd, what: &dyn Fn() -> String) -> T;
}
impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, status: RawFd, what: &dyn Fn() -> String) -> T {
        match self {
            Ok(v) => v,
            Err(e) => fail(status, 125, &format!("{}: {e}", what())),
        }
    }
}

/// Pid 1 of the sandbox. `sync` delivers the release message (and the OCI state JSON for hooks) once the id
/// maps, cgroup and runtime hooks are in place; EOF without it means the supervisor gave up.
pub fn init_main(cfg: &ChildConfig, sync: OwnedFd, status: OwnedFd) -> ! {
    let st = status.as_raw_fd();
    if matches!(cfg.mode, ChildMode::Supervised) {
        // Die with the supervisor, even on SIGKILL; the sync read below catches one that is already gone.
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            fail(st, 125, "prctl(PR_SET_PDEATHSIG) failed");
        }
    }
    // Work that needs no id map overlaps with the supervisor writing it (newuidmap/newgidmap are slow).
    let mut sync = std::fs::File::from(sync);
    match &cfg.userns_map {
        Some(map) if map.helpers_first() => {
            let mut b = [0u8; 1];
            if !matches!(std::io::Read::read(&mut sync, &mut b), Ok(1)) || b[0] != b's' {
                // SAFETY: _exit without destructors; the supervisor gave up on us (or died).
                unsafe { libc::_exit(125) };
            }
        }
        Some(map) => super::idmap::apply_own(map).or_fail(st, &|| "writing the id map".into()),
        None => {}
    }
    if !cfg.unshare.is_empty() {
        nix::sched::unshare(cfg.unshare)
            .or_fail(st, &|| format!("creating namespaces {:?}", cfg.unshare));
    }
    if cfg.new_netns {
        crate::net::loopback_up().or_fail(st, &|| "bringing up lo".into());
    }
    let mut msg = Vec::new();
    let _ = std::io::Read::read_to_end(&mut sync, &mut msg);
    if msg.first() != Some(&b'g') {
        // SAFETY: _exit without destructors; the supervisor gave up on us (or died), nothing to report to.
        unsafe { libc::_exit(125) };
    }
    let state_json = &msg[1..];

    if cfg.unshare_cgroup {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .or_fail(st, &|| "creating the cgroup namespace".into());
    }
    for (ns, path) in &cfg.join {
        let f = std::fs::File::open(path).or_fail(st, &|| format!("namespace {}", path.display()));
        nix::sched::setns(f, *ns).or_fail(st, &|| format!("joining namespace {}", path.display()));
    }
    let create_hooks: &[HookCmd] = match &cfg.mode {
        ChildMode::Container {
            create_container, ..
        } => create_container,
        _ => &[],
    };
    setup_fs(&cfg.fs, create_hooks, state_json, st);
    if let Some(h) = &cfg.hostname {
        nix::unistd::sethostname(h).or_fail(st, &|| "sethostname".into());
    }
    if let Some(d) = &cfg.domainname {
        // SAFETY: setdomainname reads exactly `len` bytes from the string's buffer.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            fail(st, 125, &format!("setdomainname: {}", Errno::last()));
        }
    }
    if let Some(adj) = cfg.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .or_fail(st, &|| "oom_score_adj".into());
    }
    for (res, soft, hard) in &cfg.rlimits {
        nix::sys::resource::setrlimit(*res, *soft, *hard)
            .or_fail(st, &|| format!("setrlimit {res:?}"));
    }

    match &cfg.mode {
        ChildMode::Supervised | ChildMode::Exec { .. } => supervise(cfg, st),
        ChildMode::Container {
            fifo,
            console,
            start_container,
            ..
        } => {
            if let Some(sock) = console {
                attach_console(*sock).or_fail(st, &|| "setting up the console".into());
            }
            let prog = resolve_program(cfg).unwrap_or_else(|(code, m)| fail(st, code, &m));
            // Everything that can fail is done before `create` returns (as runc does): identity,
            // capabilities, and the seccomp filter when it is not the last step.
            drop_privileges(cfg, st);
            // Ready: `create` may return. Block until `start` opens the FIFO for reading.
            let _ = nix::unistd::write(&status, b"R\n");
            STATUS_UNREAD.store(true, std::sync::atomic::Ordering::Relaxed);
            let fifo_path = format!("/proc/self/fd/{fifo}");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo_path)
                .or_fail(st, &|| "opening exec.fifo".into());
            let _ = std::io::Write::write_all(&mut &f, b"0");
            drop(f);
            // SAFETY: closing our own O_PATH descriptor, not used afterwards.
            unsafe { libc::close(*fifo) };
            for h in start_container {
                run_hook(h, state_json, None)
                    .or_fail(st, &|| format!("startContainer hook {}", h.path.display()));
            }
            exec_final(cfg, st, Some(prog))
        }
    }
}

/// OCI `exec`: the cloned process is already in the container's namespaces and cgroup.
pub fn exec_main(cfg: &ChildConfig, status: OwnedFd) -> ! {
    let st = status.as_raw_fd();
    if let Some((pidfd, ns)) = cfg.join_pidfd {
        if !ns.is_empty() {
            // SAFETY: the pidfd stays open in this process for the duration of the call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(pidfd) };
            nix::sched::setns(fd, ns).or_fail(st, &|| "joining the container's namespaces".into());
        }
        chdir("/").or_fail(st, &|| "chdir /".into());
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    match &cfg.mode {
        ChildMode::Exec {
            console: Some(sock),
        } => attach_console(*sock).or_fail(st, &|| "setting up the console".into()),
        _ => {
            nix::unistd::setsid().or_fail(st, &|| "setsid".into());
        }
    }
    let prog = resolve_program(cfg).unwrap_or_else(|(code, m)| fail(st, code, &m));
    drop_privileges(cfg, st);
    exec_final(cfg, st, Some(prog))
}

/// `jobcell run`: block forwarded signals, fork the payload, reap until it ends.
fn supervise(cfg: &ChildConfig, st: RawFd) -> ! {
    // Not dumpable: the payload (same uid) cannot ptrace pid 1 or read its memory.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let mut mask = cfg.forward;
    mask.add(Signal::SIGCHLD);
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).or_fail(st, &|| "sigprocmask".into());
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).or_fail(st, &|| "signalfd".into());

    let payload = spawn_payload(cfg, st).unwrap_or_else(|e| fail(st, 125, &format!("clone: {e}")));
    reap(payload, &sfd, st)
}

/// Starts the payload the way posix_spawn does: clone(CLONE_VM | CLONE_VFORK) on a stack of its own, so no
/// page table is copied and neither side takes copy-on-write faults; pid 1 is suspended until the payload
/// has exec'd (or failed and exited), so the payload may use pid 1's memory, heap included, meanwhile.
fn spawn_payload(cfg: &ChildConfig, st: RawFd) -> Result<Pid, Errno> {
    const STACK: usize = 1 << 20;
    const GUARD: usize = 4096;
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at the (config, status fd) pair on pid 1's stack, which stays live and
        // untouched while pid 1 is suspended by CLONE_VFORK.
        let (cfg, st) = unsafe { &*(arg as *const (&ChildConfig, RawFd)) };
        let st = *st;
        // Undo what the supervisor and Rust's runtime changed: blocked signals and an ignored SIGPIPE.
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
        // A new session: no controlling terminal, so nothing can be injected into the caller's terminal.
        nix::unistd::setsid().or_fail(st, &|| "setsid".into());
        drop_privileges(cfg, st);
        exec_final(cfg, st, None)
    }
    // SAFETY: a fresh anonymous mapping, checked below; unmapped again once the payload has exec'd.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK + GUARD,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: the lowest page of our own mapping becomes the guard against a stack overflow.
    unsafe { libc::mprotect(stack, GUARD, libc::PROT_NONE) };
    let arg = (cfg, st);
    // SAFETY: the stack top is inside the mapping (stacks grow down) and 16-byte aligned; `entry` never
    // returns (it execs or _exits); CLONE_VFORK keeps `arg` and the mapping alive until then.
    let pid = unsafe {
        libc::clone(
            entry,
            stack.cast::<u8>().add(STACK + GUARD).cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &arg as *const (&ChildConfig, RawFd) as *mut libc::c_void,
        )
    };
    let err = Errno::last();
    // SAFETY: unmapping the mapping made above; the payload no longer runs on it (it exec'd or exited).
    unsafe { libc::munmap(stack, STACK + GUARD) };
    if pid < 0 {
        return Err(err);
    }
    Ok(Pid::from_raw(pid))
}

/// The pid-1 loop: forwards signals to the payload, reaps every zombie, exits with the payload's status.
fn reap(payload: Pid, sfd: &SignalFd, status: RawFd) -> ! {
    loop {
        let sig = match sfd.read_signal() {
            Ok(Some(si)) => si.ssi_signo as i32,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => fail(status, 125, &format!("signalfd read: {e}")),
        };
        if sig != libc::SIGCHLD {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = kill(payload, s);
            }
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == payload => finish(status, code, 0),
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == payload => {
                    finish(status, 128 + s as i32, s as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn finish(status: RawFd, code: i32, sig: i32) -> ! {
    let line = format!("W {code} {sig}\n");
    // SAFETY: write(2) of a local buffer to the open status pipe; _exit then ends pid 1, and with it every
    // process left in the pid namespace (the kernel kills them).
    unsafe {
        libc::write(status, line.as_ptr().cast(), line.len());
        libc::_exit(code)
    }
}

/// Everything before exec that takes privileges away: default signal dispositions, umask, working
/// directory, close-on-exec for inherited descriptors, identity and capability sets, and no_new_privs.
/// Without no_new_privs the seccomp filter must be loaded here, while CAP_SYS_ADMIN is still held.
fn drop_privileges(cfg: &ChildConfig, st: RawFd) {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for s in [
        Signal::SIGPIPE,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
    }
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(cfg.umask));
    chdir(&cfg.cwd).or_fail(st, &|| format!("working directory {}", cfg.cwd.display()));
    // SAFETY: close_range only changes descriptor flags; every fd above 2 becomes close-on-exec.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if let (Some(filter), false) = (&cfg.seccomp, cfg.no_new_privs) {
        crate::seccomp::install(filter).or_fail(st, &|| "loading the seccomp filter".into());
    }
    set_identity_and_caps(&cfg.ids, &cfg.caps).or_fail(st, &|| {
        format!(
            "switching to uid {} gid {} (is it mapped in the user namespace?)",
            cfg.ids.uid, cfg.ids.gid
        )
    });
    if cfg.no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            fail(st, 125, "prctl(PR_SET_NO_NEW_PRIVS) failed");
        }
    }
}

/// The last steps: the seccomp filter (when no_new_privs allows loading it unprivileged), then exec.
fn exec_final(cfg: &ChildConfig, st: RawFd, prog: Option<CString>) -> ! {
    if let (Some(filter), true) = (&cfg.seccomp, cfg.no_new_privs) {
        crate::seccomp::install(filter).or_fail(st, &|| "loading the seccomp filter".into());
    }
    match prog {
        Some(p) => {
            let Err(e) = nix::unistd::execve(&p, &cfg.args, &cfg.env);
            fail(
                st,
                if e == Errno::ENOENT { 127 } else { 126 },
                &format!("exec {}: {e}", p.to_string_lossy()),
            )
        }
        None => exec(cfg, st),
    }
}

/// Switches to the process user and sets the five capability sets, in the only order the kernel accepts:
/// bounding drops need CAP_SETPCAP, setresuid away from 0 needs KEEPCAPS to keep the permitted set, and
/// ambient capabilities need to be both permitted and inheritable.
fn set_identity_and_caps(ids: &Identity, sets: &CapSets) -> Result<(), Errno> {
    use caps::CapSet;
    let ce = |_| Errno::EPERM;
    for c in caps::all() {
        if !sets.bounding.contains(&c) {
            caps::drop(None, CapSet::Bounding, c).map_err(ce)?;
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    if ids.setgroups_allowed {
        let g: Vec<nix::unistd::Gid> = ids
            .additional_gids
            .iter()
            .map(|g| nix::unistd::Gid::from_raw(*g))
            .collect();
        match raw_setgroups(&g) {
            Ok(()) => {}
            // A joined user namespace may deny setgroups; its single-id map leaves no groups to drop.
            Err(Errno::EPERM)
                if std::fs::read_to_string("/proc/self/setgroups")
                    .is_ok_and(|s| s.trim() == "deny") => {}
            Err(e) => return Err(e),
        }
    }
    let (gid, uid) = (
        nix::unistd::Gid::from_raw(ids.gid),
        nix::unistd::Uid::from_raw(ids.uid),
    );
    // Raw syscalls: glibc's wrappers may try to signal other threads (setxid), which the payload, started
    // with CLONE_VM, must not.
    // SAFETY: setresgid/setresuid take integer ids only.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_setresgid,
            gid.as_raw(),
            gid.as_raw(),
            gid.as_raw(),
        )
    })?;
    // SAFETY: as above.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_setresuid,
            uid.as_raw(),
            uid.as_raw(),
            uid.as_raw(),
        )
    })?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    caps::clear(None, CapSet::Ambient).map_err(ce)?;
    capset(&sets.effective, &sets.permitted, &sets.inheritable)?;
    for c in &sets.ambient {
        caps::raise(None, CapSet::Ambient, *c).map_err(ce)?;
    }
    Ok(())
}

fn raw_setgroups(g: &[nix::unistd::Gid]) -> Result<(), Errno> {
    let ids: Vec<libc::gid_t> = g.iter().map(|g| g.as_raw()).collect();
    // SAFETY: setgroups reads `len` gids from a live buffer.
    Errno::result(unsafe { libc::syscall(libc::SYS_setgroups, ids.len(), ids.as_ptr()) }).map(drop)
}

/// Sets the effective, permitted and inheritable sets with one capset(2) (the caps crate reads and writes
/// once per set).
fn capset(
    effective: &[caps::Capability],
    permitted: &[caps::Capability],
    inheritable: &[caps::Capability],
) -> Result<(), Errno> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mask = |v: &[caps::Capability]| v.iter().fold(0u64, |m, c| m | c.bitmask());
    let (e, p, i) = (mask(effective), mask(permitted), mask(inheritable));
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set
        pid: 0,
    };
    let data = [
        Data {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        Data {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: capset reads a version-3 header and the two data words it implies, both live locals.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    Errno::result(r).map(drop)
}

/// execve with PATH search; 127 when not found, 126 when found but not executable.
fn exec(cfg: &ChildConfig, st: RawFd) -> ! {
    let prog = &cfg.args[0];
    let name = prog.to_bytes();
    let candidates: Vec<CString> = if name.contains(&b'/') {
        vec![prog.clone()]
    } else {
        cfg.path_dirs
            .iter()
            .filter_map(|d| CString::new(format!("{}/{}", d, String::from_utf8_lossy(name))).ok())
            .collect()
    };
    let mut saw_eacces = None;
    let mut last = Errno::ENOENT;
    for c in &candidates {
        let Err(e) = nix::unistd::execve(c, &cfg.args, &cfg.env);
        match e {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES | Errno::EPERM | Errno::ENOEXEC | Errno::EISDIR => saw_eacces = Some(e),
            other => last = other,
        }
        if name.contains(&b'/') {
            last = e;
        }
    }
    let shown = String::from_utf8_lossy(name);
    match saw_eacces {
        Some(e) => fail(st, 126, &format!("{shown}: not executable: {e}")),
        None if last == Errno::ENOENT || last == Errno::ENOTDIR => {
            fail(st, 127, &format!("{shown}: command not found"))
        }
        None => fail(st, 126, &format!("{shown}: cannot execute: {last}")),
    }
}

fn in_root(base: &str, p: &Path) -> PathBuf {
    PathBuf::from(base).join(p.strip_prefix("/").unwrap_or(p))
}

fn ms_flags(f: Flags) -> MsFlags {
    let mut m = MsFlags::empty();
    m.set(MsFlags::MS_RDONLY, f.readonly);
    m.set(MsFlags::MS_NOSUID, f.nosuid);
    m.set(MsFlags::MS_NODEV, f.nodev);
    m.set(MsFlags::MS_NOEXEC, f.noexec);
    m
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Adds per-mount flags to the mount at `path` (and its submounts when `recursive`), keeping the flags the
/// kernel locked when the mount came from a more privileged namespace.
fn restrict_mount(path: &Path, f: Flags, recursive: bool) -> Result<(), Errno> {
    if f == Flags::default() {
        return Ok(());
    }
    let mut attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    for (on, bit) in [
        (f.readonly, 0x1u64),
        (f.nosuid, 0x2),
        (f.nodev, 0x4),
        (f.noexec, 0x8),
    ] {
        if on {
            attr.attr_set |= bit;
        }
    }
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 } | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: mount_setattr reads `attr` (a live, correctly sized struct) and the NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    match Errno::last() {
        Errno::ENOSYS => {
            // Kernels before 5.12: remount the top mount, carrying over the locked flags it already has.
            let st = nix::sys::statvfs::statvfs(path)?;
            use nix::sys::statvfs::FsFlags;
            let mut m = ms_flags(f) | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
            for (have, bit) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            ] {
                if st.flags().contains(have) {
                    m |= bit;
                }
            }
            mount(None::<&str>, path, None::<&str>, m, None::<&str>)
        }
        e => Err(e),
    }
}

/// Runs `make` (which creates `path`); when the parent directory is missing, creates it and tries again.
/// Most parents exist, so this is one syscall where create_dir_all would make several.
fn with_parents(path: &Path, make: impl Fn() -> std::io::Result<()>) -> std::io::Result<()> {
    match make() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            make()
        }
        r => r,
    }
}

/// `mkdir -p`: a directory at `path`, existing or new.
fn mkdir_p(path: &Path) -> std::io::Result<()> {
    with_parents(path, || match std::fs::create_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    })
}

/// Creates a mountpoint at `dst` matching the kind of `src` (directory or file).
fn make_mountpoint(dst: &Path, dir: bool) -> std::io::Result<()> {
    if dir {
        return mkdir_p(dst);
    }
    with_parents(dst, || {
        match std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dst)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound && dst.exists() => Ok(()),
            Err(e) => Err(e),
        }
    })
}

fn setup_fs(fs: &FsPlan, create_hooks: &[HookCmd], state_json: &[u8], st: RawFd) {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .or_fail(st, &|| "making / private".into());
    // The root directory may live under BASE: hold it open before the staging tmpfs hides it.
    let root_fd = fs.root_dir.as_ref().map(|dir| {
        nix::fcntl::open(
            dir.as_path(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .or_fail(st, &|| format!("root filesystem {}", dir.display()))
    });
    mount(
        Some("tmpfs"),
        BASE,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=64k"),
    )
    .or_fail(st, &|| format!("mounting the staging tmpfs on {BASE}"));
    chdir(BASE).or_fail(st, &|| BASE.into());
    for d in ["newroot", "oldroot"] {
        std::fs::create_dir(d).or_fail(st, &|| format!("mkdir {d}"));
    }
    match &root_fd {
        None => mount(
            Some("tmpfs"),
            "newroot",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755,size=4m"),
        )
        .or_fail(st, &|| "mounting the root tmpfs".into()),
        Some(fd) => mount(
            Some(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str()),
            "newroot",
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .or_fail(st, &|| "binding the root filesystem".into()),
    }
    drop(root_fd);
    // The host's root moves to /oldroot; sources of binds are read from there.
    pivot_root(".", "oldroot").or_fail(st, &|| "pivot_root into the staging area".into());
    chdir("/").or_fail(st, &|| "chdir /".into());

    for op in &fs.ops {
        apply(op, fs.cgroup_dir.as_deref(), st);
    }
    // OCI createContainer hooks: container namespaces, mounts in place, paths resolved in the host's view.
    for h in create_hooks {
        run_hook(h, state_json, Some(OLDROOT))
            .or_fail(st, &|| format!("createContainer hook {}", h.path.display()));
    }
    if fs.root_readonly {
        let ro = Flags {
            readonly: true,
            nosuid: fs.root_dir.is_none(),
            nodev: fs.root_dir.is_none(),
            noexec: false,
        };
        restrict_mount(Path::new(NEWROOT), ro, false)
            .or_fail(st, &|| "making the root read-only".into());
    }
    umount2(OLDROOT, MntFlags::MNT_DETACH).or_fail(st, &|| "detaching the host root".into());
    chdir(NEWROOT).or_fail(st, &|| NEWROOT.into());
    pivot_root(".", ".").or_fail(st, &|| "pivot_root into the new root".into());
    umount2(".", MntFlags::MNT_DETACH).or_fail(st, &|| "detaching the staging area".into());
    chdir("/").or_fail(st, &|| "chdir /".into());
    if let Some(p) = fs.root_propagation {
        mount(none, "/", none, p | MsFlags::MS_REC, none)
            .or_fail(st, &|| "setting root propagation".into());
    }
}

/// Runs one hook with the OCI state on its stdin, chrooted to `root` when given; fails on a non-zero exit
/// or when its timeout passes (then the hook's whole process group is killed: a shell hook's children too).
pub fn run_hook(h: &HookCmd, state_json: &[u8], root: Option<&str>) -> Result<(), String> {
    let path = CString::new(h.path.as_os_str().as_encoded_bytes())
        .map_err(|_| "path contains NUL".to_string())?;
    let mut argv = cstrings(&h.args, "hook args")?;
    if argv.is_empty() {
        argv.push(path.clone());
    }
    let env = cstrings(&h.env, "hook env")?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e.to_string())?;
    // SAFETY: the caller is single-threaded (pid 1 of a sandbox, or the CLI), so the child may allocate.
    match unsafe { fork() }.map_err(|e| e.to_string())? {
        ForkResult::Child => {
            drop(w);
            let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
            let _ = nix::unistd::dup2_stdin(&r);
            if let Some(root) = root {
                if nix::unistd::chroot(root).is_err() || chdir("/").is_err() {
                    // SAFETY: _exit in a forked child.
                    unsafe { libc::_exit(126) };
                }
            }
            let _ = nix::unistd::execve(&path, &argv, &env);
            // SAFETY: _exit in a forked child after a failed exec.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(r);
            // Also here, so the group exists before a timeout could need it (whichever runs first wins).
            let _ = nix::unistd::setpgid(child, child);
            let _ = std::io::Write::write_all(&mut std::fs::File::from(w), state_json);
            let deadline = h
                .timeout
                .map(|t| std::time::Instant::now() + std::time::Duration::from_secs(t as u64));
            loop {
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, 0)) => return Ok(()),
                    Ok(WaitStatus::Exited(_, c)) => return Err(format!("exited with status {c}")),
                    Ok(WaitStatus::Signaled(_, s, _)) => return Err(format!("killed by {s}")),
                    Ok(_) => {}
                    Err(Errno::EINTR) => {}
                    Err(e) => return Err(e.to_string()),
                }
                if deadline.is_some_and(|d| std::time::Instant::now() > d) {
                    let _ = nix::sys::signal::killpg(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(format!("timed out after {}s", h.timeout.unwrap_or(0)));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

/// Creates the container's terminal and hands its master to the `--console-socket` peer (SCM_RIGHTS).
fn attach_console(sock: RawFd) -> Result<(), Errno> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let master = posix_openpt(
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
    )?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )?;
    let fds = [master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    sendmsg::<UnixAddr>(
        sock,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    drop(master);
    // SAFETY: closing the socket descriptor we were handed; not used afterwards.
    unsafe { libc::close(sock) };
    nix::unistd::setsid()?;
    // SAFETY: TIOCSCTTY on an open terminal descriptor with an integer argument.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(Errno::last());
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this process.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// Finds the program to exec (PATH search) before the container is reported created.
fn resolve_program(cfg: &ChildConfig) -> Result<CString, (i32, String)> {
    let prog = cfg
        .args
        .first()
        .ok_or((125, "process.args is empty".to_string()))?;
    let name = String::from_utf8_lossy(prog.to_bytes()).into_owned();
    let candidates: Vec<String> = if name.contains('/') {
        vec![name.clone()]
    } else {
        cfg.path_dirs
            .iter()
            .map(|d| format!("{d}/{name}"))
            .collect()
    };
    let mut found_not_exec = false;
    for c in candidates {
        let p = Path::new(&c);
        if p.is_file() {
            if nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() {
                return CString::new(c).map_err(|_| (125, "NUL in path".into()));
            }
            found_not_exec = true;
        }
    }
    if found_not_exec {
        Err((126, format!("{name}: not executable")))
    } else {
        Err((127, format!("{name}: command not found in the container")))
    }
}

/// Executes one planned operation.
fn apply(op: &Op, cgroup_dir: Option<&Path>, st: RawFd) {
    let none = None::<&str>;
    match op {
        Op::Mount {
            fstype,
            source,
            dst,
            flags,
            data,
        } => {
            let full = in_root(NEWROOT, dst);
            mkdir_p(&full).or_fail(st, &|| format!("creating mountpoint {}", dst.display()));
            let data = (!data.is_empty()).then_some(data.as_str());
            let r = mount(
                Some(source.as_str()),
                &full,
                Some(fstype.as_str()),
                ms_flags(*flags),
                data,
            );
            let r = match (r, cgroup_dir) {
                // The kernel refuses a fresh cgroup2 mount to most user namespaces (EPERM, or EBUSY with
                // other mount options than the host's); the sandbox's own cgroup directory, bound, is the
                // same view, as the cgroup namespace's root is that directory (runc does the same).
                (Err(Errno::EPERM | Errno::EBUSY), Some(dir)) if fstype == "cgroup2" => mount(
                    Some(&in_root(OLDROOT, dir)),
                    &full,
                    none,
                    MsFlags::MS_BIND,
                    none,
                )
                .and_then(|()| restrict_mount(&full, *flags, false)),
                (r, _) => r,
            };
            r.or_fail(st, &|| format!("mounting {fstype} on {}", dst.display()));
        }
        Op::Bind {
            src,
            dst,
            recursive,
            flags,
        } => {
            let from = in_root(OLDROOT, src);
            let full = in_root(NEWROOT, dst);
            let is_dir = std::fs::metadata(&from)
                .or_fail(st, &|| format!("bind source {}", src.display()))
                .is_dir();
            make_mountpoint(&full, is_dir).or_fail(st, &|| {
                format!(
                    "bind destination {} cannot be created (is it inside a read-only directory?)",
                    dst.display()
                )
            });
            let mut m = MsFlags::MS_BIND;
            m.set(MsFlags::MS_REC, *recursive);
            mount(Some(&from), &full, none, m, none).or_fail(st, &|| {
                format!("binding {} to {}", src.display(), dst.display())
            });
            restrict_mount(&full, *flags, *recursive)
                .or_fail(st, &|| format!("restricting bind {}", dst.display()));
        }
        Op::Symlink { target, link } => {
            let full = in_root(NEWROOT, link);
            match with_parents(&full, || std::os::unix::fs::symlink(target, &full)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => fail(st, 125, &format!("symlink {}: {e}", link.display())),
            }
        }
        Op::Mkdir { path } => {
            mkdir_p(&in_root(NEWROOT, path)).or_fail(st, &|| format!("mkdir {}", path.display()));
        }
        Op::WriteFile { path, contents } => {
            std::fs::write(in_root(NEWROOT, path), contents)
                .or_fail(st, &|| format!("writing {}", path.display()));
        }
        Op::Mask { path } => {
            let full = in_root(NEWROOT, path);
            match std::fs::symlink_metadata(&full) {
                Err(_) => {}
                Ok(md) if md.is_dir() => mount(
                    Some("tmpfs"),
                    &full,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    Some("size=0,mode=0555"),
                )
                .or_fail(st, &|| format!("masking {}", path.display())),
                Ok(_) => mount(
                    Some(&in_root(OLDROOT, Path::new("/dev/null"))),
                    &full,
                    none,
                    MsFlags::MS_BIND,
                    none,
                )
                .or_fail(st, &|| format!("masking {}", path.display())),
            }
        }
        Op::ReadOnly { path } => {
            let full = in_root(NEWROOT, path);
            if std::fs::symlink_metadata(&full).is_err() {
                return;
            }
            mount(
                Some(&full),
                &full,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )
            .or_fail(st, &|| format!("binding {} read-only", path.display()));
            let ro = Flags {
                readonly: true,
                nosuid: true,
                nodev: true,
                noexec: true,
            };
            restrict_mount(&full, ro, true)
                .or_fail(st, &|| format!("making {} read-only", path.display()));
        }
    }
}

/// What the status pipe said: the first setup/exec error (exit code, message) and the payload's end
/// (exit code, signal).
pub type StatusRecords = (Option<(i32, String)>, Option<(i32, i32)>);

/// Parses the status pipe's records as written by [`fail`] and [`finish`].
pub fn parse_status(text: &str) -> StatusRecords {
    let mut err = None;
    let mut done = None;
    for line in text.lines() {
        let mut it = line.splitn(3, ' ');
        match (it.next(), it.next(), it.next()) {
            (Some("E"), Some(code), msg) if err.is_none() => {
                if let Ok(c) = code.parse() {
                    err = Some((c, msg.unwrap_or("").to_string()));
                }
            }
            (Some("W"), Some(code), Some(sig)) => {
                if let (Ok(c), Ok(s)) = (code.parse(), sig.parse()) {
                    done = Some((c, s));
                }
            }
            _ => {}
        }
    }
    (err, done)
}

/// Builds the argv/env C strings; NUL bytes are rejected before the sandbox is created.
pub fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>, String> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| format!("{what} contains a NUL byte: {s:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records() {
        assert_eq!(parse_status(""), (None, None));
        assert_eq!(parse_status("W 0 0\n"), (None, Some((0, 0))));
        assert_eq!(parse_status("W 137 9\n"), (None, Some((137, 9))));
        let (e, w) = parse_status("E 127 foo: command not found\nW 127 0\n");
        assert_eq!(e, Some((127, "foo: command not found".into())));
        assert_eq!(w, Some((127, 0)));
    }
}
