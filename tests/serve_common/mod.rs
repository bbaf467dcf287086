//! Shared by the end-to-end tests that start a real `jobcell serve --executor local` (rootless: as root the server
//! drops to `$JOBCELL_TEST_USER`, default `jc`, with setpriv) and talk to its orchestrator API.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jobcell::ctl::http;
use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub api: String,
    pub key: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts the server over `state` (whose parent becomes the server's HOME) and waits for its address.
pub fn start(state: &Path) -> Server {
    let bin = std::env::var("JOBCELL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_jobcell").into());
    let bin = bin.as_str();
    let mut cmd = if is_root() {
        let user = std::env::var("JOBCELL_TEST_USER").unwrap_or_else(|_| "jc".into());
        let st = Command::new("chown")
            .arg(format!("{user}:{user}"))
            .arg(state.parent().unwrap())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "chown to {user} failed (set JOBCELL_TEST_USER)"
        );
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &user, "--regid", &user, "--init-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    let mut child = cmd
        .args(["serve", "--executor", "local", "--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state)
        .env_remove("JOBCELL_INTERNAL_API_KEY")
        .env_remove("INTERNAL_API_KEY")
        .env_remove("JOBCELL_JWT_SECRET")
        .env_remove("JOBCELL_CACHE_SECRET")
        .env("HOME", state.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("addr=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_string());
            }
            eprintln!("server: {line}");
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server did not start");
    let key = std::fs::read_to_string(state.join("secrets/internal_api_key")).unwrap();
    Server {
        child,
        api: format!("http://{addr}"),
        key,
    }
}

impl Server {
    /// An orchestrator API call as orchestrator `e2e`.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {}", self.key);
        let b = body.map(|v| serde_json::to_vec(&v).unwrap());
        let r = http::request(
            &self.api,
            method,
            path,
            &[("Authorization", &auth), ("X-Orchestrator-ID", "e2e")],
            b.as_deref(),
        )
        .unwrap();
        (r.status, r.json().unwrap_or(Value::Null))
    }
}
