//! Bad input: every refusal exits 125 before anything starts, with ONE line on stderr naming the field, and
//! creates nothing (no outcome file, no files through binds, payload never runs).

mod sandbox_common;
use sandbox_common::*;

/// Runs `jobcell run ARGS... --json OUT --bind DIR:/out:rw -- sh -c 'touch /out/ran'` and checks the refusal.
#[track_caller]
fn refused(args: &[&str], must_mention: &[&str]) {
    let d = tempdir();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    sandbox_common::set_mode(&out, 0o777);
    let json = d.path().join("outcome.json");
    let bind = format!("{}:/out:rw", out.display());
    let mut a: Vec<&str> = vec!["run"];
    a.extend_from_slice(args);
    let json_s = json.display().to_string();
    a.extend_from_slice(&[
        "--json",
        &json_s,
        "--bind",
        &bind,
        "--",
        "sh",
        "-c",
        "touch /out/ran",
    ]);
    let o = jobcell(&a);
    assert_eq!(o.code, 125, "{args:?} must exit 125: {o:#?}");
    let lines: Vec<&str> = o.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?} must print exactly one line on stderr: {o:#?}"
    );
    for m in must_mention {
        assert!(
            lines[0].contains(m),
            "{args:?}: stderr must name {m:?}: {}",
            lines[0]
        );
    }
    assert_eq!(o.stdout, "", "{args:?}: nothing on stdout");
    assert!(!json.exists(), "{args:?}: the outcome file was created");
    assert!(!out.join("ran").exists(), "{args:?}: the payload ran");
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "{args:?}: created {left:?}");
}

#[test]
fn memory_lots() {
    refused(&["--memory", "lots"], &["memory", "lots"]);
}

#[test]
fn cpus_zero() {
    refused(&["--cpus", "0"], &["cpus"]);
    refused(&["--cpus", "-0.5"], &["cpus"]);
}

#[test]
fn pids_negative() {
    refused(&["--pids", "-1"], &["pids"]);
}

#[test]
fn pids_negative_with_equals() {
    refused(&["--pids=-1"], &["pids"]);
    refused(&["--pids", "0"], &["pids"]);
}

#[test]
fn tmpfs_size_bad_unit() {
    refused(&["--tmpfs-size", "1X"], &["tmpfs-size", "1X"]);
}

#[test]
fn rootfs_missing() {
    refused(
        &["--rootfs", "/nonexistent-jobcell-rootfs"],
        &["rootfs", "/nonexistent-jobcell-rootfs"],
    );
}

#[test]
fn bind_source_missing() {
    refused(
        &["--bind", "/nonexistent-jobcell-src:/x"],
        &["bind", "/nonexistent-jobcell-src"],
    );
}

#[test]
fn bind_malformed() {
    refused(&["--bind", "/tmp"], &["bind"]);
    refused(&["--bind", "/tmp:relative"], &["bind"]);
    refused(&["--bind", "/tmp:/x:rx"], &["bind"]);
}

#[test]
fn profile_unknown_name() {
    refused(&["--profile", "nosuch"], &["nosuch"]);
}

#[test]
fn profile_file_with_unknown_field() {
    let d = tempdir();
    let p = d.path().join("bad.toml");
    std::fs::write(&p, "memory = \"64M\"\nmemroy_typo = \"1G\"\n").unwrap();
    sandbox_common::set_mode(&p, 0o644);
    refused(
        &["--profile", p.to_str().unwrap()],
        &["memroy_typo", "bad.toml"],
    );
}

#[test]
fn profile_file_with_bad_value() {
    let d = tempdir();
    let p = d.path().join("badval.toml");
    std::fs::write(&p, "pids = \"many\"\n").unwrap();
    sandbox_common::set_mode(&p, 0o644);
    refused(&["--profile", p.to_str().unwrap()], &["pids"]);
}

#[test]
fn seccomp_file_invalid_json() {
    let d = tempdir();
    let p = d.path().join("bad.json");
    std::fs::write(
        &p,
        "{\"defaultAction\": \"SCMP_ACT_ALLOW\", \"syscalls\": [",
    )
    .unwrap();
    sandbox_common::set_mode(&p, 0o644);
    refused(&["--seccomp", p.to_str().unwrap()], &["bad.json"]);
}

#[test]
fn seccomp_file_missing() {
    refused(&["--seccomp", "/nonexistent-jobcell.json"], &["seccomp"]);
    refused(&["--seccomp", "nosuchprofile"], &["nosuchprofile"]);
}

#[test]
fn seccomp_unknown_syscall_with_strict() {
    let d = tempdir();
    let p = d.path().join("unknown.json");
    std::fs::write(
        &p,
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[{"names":["read","no_such_syscall_xyz"],"action":"SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
    sandbox_common::set_mode(&p, 0o644);
    refused(
        &["--seccomp", p.to_str().unwrap(), "--strict"],
        &["no_such_syscall_xyz"],
    );
}

#[test]
fn seccomp_unknown_syscall_without_strict_warns_and_runs() {
    let d = tempdir();
    let p = d.path().join("unknown-ok.json");
    std::fs::write(
        &p,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["no_such_syscall_xyz"],"action":"SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    sandbox_common::set_mode(&p, 0o644);
    let o = run(
        &["--seccomp", p.to_str().unwrap()],
        &["sh", "-c", "echo ran"],
    );
    assert_code(&o, 0);
    assert_eq!(o.stdout, "ran\n");
    assert!(
        o.stderr.contains("no_such_syscall_xyz"),
        "an ignored syscall name must be warned about: {o:#?}"
    );
}

#[test]
fn other_bad_values() {
    refused(&["--user", "bob"], &["user"]);
    refused(&["--timeout", "forever"], &["timeout"]);
    refused(&["--net", "bogus"], &["net"]);
    refused(&["--userns", "range"], &["--userns", "auto or single"]);
    refused(&["--cap-add", "NOT_A_CAP"], &["NOT_A_CAP"]);
    refused(&["--memory", "0"], &["memory"]);
    refused(&["--workdir", "relative/dir"], &["workdir"]);
    refused(&["--env", "NOEQUALS"], &["env"]);
}

#[test]
fn net_egress_is_refused_until_implemented() {
    // README: `--net egress` is not implemented yet and is refused with exit 125 (never a silent --net none,
    // never the host's network)
    refused(
        &["--net", "egress"],
        &["--net egress", "not available", "--net none"],
    );
}

#[test]
fn json_path_unwritable() {
    let o = run(&["--json", "/nonexistent-dir/outcome.json"], &["true"]);
    assert_code(&o, 125);
    assert_eq!(o.stderr.lines().count(), 1, "{o:#?}");
    assert!(o.stderr.contains("json"), "{o:#?}");
}

#[test]
fn unknown_option_exits_125() {
    // like docker run: a usage error is jobcell's failure before the command started
    let o = run(&["--no-such-option"], &["true"]);
    assert_code(&o, 125);
    let o = jobcell(&["run"]);
    assert_code(&o, 125);
}
