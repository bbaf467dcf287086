//! Filesystem isolation: host files invisible, read-only root, size-limited tmpfs, masked /proc, binds.

mod sandbox_common;
use sandbox_common::*;
use std::os::unix::fs::MetadataExt;

/// Plants a marker file in `dir` (if we may write there); returns its path.
fn plant(dir: &std::path::Path, tag: &str) -> Option<std::path::PathBuf> {
    let p = dir.join(unique(tag));
    std::fs::write(&p, "secret").ok()?;
    Some(p)
}

#[test]
fn host_files_are_invisible() {
    let mut planted = Vec::new();
    planted.extend(plant(&std::env::temp_dir(), "tmp-marker"));
    planted.extend(plant(std::path::Path::new("/tmp"), "tmp-marker"));
    if let Some(h) = std::env::var_os("HOME") {
        planted.extend(plant(std::path::Path::new(&h), "home-marker"));
    }
    planted.extend(plant(std::path::Path::new("/home"), "home-marker"));
    planted.extend(plant(std::path::Path::new("/var/tmp"), "vartmp-marker"));
    planted.extend(plant(std::path::Path::new("/dev/shm"), "shm-marker"));
    assert!(!planted.is_empty(), "could not plant any marker");
    // markers tests/run.sh planted as root in /home, /root, /etc, /var/tmp, /run (not ours to remove)
    let outside: Vec<std::path::PathBuf> = std::env::var("JOBCELL_TEST_HOST_MARKERS")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
        .collect();
    let names: Vec<String> = planted
        .iter()
        .chain(outside.iter())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // search the whole visible tree (excluding /proc) for the markers, by name
    let o = sh("find / -xdev -path /proc -prune -o -print 2>/dev/null; find /tmp /workspace /dev /etc -print 2>/dev/null; echo END");
    for p in &planted {
        let _ = std::fs::remove_file(p);
    }
    assert_code(&o, 0);
    assert!(o.stdout.ends_with("END\n"));
    for n in &names {
        assert!(
            !o.stdout.contains(n.as_str()),
            "host marker {n} visible inside"
        );
    }
    // and by path
    let checks: Vec<String> = planted
        .iter()
        .chain(outside.iter())
        .map(|p| {
            format!(
                "test -e '{}' && echo VISIBLE '{}'",
                p.display(),
                p.display()
            )
        })
        .collect();
    let o = sh(&format!("{}; true", checks.join("; ")));
    assert_code(&o, 0);
    assert_eq!(o.stdout, "", "{o:#?}");
}

#[test]
fn host_dirs_are_absent() {
    let o = sh("for d in /home /root /var /run /srv /mnt /media /opt /boot /work /sys; do test -e $d && echo present $d; done; ls -A /");
    assert_code(&o, 0);
    assert!(!o.stdout.contains("present"), "{o:#?}");
    // /sys is absent, so nothing of it can be written either
    let o = probe(&["write", "/sys/kernel/uevent_helper"]);
    assert_code(&o, 0);
    assert_ne!(o.get("write"), "0", "{o:#?}");
}

