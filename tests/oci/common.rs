//! Shared helpers for the OCI runtime integration tests (`tests/oci_*.rs`).
//!
//! Every test builds its own busybox bundle and uses its own temporary `--root`, so tests run in parallel
//! and leave nothing behind. The binary is `$JOBCELL_BIN` when set, else the one cargo built. The tests
//! pass as root and as an unprivileged user: the default config maps container root to the caller's euid
//! (a single id, written directly) and creates a user namespace either way.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long any one jobcell invocation may take before the test fails.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

pub fn bin() -> PathBuf {
    match std::env::var_os("JOBCELL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_jobcell")),
    }
}

pub fn euid() -> u32 {
    unsafe { libc::geteuid() }
}

pub fn egid() -> u32 {
    unsafe { libc::getegid() }
}

pub fn is_root() -> bool {
    euid() == 0
}

/// The caller's user name (for /etc/subuid lookups).
pub fn user_name() -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == euid().to_string()).then(|| f[0].to_string())
    })
}

/// The caller's first subordinate range in `/etc/subuid` or `/etc/subgid`: (start, count).
pub fn sub_range(file: &str) -> Option<(u32, u32)> {
    let name = user_name();
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() != 3 || (Some(f[0]) != name.as_deref() && f[0] != euid().to_string()) {
            return None;
        }
        Some((f[1].parse().ok()?, f[2].parse().ok()?))
    })
}

/// What one jobcell invocation did.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Out {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    pub fn ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "{} failed ({:?})\nstdout: {}\nstderr: {}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts a failure reported as exactly one non-empty line on stderr; returns that line.
    pub fn fails_one_line(&self) -> String {
        assert!(
            !self.status.success(),
            "{} unexpectedly succeeded\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout,
            self.stderr
        );
        assert!(
            self.status.code().is_some(),
            "{} died by a signal: {:?}",
            self.what,
            self.status
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{}: want one line on stderr, got {:?}",
            self.what,
            self.stderr
        );
        lines[0].to_string()
    }
}

/// Runs a command with stdio in files (a detached container keeps inherited pipes open, files never block),
/// failing the test if it outlives [`CMD_TIMEOUT`].
pub fn run_cmd(cmd: &mut Command, stdin: Option<&[u8]>) -> Out {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdout(fs::File::create(&o).unwrap())
        .stderr(fs::File::create(&e).unwrap());
    if let Some(input) = stdin {
        let i = dir.path().join("in");
        fs::write(&i, input).unwrap();
        cmd.stdin(fs::File::open(&i).unwrap());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|err| panic!("spawning {what}: {err}"));
    let deadline = Instant::now() + CMD_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {CMD_TIMEOUT:?}\nstderr so far: {}",
                fs::read_to_string(&e).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Give a just-started container writing to the same file no chance to race the read.
    let read = |p: &Path| {
        let mut s = String::new();
        fs::File::open(p).unwrap().read_to_string(&mut s).unwrap();
        s
    };
    Out {
        status,
        stdout: read(&o),
        stderr: read(&e),
        what,
    }
}

/// A state root (`--root`) of its own; on drop, force-deletes whatever containers are left in it.
pub struct Rt {
    pub dir: tempfile::TempDir,
}

impl Rt {
    pub fn new() -> Self {
        Rt {
            dir: tempfile::Builder::new().prefix("jcroot").tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--root").arg(self.root()).args(args);
        c
    }

    pub fn jc(&self, args: &[&str]) -> Out {
        run_cmd(&mut self.cmd(args), None)
    }

    pub fn ok(&self, args: &[&str]) -> Out {
        let o = self.jc(args);
        o.ok();
        o
    }

    pub fn state(&self, id: &str) -> Value {
        let o = self.ok(&["state", id]);
        serde_json::from_str(&o.stdout)
            .unwrap_or_else(|e| panic!("state {id}: {e}: {:?}", o.stdout))
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The status `state` reports, or None when `state` fails.
    pub fn try_status(&self, id: &str) -> Option<String> {
        let o = self.jc(&["state", id]);
        let v: Value = serde_json::from_str(&o.stdout).ok()?;
        Some(v["status"].as_str()?.to_string())
    }

    /// Polls `state` until the container reports `want`.
    pub fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status(id);
            if s == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} stayed {s:?}, want {want:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Container ids (directories) present in the root.
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `create` then `start`, checking both succeed.
    pub fn create_start(&self, id: &str, b: &Bundle) -> Out {
        let o = self.ok(&["create", id, "-b", b.path_str()]);
        self.ok(&["start", id]);
        o
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        for id in self.ids() {
            let _ = run_cmd(&mut self.cmd(&["delete", "--force", &id]), None);
        }
    }
}

/// A bundle: `rootfs/` with busybox-static and its applet links in `/bin`, and a `config.json` written from
/// [`Bundle::config`] by [`Bundle::write`] (the `run*` helpers write it).
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: Value,
}

pub fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox not found: install busybox-static");
}

