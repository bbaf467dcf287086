//! Each supported config.json feature, checked from inside a busybox container run in the foreground.

#[path = "oci/common.rs"]
mod common;

use common::*;
use serde_json::json;

fn mask(names: &[&str]) -> String {
    format!("{:016x}", cap_mask(names))
}

fn caps_script() -> &'static str {
    "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status"
}

#[test]
fn capabilities_as_root_in_container() {
    let mut b = Bundle::sh(caps_script());
    let bnd = [
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
    ];
    let inh = ["CAP_KILL", "CAP_NET_BIND_SERVICE"];
    let amb = ["CAP_KILL"];
    b.process()["capabilities"] = json!({
        "bounding": bnd, "effective": ["CAP_CHOWN", "CAP_KILL"], "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "inheritable": inh, "ambient": amb
    });
    let out = b.run_ok();
    assert_eq!(status_field(&out, "CapBnd"), mask(&bnd), "{out}");
    assert_eq!(status_field(&out, "CapInh"), mask(&inh), "{out}");
    assert_eq!(status_field(&out, "CapAmb"), mask(&amb), "{out}");
    // uid 0 across execve (no SECBIT_NOROOT): permitted = effective = inheritable | bounding (as with runc).
    let eff = u64::from_str_radix(&status_field(&out, "CapEff"), 16).unwrap();
    assert_eq!(
        eff & !cap_mask(&bnd),
        0,
        "effective caps outside the bounding set: {out}"
    );
    assert!(
        eff & cap_mask(&["CAP_CHOWN", "CAP_KILL"]) == cap_mask(&["CAP_CHOWN", "CAP_KILL"]),
        "{out}"
    );
}

#[test]
fn capabilities_as_non_root_user() {
    let mut b = Bundle::sh(caps_script());
    if !use_range_mappings(&mut b) {
        return;
    }
    let bnd = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    b.process()["user"] = json!({"uid": 1000, "gid": 1000});
    b.process()["capabilities"] = json!({
        "bounding": bnd, "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "permitted": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_KILL", "CAP_NET_BIND_SERVICE"], "ambient": ["CAP_NET_BIND_SERVICE"]
    });
    let out = b.run_ok();
    assert_eq!(status_field(&out, "CapBnd"), mask(&bnd), "{out}");
    assert_eq!(
        status_field(&out, "CapInh"),
        mask(&["CAP_KILL", "CAP_NET_BIND_SERVICE"]),
        "{out}"
    );
    // A non-root process keeps exactly its ambient set across execve.
    assert_eq!(
        status_field(&out, "CapAmb"),
        mask(&["CAP_NET_BIND_SERVICE"]),
        "{out}"
    );
    assert_eq!(
        status_field(&out, "CapPrm"),
        mask(&["CAP_NET_BIND_SERVICE"]),
        "{out}"
    );
    assert_eq!(
        status_field(&out, "CapEff"),
        mask(&["CAP_NET_BIND_SERVICE"]),
        "{out}"
    );
}

#[test]
fn no_new_privileges_on_and_off() {
    let b = Bundle::sh(caps_script());
    assert_eq!(status_field(&b.run_ok(), "NoNewPrivs"), "1");
    let mut b = Bundle::sh(caps_script());
    b.process()["noNewPrivileges"] = false.into();
    assert_eq!(status_field(&b.run_ok(), "NoNewPrivs"), "0");
}

