//! OCI lifecycle verbs on a busybox bundle: create/start/state/kill/delete, run (foreground and detached),
//! ps, spec, features, and the error cases (each a non-zero exit with one line on stderr and a consistent
//! state directory).

#[path = "oci/common.rs"]
mod common;

use common::*;
use std::path::Path;

fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

#[test]
fn lifecycle_create_start_kill_delete() {
    let rt = Rt::new();
    let b = Bundle::sh("echo started; exec sleep 600");
    b.write();
    let pidfile = rt
        .root()
        .parent()
        .unwrap()
        .join(format!("{}.pid", id("lc")));
    let o = rt.ok(&[
        "create",
        "lc",
        "-b",
        b.path_str(),
        "--pid-file",
        pidfile.to_str().unwrap(),
    ]);
    assert!(
        !o.stdout.contains("started"),
        "the process ran before start: {o:?}"
    );

    let st = rt.state("lc");
    assert_eq!(st["id"], "lc");
    assert_eq!(st["status"], "created");
    let pid = st["pid"].as_i64().expect("pid in state");
    assert!(
        pid > 0 && pid_alive(pid),
        "created container's pid {pid} is not alive"
    );
    assert_eq!(
        st["bundle"].as_str().map(Path::new),
        Some(b.path().canonicalize().unwrap().as_path())
    );
    assert!(st["ociVersion"].is_string(), "{st}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string(),
        "--pid-file"
    );
    let _ = std::fs::remove_file(&pidfile);

    rt.ok(&["start", "lc"]);
    let st = rt.state("lc");
    assert_eq!(st["status"], "running");
    assert_eq!(st["pid"].as_i64(), Some(pid));

    rt.ok(&["kill", "lc", "KILL"]);
    rt.wait_status("lc", "stopped");
    rt.ok(&["delete", "lc"]);
    let line = rt.jc(&["state", "lc"]).fails_one_line();
    assert!(line.contains("lc"), "{line}");
    assert!(rt.ids().is_empty(), "state dir left: {:?}", rt.ids());
    assert!(!pid_alive(pid));
}

