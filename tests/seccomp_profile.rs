//! Enforcement tests for the shipped seccomp profiles: a forked child sets
//! no_new_privs, installs the compiled filter and probes syscalls with raw
//! `syscall(2)` calls (no allocation after fork), reporting errnos through a pipe;
//! a second test execs real tools (sh, coreutils, python3, node, gcc, git, make)
//! under the filter. Needs no privilege; run as root it also proves that the
//! EPERMs come from the filter, not from missing capabilities.

use std::ffi::CString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use jobcell::seccomp::{compile, install, resolve, CompiledFilter};

fn profile(name: &str) -> CompiledFilter {
    // The shipped profiles as compiled into the binary (the tests may run where the source tree is unreadable).
    let p = resolve(name, &[]).unwrap().unwrap();
    let (filter, warnings) = compile(&p, true).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    filter
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Result of a raw syscall: 0 on success, else errno.
fn rc(ret: libc::c_long) -> i32 {
    if ret < 0 {
        errno()
    } else {
        0
    }
}

const NPROBES: usize = 32;

/// Forks; the child sets no_new_privs, installs `filter`, runs `probes` (which must
/// not allocate) and writes the results to a pipe. Returns the results.
fn run_in_child(
    filter: &CompiledFilter,
    probes: fn(&Ctx, &mut [i32; NPROBES]),
    ctx: &Ctx,
) -> [i32; NPROBES] {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            libc::close(fds[0]);
            let mut out = [-1i32; NPROBES];
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                libc::_exit(2);
            }
            if install(filter).is_err() {
                libc::_exit(3);
            }
            probes(ctx, &mut out);
            let n = std::mem::size_of_val(&out);
            if libc::write(fds[1], out.as_ptr().cast(), n) != n as isize {
                libc::_exit(4);
            }
            libc::_exit(0);
        }
    }
    unsafe { libc::close(fds[1]) };
    let mut out = [0i32; NPROBES];
    let n = std::mem::size_of_val(&out);
    let got = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), n) };
    unsafe { libc::close(fds[0]) };
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "probe child failed: status {status:#x}"
    );
    assert_eq!(got, n as isize);
    out
}

/// Everything the probes need, prepared before fork.
struct Ctx {
    _dir: tempfile::TempDir,
    chr: CString,
    blk: CString,
    fifo: CString,
    reg: CString,
    file: CString,
    tmpfs_target: CString,
}

fn ctx() -> Ctx {
    let dir = tempfile::tempdir().unwrap();
    let c = |n: &str| CString::new(dir.path().join(n).to_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("data"), b"hello").unwrap();
    Ctx {
        chr: c("chr"),
        blk: c("blk"),
        fifo: c("fifo"),
        reg: c("reg"),
        file: c("data"),
        tmpfs_target: c(""),
        _dir: dir,
    }
}

// Probe indices for the default profile.
const KEYCTL: usize = 0;
const BPF: usize = 1;
const UNSHARE_USER: usize = 2;
const CLONE_NEWNS: usize = 3;
const MOUNT: usize = 4;
const PTRACE: usize = 5;
const IO_URING: usize = 6;
const TIOCSTI: usize = 7;
const TIOCSTI_HIGH: usize = 8;
const TIOCLINUX: usize = 9;
const MKNOD_CHR: usize = 10;
const MKNOD_BLK: usize = 11;
const MKFIFO: usize = 12;
const MKNOD_REG: usize = 13;
const SYSCALL_1000: usize = 14;
const CLONE3: usize = 15;
const GETPID: usize = 16;
const OPEN_READ: usize = 17;
const FORK_WAIT: usize = 18;
const FIONREAD: usize = 19;
const PERSONALITY_QUERY: usize = 20;
const PERSONALITY_BAD: usize = 21;
const SOCKET_INET: usize = 22;
const SOCKET_UNIX: usize = 23;
const SETNS: usize = 24;
const UNLISTED: usize = 25;
const CLONE_PLAIN: usize = 26;