#[test]
fn rlimits() {
    let mut b = Bundle::sh(
        "echo nofile=$(ulimit -Sn); echo nofile_hard=$(ulimit -Hn); echo core=$(ulimit -c); echo nproc=$(ulimit -u); \
         grep 'Max open files' /proc/self/limits | awk '{print \"limits=\" $4 \" \" $5}'",
    );
    b.process()["rlimits"] = json!([
        {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
        {"type": "RLIMIT_NPROC", "soft": 3000, "hard": 3000}
    ]);
    let m = kv(&b.run_ok());
    // runc applies soft and hard separately (setrlimit(soft, hard)).
    assert_eq!(
        m["limits"], "100 200",
        "RLIMIT_NOFILE soft/hard in /proc/self/limits"
    );
    assert_eq!(m["nofile"], "100");
    assert_eq!(m["nofile_hard"], "200");
    assert_eq!(m["core"], "0");
    assert_eq!(m["nproc"], "3000");
}

#[test]
fn umask_env_cwd() {
    let mut b = Bundle::sh("echo umask=$(umask); echo cwd=$(pwd); echo foo=$FOO; echo home=$HOME");
    b.process()["user"]["umask"] = json!(0o027);
    b.process()["cwd"] = json!("/tmp");
    b.process()["env"] = json!(["PATH=/bin", "FOO=bar baz", "HOME=/root"]);
    let m = kv(&b.run_ok());
    assert_eq!(m["umask"], "0027");
    assert_eq!(m["cwd"], "/tmp");
    assert_eq!(m["foo"], "bar baz");
    assert_eq!(m["home"], "/root");
}

#[test]
fn hostname_and_domainname() {
    let mut b = Bundle::sh("echo host=$(hostname); echo dom=$(cat /proc/sys/kernel/domainname)");
    b.config["hostname"] = json!("box1");
    b.config["domainname"] = json!("example.test");
    let m = kv(&b.run_ok());
    assert_eq!(m["host"], "box1");
    assert_eq!(m["dom"], "example.test");
}

#[test]
fn root_readonly_and_writable() {
    let b = Bundle::sh("touch /newfile 2>/dev/null && echo w=yes || echo w=no");
    assert_eq!(
        kv(&b.run_ok())["w"],
        "no",
        "root.readonly true must make / read-only"
    );
    let mut b = Bundle::sh("touch /newfile && echo w=yes");
    b.config["root"]["readonly"] = false.into();
    assert_eq!(kv(&b.run_ok())["w"], "yes");
    assert!(b.rootfs().join("newfile").exists());
}

fn mount_opts(mountinfo: &str, target: &str) -> Vec<String> {
    let line = mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(target))
        .unwrap_or_else(|| panic!("{target} not mounted:\n{mountinfo}"));
    let f: Vec<&str> = line.split(' ').collect();
    // Per-mount options (field 6) plus the superblock options after " - TYPE SOURCE ".
    let sep = f.iter().position(|x| *x == "-").unwrap();
    let mut o: Vec<String> = f[5].split(',').map(str::to_string).collect();
    o.push(format!("type={}", f[sep + 1]));
    o.extend(f[sep + 3].split(',').map(str::to_string));
    o
}

#[test]
fn mounts_with_options() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("hello"), "from-host").unwrap();
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut b = Bundle::sh(
        "cat /proc/self/mountinfo > /tmp/mi; \
         touch /ro/x 2>/dev/null && echo ro_write=yes || echo ro_write=no; \
         cp /bin/busybox /nx/bb && (/nx/bb true 2>/dev/null && echo nx_exec=yes || echo nx_exec=no); \
         echo bind_read=$(cat /data/hello); echo new > /data/fromcontainer && echo bind_write=yes; \
         echo robind_read=$(cat /robind/hello); touch /robind/y 2>/dev/null && echo robind_write=yes || echo robind_write=no; \
         echo ---; cat /tmp/mi",
    );
    b.add_mount(json!({"destination": "/ro", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "nosuid", "nodev"]}));
    b.add_mount(json!({"destination": "/nx", "type": "tmpfs", "source": "tmpfs", "options": ["noexec", "nosuid", "nodev", "mode=755"]}));
    b.add_mount(json!({"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind", "rw", "rprivate"]}));
    b.add_mount(json!({"destination": "/robind", "type": "none", "source": host.path(), "options": ["bind", "ro", "nosuid", "noexec", "nodev", "rslave"]}));
    b.add_mount(json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}));
    let out = b.run_ok();
    let (head, mi) = out.split_once("---\n").unwrap();
    let m = kv(head);
    assert_eq!(m["ro_write"], "no", "{out}");
    assert_eq!(m["nx_exec"], "no", "{out}");
    assert_eq!(m["bind_read"], "from-host");
    assert_eq!(m["bind_write"], "yes");
    assert_eq!(
        std::fs::read_to_string(host.path().join("fromcontainer")).unwrap(),
        "new\n"
    );
    assert_eq!(m["robind_read"], "from-host");
    assert_eq!(m["robind_write"], "no");
    let ro = mount_opts(mi, "/ro");
    for o in ["ro", "nosuid", "nodev", "type=tmpfs"] {
        assert!(ro.iter().any(|x| x == o), "/ro lacks {o}: {ro:?}");
    }
    let nx = mount_opts(mi, "/nx");
    assert!(nx.iter().any(|x| x == "noexec"), "{nx:?}");
    let robind = mount_opts(mi, "/robind");
    for o in ["ro", "nosuid", "noexec", "nodev"] {
        assert!(
            robind.iter().any(|x| x == o),
            "/robind lacks {o}: {robind:?}"
        );
    }
    assert!(mount_opts(mi, "/dev/mqueue")
        .iter()
        .any(|x| x == "type=mqueue"));
    assert!(mount_opts(mi, "/proc").iter().any(|x| x == "type=proc"));
    assert!(mount_opts(mi, "/dev/pts")
        .iter()
        .any(|x| x == "type=devpts"));
    assert!(mount_opts(mi, "/dev/shm").iter().any(|x| x == "type=tmpfs"));
    assert!(
        mount_opts(mi, "/").iter().any(|x| x == "ro"),
        "root.readonly"
    );
}

