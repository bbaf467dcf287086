//! The OCI runtime command line: create, start, state, kill, delete, run, spec, features, ps, exec.
//!
//! Each verb is a function over the state directory ([`state`]) and the sandbox launcher: a bundle's
//! `config.json` is read into the same `oci_spec::runtime::Spec` that `jobcell run` builds from a profile, and
//! `create` launches it in container mode (pid 1 is the container process, blocked on `exec.fifo` until
//! `start`). Flags follow runc and crun so podman, containerd shims and scripts can drive jobcell unchanged.

pub mod state;

use crate::cgroup::Cgroup;
use crate::profile::LaunchOptions;
use crate::sandbox::{self, ContainerLaunch, LaunchError, Mode};
use oci_spec::runtime::{ContainerState, Process, Spec};
use serde_json::json;
use state::{Container, Record, StateError};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An OCI verb failed; the CLI prints the message as one line and exits 1.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let what = what.into();
    move |source| OciError::Io { what, source }
}

/// Options shared by `create` and `run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
}

/// Reads `<bundle>/config.json`, resolving `root.path` against the bundle.
pub fn load_bundle(bundle: &Path) -> Result<(Spec, PathBuf), OciError> {
    let bundle = bundle
        .canonicalize()
        .map_err(|e| OciError::Invalid(format!("bundle {}: {e}", bundle.display())))?;
    let cfg = bundle.join("config.json");
    let mut spec =
        Spec::load(&cfg).map_err(|e| OciError::Invalid(format!("{}: {e}", cfg.display())))?;
    let root = spec.root().clone().ok_or_else(|| {
        OciError::Invalid(format!(
            "{}: root: missing; set root.path to the rootfs directory",
            cfg.display()
        ))
    })?;
    let path = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    if !path.is_dir() {
        return Err(OciError::Invalid(format!(
            "{}: root.path {} is not a directory",
            cfg.display(),
            path.display()
        )));
    }
    let mut root = root;
    root.set_path(path);
    spec.set_root(Some(root));
    if spec.process().is_none() {
        return Err(OciError::Invalid(format!(
            "{}: process: missing",
            cfg.display()
        )));
    }
    Ok((spec, bundle))
}

/// Launch options for a bundle (the spec says everything; jobcell adds nothing).
pub fn bundle_launch_options() -> LaunchOptions {
    LaunchOptions {
        timeout: None,
        require_limits: false,
        strict: false,
        cgroup_parent: None,
    }
}

fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Civil-from-days (Howard Hinnant), UTC.
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// The runtime-spec state JSON of a container.
pub fn state_json(r: &Record, status: ContainerState) -> serde_json::Value {
    json!({
        "ociVersion": r.oci_version,
        "id": r.id,
        "status": status.to_string(),
        "pid": if status == ContainerState::Stopped { 0 } else { r.pid },
        "bundle": r.bundle,
        "rootfs": "",
        "created": r.created,
        "owner": "",
        "annotations": r.annotations,
    })
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), OciError> {
    let tmp = path.with_extension("jobcell-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(io(format!("--pid-file {}", path.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("--pid-file {}", path.display())))
}

/// `create`: sets the container up and leaves its process waiting for `start`.
pub fn create(root: &Path, id: &str, o: &CreateOpts) -> Result<(), OciError> {
    let (spec, bundle) = load_bundle(&o.bundle)?;
    let c = Container::create(root, id)?;
    match create_in(&c, &spec, &bundle, o) {
        // The container outlives this command: hand it over instead of dropping (which would kill it).
        Ok(sb) => {
            sb.detach();
            Ok(())
        }
        Err(e) => {
            let _ = c.destroy();
            Err(e)
        }
    }
}

fn create_in(
    c: &Container,
    spec: &Spec,
    bundle: &Path,
    o: &CreateOpts,
) -> Result<sandbox::Sandbox, OciError> {
    c.save_spec(spec)?;
    // 0622: the container process opens it for writing after switching to its own uid (through
    // /proc/self/fd, so the 0700 state directory still keeps everyone else away).
    nix::unistd::mkfifo(
        &c.fifo_path(),
        nix::sys::stat::Mode::from_bits_truncate(0o622),
    )
    .map_err(|e| io("creating exec.fifo")(e.into()))?;
    std::fs::set_permissions(
        c.fifo_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o622),
    )
    .map_err(io("chmod exec.fifo"))?;
    let fifo = nix::fcntl::open(
        &c.fifo_path(),
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io("opening exec.fifo")(e.into()))?;
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let console = match (&o.console_socket, terminal) {
        (Some(p), true) => {
            let s = std::os::unix::net::UnixStream::connect(p)
                .map_err(io(format!("--console-socket {}", p.display())))?;
            Some(OwnedFd::from(s))
        }
        (None, true) => {
            return Err(OciError::Invalid(
                "process.terminal is true: pass --console-socket".into(),
            ))
        }
        (_, false) => None,
    };
    let annotations = spec.annotations().clone().unwrap_or_default();
    let base = Record {
        oci_version: spec.version().clone(),
        id: c.id.clone(),
        pid: 0,
        pid_start: 0,
        bundle: bundle.to_path_buf(),
        annotations: annotations.clone(),
        created: now_rfc3339(),
        cgroup: None,
        started: false,
    };
    let for_hooks = base.clone();
    let launch = ContainerLaunch {
        fifo,
        console,
        cgroup_name: c.id.clone(),
        state_json: Box::new(move |pid| {
            let mut r = for_hooks.clone();
            r.pid = pid;
            let mut v = state_json(&r, ContainerState::Created);
            v["status"] = json!("creating");
            v["pid"] = json!(pid);
            serde_json::to_vec(&v).unwrap_or_default()
        }),
    };
    let sb = sandbox::launch(spec, &bundle_launch_options(), Mode::Container(launch))?;
    let pid = sb.pid();
    let record = Record {
        pid,
        pid_start: state::pid_start_time(pid).unwrap_or(0),
        cgroup: sb.cgroup_path(),
        ..base
    };
    c.save(&record)?;
    if let Some(p) = &o.pid_file {
        write_pid_file(p, pid)?;
    }
    Ok(sb)
}

/// `start`: releases a created container's process.
pub fn start(root: &Path, id: &str) -> Result<(), OciError> {
    let c = Container::open(root, id)?;
    let mut r = c.load()?;
    match r.status() {
        ContainerState::Created => {}
        s => {
            return Err(OciError::Invalid(format!(
                "container {id:?} is {s}, not created: only a created container can be started"
            )))
        }
    }
    let fifo = nix::fcntl::open(
        &c.fifo_path(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| io("opening exec.fifo")(e.into()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fifo),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
        let mut b = [0u8; 1];
        if let Ok(1) = nix::unistd::read(&fifo, &mut b) {
            break;
        }
        if !r.alive() || Instant::now() > deadline {
            return Err(OciError::Invalid(format!(
                "container {id:?} did not take the start signal (its process is gone)"
            )));
        }
    }
    let _ = std::fs::remove_file(c.fifo_path());
    r.started = true;
    c.save(&r)?;
    let spec = c.load_spec()?;
    let st = serde_json::to_vec(&state_json(&r, ContainerState::Running)).unwrap_or_default();
    if let Err(e) = sandbox::run_host_hooks(
        spec.hooks().as_ref().and_then(|h| h.poststart().as_ref()),
        "poststart",
        &st,
    ) {
        eprintln!("jobcell: warning: {e}");
    }
    Ok(())
}

/// `state`: the runtime-spec state JSON.
pub fn state(root: &Path, id: &str) -> Result<serde_json::Value, OciError> {
    let c = Container::open(root, id)?;
    let r = c.load()?;
    Ok(state_json(&r, r.status()))
}

/// Parses `KILL`, `SIGKILL`, `kill` or `9`.
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, OciError> {
    use std::str::FromStr;
    let bad = || {
        OciError::Invalid(format!(
            "unknown signal {s:?}: use a name like TERM or KILL, or a number"
        ))
    };
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).map_err(|_| bad());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| bad())
}

