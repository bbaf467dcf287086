//! `jobcell exec` into a running busybox container: args, `--process`, exit status, env/cwd/user, detach.

#[path = "oci/common.rs"]
mod common;

use common::*;
use serde_json::json;

fn running(rt: &Rt, id: &str) -> Bundle {
    let mut b = Bundle::sh("exec sleep 600");
    b.process()["env"] = json!(["PATH=/bin", "HOME=/root", "CONTAINER_VAR=base"]);
    b.write();
    rt.create_start(id, &b);
    b
}

#[test]
fn exec_args_and_exit_status() {
    let rt = Rt::new();
    let _b = running(&rt, "e");
    let o = rt.jc(&[
        "exec",
        "e",
        "--",
        "sh",
        "-c",
        "echo hi; cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 4",
    ]);
    assert_eq!(o.code(), 4, "{o:?}");
    let mut lines = o.stdout.lines();
    assert_eq!(lines.next(), Some("hi"));
    assert!(
        lines.next().unwrap_or("").starts_with("sleep 600"),
        "exec is not in the container's pid namespace: {o:?}"
    );
    assert_eq!(rt.jc(&["exec", "e", "--", "true"]).code(), 0);
    // A command that does not exist: non-zero, container unaffected.
    let o = rt.jc(&["exec", "e", "--", "/no/such/cmd"]);
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(rt.status("e"), "running");
    rt.ok(&["delete", "--force", "e"]);
}

#[test]
fn exec_env_cwd_user() {
    let rt = Rt::new();
    let _b = running(&rt, "env");
    let o = rt.jc(&[
        "exec",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        "env",
        "--",
        "sh",
        "-c",
        "echo foo=$FOO; echo base=$CONTAINER_VAR; echo cwd=$(pwd); echo uid=$(id -u)",
    ]);
    o.ok();
    let m = kv(&o.stdout);
    assert_eq!(m["foo"], "bar");
    assert_eq!(m["base"], "base", "exec inherits the container's env");
    assert_eq!(m["cwd"], "/tmp");
    assert_eq!(m["uid"], "0");
    let o = rt.jc(&["exec", "--user", "0:0", "env", "--", "id", "-u"]);
    assert_eq!(o.ok().stdout.trim(), "0");
    rt.ok(&["delete", "--force", "env"]);
}

#[test]
fn exec_as_other_user_with_ranges() {
    let rt = Rt::new();
    let mut b = Bundle::sh("exec sleep 600");
    if !use_range_mappings(&mut b) {
        return;
    }
    b.write();
    rt.create_start("u", &b);
    let o = rt.jc(&[
        "exec",
        "--user",
        "1000:1001",
        "u",
        "--",
        "sh",
        "-c",
        "echo uid=$(id -u) gid=$(id -g)",
    ]);
    assert_eq!(o.ok().stdout.trim(), "uid=1000 gid=1001");
    rt.ok(&["delete", "--force", "u"]);
}

#[test]
fn exec_process_json() {
    let rt = Rt::new();
    let _b = running(&rt, "pj");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("process.json");
    let caps = json!(["CAP_KILL"]);
    std::fs::write(
        &f,
        serde_json::to_vec(&json!({
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "echo v=$V; pwd; grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status; exit 6"],
            "env": ["PATH=/bin", "V=fromjson"],
            "cwd": "/proc",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        }))
        .unwrap(),
    )
    .unwrap();
    let o = rt.jc(&["exec", "--process", f.to_str().unwrap(), "pj"]);
    assert_eq!(o.code(), 6, "{o:?}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "v=fromjson");
    assert_eq!(lines[1], "/proc");
    assert_eq!(
        status_field(&o.stdout, "CapBnd"),
        format!("{:016x}", cap_mask(&["CAP_KILL"]))
    );
    assert_eq!(status_field(&o.stdout, "NoNewPrivs"), "1");
    // A malformed process file: one-line error.
    std::fs::write(&f, "{").unwrap();
    rt.jc(&["exec", "--process", f.to_str().unwrap(), "pj"])
        .fails_one_line();
    rt.ok(&["delete", "--force", "pj"]);
}

#[test]
fn exec_gets_container_security_settings() {
    let rt = Rt::new();
    let _b = running(&rt, "sec");
    let o = rt.jc(&[
        "exec",
        "sec",
        "--",
        "grep",
        "-E",
        "^(CapBnd|NoNewPrivs)",
        "/proc/self/status",
    ]);
    o.ok();
    assert_eq!(
        status_field(&o.stdout, "CapBnd"),
        format!("{:016x}", cap_mask(DEFAULT_CAPS))
    );
    assert_eq!(status_field(&o.stdout, "NoNewPrivs"), "1");
    let o = rt.jc(&[
        "exec",
        "sec",
        "--",
        "sh",
        "-c",
        "for n in pid mnt uts; do readlink /proc/self/ns/$n; done",
    ]);
    let pid = rt.state("sec")["pid"].as_i64().unwrap();
    let want: Vec<String> = ["pid", "mnt", "uts"]
        .iter()
        .map(|n| {
            std::fs::read_link(format!("/proc/{pid}/ns/{n}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(o.ok().stdout.lines().collect::<Vec<_>>(), want);
    rt.ok(&["delete", "--force", "sec"]);
}

#[test]
fn exec_detach_with_pid_file() {
    let rt = Rt::new();
    let _b = running(&rt, "ed");
    let dir = tempfile::tempdir().unwrap();
    let pf = dir.path().join("exec.pid");
    rt.ok(&[
        "exec",
        "--detach",
        "--pid-file",
        pf.to_str().unwrap(),
        "ed",
        "--",
        "sleep",
        "500",
    ]);
    let pid: i64 = std::fs::read_to_string(&pf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The pid is the exec'd process itself (it may still be between fork and execve for a moment).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        if cmdline.starts_with("sleep\u{0}500") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "--pid-file names {pid}: {cmdline:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ps: Vec<i64> =
        serde_json::from_str(rt.ok(&["ps", "--format", "json", "ed"]).stdout.trim()).unwrap();
    assert!(ps.contains(&pid), "{ps:?} lacks exec'd {pid}");
    rt.ok(&["delete", "--force", "ed"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true),
        "exec'd process survived delete --force"
    );
}

#[test]
fn exec_into_stopped_fails() {
    let rt = Rt::new();
    let b = Bundle::sh("exit 0");
    b.write();
    rt.create_start("st", &b);
    rt.wait_status("st", "stopped");
    rt.jc(&["exec", "st", "--", "true"]).fails_one_line();
    rt.jc(&["exec", "st"]).fails_one_line();
    rt.ok(&["delete", "st"]);
}