#[test]
fn sysfs_and_cgroup_mounts_with_network_namespace() {
    let mut b = Bundle::sh("cat /proc/self/mountinfo; ls /sys/class/net");
    b.add_namespace("network");
    b.add_namespace("cgroup");
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| m["destination"] != "/sys");
    b.add_mount(json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}));
    b.add_mount(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
    let out = b.run_ok();
    assert!(
        mount_opts(&out, "/sys").iter().any(|x| x == "type=sysfs"),
        "{out}"
    );
    let cg = mount_opts(&out, "/sys/fs/cgroup");
    assert!(
        cg.iter().any(|x| x == "type=cgroup2"),
        "cgroup must become cgroup2: {cg:?}"
    );
    assert!(cg.iter().any(|x| x == "ro"), "{cg:?}");
    // A fresh network namespace has only loopback.
    assert_eq!(out.lines().last(), Some("lo"), "{out}");
}

#[test]
fn cgroup_mount_without_cgroup_namespace() {
    // podman (cgroupns=host, the default on cgroup v1/hybrid hosts like this one) asks for a "cgroup" mount
    // without a cgroup namespace. In a user namespace the kernel refuses a fresh cgroup2 mount (EPERM) and
    // runc falls back to bind-mounting the host's /sys/fs/cgroup read-only; the container must start.
    let mut b = Bundle::sh("grep -c ' /sys/fs/cgroup' /proc/self/mountinfo");
    b.add_mount(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
    let n: u32 = b.run_ok().trim().parse().unwrap();
    assert!(n >= 1);
}

#[test]
fn masked_and_readonly_paths() {
    let mut b = Bundle::sh(
        "echo secret=$(wc -c < /etc/secret); echo fw=$(ls -A /sys/firmware | wc -l); \
         echo ok > /proc/sys/kernel/hostname 2>/dev/null && echo sys_write=yes || echo sys_write=no; \
         echo sysrq=$(echo h > /proc/sysrq-trigger 2>/dev/null && echo yes || echo no); \
         echo masked_file_exists=$(test -e /proc/keys && echo yes || echo no); \
         echo missing_masked=ok",
    );
    std::fs::write(b.rootfs().join("etc/secret"), "do not read").unwrap();
    b.linux()["maskedPaths"] = json!([
        "/proc/kcore",
        "/proc/keys",
        "/etc/secret",
        "/sys/firmware",
        "/proc/does-not-exist"
    ]);
    b.linux()["readonlyPaths"] = json!(["/proc/sys", "/proc/sysrq-trigger", "/proc/no-such"]);
    let m = kv(&b.run_ok());
    assert_eq!(m["secret"], "0", "masked file reads empty");
    assert_eq!(m["fw"], "0", "masked directory is empty");
    assert_eq!(m["sys_write"], "no", "/proc/sys is read-only");
    assert_eq!(m["sysrq"], "no");
    assert_eq!(m["masked_file_exists"], "yes");
    assert_eq!(
        m["missing_masked"], "ok",
        "missing masked/readonly paths are skipped (runc)"
    );
}

#[test]
fn sysctl_namespaced_keys() {
    let mut b = Bundle::sh("echo fwd=$(cat /proc/sys/net/ipv4/ip_forward); echo msgmax=$(cat /proc/sys/kernel/msgmax); echo dom=$(cat /proc/sys/kernel/domainname)");
    b.add_namespace("network");
    b.linux()["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.msgmax": "4096"});
    // kernel.domainname (UTS) is writable only by real root: /proc/sys/kernel/domainname belongs to the
    // initial user namespace, so rootless runc fails the same way ("open /proc/sys/kernel/domainname:
    // permission denied").
    if is_root() {
        b.linux()["sysctl"]["kernel.domainname"] = json!("sysctl.test");
    }
    let m = kv(&b.run_ok());
    assert_eq!(m["fwd"], "1");
    assert_eq!(m["msgmax"], "4096");
    if is_root() {
        assert_eq!(m["dom"], "sysctl.test");
    }
}