/// `kill`: signals the container's process (or, with `all`, every process in it).
pub fn kill(root: &Path, id: &str, signal: &str, all: bool) -> Result<(), OciError> {
    let sig = parse_signal(signal)?;
    let c = Container::open(root, id)?;
    let r = c.load()?;
    if r.status() == ContainerState::Stopped {
        return Err(OciError::Invalid(format!(
            "container {id:?} is not running"
        )));
    }
    let pids = if all { container_pids(&r) } else { vec![r.pid] };
    for p in pids {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
    Ok(())
}

/// Pids of every process in the container: from its cgroup, or else by pid-namespace identity.
pub fn container_pids(r: &Record) -> Vec<i32> {
    if let Some(cg) = r.cgroup.as_deref().and_then(Cgroup::open) {
        return cg.pids();
    }
    let Ok(ns) = std::fs::read_link(format!("/proc/{}/ns/pid", r.pid)) else {
        return Vec::new();
    };
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| {
                    std::fs::read_link(format!("/proc/{p}/ns/pid"))
                        .ok()
                        .as_ref()
                        == Some(&ns)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `delete`: removes a stopped (or created) container; `force` kills a running one first.
pub fn delete(root: &Path, id: &str, force: bool) -> Result<(), OciError> {
    let c = match Container::open(root, id) {
        Err(StateError::NotFound(_)) if force => return Ok(()),
        other => other?,
    };
    let r = c.load()?;
    let status = r.status();
    if status == ContainerState::Running && !force {
        return Err(OciError::Invalid(format!(
            "container {id:?} is running: stop it first or use --force"
        )));
    }
    if status != ContainerState::Stopped {
        for p in container_pids(&r).into_iter().chain([r.pid]) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if let Some(cg) = r.cgroup.as_deref().and_then(Cgroup::open) {
        cg.remove();
    }
    let spec = c.load_spec().ok();
    let st = serde_json::to_vec(&state_json(&r, ContainerState::Stopped)).unwrap_or_default();
    c.destroy()?;
    if let Some(spec) = spec {
        if let Err(e) = sandbox::run_host_hooks(
            spec.hooks().as_ref().and_then(|h| h.poststop().as_ref()),
            "poststop",
            &st,
        ) {
            eprintln!("jobcell: warning: {e}");
        }
    }
    Ok(())
}

/// `run`: create + start; in the foreground, waits and returns the container's exit status, then deletes it.
pub fn run(
    root: &Path,
    id: &str,
    o: &CreateOpts,
    detach: bool,
    keep: bool,
) -> Result<i32, OciError> {
    let (spec, bundle) = load_bundle(&o.bundle)?;
    let c = Container::create(root, id)?;
    let sb = match create_in(&c, &spec, &bundle, o) {
        Ok(sb) => sb,
        Err(e) => {
            let _ = c.destroy();
            return Err(e);
        }
    };
    drop(c);
    if let Err(e) = start(root, id) {
        drop(sb);
        let _ = delete(root, id, true);
        return Err(e);
    }
    if detach {
        sb.detach();
        return Ok(0);
    }
    let code = sb.wait_exit_code()?;
    if !keep {
        delete(root, id, true)?;
    }
    Ok(code)
}

/// `ps`: pids in the container, as a table or JSON.
pub fn ps(root: &Path, id: &str, json_out: bool) -> Result<String, OciError> {
    let c = Container::open(root, id)?;
    let r = c.load()?;
    let pids = if r.status() == ContainerState::Stopped {
        Vec::new()
    } else {
        container_pids(&r)
    };
    if json_out {
        return Ok(serde_json::to_string(&pids).unwrap_or_default());
    }
    let mut out = String::from("PID\n");
    for p in pids {
        out += &format!("{p}\n");
    }
    Ok(out)
}

/// `spec`: a default config.json (rootless: with a user namespace mapping the caller to root inside).
pub fn spec(bundle: &Path, rootless: bool) -> Result<(), OciError> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(OciError::Invalid(format!(
            "{} already exists: remove it first",
            path.display()
        )));
    }
    let mut s = Spec::default();
    if rootless {
        use oci_spec::runtime::{LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType};
        let mut linux = s.linux().clone().unwrap_or_default();
        let mut ns: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| {
                n.typ() != LinuxNamespaceType::Network && n.typ() != LinuxNamespaceType::User
            })
            .collect();
        ns.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()
                .map_err(|e| OciError::Invalid(e.to_string()))?,
        );
        linux.set_namespaces(Some(ns));
        let map = |host: u32| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(1u32)
                .build()
                .map_err(|e| OciError::Invalid(e.to_string()))
        };
        linux.set_uid_mappings(Some(vec![map(nix::unistd::geteuid().as_raw())?]));
        linux.set_gid_mappings(Some(vec![map(nix::unistd::getegid().as_raw())?]));
        linux.set_resources(None);
        s.set_linux(Some(linux));
        if let Some(mounts) = s.mounts().clone() {
            let fixed: Vec<_> = mounts
                .into_iter()
                .map(|mut m| {
                    if let Some(o) = m.options().clone() {
                        m.set_options(Some(
                            o.into_iter().filter(|x| !x.starts_with("gid=")).collect(),
                        ));
                    }
                    if m.typ().as_deref() == Some("sysfs") {
                        m.set_typ(Some("none".into()));
                        m.set_source(Some("/sys".into()));
                        m.set_options(Some(vec![
                            "rbind".into(),
                            "nosuid".into(),
                            "noexec".into(),
                            "nodev".into(),
                            "ro".into(),
                        ]));
                    }
                    m
                })
                .collect();
            s.set_mounts(Some(fixed));
        }
    }
    s.save(&path)
        .map_err(|e| OciError::Invalid(format!("{}: {e}", path.display())))
}

