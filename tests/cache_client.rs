//! Runs `tests/cache/actions-cache.sh`: the stock `@actions/cache` 3.x npm client against a
//! real `jobcell serve` (save, exact restore, prefix restore, version miss, token refused
//! after the job completed). Skipped, with the reason printed, only when node or npm is
//! missing.

use std::process::Command;

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
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cache/actions-cache.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_jobcell"))
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