#[test]
fn sysctl_not_namespaced_is_refused() {
    // runc: "sysctl \"vm.swappiness\" is not in a separate kernel namespace"; the create fails cleanly.
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.linux()["sysctl"] = json!({"vm.swappiness": "10"});
    b.write();
    rt.jc(&["create", "sc", "-b", b.path_str()])
        .fails_one_line();
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
    // net.* without a network namespace is refused too.
    let mut b = Bundle::new(&["true"]);
    b.linux()["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
    b.write();
    rt.jc(&["create", "sc2", "-b", b.path_str()])
        .fails_one_line();
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
}

#[test]
fn single_id_mapping() {
    let b = Bundle::sh("cat /proc/self/uid_map /proc/self/gid_map; echo setgroups=$(cat /proc/self/setgroups); id -u; id -g");
    let out = b.run_ok();
    let lines: Vec<Vec<String>> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(lines[0], ["0".to_string(), euid().to_string(), "1".into()]);
    assert_eq!(lines[1], ["0".to_string(), egid().to_string(), "1".into()]);
    let rest: Vec<&str> = out.lines().skip(3).collect();
    assert_eq!(rest, vec!["0", "0"], "{out}");
}

#[test]
fn range_mapping_user_and_additional_gids() {
    let host = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mut b = Bundle::sh("cat /proc/self/uid_map; echo uid=$(id -u) gid=$(id -g) groups=$(id -G); touch /data/f; echo setgroups=$(cat /proc/self/setgroups)");
    if !use_range_mappings(&mut b) {
        return;
    }
    b.process()["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [2000, 3000]});
    b.add_mount(json!({"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind"]}));
    let out = b.run_ok();
    let (u, _) = range_mappings().unwrap();
    let maps: Vec<Vec<u64>> = out
        .lines()
        .take(2)
        .map(|l| l.split_whitespace().map(|x| x.parse().unwrap()).collect())
        .collect();
    for (i, m) in u.as_array().unwrap().iter().enumerate() {
        let want = vec![
            m["containerID"].as_u64().unwrap(),
            m["hostID"].as_u64().unwrap(),
            m["size"].as_u64().unwrap(),
        ];
        assert!(
            maps.contains(&want),
            "uid_map lacks {want:?}: {out} (map {i})"
        );
    }
    let m = kv(&out);
    assert!(out.contains("uid=1000 gid=1000"), "{out}");
    let groups: Vec<&str> = m["uid"]
        .split("groups=")
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    for g in ["1000", "2000", "3000"] {
        assert!(groups.contains(&g), "additionalGids: {out}");
    }
    // The file created by container uid 1000 belongs to host uid (range start + 999).
    let host_uid = u[1]["hostID"].as_u64().unwrap() + 999;
    let meta =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(host.path().join("f")).unwrap());
    assert_eq!(meta as u64, host_uid);
}