#[test]
fn etc_is_generated_not_the_hosts() {
    let o = run(&[], &["cat", "/etc/passwd", "/etc/group"]);
    assert_code(&o, 0);
    assert!(
        o.stdout
            .lines()
            .any(|l| l.split(':').nth(2) == Some("1000")),
        "{o:#?}"
    );
    let host = std::fs::read_to_string("/etc/passwd").unwrap();
    // every host account but root and the job user is absent
    for l in host.lines() {
        let name = l.split(':').next().unwrap();
        if ["root", "nobody", "job"].contains(&name) || name.is_empty() {
            continue;
        }
        assert!(
            !o.stdout.lines().any(|x| x.starts_with(&format!("{name}:"))),
            "host account {name} visible: {}",
            o.stdout
        );
    }
    let o = run(
        &[],
        &[
            "sh",
            "-c",
            "test -e /etc/shadow && echo shadow; test -e /etc/subuid && echo subuid; true",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(o.stdout, "");
}

#[test]
fn root_usr_etc_are_read_only() {
    for path in [
        "/x",
        "/usr/x",
        "/etc/x",
        "/etc/passwd",
        "/usr/bin/sh",
        "/bin/x",
        "/lib/x",
        "/proc/sys/kernel/hostname",
        "/proc/sysrq-trigger",
    ] {
        let o = probe(&["write", path]);
        assert_code(&o, 0);
        let e = o.get("write");
        assert!(
            e == "EROFS"
                || (e == "EACCES" && path.starts_with("/proc"))
                || (e == "ENOENT" && path == "/proc/sysrq-trigger"),
            "write {path}: {e}"
        );
    }
    let o = sh("mkdir /newdir 2>&1; touch /usr/newfile 2>&1; rm -f /etc/hosts 2>&1; ln -s x /etc/l 2>&1; true");
    assert_code(&o, 0);
    assert_eq!(
        o.stdout.matches("Read-only file system").count(),
        4,
        "{o:#?}"
    );
}

#[test]
fn tmp_and_workspace_are_writable_and_workdir_is_workspace() {
    let o = sh("pwd; echo a > /tmp/a && echo b > /workspace/b && cat /tmp/a /workspace/b");
    assert_code(&o, 0);
    assert_eq!(o.lines(), vec!["/workspace", "a", "b"]);
    let o = sh_with(&["--workdir", "/build"], "pwd; echo x > y && cat y");
    assert_code(&o, 0);
    assert_eq!(o.lines(), vec!["/build", "x"]);
}

#[test]
fn tmp_fills_up_at_its_size() {
    let o = sh_with(&["--tmpfs-size", "8M"], "dd if=/dev/zero of=/tmp/fill bs=64k count=1000 2>&1 | grep -c 'No space left'; stat -c %s /tmp/fill");
    assert_code(&o, 0);
    let l = o.lines();
    assert_eq!(l[0], "1", "dd must stop with ENOSPC: {o:#?}");
    let size: u64 = l[1].parse().unwrap();
    assert!(
        (7 << 20..=8 << 20).contains(&size),
        "filled {size} bytes of an 8M tmpfs"
    );
    // /workspace is limited as well
    let o = sh_with(&["--tmpfs-size", "8M"], "dd if=/dev/zero of=/workspace/fill bs=64k count=1000 2>/dev/null; stat -c %s /workspace/fill");
    assert_code(&o, 0);
    let size: u64 = o.stdout.trim().parse().unwrap();
    assert!(size <= 8 << 20, "workspace took {size} bytes");
}

#[test]
fn file_size_rlimit_applies() {
    // default profile: RLIMIT_FSIZE 1G; the limit is visible and enforced
    let o = sh("ulimit -f");
    assert_code(&o, 0);
    assert_eq!(
        o.stdout.trim(),
        "2097152",
        "ulimit -f counts 512-byte blocks: 1G = 2097152"
    );
}

/// One line of /proc/self/mountinfo: mount point, per-mount options, root within its filesystem, fs type.
struct MountLine<'a> {
    point: &'a str,
    opts: &'a str,
    root: &'a str,
    fstype: &'a str,
}

fn mountinfo(text: &str) -> Vec<MountLine<'_>> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountLine {
                point: f.get(4)?,
                opts: f.get(5)?,
                root: f.get(3)?,
                fstype: f.get(sep + 1)?,
            })
        })
        .collect()
}

/// The mount on top at `point` (mountinfo lists mounts in the order they were made).
fn top_mount<'a, 'b>(mounts: &'b [MountLine<'a>], point: &str) -> Option<&'b MountLine<'a>> {
    mounts.iter().rev().find(|m| m.point == point)
}

