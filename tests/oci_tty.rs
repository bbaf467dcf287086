//! `process.terminal` with `--console-socket`: the test listens on a Unix socket, receives the pty master
//! over SCM_RIGHTS (as containerd/podman's conmon do), types commands and reads the output.

#[path = "oci/common.rs"]
mod common;

use common::*;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

/// Accepts one connection on `listener` and returns the fd it carries.
fn receive_master(listener: UnixListener) -> std::thread::JoinHandle<OwnedFd> {
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept on console socket");
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let msg = nix::sys::socket::recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::empty(),
        )
        .expect("recvmsg on console socket");
        for c in msg.cmsgs().expect("cmsgs") {
            if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                if let Some(fd) = fds.first() {
                    // SAFETY: SCM_RIGHTS handed us a new fd that nothing else owns.
                    return unsafe { OwnedFd::from_raw_fd(*fd) };
                }
            }
        }
        panic!("no fd received on the console socket");
    })
}

struct Pty {
    fd: OwnedFd,
    seen: String,
}

impl Pty {
    fn new(fd: OwnedFd) -> Self {
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        Pty {
            fd,
            seen: String::new(),
        }
    }

    fn write(&self, s: &str) {
        nix::unistd::write(&self.fd, s.as_bytes()).expect("write to pty master");
    }

    /// Reads until `want` has appeared in the output (after what earlier calls consumed).
    fn expect(&mut self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.seen.find(want) {
                self.seen.drain(..i + want.len());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {want:?} on the pty; got {:?}",
                self.seen
            );
            let mut buf = [0u8; 4096];
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(0) => std::thread::sleep(Duration::from_millis(10)),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(nix::errno::Errno::EAGAIN) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("reading pty: {e} (seen {:?})", self.seen),
            }
        }
    }
}

#[test]
fn terminal_via_console_socket() {
    let rt = Rt::new();
    let mut b = Bundle::new(&["sh"]);
    b.process()["terminal"] = true.into();
    b.write();
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let master = receive_master(listener);
    rt.ok(&[
        "create",
        "tty",
        "-b",
        b.path_str(),
        "--console-socket",
        sock.to_str().unwrap(),
    ]);
    let mut pty = Pty::new(master.join().unwrap());
    rt.ok(&["start", "tty"]);
    pty.write("echo hi; test -t 0 && echo tty-$((40+2)); tty\n");
    pty.expect("\nhi");
    pty.expect("tty-42");
    pty.expect("/dev/pts/");
    pty.write("exit 5\n");
    rt.wait_status("tty", "stopped");
    rt.ok(&["delete", "tty"]);
    assert!(rt.ids().is_empty());
}

#[test]
fn exec_tty_via_console_socket() {
    let rt = Rt::new();
    let b = Bundle::sh("exec sleep 600");
    b.write();
    rt.create_start("et", &b);
    let sockdir = tempfile::tempdir().unwrap();
    let sock = sockdir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let master = receive_master(listener);
    let mut cmd = rt.cmd(&[
        "exec",
        "--tty",
        "--console-socket",
        sock.to_str().unwrap(),
        "et",
        "--",
        "sh",
    ]);
    let exec = std::thread::spawn(move || run_cmd(&mut cmd, None));
    let mut pty = Pty::new(master.join().unwrap());
    pty.write("test -t 1 && echo exec-tty-$((6*7))\n");
    pty.expect("exec-tty-42");
    pty.write("exit 9\n");
    let o = exec.join().unwrap();
    assert_eq!(o.code(), 9, "{o:?}");
    rt.ok(&["delete", "--force", "et"]);
}