#[test]
fn seccomp_denies_mkdir_with_eperm() {
    let mut b = Bundle::sh("mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touch=ok; grep Seccomp: /proc/self/status");
    b.linux()["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let out = b.run_ok();
    assert!(out.contains("Operation not permitted"), "{out}");
    assert_eq!(kv(&out)["rc"], "1");
    assert_eq!(kv(&out)["touch"], "ok");
    assert_eq!(status_field(&out, "Seccomp"), "2");
}

#[test]
fn seccomp_errno_default_and_arg_filter() {
    // Default action ERRNO (EPERM when errnoRet is absent); the allow list is what busybox sh/echo need,
    // minus nothing; plus an argument rule: personality(0xffffffff) only.
    let mut b = Bundle::sh("mkdir /tmp/d 2>&1; echo rc=$?");
    b.linux()["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let out = b.run_ok();
    assert!(
        out.contains("Permission denied"),
        "errnoRet 13 = EACCES: {out}"
    );
}

#[test]
fn seccomp_without_no_new_privileges() {
    // podman's default: a seccomp profile, noNewPrivileges unset, CAP_SYS_ADMIN not in the sets. runc loads
    // the filter before dropping capabilities in that case (seccomp(2) needs CAP_SYS_ADMIN without
    // no_new_privs); loading it after the drop fails with EACCES.
    let mut b = Bundle::sh(
        "mkdir /tmp/d 2>&1; echo rc=$?; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status",
    );
    b.process()["noNewPrivileges"] = false.into();
    b.linux()["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let rt = Rt::new();
    let o = b.run(&rt, "nnp");
    assert_eq!(
        o.code(),
        0,
        "seccomp without noNewPrivileges must load (and a failure must say why): {o:?}"
    );
    assert_eq!(
        kv(&o.stdout).get("rc").map(String::as_str),
        Some("1"),
        "{o:?}"
    );
    assert_eq!(status_field(&o.stdout, "Seccomp"), "2");
    assert_eq!(status_field(&o.stdout, "NoNewPrivs"), "0");
}

#[test]
fn seccomp_notify_is_rejected() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.linux()["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/tmp/nowhere.sock",
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
    });
    b.write();
    rt.jc(&["create", "n", "-b", b.path_str()]).fails_one_line();
    assert!(rt.ids().is_empty());
}

#[test]
fn default_devices_exist() {
    // runc creates /dev/null, zero, full, random, urandom, tty and the /dev/fd, stdin/out/err, ptmx links.
    let b = Bundle::sh(
        "for d in null zero full random urandom tty; do test -c /dev/$d && echo $d=c || echo $d=missing; done; \
         echo x > /dev/null && echo null_write=ok; echo zeros=$(head -c 5 /dev/zero | wc -c); \
         echo fd=$(readlink /dev/fd); echo ptmx=$(readlink /dev/ptmx); echo stdout=$(readlink /dev/stdout)",
    );
    let m = kv(&b.run_ok());
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        assert_eq!(m[d], "c", "/dev/{d}: {m:?}");
    }
    assert_eq!(m["null_write"], "ok");
    assert_eq!(m["zeros"], "5");
    assert_eq!(m["fd"], "/proc/self/fd");
    assert_eq!(m["ptmx"], "pts/ptmx");
    assert_eq!(m["stdout"], "/proc/self/fd/1");
}

#[test]
fn listed_devices() {
    let mut b = Bundle::sh("ls -ln /dev/null /dev/zero; echo x > /dev/null && echo null_write=ok; echo z=$(head -c 3 /dev/zero | wc -c)");
    b.linux()["devices"] = json!([
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0},
        {"path": "/dev/zero", "type": "c", "major": 1, "minor": 5, "fileMode": 438, "uid": 0, "gid": 0}
    ]);
    let out = b.run_ok();
    let m = kv(&out);
    assert_eq!(m["null_write"], "ok", "{out}");
    assert_eq!(m["z"], "3", "{out}");
    assert!(out.lines().next().unwrap().starts_with('c'), "{out}");
}

#[test]
fn oom_score_adj() {
    let mut b = Bundle::sh("cat /proc/self/oom_score_adj");
    b.process()["oomScoreAdj"] = json!(500);
    assert_eq!(b.run_ok().trim(), "500");
}

#[test]
fn rootfs_propagation_values_accepted() {
    for p in [
        "private",
        "rprivate",
        "slave",
        "rslave",
        "shared",
        "rshared",
        "unbindable",
    ] {
        let mut b = Bundle::sh("echo ok");
        b.linux()["rootfsPropagation"] = json!(p);
        assert_eq!(b.run_ok().trim(), "ok", "rootfsPropagation {p}");
    }
}

#[test]
fn resources_enforced_or_reported() {
    // Where cgroup v2 controllers are usable the limits must show in the container's cgroup; where they are
    // not (this host: hybrid v1/v2) the container still runs and jobcell says the limits are not enforced.
    let mut b = Bundle::sh("echo mem=$(cat /sys/fs/cgroup/memory.max 2>/dev/null); echo pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null)");
    b.add_namespace("cgroup");
    b.add_mount(json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "ro"]}));
    b.linux()["resources"] =
        json!({"memory": {"limit": 268435456}, "pids": {"limit": 100}, "cpu": {"shares": 512}});
    let rt = Rt::new();
    let o = b.run(&rt, "res");
    o.ok();
    let m = kv(&o.stdout);
    if o.stderr.contains("not enforced") {
        return;
    }
    assert_eq!(
        m["mem"], "268435456",
        "neither enforced nor reported: {o:?}"
    );
    assert_eq!(m["pids"], "100", "{o:?}");
}