#[test]
fn proc_sensitive_paths_are_masked() {
    // Reading a masked file gives nothing, but so does reading most of them unmasked as an unprivileged user:
    // check the mounts instead. Every path of MASKED_PATHS that exists inside must be a mount point: a file
    // covered by /dev/null, a directory by an empty read-only tmpfs; every READONLY_PATHS one mounted ro.
    use jobcell::profile::{MASKED_PATHS, READONLY_PATHS};
    let paths: Vec<&str> = MASKED_PATHS.iter().chain(READONLY_PATHS).copied().collect();
    let script = format!(
        "for p in {}; do \
           if [ -d $p ]; then echo \"path $p dir:$(ls -A $p | wc -l)\"; \
           elif [ -e $p ]; then echo \"path $p $(stat -L -c '%F:%t:%T' $p | tr ' ' _)\"; fi; \
         done; echo MOUNTINFO; cat /proc/self/mountinfo",
        paths.join(" ")
    );
    let o = sh(&script);
    assert_code(&o, 0);
    let (head, info) = o.stdout.split_once("MOUNTINFO\n").expect("no mountinfo");
    // path -> what the job sees there: "dir:ENTRIES" or "FILE_TYPE:MAJOR:MINOR"
    let seen: std::collections::HashMap<&str, &str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("path ")?.split_once(' '))
        .collect();
    let mounts = mountinfo(info);
    let dev_null = top_mount(&mounts, "/dev/null").expect("no /dev/null mount inside");
    let mut masked = 0;
    for p in MASKED_PATHS {
        let Some(kind) = seen.get(p) else { continue };
        masked += 1;
        let m = top_mount(&mounts, p)
            .unwrap_or_else(|| panic!("{p} exists inside but is not a mount point:\n{info}"));
        if kind.starts_with("dir:") {
            assert_eq!(m.fstype, "tmpfs", "{p} must be covered by a tmpfs:\n{info}");
            assert!(
                m.opts.split(',').any(|x| x == "ro"),
                "the tmpfs over {p} must be read-only:\n{info}"
            );
            assert_eq!(*kind, "dir:0", "{p} must be empty");
        } else {
            // a bind of the sandbox's /dev/null: character device 1:3 of the same filesystem
            assert_eq!(*kind, "character_special_file:1:3", "{p} is not /dev/null");
            assert_eq!(
                (m.fstype, m.root),
                (dev_null.fstype, dev_null.root),
                "{p} must be a bind of /dev/null:\n{info}"
            );
        }
    }
    // /proc/acpi, /proc/keys or /proc/timer_list exist on any kernel these tests run on
    assert!(masked > 0, "no masked path exists inside: {o:#?}");
    for p in READONLY_PATHS {
        if !seen.contains_key(p) {
            continue;
        }
        let m = top_mount(&mounts, p)
            .unwrap_or_else(|| panic!("{p} exists inside but is not a mount point:\n{info}"));
        assert!(
            m.opts.split(',').any(|x| x == "ro"),
            "{p} must be mounted read-only:\n{info}"
        );
    }
}

#[test]
fn proc_sys_and_friends_are_read_only() {
    for p in [
        "/proc/sys/kernel/domainname",
        "/proc/sys/vm/drop_caches",
        "/proc/sys/net/ipv4/ip_forward",
    ] {
        let o = probe(&["write", p]);
        assert_code(&o, 0);
        assert_eq!(o.get("write"), "EROFS", "{p}");
    }
    let o = sh("grep -E ' /proc/(sys|bus|fs|irq) ' /proc/self/mounts | awk '{print $2, substr($4,1,2)}' | sort");
    assert_code(&o, 0);
    let mut want = vec!["/proc/fs ro", "/proc/irq ro", "/proc/sys ro"];
    if std::path::Path::new("/proc/bus").exists() {
        want.insert(0, "/proc/bus ro");
    }
    assert_eq!(o.lines(), want, "{o:#?}");
}

#[test]
fn dev_is_minimal() {
    let o = sh("ls -A /dev | sort | tr '\\n' ' '; echo; echo x > /dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; head -c 4 /dev/urandom | wc -c");
    assert_code(&o, 0);
    let l = o.lines();
    let devs: Vec<&str> = l[0].split_whitespace().collect();
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm",
    ] {
        assert!(devs.contains(&d), "/dev/{d} missing: {devs:?}");
    }
    for d in [
        "sda", "vda", "mem", "kmsg", "port", "nvme0", "loop0", "fuse", "kvm",
    ] {
        assert!(!devs.contains(&d), "/dev/{d} present: {devs:?}");
    }
    assert_eq!(&l[1..], &["null-ok", "4", "4"]);
}

#[test]
fn mknod_device_refused_mkfifo_works() {
    let o = probe(&["mknod"]);
    assert_code(&o, 0);
    assert_eq!(o.get("chr"), "EPERM");
    assert_eq!(o.get("blk"), "EPERM");
    assert_eq!(o.get("chr_at"), "EPERM");
    assert_eq!(o.get("chr_exists"), "0");
    assert_eq!(o.get("fifo"), "0");
    assert_eq!(o.get("fifo_is_fifo"), "1");
}