#[test]
fn created_container_output_appears_after_start() {
    let rt = Rt::new();
    let b = Bundle::sh("echo from-container > /data/out; exec sleep 600");
    let data = tempfile::tempdir().unwrap();
    let mut b = b;
    b.add_mount(serde_json::json!({"destination": "/data", "type": "bind", "source": data.path(), "options": ["rbind", "rw"]}));
    b.write();
    rt.ok(&["create", "out", "-b", b.path_str()]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!data.path().join("out").exists(), "ran before start");
    rt.ok(&["start", "out"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !data.path().join("out").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no output after start"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    rt.ok(&["delete", "--force", "out"]);
    assert!(rt.ids().is_empty());
}

#[test]
fn kill_default_signal_is_term() {
    let rt = Rt::new();
    // pid 1 ignores signals it has no handler for; install one for TERM.
    let b = Bundle::sh("trap 'exit 7' TERM; echo ready; while :; do sleep 0.05; done");
    rt.create_start("t", b_written(&b));
    // Wait until the shell has installed its TERM handler (SigCgt bit 15), or the signal may be ignored.
    let pid = rt.state("t")["pid"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (libc::SIGTERM - 1)) != 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the TERM trap was never installed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    rt.ok(&["kill", "t"]);
    rt.wait_status("t", "stopped");
    rt.ok(&["delete", "t"]);
}

fn b_written(b: &Bundle) -> &Bundle {
    b.write();
    b
}

#[test]
fn kill_all_and_signal_forms() {
    let rt = Rt::new();
    let b = Bundle::sh("sleep 600 & sleep 600 & wait");
    rt.create_start("ka", b_written(&b));
    // Bad signal: an error, container untouched.
    rt.jc(&["kill", "ka", "NOSUCHSIG"]).fails_one_line();
    assert_eq!(rt.status("ka"), "running");
    rt.ok(&["kill", "--all", "ka", "9"]);
    rt.wait_status("ka", "stopped");
    rt.ok(&["delete", "ka"]);
}

#[test]
fn run_foreground_propagates_exit_status() {
    let rt = Rt::new();
    let b = Bundle::sh("echo out; echo err >&2; exit 3");
    let o = b.run(&rt, "r3");
    assert_eq!(o.code(), 3, "{o:?}");
    assert_eq!(o.stdout, "out\n");
    assert!(o.stderr.contains("err"), "{o:?}");
    assert!(
        rt.ids().is_empty(),
        "foreground run must delete: {:?}",
        rt.ids()
    );

    let b0 = Bundle::new(&["true"]);
    assert_eq!(b0.run(&rt, "r0").code(), 0);
}

#[test]
fn run_foreground_killed_by_signal_reports_128_plus_signal() {
    let rt = Rt::new();
    // runc exits 128+N when the container process dies of signal N. (pid 1 cannot SIGKILL itself from
    // inside its pid namespace, so the kill comes from outside.)
    let b = Bundle::sh("exec sleep 600");
    b.write();
    let mut cmd = rt.cmd(&["run", "rs", "-b", b.path_str()]);
    let root = rt.root().to_path_buf();
    let waiter = std::thread::spawn(move || run_cmd(&mut cmd, None));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !root.join("rs").exists() || rt.try_status("rs").as_deref() != Some("running") {
        assert!(
            std::time::Instant::now() < deadline,
            "run never got to running"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rt.ok(&["kill", "rs", "KILL"]);
    let o = waiter.join().unwrap();
    assert_eq!(o.code(), 137, "{o:?}");
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
}

#[test]
fn run_keep_leaves_stopped_container() {
    let rt = Rt::new();
    let b = Bundle::sh("exit 5");
    b.write();
    let o = rt.jc(&["run", "--keep", "k", "-b", b.path_str()]);
    assert_eq!(o.code(), 5, "{o:?}");
    assert_eq!(rt.status("k"), "stopped");
    rt.ok(&["delete", "k"]);
    assert!(rt.ids().is_empty());
}

#[test]
fn run_detach() {
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    b.write();
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let t = std::time::Instant::now();
    rt.ok(&[
        "run",
        "--detach",
        "d",
        "-b",
        b.path_str(),
        "--pid-file",
        pidfile.path().to_str().unwrap(),
    ]);
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    let st = rt.state("d");
    assert_eq!(st["status"], "running");
    let pid = st["pid"].as_i64().unwrap();
    assert_eq!(
        std::fs::read_to_string(pidfile.path()).unwrap().trim(),
        pid.to_string()
    );
    // A second run with the same id fails and leaves the first alone.
    let line = rt
        .jc(&["run", "--detach", "d", "-b", b.path_str()])
        .fails_one_line();
    assert!(line.contains("exists"), "{line}");
    assert_eq!(rt.status("d"), "running");
    rt.ok(&["delete", "--force", "d"]);
    assert!(rt.ids().is_empty());
    assert!(!pid_alive(pid));
}

#[test]
fn ps_lists_container_processes() {
    let rt = Rt::new();
    let b = Bundle::sh("sleep 600 & sleep 600 & wait");
    rt.create_start("ps", b_written(&b));
    let pid = rt.state("ps")["pid"].as_i64().unwrap();
    // Wait for both children.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pids = loop {
        let o = rt.ok(&["ps", "--format", "json", "ps"]);
        let v: Vec<i64> = serde_json::from_str(o.stdout.trim())
            .unwrap_or_else(|e| panic!("ps json {e}: {:?}", o.stdout));
        if v.len() >= 3 || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(pids.len(), 3, "{pids:?}");
    assert!(pids.contains(&pid), "{pids:?} lacks pid 1 ({pid})");
    let table = rt.ok(&["ps", "ps"]).stdout;
    assert!(
        table.lines().next().unwrap_or("").contains("PID"),
        "{table}"
    );
    for p in &pids {
        assert!(table.contains(&p.to_string()), "{table}");
    }
    rt.ok(&["delete", "--force", "ps"]);
}

#[test]
fn spec_rootless_bundle_runs() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    rt.ok(&["spec", "--rootless", "-b", b.path_str()]);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["linux"]["uidMappings"][0]["hostID"].as_u64(),
        Some(euid() as u64)
    );
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "echo spec-ok"]);
    std::fs::write(
        b.path().join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let o = rt.jc(&["run", "s", "-b", b.path_str()]);
    o.ok();
    assert_eq!(o.stdout.trim(), "spec-ok");
    // spec refuses to overwrite.
    rt.jc(&["spec", "--rootless", "-b", b.path_str()])
        .fails_one_line();
}

#[test]
fn features_json() {
    let rt = Rt::new();
    let v: serde_json::Value = serde_json::from_str(&rt.ok(&["features"]).stdout).unwrap();
    assert!(v["ociVersionMax"].is_string());
    let hooks: Vec<&str> = v["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h.as_str())
        .collect();
    for h in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        assert!(hooks.contains(&h), "{hooks:?}");
    }
    assert_eq!(v["linux"]["seccomp"]["enabled"], true);
}

// ---- errors -------------------------------------------------------------------------------------------

#[test]
fn unknown_id_errors() {
    let rt = Rt::new();
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope", "KILL"],
        &["delete", "nope"],
        &["ps", "nope"],
        &["exec", "nope", "true"],
    ] {
        let line = rt.jc(args).fails_one_line();
        assert!(line.contains("nope"), "{args:?}: {line}");
    }
    // runc: delete --force of a missing container succeeds.
    rt.ok(&["delete", "--force", "nope"]);
    assert!(rt.ids().is_empty());
}