#[test]
fn network_namespace_has_only_loopback() {
    // every interface of the namespace, up or down, with or without an address
    let mut b = Bundle::sh("sed -n 's/^ *\\([^ :]*\\):.*/\\1/p' /proc/net/dev");
    b.add_namespace("network");
    let out = b.run_ok();
    // The kernel puts a down fallback device of each loaded tunnel module (ipip, sit, gre, ...) into every new
    // namespace; they carry nothing. Anything else (a host interface) fails the test.
    const FALLBACK_TUNNELS: &[&str] = &[
        "tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip6gre0", "ip_vti0", "ip6_vti0",
    ];
    let ifs: Vec<&str> = out
        .lines()
        .filter(|i| !FALLBACK_TUNNELS.contains(i))
        .collect();
    assert_eq!(ifs, ["lo"], "{out}");
}

#[test]
fn join_namespaces_by_path() {
    let rt = Rt::new();
    let mut a = Bundle::sh("exec sleep 600");
    a.config["hostname"] = json!("first");
    a.add_namespace("network");
    a.write();
    rt.create_start("a", &a);
    let pid = rt.state("a")["pid"].as_i64().unwrap();
    let mut b =
        Bundle::sh("hostname; for n in uts ipc net user; do readlink /proc/self/ns/$n; done");
    b.config.as_object_mut().unwrap().remove("hostname");
    b.linux()["namespaces"] = json!([
        {"type": "user", "path": format!("/proc/{pid}/ns/user")},
        {"type": "uts", "path": format!("/proc/{pid}/ns/uts")},
        {"type": "ipc", "path": format!("/proc/{pid}/ns/ipc")},
        {"type": "network", "path": format!("/proc/{pid}/ns/net")},
        {"type": "mount"}, {"type": "pid"}
    ]);
    b.linux().as_object_mut().unwrap().remove("uidMappings");
    b.linux().as_object_mut().unwrap().remove("gidMappings");
    b.write();
    let o = rt.jc(&["run", "b", "-b", b.path_str()]);
    o.ok();
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(lines[0], "first", "{o:?}");
    for (i, n) in ["uts", "ipc", "net", "user"].iter().enumerate() {
        let want = std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
        assert_eq!(lines[i + 1], want.to_str().unwrap(), "{n}");
    }
    rt.ok(&["delete", "--force", "a"]);
}

#[test]
fn join_pid_namespace_by_path_is_refused() {
    let rt = Rt::new();
    let a = Bundle::sh("exec sleep 600");
    a.write();
    rt.create_start("a", &a);
    let pid = rt.state("a")["pid"].as_i64().unwrap();
    let mut b = Bundle::new(&["true"]);
    b.linux()["namespaces"] = json!([
        {"type": "user", "path": format!("/proc/{pid}/ns/user")},
        {"type": "pid", "path": format!("/proc/{pid}/ns/pid")},
        {"type": "mount"}
    ]);
    b.linux().as_object_mut().unwrap().remove("uidMappings");
    b.linux().as_object_mut().unwrap().remove("gidMappings");
    b.write();
    let line = rt.jc(&["create", "b", "-b", b.path_str()]).fails_one_line();
    assert!(
        line.contains("pid"),
        "refused for the pid namespace, not something else: {line}"
    );
    assert_eq!(rt.ids(), vec!["a"]);
    rt.ok(&["delete", "--force", "a"]);
}

#[test]
fn pid_namespace_pid_one() {
    let b = Bundle::sh("echo pid=$$; echo n=$(ls -d /proc/[0-9]* | wc -l)");
    let m = kv(&b.run_ok());
    assert_eq!(m["pid"], "1");
    // sh, the $(...) subshell, ls and wc: nothing from the host.
    assert!(m["n"].parse::<u32>().unwrap() <= 5, "{m:?}");
}

