//! Runs `tests/cache/actions-cache.sh`: the stock `@actions/cache` 3.x npm client against a
//! real `jobcell serve` (save, exact restore, prefix restore, version miss, token refused
//! after the job completed). Skipped, with the reason printed, only when node or npm is
//! missing. The script and its npm files are compiled in and written to a temporary
//! directory, so the test also runs where the source tree is unreadable (tests/run.sh runs
//! it as an unprivileged user); the binary is `$JOBCELL_BIN` or the one cargo built.

use std::path::PathBuf;
use std::process::Command;

const FILES: [(&str, &str); 4] = [
    ("actions-cache.sh", include_str!("cache/actions-cache.sh")),
    ("client.js", include_str!("cache/client.js")),
    ("package.json", include_str!("cache/package.json")),
    ("package-lock.json", include_str!("cache/package-lock.json")),
];

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn stock_actions_cache_client_round_trip() {
    for tool in ["node", "npm"] {
        if !have(tool) {
            eprintln!("SKIPPED stock_actions_cache_client_round_trip: {tool} is not installed");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in FILES {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let bin = std::env::var_os("JOBCELL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_jobcell")));
    let out = Command::new("bash")
        .arg(dir.path().join("actions-cache.sh"))
        .arg(bin)
        .output()
        .expect("run actions-cache.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("::debug::"))
        .collect();
    println!("{}", shown.join("\n"));
    assert!(
        out.status.success() && stdout.contains("PASS:"),
        "actions-cache.sh failed ({}):\n{}\n{stderr}",
        out.status,
        shown.join("\n")
    );
}
