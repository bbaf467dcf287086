//! Network isolation: own namespace with only lo (up); host loopback services and abstract sockets unreachable.

mod sandbox_common;
use sandbox_common::*;
use std::os::linux::net::SocketAddrExt;
use std::time::Duration;

#[test]
fn only_lo_exists_and_is_up() {
    // with the default filter, and without one (SIOCGIFFLAGS is an ioctl the filter must not break)
    for opts in [&[][..], &["--seccomp", "unconfined"][..]] {
        let o = probe_with(opts, &["ifaces"]);
        assert_code(&o, 0);
        let ifaces: Vec<&str> = o
            .stdout
            .lines()
            .filter(|l| l.starts_with("iface="))
            .collect();
        assert_eq!(ifaces, vec!["iface=lo up=1 loopback=1"], "{opts:?}: {o:#?}");
    }
}

#[test]
fn loopback_works_inside() {
    // a server and a client inside the sandbox can talk over lo
    if !python3() {
        eprintln!("SKIPPED: loopback_works_inside: python3 is not installed");
        return;
    }
    let o = sh("python3 -c '
import socket, threading
s = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(1)
def serve():
    c, _ = s.accept(); c.sendall(b\"pong\"); c.close()
threading.Thread(target=serve).start()
c = socket.create_connection(s.getsockname()); print(c.recv(4).decode())
'");
    assert_code(&o, 0);
    assert_eq!(o.stdout.trim(), "pong", "{o:#?}");
}

#[test]
fn host_tcp_on_loopback_is_unreachable() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let o = probe(&["tcp", &port]);
    assert_code(&o, 0);
    assert_eq!(
        o.get("tcp"),
        "ECONNREFUSED",
        "host 127.0.0.1:{port} must not be reachable"
    );
    assert!(
        ["ENETUNREACH", "EHOSTUNREACH"].contains(&o.get("tcp_outside")),
        "outside world reachable: {}",
        o.get("tcp_outside")
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        l.accept().is_err(),
        "the host listener got a connection from inside"
    );
}

#[test]
fn host_abstract_unix_socket_is_unreachable() {
    let name = unique("abstract");
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    l.set_nonblocking(true).unwrap();
    // sanity: reachable from the host
    std::os::unix::net::UnixStream::connect_addr(&addr)
        .expect("abstract socket reachable on the host");
    let _ = l.accept();
    let o = probe(&["unix", &name]);
    assert_code(&o, 0);
    assert_eq!(
        o.get("unix"),
        "ECONNREFUSED",
        "host abstract socket reachable from inside"
    );
    assert!(
        l.accept().is_err(),
        "the host abstract listener got a connection from inside"
    );
}

#[test]
fn host_unix_socket_files_are_not_visible() {
    // the usual host sockets (docker, dbus, systemd) are absent since /run and /var are not mounted
    let o = sh("for s in /run/docker.sock /var/run/docker.sock /run/dbus/system_bus_socket /run/systemd/private /tmp/.X11-unix; do test -e $s && echo $s; done; true");
    assert_code(&o, 0);
    assert_eq!(o.stdout, "");
}

#[test]
fn sandboxes_do_not_share_loopback() {
    // a listener in sandbox A is not reachable from sandbox B
    if !python3() {
        eprintln!("SKIPPED: sandboxes_do_not_share_loopback: python3 is not installed");
        return;
    }
    // A listens on a free port, says so, and keeps listening until its stdin closes; then it checks that
    // its own listener was reachable all along (so B's refusal is not an absent listener).
    let mut a = command(&[
        "run",
        "--",
        "python3",
        "-c",
        "import socket, sys
s = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(5)
print(\"listening\", s.getsockname()[1], flush=True)
sys.stdin.read()
socket.create_connection(s.getsockname()); s.accept(); print(\"self-ok\")
",
    ])
    .stdin(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let stdin = a.stdin.take().unwrap();
    let stdout = a.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(stdout);
        let mut first = String::new();
        let _ = r.read_line(&mut first);
        let _ = tx.send(first);
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut r, &mut rest);
        rest
    });
    let first = rx.recv_timeout(DEADLINE).unwrap_or_default();
    let port = first
        .strip_prefix("listening ")
        .map(|p| p.trim().to_string());
    let b = port.as_deref().map(|port| probe(&["tcp", port]));
    drop(stdin);
    let oa = finish(a, DEADLINE);
    let rest = reader.join().unwrap();
    let port = port.unwrap_or_else(|| panic!("A did not say it listens: {first:?} {oa:#?}"));
    assert_code(&oa, 0);
    assert_eq!(rest, "self-ok\n", "A's listener must have been up: {oa:#?}");
    let b = b.unwrap();
    assert_code(&b, 0);
    assert_eq!(
        b.get("tcp"),
        "ECONNREFUSED",
        "A's 127.0.0.1:{port} reachable from B"
    );
}