#[test]
fn bind_is_read_only_by_default() {
    let d = tempdir();
    std::fs::write(d.path().join("in"), "hello").unwrap();
    sandbox_common::set_mode(&d.path().join("in"), 0o666);
    let bind = format!("{}:/data", d.path().display());
    let o = sh_with(&["--bind", &bind], "cat /data/in; echo; (echo x > /data/in) 2>/dev/null || echo fail1; (echo x > /data/new) 2>/dev/null || echo fail2");
    assert_code(&o, 0);
    assert_eq!(o.lines(), vec!["hello", "fail1", "fail2"], "{o:#?}");
    assert_eq!(
        std::fs::read_to_string(d.path().join("in")).unwrap(),
        "hello"
    );
    assert!(!d.path().join("new").exists());
    let o = probe_with(&["--bind", &bind], &["write", "/data/in"]);
    assert_eq!(o.get("write"), "EROFS");
}

#[test]
fn bind_rw_is_writable_and_files_belong_to_the_caller() {
    let d = tempdir();
    let bind = format!("{}:/out:rw", d.path().display());
    let o = sh_with(
        &["--bind", &bind],
        "echo result > /out/file && mkdir /out/sub && echo ok",
    );
    assert_code(&o, 0);
    assert_eq!(o.stdout, "ok\n");
    let f = d.path().join("file");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "result\n");
    let (uid, gid) = host_ids();
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (uid, gid),
        "file written through :rw bind must belong to the caller"
    );
    let m = std::fs::metadata(d.path().join("sub")).unwrap();
    assert_eq!((m.uid(), m.gid()), (uid, gid));
}

#[test]
fn bind_of_a_file_and_nested_destination() {
    let d = tempdir();
    let f = d.path().join("conf");
    std::fs::write(&f, "k=v\n").unwrap();
    sandbox_common::set_mode(&f, 0o644);
    let bind = format!("{}:/cfg/app/conf", f.display());
    let o = run(&["--bind", &bind], &["cat", "/cfg/app/conf"]);
    assert_code(&o, 0);
    assert_eq!(o.stdout, "k=v\n");
}

#[test]
fn bind_cannot_escape_with_dotdot_destination() {
    // `..` in a destination is either refused up front (125, one line naming it) or cleaned so that the
    // bind lands at /x inside the sandbox: the job sees the marker there. Anything else (run, but the bind
    // is not at /x) means the destination was resolved somewhere jobcell did not mean.
    let d = tempdir();
    let marker = unique("dotdot");
    std::fs::write(d.path().join(&marker), "confined").unwrap();
    sandbox_common::set_mode(&d.path().join(&marker), 0o644);
    let bind = format!("{}:/../../x", d.path().display());
    let o = sh_with(&["--bind", &bind], &format!("cat /x/{marker}"));
    if o.code == 125 {
        assert_eq!(o.stderr.lines().count(), 1, "{o:#?}");
        assert!(
            o.stderr.contains("/../../x"),
            "must name the destination: {o:#?}"
        );
        assert_eq!(o.stdout, "", "{o:#?}");
    } else {
        assert_code(&o, 0);
        assert_eq!(
            o.stdout, "confined",
            "the bind must be at /x inside: {o:#?}"
        );
    }
}

#[test]
fn writable_root_keeps_host_dirs_read_only() {
    // --writable-root makes the sandbox's own root writable, never the host's /usr
    let o = sh_with(
        &["--writable-root"],
        "touch /newfile && echo root-ok; (touch /usr/x) 2>/dev/null || echo usr-ro; (touch /bin/x) 2>/dev/null || echo bin-ro",
    );
    assert_code(&o, 0);
    assert_eq!(o.lines(), vec!["root-ok", "usr-ro", "bin-ro"], "{o:#?}");
}

#[test]
fn mounts_inside_are_nosuid_and_binds_nodev() {
    // every mount the job can write to or execute from is nosuid; host binds are nodev too
    let o = run(&[], &["cat", "/proc/self/mountinfo"]);
    assert_code(&o, 0);
    for l in o.stdout.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (mnt, opts) = (f[4], f[5]);
        if mnt == "/" || mnt.starts_with("/proc") || mnt.starts_with("/dev/") && mnt != "/dev/shm" {
            continue;
        }
        assert!(
            opts.split(',').any(|x| x == "nosuid"),
            "{mnt} is not nosuid: {l}"
        );
        if ["/usr", "/tmp", "/workspace", "/dev/shm"].contains(&mnt) {
            assert!(
                opts.split(',').any(|x| x == "nodev"),
                "{mnt} is not nodev: {l}"
            );
        }
    }
}