#[test]
fn duplicate_id_fails_and_keeps_first() {
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    b.write();
    rt.ok(&["create", "dup", "-b", b.path_str()]);
    let pid = rt.state("dup")["pid"].as_i64().unwrap();
    let line = rt
        .jc(&["create", "dup", "-b", b.path_str()])
        .fails_one_line();
    assert!(line.contains("dup"), "{line}");
    let st = rt.state("dup");
    assert_eq!(st["status"], "created");
    assert_eq!(st["pid"].as_i64(), Some(pid));
    rt.ok(&["delete", "dup"]);
    assert!(rt.ids().is_empty());
}

#[test]
fn start_twice_fails() {
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    rt.create_start("s2", b_written(&b));
    rt.jc(&["start", "s2"]).fails_one_line();
    assert_eq!(rt.status("s2"), "running");
    rt.ok(&["delete", "--force", "s2"]);
}

#[test]
fn kill_stopped_fails() {
    let rt = Rt::new();
    let b = Bundle::sh("exit 0");
    rt.create_start("ks", b_written(&b));
    rt.wait_status("ks", "stopped");
    rt.jc(&["kill", "ks", "KILL"]).fails_one_line();
    assert_eq!(rt.status("ks"), "stopped");
    rt.ok(&["delete", "ks"]);
}

#[test]
fn delete_running_needs_force() {
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    rt.create_start("dr", b_written(&b));
    let line = rt.jc(&["delete", "dr"]).fails_one_line();
    assert!(line.contains("dr"), "{line}");
    assert_eq!(rt.status("dr"), "running");
    rt.ok(&["delete", "--force", "dr"]);
    assert!(rt.ids().is_empty());
}

#[test]
fn delete_created_container() {
    // runc deletes a created (never started) container without --force.
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    b.write();
    rt.ok(&["create", "dc", "-b", b.path_str()]);
    let pid = rt.state("dc")["pid"].as_i64().unwrap();
    rt.ok(&["delete", "dc"]);
    assert!(rt.ids().is_empty());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(
        !pid_alive(pid),
        "created container's process survived delete"
    );
}

#[test]
fn invalid_ids_rejected() {
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    b.write();
    for bad in ["../x", "a/b", "..", ".hidden", "-x", ""] {
        let line = rt
            .jc(&["create", "-b", b.path_str(), "--", bad])
            .fails_one_line();
        assert!(!line.is_empty(), "{bad}");
        rt.jc(&["state", "--", bad]).fails_one_line();
    }
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
    assert!(
        !rt.root().parent().unwrap().join("x").exists()
            || !rt.root().parent().unwrap().join("x/state.json").exists()
    );
}