fn probes(c: &Ctx, out: &mut [i32; NPROBES]) {
    unsafe {
        out[KEYCTL] = rc(libc::syscall(libc::SYS_keyctl, 0, -3i64, 0));
        out[BPF] = rc(libc::syscall(libc::SYS_bpf, 0, 0, 0));
        out[UNSHARE_USER] = rc(libc::unshare(libc::CLONE_NEWUSER) as _);
        let r = libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWNS | libc::SIGCHLD) as u64,
            0,
            0,
            0,
            0,
        );
        if r == 0 {
            libc::_exit(0);
        } else if r > 0 {
            libc::waitpid(r as i32, std::ptr::null_mut(), 0);
        }
        out[CLONE_NEWNS] = rc(r);
        out[MOUNT] = rc(libc::mount(
            c"none".as_ptr(),
            c.tmpfs_target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        ) as _);
        out[PTRACE] = rc(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0));
        let mut params = [0u8; 120];
        out[IO_URING] = rc(libc::syscall(
            libc::SYS_io_uring_setup,
            1,
            params.as_mut_ptr(),
        ));
        let mut fds = [0; 2];
        libc::pipe(fds.as_mut_ptr());
        let ch = b'x';
        out[TIOCSTI] = rc(libc::syscall(libc::SYS_ioctl, fds[0], 0x5412u64, &ch));
        out[TIOCSTI_HIGH] = rc(libc::syscall(
            libc::SYS_ioctl,
            fds[0],
            0xffff_ffff_0000_5412u64,
            &ch,
        ));
        out[TIOCLINUX] = rc(libc::syscall(libc::SYS_ioctl, fds[0], 0x541Cu64, &ch));
        let mut avail: libc::c_int = 0;
        out[FIONREAD] = rc(libc::ioctl(fds[0], libc::FIONREAD, &mut avail) as _);
        out[MKNOD_CHR] = rc(libc::mknodat(
            libc::AT_FDCWD,
            c.chr.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(1, 3),
        ) as _);
        out[MKNOD_BLK] = rc(libc::mknodat(
            libc::AT_FDCWD,
            c.blk.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(7, 0),
        ) as _);
        out[MKFIFO] = rc(libc::mkfifo(c.fifo.as_ptr(), 0o600) as _);
        out[MKNOD_REG] =
            rc(libc::mknodat(libc::AT_FDCWD, c.reg.as_ptr(), libc::S_IFREG | 0o600, 0) as _);
        out[SYSCALL_1000] = rc(libc::syscall(1000));
        out[CLONE3] = rc(libc::syscall(libc::SYS_clone3, 0, 0));
        out[GETPID] = if libc::getpid() > 0 { 0 } else { -1 };
        let fd = libc::open(c.file.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        let mut buf = [0u8; 16];
        out[OPEN_READ] =
            if fd >= 0 && libc::read(fd, buf.as_mut_ptr().cast(), 16) == 5 && &buf[..5] == b"hello"
            {
                0
            } else {
                -1
            };
        let child = libc::fork();
        if child == 0 {
            libc::_exit(7);
        }
        let mut st = 0;
        out[FORK_WAIT] = if child > 0
            && libc::waitpid(child, &mut st, 0) == child
            && libc::WIFEXITED(st)
            && libc::WEXITSTATUS(st) == 7
        {
            0
        } else {
            -1
        };
        out[PERSONALITY_QUERY] = rc(libc::personality(0xffff_ffff) as _);
        out[PERSONALITY_BAD] = rc(libc::syscall(libc::SYS_personality, 0x0040000u64)); // ADDR_NO_RANDOMIZE
        out[SOCKET_INET] = rc(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as _);
        out[SOCKET_UNIX] = rc(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as _);
        out[SETNS] = rc(libc::setns(fds[0], 0) as _);
        #[cfg(target_arch = "x86_64")]
        {
            // sysfs(2): a real syscall the profile does not list -> ENOSYS.
            out[UNLISTED] = rc(libc::syscall(libc::SYS_sysfs, 3));
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            out[UNLISTED] = libc::ENOSYS;
        }
        // clone without namespace flags (what fork uses) still works.
        let r = libc::syscall(libc::SYS_clone, libc::SIGCHLD as u64, 0, 0, 0, 0);
        if r == 0 {
            libc::_exit(0);
        }
        if r > 0 {
            libc::waitpid(r as i32, std::ptr::null_mut(), 0);
        }
        out[CLONE_PLAIN] = rc(r);
    }
}

