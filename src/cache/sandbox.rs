//! The cache inside a sandbox of the local executor. The sandbox's network is its own
//! namespace with only `lo`, and HTTP-only clients such as `@actions/cache` cannot use the
//! API's Unix socket, so the executor:
//!
//! 1. adds `ACTIONS_CACHE_URL=http://127.0.0.1:8427/` and `ACTIONS_RUNTIME_TOKEN` (the cache
//!    token, passed through the environment of `jobcell run`, never its argv) to the
//!    sandbox's environment, bind-mounts a private "ready" directory, and runs
//!    the payload through `sh -c` that waits (at most ~10 s) for `ready/cache` before it
//!    `exec`s the real command (same pid, same exit status);
//! 2. finds the sandbox's pid 1 (a descendant of `jobcell run` in another network
//!    namespace), forks a single-threaded helper that joins the sandbox's user and network
//!    namespaces, creates a TCP listener on 127.0.0.1:8427 there and passes its fd back over
//!    a socket pair (SCM_RIGHTS); the server accepts on it and serves the sandbox router
//!    (runtime API and cache) — no process and no secret of jobcell lives in the sandbox;
//! 3. creates `ready/cache` (also when the listener could not be made, so no job waits
//!    forever; the failure is logged).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Port of the cache listener inside a sandbox's network namespace.
pub const SANDBOX_CACHE_PORT: u16 = 8427;
/// Where the ready directory appears inside the sandbox.
pub const SANDBOX_READY_DIR: &str = "/run/jobcell/ready";

/// The shell prologue that waits for the listener, then becomes the payload.
const WAIT: &str = "i=0; while [ ! -e /run/jobcell/ready/cache ] && [ $i -lt 1000 ]; do \
                    i=$((i+1)); sleep 0.01; done; exec \"$@\"";

/// The value of `ACTIONS_CACHE_URL` inside a sandbox.
pub fn sandbox_cache_url() -> String {
    format!("http://127.0.0.1:{SANDBOX_CACHE_PORT}/")
}

/// Adds the cache environment (`ACTIONS_RUNTIME_TOKEN` by name only: its value travels in
/// the environment of `jobcell run`), the ready-directory bind and the waiting prologue to
/// the arguments of `jobcell run` (`run FLAG VALUE ... -- COMMAND...`). Returns false (and
/// changes nothing) when the arguments do not have that shape.
pub fn prepare_run_args(args: &mut Vec<String>, ready_dir: &Path) -> bool {
    // Every flag of the executor's command line takes a value, so `--` is found at an odd
    // index after `run`.
    let Some(sep) = (1..args.len()).step_by(2).find(|&i| args[i] == "--") else {
        return false;
    };
    if args.first().map(String::as_str) != Some("run") || sep + 1 >= args.len() {
        return false;
    }
    let command = args.split_off(sep + 1);
    args.truncate(sep);
    for (k, v) in [
        (
            "--env",
            format!("ACTIONS_CACHE_URL={}", sandbox_cache_url()),
        ),
        ("--env", "ACTIONS_RUNTIME_TOKEN".to_string()),
        (
            "--bind",
            format!("{}:{SANDBOX_READY_DIR}", ready_dir.display()),
        ),
    ] {
        args.push(k.to_string());
        args.push(v);
    }
    args.push("--".to_string());
    args.extend(["sh", "-c", WAIT, "jobcell-cache-wait"].map(String::from));
    args.extend(command);
    true
}

fn ns_ino(pid: &str, ns: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// The first descendant of `runner` (breadth first, depth ≤ 3) in another network
/// namespace than this process, waiting up to `wait`.
pub fn find_sandbox_pid(runner: u32, wait: Duration) -> Option<u32> {
    let own = ns_ino("self", "net")?;
    let deadline = Instant::now() + wait;
    loop {
        let mut level = vec![runner];
        for _ in 0..3 {
            let mut next = Vec::new();
            for p in level {
                for c in children(p) {
                    match ns_ino(&c.to_string(), "net") {
                        Some(n) if n != own => return Some(c),
                        _ => next.push(c),
                    }
                }
            }
            level = next;
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// Runs in the forked child: only raw system calls on fds opened before the fork and on
/// stack memory (no allocation, no locks), then the caller `_exit`s with the result.
///
/// # Safety
/// Must be called only in a freshly forked child; the fds must be valid.
unsafe fn child_listen(userfd: i32, join_user: bool, netfd: i32, sock: i32, port: u16) -> i32 {
    if join_user && libc::setns(userfd, libc::CLONE_NEWUSER) != 0 {
        return 10;
    }
    if libc::setns(netfd, libc::CLONE_NEWNET) != 0 {
        return 11;
    }
    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
    if fd < 0 {
        return 12;
    }
    let one: libc::c_int = 1;
    libc::setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        &one as *const libc::c_int as *const libc::c_void,
        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
    );
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
        },
        sin_zero: [0; 8],
    };
    if libc::bind(
        fd,
        &addr as *const libc::sockaddr_in as *const libc::sockaddr,
        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
    ) != 0
    {
        return 13;
    }
    if libc::listen(fd, 128) != 0 {
        return 14;
    }
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let mut cbuf = CmsgBuf([0; 64]);
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    if cmsg.is_null() {
        return 15;
    }
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::c_int, fd);
    if libc::sendmsg(sock, &msg, 0) < 0 {
        return 16;
    }
    0
}