fn applets() -> &'static Vec<String> {
    static LIST: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    LIST.get_or_init(|| {
        let o = Command::new(busybox())
            .arg("--list")
            .output()
            .expect("busybox --list");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .filter(|s| !s.is_empty() && !s.contains('/'))
            .collect()
    })
}

/// The capability sets of the default config: a few, so the /proc/self/status masks are easy to predict.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_KILL",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_DAC_OVERRIDE",
];

pub fn default_config(args: &[&str]) -> Value {
    let caps = json!(DEFAULT_CAPS);
    json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "jchost",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "HOME=/root", "TERM=dumb"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "user"}],
            "uidMappings": [{"containerID": 0, "hostID": euid(), "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": egid(), "size": 1}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"]
        }
    })
}

impl Bundle {
    /// A bundle whose container runs `args`.
    pub fn new(args: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jcbundle")
            .tempdir()
            .unwrap();
        // Bundles must be reachable by the container's (mapped) user: tempdirs are 0700 to their owner, fine
        // when the owner is the caller; open them up so a range mapping's root can traverse too.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let rootfs = dir.path().join("rootfs");
        for d in [
            "bin", "proc", "dev", "sys", "tmp", "etc", "root", "mnt", "data",
        ] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        fs::set_permissions(
            rootfs.join("bin/busybox"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        for a in applets() {
            if a != "busybox" {
                let _ = symlink("busybox", rootfs.join("bin").join(a));
            }
        }
        fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )
        .unwrap();
        fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        Bundle {
            dir,
            config: default_config(args),
        }
    }

    /// A bundle running `sh -c SCRIPT`.
    pub fn sh(script: &str) -> Self {
        Self::new(&["sh", "-c", script])
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn path_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn write(&self) {
        fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    pub fn process(&mut self) -> &mut Value {
        &mut self.config["process"]
    }

    pub fn linux(&mut self) -> &mut Value {
        &mut self.config["linux"]
    }

    pub fn add_mount(&mut self, m: Value) {
        self.config["mounts"].as_array_mut().unwrap().push(m);
    }

    pub fn add_namespace(&mut self, typ: &str) {
        self.linux()["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": typ}));
    }

    /// `jobcell run` in the foreground (writes config.json first); the container's output is in the result.
    pub fn run(&self, rt: &Rt, id: &str) -> Out {
        self.write();
        rt.jc(&["run", id, "-b", self.path_str()])
    }

    /// Runs the container in the foreground, asserts exit 0 and returns its stdout.
    pub fn run_ok(&self) -> String {
        let rt = Rt::new();
        let o = self.run(&rt, "c");
        o.ok();
        assert!(
            rt.ids().is_empty(),
            "foreground run left state behind: {:?}",
            rt.ids()
        );
        o.stdout
    }
}

/// Unique-ish ids for tests that share nothing but want readable names.
pub fn id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Parses a hex capability mask line (`CapEff:\t0000000000000400`) from /proc/self/status text.
pub fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// Bit number of a capability name (the ones the tests use).
pub fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_FOWNER" => 3,
        "CAP_FSETID" => 4,
        "CAP_KILL" => 5,
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_CHROOT" => 18,
        "CAP_SYS_ADMIN" => 21,
        "CAP_MKNOD" => 27,
        "CAP_AUDIT_WRITE" => 29,
        other => panic!("cap_bit: add {other}"),
    }
}

pub fn cap_mask(names: &[&str]) -> u64 {
    names.iter().fold(0u64, |m, n| m | (1u64 << cap_bit(n)))
}

/// Parses `key=value` lines (what the in-container scripts print).
pub fn kv(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Mappings with a range (container 0 = caller, 1..=N from a subordinate range; as root, any range),
/// or None with the reason the test is skipped.
pub fn range_mappings() -> Result<(Value, Value), String> {
    if is_root() {
        let m = json!([{"containerID": 0, "hostID": 0, "size": 1}, {"containerID": 1, "hostID": 200000, "size": 65536}]);
        return Ok((m.clone(), m));
    }
    let u = sub_range("/etc/subuid").ok_or("no /etc/subuid range for this user")?;
    let g = sub_range("/etc/subgid").ok_or("no /etc/subgid range for this user")?;
    for tool in ["newuidmap", "newgidmap"] {
        if !["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).exists())
        {
            return Err(format!("{tool} not installed"));
        }
    }
    let n = u.1.min(g.1).min(65536);
    Ok((
        json!([{"containerID": 0, "hostID": euid(), "size": 1}, {"containerID": 1, "hostID": u.0, "size": n}]),
        json!([{"containerID": 0, "hostID": egid(), "size": 1}, {"containerID": 1, "hostID": g.0, "size": n}]),
    ))
}

/// Uses range mappings in `b`, or returns false (and says why) when this host/user has none.
pub fn use_range_mappings(b: &mut Bundle) -> bool {
    match range_mappings() {
        Ok((u, g)) => {
            b.linux()["uidMappings"] = u;
            b.linux()["gidMappings"] = g;
            true
        }
        Err(why) => {
            eprintln!("skipping range-mapping part: {why}");
            false
        }
    }
}
