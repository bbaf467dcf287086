//! Shared helpers of the sandbox integration tests: find the jobcell binary, run it with a deadline, compile and
//! bind the C probe (tests/probe/probe.c) that tries to break the sandbox from inside.
//!
//! These tests are meant to run as an unprivileged user (tests/run.sh arranges that when started as root).
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The jobcell binary under test: `$JOBCELL_BIN`, else the one cargo built for this test.
pub fn bin() -> PathBuf {
    match std::env::var_os("JOBCELL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_jobcell")),
    }
}

/// What a finished jobcell process left behind.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Out {
    /// stderr without jobcell's host warnings (cgroup limits not enforced, single-id fallback).
    pub fn errors(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.starts_with("jobcell: warning:"))
            .collect()
    }
    /// Value of a `key=value` line printed by the probe.
    pub fn kv(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
    }
    /// Like [`Out::kv`] but panics with the whole output when the key is missing.
    pub fn get(&self, key: &str) -> &str {
        match self.kv(key) {
            Some(v) => v,
            None => panic!("probe printed no {key}=: {self:#?}"),
        }
    }
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Default deadline for one jobcell invocation.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `deadline`, killing it after that (the test then fails on the exit code).
pub fn finish(mut child: Child, deadline: Duration) -> Out {
    let start = Instant::now();
    let so = child.stdout.take();
    let se = child.stderr.take();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut so) = so {
            let _ = so.read_to_string(&mut s);
        }
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut se) = se {
            let _ = se.read_to_string(&mut s);
        }
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for jobcell") {
            break st;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait for killed jobcell");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 1000 + status.signal().unwrap_or(0));
    Out {
        code,
        stdout: t1.join().unwrap(),
        stderr: t2.join().unwrap(),
        elapsed,
    }
}

/// `jobcell ARGS...` with the default deadline.
pub fn jobcell(args: &[&str]) -> Out {
    let child = command(args).spawn().expect("spawn jobcell");
    finish(child, DEADLINE)
}

/// `jobcell run OPTS... -- CMD...`
pub fn run(opts: &[&str], cmd: &[&str]) -> Out {
    let mut a = vec!["run"];
    a.extend_from_slice(opts);
    a.push("--");
    a.extend_from_slice(cmd);
    jobcell(&a)
}

/// `jobcell run OPTS... -- sh -c SCRIPT`
pub fn sh_with(opts: &[&str], script: &str) -> Out {
    run(opts, &["sh", "-c", script])
}

pub fn sh(script: &str) -> Out {
    sh_with(&[], script)
}

/// Asserts the exit code, showing everything on failure.
#[track_caller]
pub fn assert_code(o: &Out, code: i32) {
    assert_eq!(o.code, code, "unexpected exit status; output: {o:#?}");
}

/// A private temp directory of the test user (world-readable so binds work with any id mapping).
pub fn tempdir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("jobcell-test-")
        .tempdir()
        .expect("tempdir");
    set_mode(d.path(), 0o755);
    d
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

const PROBE_SRC: &str = include_str!("../probe/probe.c");

/// Directory holding the compiled probe (compiled once per test binary).
pub fn probe_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempdir().keep();
        let src = d.join("probe.c");
        std::fs::write(&src, PROBE_SRC).expect("write probe.c");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let st = Command::new(&cc)
            .args(["-O1", "-o"])
            .arg(d.join("probe"))
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("{cc} (needed to build the probe): {e}"));
        assert!(st.success(), "compiling tests/probe/probe.c failed");
        set_mode(&d.join("probe"), 0o755);
        d
    })
}

/// The bind option that makes the probe available as /probe/probe inside.
pub fn probe_bind() -> String {
    format!("{}:/probe", probe_dir().display())
}

/// `jobcell run OPTS... --bind PROBE -- /probe/probe ARGS...`
pub fn probe_with(opts: &[&str], args: &[&str]) -> Out {
    let bind = probe_bind();
    let mut o: Vec<&str> = opts.to_vec();
    o.push("--bind");
    o.push(&bind);
    let mut cmd = vec!["/probe/probe"];
    cmd.extend_from_slice(args);
    run(&o, &cmd)
}

pub fn probe(args: &[&str]) -> Out {
    probe_with(&[], args)
}

/// Our own uid/gid on the host.
pub fn host_ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// A unique string for markers.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "jobcell-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Host pids whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            v.push((pid, cmd));
        }
    }
    v
}

/// Waits until no host process mentions `needle`; returns what remains after `within`.
pub fn wait_gone(needle: &str, within: Duration) -> Vec<(i32, String)> {
    let start = Instant::now();
    loop {
        let left = pids_with(needle);
        if left.is_empty() || start.elapsed() > within {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the sandbox maps a full subordinate range (else: the single-id fallback).
pub fn full_range_mapping() -> bool {
    let o = run(&[], &["cat", "/proc/self/uid_map"]);
    assert_code(&o, 0);
    o.stdout.lines().count() > 1
}

/// Whether python3 is installed where the sandbox sees it (/usr and /bin are bound from the host).
pub fn python3() -> bool {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .iter()
        .any(|p| Path::new(p).exists())
}