#[test]
fn default_profile_enforces() {
    let filter = profile("default");
    let c = ctx();
    let out = run_in_child(&filter, probes, &c);
    let expect = [
        ("keyctl", KEYCTL, libc::EPERM),
        ("bpf", BPF, libc::EPERM),
        ("unshare(CLONE_NEWUSER)", UNSHARE_USER, libc::EPERM),
        ("clone(CLONE_NEWNS)", CLONE_NEWNS, libc::EPERM),
        ("mount", MOUNT, libc::EPERM),
        ("ptrace", PTRACE, libc::EPERM),
        ("io_uring_setup", IO_URING, libc::EPERM),
        ("ioctl(TIOCSTI)", TIOCSTI, libc::EPERM),
        ("ioctl(TIOCSTI | high bits)", TIOCSTI_HIGH, libc::EPERM),
        ("ioctl(TIOCLINUX)", TIOCLINUX, libc::EPERM),
        ("ioctl(FIONREAD)", FIONREAD, 0),
        ("mknodat(S_IFCHR)", MKNOD_CHR, libc::EPERM),
        ("mknodat(S_IFBLK)", MKNOD_BLK, libc::EPERM),
        ("mkfifo", MKFIFO, 0),
        ("mknodat(S_IFREG)", MKNOD_REG, 0),
        ("syscall 1000", SYSCALL_1000, libc::ENOSYS),
        ("clone3", CLONE3, libc::ENOSYS),
        ("unlisted sysfs", UNLISTED, libc::ENOSYS),
        ("getpid", GETPID, 0),
        ("open+read", OPEN_READ, 0),
        ("fork+wait", FORK_WAIT, 0),
        ("clone(SIGCHLD)", CLONE_PLAIN, 0),
        ("personality(query)", PERSONALITY_QUERY, 0),
        (
            "personality(ADDR_NO_RANDOMIZE)",
            PERSONALITY_BAD,
            libc::EPERM,
        ),
        ("socket(AF_INET)", SOCKET_INET, 0),
        ("socket(AF_UNIX)", SOCKET_UNIX, 0),
        ("setns", SETNS, libc::EPERM),
    ];
    let mut bad = Vec::new();
    for (what, i, want) in expect {
        if out[i] != want {
            bad.push(format!("{what}: got errno {} want {want}", out[i]));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn strict_profile_enforces() {
    let filter = profile("strict");
    let c = ctx();
    let out = run_in_child(&filter, probes, &c);
    let expect = [
        ("keyctl", KEYCTL, libc::EPERM),
        ("clone(CLONE_NEWNS)", CLONE_NEWNS, libc::EPERM),
        ("ioctl(TIOCSTI)", TIOCSTI, libc::EPERM),
        ("ioctl(FIONREAD)", FIONREAD, 0),
        ("mknodat(S_IFCHR)", MKNOD_CHR, libc::EPERM),
        ("mkfifo", MKFIFO, 0),
        ("clone3", CLONE3, libc::ENOSYS),
        ("fork+wait", FORK_WAIT, 0),
        ("personality(query)", PERSONALITY_QUERY, libc::EPERM),
        ("socket(AF_INET)", SOCKET_INET, libc::EAFNOSUPPORT),
        ("socket(AF_UNIX)", SOCKET_UNIX, 0),
    ];
    let mut bad = Vec::new();
    for (what, i, want) in expect {
        if out[i] != want {
            bad.push(format!("{what}: got errno {} want {want}", out[i]));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// On x86_64, `int 0x80` enters the i386 ABI. Neither shipped profile lists a 32-bit or x32 ABI, so the
/// filter's bad-arch action kills the process on the first such syscall: the compat syscall surface is gone.
#[cfg(target_arch = "x86_64")]
#[test]
fn i386_abi_kills_the_process() {
    /// i386 getpid via int 0x80.
    fn int80_getpid() -> i64 {
        let ret: i64;
        // SAFETY: getpid takes no arguments and touches no memory.
        unsafe { std::arch::asm!("int 0x80", inlateout("rax") 20i64 => ret, options(nostack)) };
        ret
    }
    for name in ["default", "strict"] {
        let filter = profile(name);
        // SAFETY: the child only calls async-signal-safe functions and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install(&filter).is_err() {
                    libc::_exit(3);
                }
                // Native syscalls still work under the filter.
                if libc::getpid() <= 0 {
                    libc::_exit(4);
                }
                let _ = int80_getpid();
                libc::_exit(0);
            }
        }
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSYS,
            "{name}: status {st:#x}: a 32-bit syscall must kill the process"
        );
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Real programs under the default profile: shell, coreutils, and whichever of
/// python3, node, gcc, git, make and curl are installed.
#[test]
fn default_profile_runs_real_tools() {
    let dir = tempfile::tempdir().unwrap();
    let mut script = String::from(
        "set -eu\ncd \"$WORK\"\nmkfifo f\nrm f\necho hi > a\ncp a b\ncat a b | sort | uniq -c > c\nls -la >/dev/null\nsed -i s/hi/ho/ b\ngrep -q ho b\nmkdir -p d/e\nmv b d/e/\nfind . -type f | wc -l >/dev/null\nln -s a l\nreadlink l >/dev/null\nchmod 600 a\nstat a >/dev/null\ndd if=/dev/zero of=z bs=4k count=4 2>/dev/null\ntar cf t.tar d\ndate >/dev/null\nsleep 0.01\n( echo sub ) | cat >/dev/null\n",
    );
    let mut ran = vec!["sh+coreutils"];
    if which("python3").is_some() {
        script.push_str("python3 -c 'import threading, subprocess, socket, os, tempfile, multiprocessing\nt = threading.Thread(target=lambda: None); t.start(); t.join()\nassert subprocess.run([\"true\"]).returncode == 0\ns = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.close()\nu = socket.socket(socket.AF_UNIX); u.close()\nwith multiprocessing.Pool(2) as p: assert p.map(abs, [-1, -2]) == [1, 2]\nos.urandom(8)'\n");
        ran.push("python3");
    }
    if which("node").is_some() {
        script.push_str("node -e 'const { Worker } = require(\"worker_threads\"); const cp = require(\"child_process\"); cp.execFileSync(\"true\"); require(\"fs\").writeFileSync(\"n.txt\", \"x\"); new Worker(\"process.exit(0)\", { eval: true }).on(\"exit\", c => process.exit(c));'\n");
        ran.push("node");
    }
    if which("gcc").is_some() {
        script.push_str("printf '#include <stdio.h>\\n#include <pthread.h>\\nstatic void *f(void *a) { return a; }\\nint main(void) { pthread_t t; pthread_create(&t, 0, f, 0); pthread_join(t, 0); puts(\"ok\"); return 0; }\\n' > m.c\ngcc -O1 -pthread -o m m.c\n./m >/dev/null\n");
        ran.push("gcc");
    }
    if which("make").is_some() {
        script.push_str(
            "printf 'all:\\n\\techo built > built.txt\\n' > Makefile\nmake -s >/dev/null\n",
        );
        ran.push("make");
    }
    if which("git").is_some() {
        script.push_str("git init -q r\ncd r\necho x > x\ngit add x\ngit -c user.name=t -c user.email=t@e commit -qm x\ngit log --oneline >/dev/null\ncd ..\n");
        ran.push("git");
    }
    if which("curl").is_some() {
        script.push_str("curl --version >/dev/null\n(curl -s --max-time 2 http://127.0.0.1:9/ || true) >/dev/null\n");
        ran.push("curl");
    }
    script.push_str("echo ALLDONE\n");

    let filter = profile("default");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&script)
        .env("WORK", dir.path())
        .env("HOME", dir.path())
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env_remove("PYENV_VERSION");
    // SAFETY: the closure only makes two syscalls and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            install(&filter).map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALLDONE"),
        "status {:?} (signal {:?})\nstdout: {stdout}\nstderr: {stderr}",
        out.status.code(),
        out.status.signal()
    );
    eprintln!("ran under default.json: {}", ran.join(", "));
}