#[test]
fn failed_create_leaves_no_state() {
    let rt = Rt::new();
    // A command that does not exist in the rootfs.
    let b = Bundle::new(&["/no/such/binary"]);
    b.write();
    let o = rt.jc(&["create", "bad", "-b", b.path_str()]);
    // runc fails at create (exec is checked before the fifo wait); failing at start is also acceptable.
    if o.status.success() {
        let s = rt.jc(&["start", "bad"]);
        assert!(
            !s.status.success() || rt.status("bad") == "stopped",
            "{s:?}"
        );
        let _ = rt.jc(&["delete", "--force", "bad"]);
    } else {
        o.fails_one_line();
    }
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());

    // A bundle without config.json / with a broken one.
    let empty = tempfile::tempdir().unwrap();
    rt.jc(&["create", "nocfg", "-b", empty.path().to_str().unwrap()])
        .fails_one_line();
    std::fs::write(b.path().join("config.json"), "{not json").unwrap();
    rt.jc(&["create", "broken", "-b", b.path_str()])
        .fails_one_line();
    // A mount that cannot be made (source missing).
    let mut b2 = Bundle::new(&["true"]);
    b2.add_mount(serde_json::json!({"destination": "/data", "type": "bind", "source": "/no/such/dir", "options": ["rbind"]}));
    b2.write();
    rt.jc(&["create", "badmount", "-b", b2.path_str()])
        .fails_one_line();
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
}

#[test]
fn terminal_without_console_socket_fails() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sh"]);
    b.process()["terminal"] = true.into();
    b.write();
    rt.jc(&["create", "tty", "-b", b.path_str()])
        .fails_one_line();
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
}

#[test]
fn many_containers_in_one_root() {
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    b.write();
    for i in 0..3 {
        rt.ok(&["run", "--detach", &format!("m{i}"), "-b", b.path_str()]);
    }
    assert_eq!(rt.ids(), vec!["m0", "m1", "m2"]);
    for i in 0..3 {
        rt.ok(&["delete", "--force", &format!("m{i}")]);
    }
    assert!(rt.ids().is_empty());
}

#[test]
fn default_root_inside_a_user_namespace_honours_xdg_runtime_dir() {
    // Rootless podman runs the runtime inside its user namespace, where euid is 0, without --root. runc then
    // still uses $XDG_RUNTIME_DIR/runc (it honours XDG_RUNTIME_DIR when euid != 0, or when in a non-initial
    // user namespace and $USER is not "root"); /run/<runtime> is not writable there.
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: unshare(1) not installed");
        return;
    }
    let xdg = tempfile::tempdir().unwrap();
    let mut b = Bundle::new(&["true"]);
    b.linux()["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 0, "size": 1}]);
    b.linux()["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 0, "size": 1}]);
    b.write();
    let cid = id("xdg");
    let in_userns = |args: &[&str]| {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--user", "--map-root-user", "--"])
            .arg(bin())
            .args(args)
            .env("XDG_RUNTIME_DIR", xdg.path())
            .env("USER", "jcuser");
        run_cmd(&mut cmd, None)
    };
    let o = in_userns(&["create", &cid, "-b", b.path_str()]);
    let under_xdg = xdg.path().join("jobcell").join(&cid).is_dir();
    let _ = in_userns(&["delete", "--force", &cid]);
    o.ok();
    assert!(under_xdg, "state not under $XDG_RUNTIME_DIR/jobcell: {o:?}");
}

#[test]
fn log_file_json_gets_the_error() {
    // podman/containerd pass --log FILE --log-format json and read errors from there.
    let rt = Rt::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.json");
    let o = rt.jc(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "state",
        "nope",
    ]);
    let line = o.fails_one_line();
    let text = std::fs::read_to_string(&log).expect("--log file written");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(last["level"], "error", "{text}");
    assert!(
        line.contains(last["msg"].as_str().unwrap()),
        "{line} vs {text}"
    );
}

#[test]
fn concurrent_creates_of_one_id() {
    let rt = std::sync::Arc::new(Rt::new());
    let b = Bundle::sh("exec sleep 600");
    b.write();
    let path = b.path_str().to_string();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let rt = rt.clone();
            let path = path.clone();
            std::thread::spawn(move || rt.jc(&["create", "same", "-b", &path]).status.success())
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|w| *w)
        .count();
    assert_eq!(wins, 1, "exactly one concurrent create wins");
    assert_eq!(rt.status("same"), "created");
    rt.ok(&["delete", "same"]);
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
}

