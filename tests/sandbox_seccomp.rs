//! The default seccomp allowlist, probed with raw syscalls from inside.

mod sandbox_common;
use sandbox_common::*;

/// Syscall families the default profile must refuse with EPERM (probe test name -> errno).
const DENIED: &[&str] = &[
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "open_by_handle_at",
    "name_to_handle_at",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "unshare_ns",
    "setns",
    "chroot",
    "ptrace",
    "reboot",
    "swapon",
    "syslog",
    "clock_settime",
    "settimeofday",
    "sethostname",
    "tiocsti",
    "clone_newuser",
    "clone_newns",
    "clone_newpid",
    "clone_newnet",
];

#[test]
fn denied_families_get_eperm() {
    let mut args = vec!["sys"];
    args.extend_from_slice(DENIED);
    let o = probe(&args);
    assert_code(&o, 0);
    let wrong: Vec<String> = DENIED
        .iter()
        .filter(|n| o.get(n) != "EPERM")
        .map(|n| format!("{n}={}", o.get(n)))
        .collect();
    assert!(wrong.is_empty(), "not refused with EPERM: {wrong:?}");
}

#[test]
fn the_filter_is_what_refuses() {
    // Without the filter several of these succeed or fail differently, so the EPERM above is the filter's doing.
    let o = probe_with(
        &["--seccomp", "unconfined"],
        &[
            "sys", "keyctl", "add_key", "ptrace", "clone3", "bpf", "tiocsti", "getpid",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(o.get("getpid"), "0");
    for n in ["keyctl", "add_key", "ptrace", "clone3"] {
        assert_eq!(o.get(n), "0", "{n} without seccomp");
    }
    assert_ne!(o.get("bpf"), "EPERM");
    assert_ne!(o.get("tiocsti"), "EPERM");
    let o = run(
        &["--seccomp", "unconfined"],
        &["grep", "^Seccomp:", "/proc/self/status"],
    );
    assert_code(&o, 0);
    assert_eq!(
        o.stdout.split_whitespace().nth(1),
        Some("0"),
        "unconfined must install no filter"
    );
}

#[test]
fn clone3_and_unknown_syscalls_get_enosys() {
    let o = probe(&[
        "sys",
        "clone3",
        "memfd_secret",
        "bogus",
        "clone_plain",
        "getpid",
    ]);
    assert_code(&o, 0);
    assert_eq!(
        o.get("clone3"),
        "ENOSYS",
        "clone3 must be ENOSYS so libc falls back to clone"
    );
    assert_eq!(
        o.get("memfd_secret"),
        "ENOSYS",
        "a syscall outside the allowlist must get ENOSYS"
    );
    assert_eq!(o.get("bogus"), "ENOSYS");
    assert_eq!(
        o.get("clone_plain"),
        "0",
        "plain fork-style clone must work"
    );
    assert_eq!(o.get("getpid"), "0");
}

#[test]
fn ordinary_ioctls_reach_the_kernel() {
    // FIONREAD/TCGETS are ioctls everybody uses (isatty, tcgetattr); only TIOCSTI/TIOCLINUX may be refused.
    let o = probe(&["ioctl"]);
    assert_code(&o, 0);
    assert_eq!(o.get("fionread"), "3", "FIONREAD on a pipe");
    assert_eq!(
        o.get("tcgets"),
        "ENOTTY",
        "TCGETS on /dev/null must get ENOTTY from the kernel"
    );
    let o = sh("test -t 0 && echo tty || echo notty; echo hi | cat | wc -c");
    assert_code(&o, 0);
    assert_eq!(o.lines(), vec!["notty", "3"]);
}

#[test]
fn threads_and_personality_query_work() {
    // threads (clone with CLONE_THREAD|CLONE_VM...) must pass the clone argument filter
    if python3() {
        let o = run(
            &[],
            &["python3", "-c", "import threading; t=threading.Thread(target=print, args=(\"thread\",)); t.start(); t.join()"],
        );
        assert_code(&o, 0);
        assert_eq!(o.stdout, "thread\n", "{o:#?}");
    } else {
        eprintln!(
            "SKIPPED: threads_and_personality_query_work (threads part): python3 is not installed"
        );
    }
    // personality: the query (0xffffffff) and PER_LINUX (what `setarch ARCH` sets) pass the filter;
    // disabling ASLR (ADDR_NO_RANDOMIZE, `setarch -R`) is refused with EPERM, as in Docker's default profile
    let o = sh_with(
        &["--bind", &probe_bind()],
        "/probe/probe sys personality_query personality_no_randomize; \
         setarch $(uname -m) true; echo linux=$?; setarch -R true 2>/dev/null; echo no_randomize=$?",
    );
    assert_code(&o, 0);
    assert_eq!(o.get("personality_query"), "0", "{o:#?}");
    assert_eq!(o.get("personality_no_randomize"), "EPERM", "{o:#?}");
    assert_eq!(
        o.get("linux"),
        "0",
        "setarch $(uname -m) true failed: {o:#?}"
    );
    assert_eq!(o.get("no_randomize"), "1", "setarch -R true: {o:#?}");
}

#[test]
fn strict_profile_also_confines() {
    let mut args = vec!["sys", "getpid"];
    args.extend_from_slice(&[
        "keyctl",
        "bpf",
        "mount",
        "unshare",
        "ptrace",
        "clone_newuser",
    ]);
    let o = probe_with(&["--profile", "strict"], &args);
    assert_code(&o, 0);
    assert_eq!(o.get("getpid"), "0");
    for n in [
        "keyctl",
        "bpf",
        "mount",
        "unshare",
        "ptrace",
        "clone_newuser",
    ] {
        assert!(
            ["EPERM", "ENOSYS"].contains(&o.get(n)),
            "{n}={} under the strict profile",
            o.get(n)
        );
    }
}

#[test]
fn custom_seccomp_file_is_applied() {
    // a profile that allows everything but denies getpid with EACCES (13)
    let d = tempdir();
    let f = d.path().join("p.json");
    std::fs::write(
        &f,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpid"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    sandbox_common::set_mode(&f, 0o644);
    let o = probe_with(
        &["--seccomp", f.to_str().unwrap()],
        &["sys", "getpid", "keyctl"],
    );
    assert_code(&o, 0);
    assert_eq!(o.get("getpid"), "EACCES");
    assert_eq!(
        o.get("keyctl"),
        "0",
        "the custom profile replaces the default one"
    );
}