/// `features`: what this runtime supports, in the runtime-spec features format.
pub fn features() -> serde_json::Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "bind", "rbind",
            "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable",
            "relatime", "noatime", "strictatime"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {"run.jobcell.version": env!("CARGO_PKG_VERSION")}
    })
}

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub process_file: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<(u32, u32)>,
    pub tty: bool,
    pub console_socket: Option<PathBuf>,
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
}

/// `exec`: runs another process in a running container's namespaces and cgroup.
pub fn exec(root: &Path, id: &str, o: &ExecOpts) -> Result<i32, OciError> {
    let c = Container::open(root, id)?;
    let r = c.load()?;
    if r.status() != ContainerState::Running {
        return Err(OciError::Invalid(format!(
            "container {id:?} is not running"
        )));
    }
    let spec = c.load_spec()?;
    drop(c);
    let mut process: Process = match &o.process_file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).map_err(io(format!("--process {}", f.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| OciError::Invalid(format!("--process {}: {e}", f.display())))?
        }
        None => {
            let mut p = spec
                .process()
                .clone()
                .ok_or_else(|| OciError::Invalid("container has no process".into()))?;
            if o.args.is_empty() {
                return Err(OciError::Invalid(
                    "exec needs a command or --process FILE".into(),
                ));
            }
            p.set_args(Some(o.args.clone()));
            p.set_terminal(Some(o.tty));
            p
        }
    };
    let mut env = process.env().clone().unwrap_or_default();
    env.extend(o.env.iter().cloned());
    process.set_env(Some(env));
    if let Some(cwd) = &o.cwd {
        process.set_cwd(cwd.clone());
    }
    if let Some((u, g)) = o.user {
        let mut user = process.user().clone();
        user.set_uid(u);
        user.set_gid(g);
        process.set_user(user);
    }
    let console = match (&o.console_socket, process.terminal().unwrap_or(false)) {
        (Some(p), true) => Some(OwnedFd::from(
            std::os::unix::net::UnixStream::connect(p)
                .map_err(io(format!("--console-socket {}", p.display())))?,
        )),
        (None, true) => return Err(OciError::Invalid("--tty needs --console-socket".into())),
        _ => None,
    };
    let pid = sandbox::exec_in(&spec, &process, r.pid, r.cgroup.as_deref(), console)?;
    if let Some(p) = &o.pid_file {
        write_pid_file(p, pid.pid())?;
    }
    if o.detach {
        pid.detach();
        return Ok(0);
    }
    Ok(pid.wait_exit_code()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("FOO").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), "2026-11-22T13:00:00.000000000Z".len(), "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn spec_rootless_maps_caller_to_root() {
        let d = tempfile::tempdir().unwrap();
        spec(d.path(), true).unwrap();
        let s = Spec::load(d.path().join("config.json")).unwrap();
        let l = s.linux().as_ref().unwrap();
        assert_eq!(l.uid_mappings().as_ref().unwrap()[0].container_id(), 0);
        assert!(spec(d.path(), true).is_err(), "refuses to overwrite");
    }
}