#[test]
fn container_dying_while_created_reports_stopped() {
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    b.write();
    rt.ok(&["create", "dc", "-b", b.path_str()]);
    rt.ok(&["kill", "dc", "KILL"]);
    rt.wait_status("dc", "stopped");
    rt.jc(&["start", "dc"]).fails_one_line();
    rt.ok(&["delete", "dc"]);
    assert!(rt.ids().is_empty());
}

#[test]
fn run_foreground_passes_stdin() {
    let rt = Rt::new();
    let b = Bundle::sh("read line; echo got=$line; cat | wc -l");
    b.write();
    let o = run_cmd(
        &mut rt.cmd(&["run", "in", "-b", b.path_str()]),
        Some(b"first\nsecond\nthird\n"),
    );
    o.ok();
    assert_eq!(o.stdout, "got=first\n2\n");
}

#[test]
fn run_foreground_forwards_signals() {
    // runc run (without --detach) forwards the signals it gets to the container process.
    let rt = Rt::new();
    let b = Bundle::sh(
        "trap 'echo got-term; exit 7' TERM; echo up > /tmp/up; while :; do sleep 0.05; done",
    );
    b.write();
    let mut cmd = rt.cmd(&["run", "sig", "-b", b.path_str()]);
    let dir = tempfile::tempdir().unwrap();
    cmd.stdout(std::fs::File::create(dir.path().join("out")).unwrap())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rt.try_status("sig").as_deref() != Some("running") {
        assert!(std::time::Instant::now() < deadline, "never running");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = rt.jc(&["delete", "--force", "sig"]);
            panic!("SIGTERM to `jobcell run` did not reach the container");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(7), "{status:?}");
    assert!(std::fs::read_to_string(dir.path().join("out"))
        .unwrap()
        .contains("got-term"));
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
}

#[test]
fn spec_without_rootless_runs_as_root() {
    if !is_root() {
        eprintln!("skipping: a non-rootless spec needs root");
        return;
    }
    let rt = Rt::new();
    let b = Bundle::new(&["true"]);
    rt.ok(&["spec", "-b", b.path_str()]);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.path().join("config.json")).unwrap()).unwrap();
    cfg["process"]["terminal"] = false.into();
    cfg["process"]["args"] = serde_json::json!(["sh", "-c", "echo root-spec-ok"]);
    std::fs::write(
        b.path().join("config.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let o = rt.jc(&["run", "rs", "-b", b.path_str()]);
    o.ok();
    assert_eq!(o.stdout.trim(), "root-spec-ok");
}

#[test]
fn flags_a_bundle_would_ignore_are_refused_and_nothing_starts() {
    let rt = Rt::new();
    let b = Bundle::sh("echo ran");
    b.write();
    for (args, flag) in [
        (
            vec!["run", "--bundle", b.path_str(), "--memory", "64M"],
            "--memory",
        ),
        (
            vec!["run", "--bundle", b.path_str(), "--userns", "single"],
            "--userns",
        ),
        (
            vec!["run", "x", "-b", b.path_str(), "--seccomp", "unconfined"],
            "--seccomp",
        ),
        (
            vec!["run", "x", "-b", b.path_str(), "--json", "-"],
            "--json",
        ),
        (
            vec!["run", "x", "-b", b.path_str(), "--timeout", "5s"],
            "--timeout",
        ),
    ] {
        let o = rt.jc(&args);
        assert_eq!(o.code(), 125, "{args:?}: {}", o.stderr);
        let line = o.fails_one_line();
        assert!(line.contains(flag), "{args:?}: {line}");
        assert!(
            !o.stdout.contains("ran"),
            "{args:?} ran the bundle: {}",
            o.stdout
        );
    }
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
    // The supervised bundle run takes the flags that do apply to it.
    let o = rt.jc(&[
        "run",
        "--bundle",
        b.path_str(),
        "--timeout",
        "30s",
        "--strict",
    ]);
    o.ok();
    assert_eq!(o.stdout.trim(), "ran");
}