/// A TCP listener on 127.0.0.1:`port` inside the network namespace of process `pid`.
pub fn listen_in_netns(pid: u32, port: u16) -> io::Result<std::net::TcpListener> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let user = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
    let net = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let join_user = ns_ino("self", "user") != ns_ino(&pid.to_string(), "user");
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    // SAFETY: fork has no preconditions. The child (single-threaded copy of this process)
    // runs only `child_listen` — raw async-signal-safe system calls on fds opened above and
    // stack memory — and leaves with `_exit`, never returning into Rust code that could
    // touch locks or the allocator inherited in an unknown state.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: we are the freshly forked child; all fds are open.
        let code = unsafe {
            child_listen(
                user.as_raw_fd(),
                join_user,
                net.as_raw_fd(),
                theirs.as_raw_fd(),
                port,
            )
        };
        // SAFETY: _exit is async-signal-safe and ends the child without running destructors.
        unsafe { libc::_exit(code) };
    }
    drop(theirs);
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let received = recvmsg::<()>(
        ours.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)
    .map(|m| {
        let mut fd = None;
        if let Ok(cmsgs) = m.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for f in fds {
                        // SAFETY: SCM_RIGHTS gave this process a new fd that nothing else owns.
                        let owned = unsafe { OwnedFd::from_raw_fd(f) };
                        fd.get_or_insert(owned);
                    }
                }
            }
        }
        fd
    });
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    unsafe { libc::waitpid(child, &mut status, 0) };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    match received? {
        Some(fd) if code == 0 => Ok(std::net::TcpListener::from(fd)),
        _ => Err(io::Error::other(format!(
            "namespace helper failed (step {code}, errno not available)"
        ))),
    }
}

/// Serves the sandbox router on a listener inside the sandbox of `runner` (the `jobcell
/// run` process) and then marks `ready_dir/cache`. Runs until aborted.
pub async fn serve_in_sandbox(state: crate::api::AppState, runner: u32, ready_dir: PathBuf) {
    let made = tokio::task::spawn_blocking(move || {
        let pid = find_sandbox_pid(runner, Duration::from_secs(10))
            .ok_or_else(|| io::Error::other("sandbox process not found"))?;
        let l = listen_in_netns(pid, SANDBOX_CACHE_PORT)?;
        l.set_nonblocking(true)?;
        Ok::<_, io::Error>(l)
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r);
    let listener = made.and_then(tokio::net::TcpListener::from_std);
    let mark = || {
        if let Err(e) = std::fs::write(ready_dir.join("cache"), b"") {
            tracing::warn!(error = %e, "cannot mark the sandbox's cache listener ready");
        }
    };
    match listener {
        Ok(l) => {
            mark();
            let _ = axum::serve(l, crate::api::sandbox_router(state)).await;
        }
        Err(e) => {
            mark();
            tracing::warn!(error = %e, "no cache listener inside the sandbox; ACTIONS_CACHE_URL will not answer");
        }
    }
}

/// Aborts the sandbox's cache listener when dropped.
/// The in-sandbox cache listener; it stops when this is dropped.
pub type ListenerGuard = crate::executor::AbortOnDrop<()>;

/// Prepares a job's launch of `jobcell run` for the cache (see the module doc); returns the
/// host side of the ready directory, or `None` when the server has no cache or the arguments
/// are not of the expected shape.
pub fn prepare(
    state: &crate::api::AppState,
    launch: &mut crate::executor::Launch,
    job_id: &str,
    execution_id: &str,
    exec_dir: &Path,
) -> io::Result<Option<PathBuf>> {
    if state.cache.is_none() {
        return Ok(None);
    }
    let ready = exec_dir.join("ready");
    std::fs::create_dir(&ready)?;
    if !prepare_run_args(&mut launch.args, &ready) {
        return Ok(None);
    }
    let token = crate::api::auth::cache_token(&state.secrets, job_id, execution_id);
    launch
        .env
        .push(("ACTIONS_RUNTIME_TOKEN".to_string(), token));
    Ok(Some(ready))
}

/// Starts [`serve_in_sandbox`] for the `jobcell run` process `runner`.
pub fn spawn_listener(
    state: crate::api::AppState,
    runner: u32,
    ready_dir: PathBuf,
) -> ListenerGuard {
    crate::executor::AbortOnDrop(tokio::spawn(serve_in_sandbox(state, runner, ready_dir)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_get_env_bind_and_prologue() {
        let mut a: Vec<String> = [
            "run",
            "--env",
            "A=b",
            "--timeout",
            "30s",
            "--",
            "echo",
            "--",
            "x",
        ]
        .map(String::from)
        .to_vec();
        assert!(prepare_run_args(&mut a, Path::new("/r/ex/ready")));
        let s = a.join(" ");
        assert!(s.starts_with("run --env A=b --timeout 30s --env ACTIONS_CACHE_URL=http://127.0.0.1:8427/ --env ACTIONS_RUNTIME_TOKEN --bind /r/ex/ready:/run/jobcell/ready -- sh -c "), "{s}");
        assert!(s.ends_with(" jobcell-cache-wait echo -- x"), "{s}");
        let mut bad: Vec<String> = ["run", "--env", "--", "x"].map(String::from).to_vec();
        let before = bad.clone();
        assert!(!prepare_run_args(&mut bad, Path::new("/r")));
        assert_eq!(bad, before);
    }
}
