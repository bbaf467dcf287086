//! Command-line edge of jobcell: parses arguments (clap) and maps library errors to exit codes.
//!
//! Exit statuses of `run`: the command's own; 128+N when killed by signal N; 124 on timeout; 125 when jobcell
//! failed before the command started; 126 not executable; 127 not found.

use clap::{Args, Parser, Subcommand};
use jobcell::profile::{self, RunRequest};
use jobcell::sandbox;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "jobcell", version, about = "A rootless sandbox runtime for untrusted jobs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one command in a new sandbox.
    Run(RunArgs),
    /// Report what this host supports: user namespaces, cgroup v2 delegation, seccomp, id-mapping helpers.
    Check,
}

#[derive(Args)]
struct RunArgs {
    /// Preset from profiles/ (default: "default") or a path to a .toml file.
    #[arg(long)]
    profile: Option<String>,
    /// Root filesystem directory (default: read-only host system dirs).
    #[arg(long)]
    rootfs: Option<PathBuf>,
    /// Identity inside: UID[:GID] (default 1000:1000).
    #[arg(long)]
    user: Option<String>,
    /// Fractional CPUs, e.g. 0.5.
    #[arg(long)]
    cpus: Option<String>,
    /// Memory limit, e.g. 512M.
    #[arg(long)]
    memory: Option<String>,
    /// Maximum number of processes.
    #[arg(long)]
    pids: Option<String>,
    /// Size of /tmp and the workdir tmpfs, e.g. 100M.
    #[arg(long = "tmpfs-size")]
    tmpfs_size: Option<String>,
    /// Bind a host path: SRC:DST[:rw] (read-only unless :rw).
    #[arg(long = "bind", value_name = "SRC:DST[:rw]")]
    binds: Vec<String>,
    /// Add K=V to the environment.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory (a tmpfs; default /workspace).
    #[arg(long)]
    workdir: Option<String>,
    /// Host name inside (default "jobcell").
    #[arg(long)]
    hostname: Option<String>,
    /// Network: none (own namespace, only lo) or egress.
    #[arg(long)]
    net: Option<String>,
    /// Seccomp profile: NAME, FILE or unconfined.
    #[arg(long)]
    seccomp: Option<String>,
    /// Keep one capability (repeatable).
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Root filesystem read-only (the default).
    #[arg(long = "read-only", conflicts_with = "writable_root")]
    read_only: bool,
    /// Root filesystem writable.
    #[arg(long = "writable-root")]
    writable_root: bool,
    /// Kill the whole sandbox after this long, e.g. 30s or 5m (exit 124).
    #[arg(long)]
    timeout: Option<String>,
    /// Refuse to run when cgroup limits cannot be enforced.
    #[arg(long = "require-limits")]
    require_limits: bool,
    /// Unknown syscall names in the seccomp profile are an error, not a warning.
    #[arg(long)]
    strict: bool,
    /// Write the outcome as JSON to PATH (or - for stdout) when the sandbox ends.
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("jobcell: {msg}");
    ExitCode::from(125)
}

fn run(a: RunArgs) -> ExitCode {
    let req = RunRequest {
        profile: a.profile,
        rootfs: a.rootfs,
        user: a.user,
        cpus: a.cpus,
        memory: a.memory,
        pids: a.pids,
        tmpfs_size: a.tmpfs_size,
        binds: a.binds,
        env: a.env,
        workdir: a.workdir,
        hostname: a.hostname,
        net: a.net,
        seccomp: a.seccomp,
        cap_add: a.cap_add,
        read_only: if a.writable_root { Some(false) } else if a.read_only { Some(true) } else { None },
        timeout: a.timeout,
        require_limits: a.require_limits,
        strict: a.strict,
        args: a.command,
    };
    let (spec, opts) = match profile::build(&req) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    // Open the outcome file before anything starts, so a bad path changes nothing.
    let mut json_out: Option<Box<dyn Write>> = match a.json.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(Box::new(f)),
            Err(e) => return fail(format!("--json {p}: {e}")),
        },
    };
    let outcome = match sandbox::launch(&spec, &opts).and_then(|s| s.wait()) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if let Some(msg) = &outcome.error {
        eprintln!("jobcell: {msg}");
    }
    if outcome.timed_out {
        eprintln!("jobcell: timed out after {}", req.timeout.as_deref().unwrap_or("the profile's timeout"));
    }
    if let Some(out) = json_out.as_mut() {
        let _ = serde_json::to_writer(&mut *out, &outcome);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    ExitCode::from(outcome.exit_code.clamp(0, 255) as u8)
}

fn check() -> ExitCode {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    match sandbox::userns_unavailable_reason() {
        None => println!("user namespaces: yes"),
        Some(r) => println!("user namespaces: no ({r})"),
    }
    match jobcell::cgroup::cgroup2_mount() {
        Some(m) => println!("cgroup v2: mounted at {}", m.display()),
        None => println!("cgroup v2: not mounted"),
    }
    match jobcell::cgroup::find_base() {
        Ok(b) => {
            let ctl = std::fs::read_to_string(b.join("cgroup.controllers")).unwrap_or_default();
            println!("cgroup limits: enforced (delegated {} with controllers: {})", b.display(), ctl.trim());
        }
        Err(r) => {
            println!("cgroup limits: not enforced, rlimits only ({r})");
            println!("  fix: boot with systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all, and delegate a cgroup to this user (systemd Delegate=yes, or chown a directory and set JOBCELL_CGROUP_PARENT)");
        }
    }
    let seccomp_ok = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("Seccomp:"));
    println!("seccomp: {}", yes_no(seccomp_ok));
    let have = |n: &str| ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(n).exists());
    println!("newuidmap/newgidmap: {}", yes_no(have("newuidmap") && have("newgidmap")));
    println!("pasta (egress): {}", yes_no(have("pasta")));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Check => check(),
    }
}