#[test]
fn hostname_without_uts_namespace_is_refused() {
    // runc: "unable to set hostname without a private UTS namespace". Setting it anyway would rename the
    // host (as root without a user namespace), so this test runs jobcell inside a throwaway `unshare --uts`.
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: unshare(1) not installed");
        return;
    }
    let rt = Rt::new();
    let mut b = Bundle::sh("hostname");
    b.config["hostname"] = json!("clobbered");
    let keep: &[&str] = if is_root() {
        &["pid", "ipc", "mount"]
    } else {
        &["pid", "ipc", "mount", "user"]
    };
    b.linux()["namespaces"] = json!(keep.iter().map(|t| json!({"type": t})).collect::<Vec<_>>());
    if is_root() {
        b.linux().as_object_mut().unwrap().remove("uidMappings");
        b.linux().as_object_mut().unwrap().remove("gidMappings");
    }
    b.write();
    let script = format!(
        "{} --root {} run h -b {}; echo \"rc=$?\"; echo \"outer=$(hostname)\"",
        bin().display(),
        rt.root().display(),
        b.path_str()
    );
    let mut cmd = std::process::Command::new("unshare");
    if is_root() {
        cmd.args(["--uts", "--", "sh", "-c", &script]);
    } else {
        cmd.args([
            "--user",
            "--map-current-user",
            "--uts",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        // Without privileges the throwaway namespace needs its own user namespace; the config's user
        // namespace then nests inside it (hostID = our uid still maps).
    }
    let o = run_cmd(&mut cmd, None);
    let m = kv(&o.stdout);
    assert_ne!(
        m.get("outer").map(String::as_str),
        Some("clobbered"),
        "the runtime renamed its own UTS namespace: {o:?}"
    );
    assert_ne!(
        m.get("rc").map(String::as_str),
        Some("0"),
        "must refuse: {o:?}"
    );
    let errs: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(errs.len(), 1, "{o:?}");
    assert!(
        errs[0].contains("UTS") || errs[0].contains("uts"),
        "say why: {o:?}"
    );
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
}

#[test]
fn setup_failure_after_joining_a_user_namespace_says_why() {
    // A failure in the container child must reach stderr as one line, also on the path that joins an
    // existing user namespace (a missing bind-mount source, here).
    let rt = Rt::new();
    let a = Bundle::sh("exec sleep 600");
    a.write();
    rt.create_start("a", &a);
    let pid = rt.state("a")["pid"].as_i64().unwrap();
    let mut b = Bundle::new(&["true"]);
    b.config.as_object_mut().unwrap().remove("hostname");
    b.linux()["namespaces"] = json!([
        {"type": "user", "path": format!("/proc/{pid}/ns/user")},
        {"type": "mount"},
        {"type": "pid"}
    ]);
    b.linux().as_object_mut().unwrap().remove("uidMappings");
    b.linux().as_object_mut().unwrap().remove("gidMappings");
    b.add_mount(json!({"destination": "/data", "type": "bind", "source": "/no/such/source", "options": ["rbind"]}));
    b.write();
    let line = rt.jc(&["create", "b", "-b", b.path_str()]).fails_one_line();
    assert!(
        line.contains("/data") || line.contains("/no/such/source"),
        "{line}"
    );
    assert_eq!(rt.ids(), vec!["a"]);
    rt.ok(&["delete", "--force", "a"]);
}

#[test]
fn unmapped_process_user_fails_create_with_a_message() {
    // runc: "cannot set uid to unmapped user in user namespace" at create. A failure in the final process
    // setup (setgroups/setuid/caps/seccomp) must not turn into a silent exit 125 after `start`.
    let rt = Rt::new();
    let mut b = Bundle::new(&["true"]);
    b.process()["user"] = json!({"uid": 5000, "gid": 5000});
    b.write();
    let o = rt.jc(&["create", "u", "-b", b.path_str()]);
    if o.status.success() {
        let s = rt.jc(&["start", "u"]);
        let _ = rt.jc(&["delete", "--force", "u"]);
        panic!("create accepted an unmapped uid (start: {s:?})");
    }
    let line = o.fails_one_line();
    assert!(
        line.contains("5000") || line.contains("unmapped") || line.contains("map"),
        "{line}"
    );
    assert!(rt.ids().is_empty(), "{:?}", rt.ids());
    let o = b.run(&rt, "u2");
    assert!(!o.status.success());
    o.fails_one_line();
}
