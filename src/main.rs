//! Command-line edge of jobcell: parses arguments (clap) and maps library errors to exit codes.
//!
//! Exit statuses of `run`: the command's own; 128+N when killed by signal N; 124 on timeout; 125 when jobcell
//! failed before the command started; 126 not executable; 127 not found.

use clap::{Args, Parser, Subcommand};
use jobcell::oci::{self, CreateOpts, ExecOpts, OciError};
use jobcell::profile::{self, RunRequest};
use jobcell::sandbox;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "jobcell",
    version,
    about = "A rootless sandbox runtime for untrusted jobs"
)]
struct Cli {
    /// OCI state directory (default: /run/jobcell as root, $XDG_RUNTIME_DIR/jobcell rootless).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Also write errors to this file (OCI runtime convention).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Accepted for runc compatibility; jobcell manages cgroupfs directly.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one command in a new sandbox (`-- COMMAND`), or an OCI container (`ID --bundle DIR`).
    Run(Box<RunArgs>),
    /// Report what this host supports: user namespaces, cgroup v2 delegation, seccomp, id-mapping helpers.
    Check,
    /// OCI: create a container from a bundle, stopped before its process starts.
    Create(CreateArgs),
    /// OCI: start a created container's process.
    Start { id: String },
    /// OCI: print a container's state JSON.
    State { id: String },
    /// OCI: send a signal (default TERM) to a container.
    Kill {
        id: String,
        signal: Option<String>,
        /// Signal every process of the container.
        #[arg(short, long)]
        all: bool,
    },
    /// OCI: delete a stopped container (--force kills a running one).
    Delete {
        id: String,
        #[arg(short, long)]
        force: bool,
    },
    /// OCI: write a default config.json into the bundle directory.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// A spec for rootless containers (user namespace mapping the caller to root).
        #[arg(long)]
        rootless: bool,
    },
    /// OCI: print the runtime's features JSON.
    Features,
    /// OCI: list the processes of a container.
    Ps {
        id: String,
        /// table or json
        #[arg(short, long, default_value = "table")]
        format: String,
    },
    /// OCI: run a process in a running container.
    Exec(ExecArgs),
    /// Run the embedded API server (and, with --executor local, run claimed jobs here).
    Serve(jobcell::api::ServeArgs),
    /// Helper for job scripts inside a sandbox (talks to the runtime API).
    Ctl(jobcell::ctl::CtlArgs),
}

#[derive(Args)]
struct CreateArgs {
    id: String,
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Accepted for runc compatibility (jobcell always uses pivot_root).
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
}

#[derive(Args)]
struct ExecArgs {
    id: String,
    /// Process JSON (runtime-spec `process` object).
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    tty: bool,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// UID[:GID]
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    command: Vec<String>,
}

/// `jobcell run ...` alone: building the parser for every subcommand is a large share of a sandbox's
/// start-up, so [`parse_args`] tries this one first.
#[derive(Parser)]
#[command(name = "jobcell")]
struct RunOnlyCli {
    #[command(subcommand)]
    cmd: RunOnly,
}

#[derive(Subcommand)]
enum RunOnly {
    Run(Box<RunArgs>),
}

/// Parses `args` (including argv[0]). A plain `jobcell run ...` that the run-only parser accepts means the same
/// to the full parser (global options then have their defaults); anything else, including every error, help
/// and version request, goes through the full parser so its messages are unchanged.
fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    if args.get(1).is_some_and(|a| a == "run") {
        if let Ok(RunOnlyCli {
            cmd: RunOnly::Run(a),
        }) = RunOnlyCli::try_parse_from(&args)
        {
            return Ok(Cli {
                root: None,
                log: None,
                log_format: "text".into(),
                systemd_cgroup: false,
                cmd: Cmd::Run(a),
            });
        }
    }
    Cli::try_parse_from(args)
}

#[derive(Args)]
#[cfg_attr(test, derive(Debug))]
struct RunArgs {
    /// OCI container id: run the bundle as a container (create + start, then wait and delete).
    #[arg(value_name = "ID")]
    id: Option<String>,
    /// OCI bundle directory (config.json + rootfs) instead of building a spec.
    #[arg(short, long)]
    bundle: Option<PathBuf>,
    /// OCI: write the container's pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// OCI: socket that receives the terminal master when process.terminal is set.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// OCI: return once the container has started.
    #[arg(short, long)]
    detach: bool,
    /// OCI: keep the container after it exits.
    #[arg(long)]
    keep: bool,
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
    #[arg(long, allow_hyphen_values = true)]
    cpus: Option<String>,
    /// Memory limit, e.g. 512M.
    #[arg(long, allow_hyphen_values = true)]
    memory: Option<String>,
    /// Maximum number of processes.
    #[arg(long, allow_hyphen_values = true)]
    pids: Option<String>,
    /// Size of /tmp and the workdir tmpfs, e.g. 100M.
    #[arg(long = "tmpfs-size")]
    tmpfs_size: Option<String>,
    /// Bind a host path: SRC:DST[:rw] (read-only unless :rw).
    #[arg(long = "bind", value_name = "SRC:DST[:rw]")]
    binds: Vec<String>,
    /// Add K=V to the environment (a bare K passes the value of K from jobcell's own environment).
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
    /// Delegated cgroup v2 directory to create the sandbox's cgroup under (default: found automatically).
    #[arg(long = "cgroup-parent", value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// Id mapping: auto (a full range when /etc/subuid grants one, else one id) or single (one id, as
    /// bubblewrap does: no setuid helpers, so a faster start, but no distinct root inside).
    #[arg(long, value_name = "auto|single")]
    userns: Option<String>,
    /// Unknown syscall names in the seccomp profile are an error, not a warning.
    #[arg(long)]
    strict: bool,
    /// Write the outcome as JSON to PATH (or - for stdout) when the sandbox ends.
    #[arg(long, value_name = "PATH|-")]
    json: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("jobcell: {msg}");
    ExitCode::from(125)
}

impl RunArgs {
    /// The flags that build a sandbox from a profile; a bundle's config.json is the whole spec, so with
    /// `--bundle` they would be silently ignored.
    fn profile_flags(&self) -> Vec<&'static str> {
        [
            (self.profile.is_some(), "--profile"),
            (self.rootfs.is_some(), "--rootfs"),
            (self.user.is_some(), "--user"),
            (self.cpus.is_some(), "--cpus"),
            (self.memory.is_some(), "--memory"),
            (self.pids.is_some(), "--pids"),
            (self.tmpfs_size.is_some(), "--tmpfs-size"),
            (!self.binds.is_empty(), "--bind"),
            (!self.env.is_empty(), "--env"),
            (self.workdir.is_some(), "--workdir"),
            (self.hostname.is_some(), "--hostname"),
            (self.net.is_some(), "--net"),
            (self.seccomp.is_some(), "--seccomp"),
            (!self.cap_add.is_empty(), "--cap-add"),
            (
                self.read_only || self.writable_root,
                "--read-only/--writable-root",
            ),
            (self.userns.is_some(), "--userns"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

fn run(a: RunArgs, root: &dyn Fn() -> PathBuf) -> ExitCode {
    if a.bundle.is_some() || a.id.is_some() {
        if let Some(flag) = a.profile_flags().first() {
            return fail(format!(
                "{flag}: not used with --bundle (the bundle's config.json is the whole spec): set it there"
            ));
        }
    }
    if let Some(id) = &a.id {
        let supervised_only = [
            (a.json.is_some(), "--json"),
            (a.timeout.is_some(), "--timeout"),
            (a.require_limits, "--require-limits"),
            (a.cgroup_parent.is_some(), "--cgroup-parent"),
            (a.strict, "--strict"),
        ];
        if let Some((_, flag)) = supervised_only.iter().find(|(set, _)| *set) {
            return fail(format!(
                "{flag}: not used when running a bundle as container {id:?}: drop the ID to run it supervised (`jobcell run --bundle DIR {flag} ...`)"
            ));
        }
        let o = CreateOpts {
            bundle: a.bundle.clone().unwrap_or_else(|| PathBuf::from(".")),
            pid_file: a.pid_file.clone(),
            console_socket: a.console_socket.clone(),
        };
        return match oci::run(&root(), id, &o, a.detach, a.keep) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => oci_fail(e),
        };
    }
    if let Some(bundle) = &a.bundle {
        let (mut spec, _) = match oci::load_bundle(bundle) {
            Ok(v) => v,
            Err(e) => return fail(e),
        };
        if !a.command.is_empty() {
            if let Some(p) = spec.process_mut() {
                p.set_args(Some(a.command.clone()));
            }
        }
        let mut opts = oci::bundle_launch_options();
        opts.require_limits = a.require_limits;
        opts.strict = a.strict;
        opts.cgroup_parent = a.cgroup_parent.clone();
        if let Some(t) = &a.timeout {
            match jobcell::units::parse_duration(t) {
                Ok(d) => opts.timeout = Some(d),
                Err(e) => return fail(format!("--timeout: {e}")),
            }
        }
        return finish_run(&spec, &opts, a.json.as_deref(), a.timeout.as_deref());
    }
    if a.command.is_empty() {
        return fail(
            "no command given: use `jobcell run [OPTIONS] -- COMMAND [ARGS...]`, or `--bundle DIR`",
        );
    }
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
        read_only: if a.writable_root {
            Some(false)
        } else if a.read_only {
            Some(true)
        } else {
            None
        },
        timeout: a.timeout,
        require_limits: a.require_limits,
        strict: a.strict,
        cgroup_parent: a.cgroup_parent,
        userns: a.userns,
        args: a.command,
    };
    let (spec, opts) = match profile::build(&req) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    finish_run(&spec, &opts, a.json.as_deref(), req.timeout.as_deref())
}

/// Launches a supervised sandbox, waits for it, writes the outcome; returns the contract's exit status.
fn finish_run(
    spec: &oci_spec::runtime::Spec,
    opts: &profile::LaunchOptions,
    json: Option<&str>,
    timeout: Option<&str>,
) -> ExitCode {
    // Check the outcome path before anything starts, but create the file only at the end: bad input that
    // is noticed later (e.g. a seccomp profile refused by --strict) must leave nothing behind.
    if let Some(p) = json.filter(|p| *p != "-") {
        let path = std::path::Path::new(p);
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        let ok = if path.exists() {
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map(|_| ())
        } else if !dir.is_dir() {
            // Missing, or a file: access() alone would pass an executable file.
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        } else {
            nix::unistd::access(
                dir,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .map_err(std::io::Error::from)
        };
        if let Err(e) = ok {
            return fail(format!("--json {p}: {e}: give a writable file path or -"));
        }
    }
    let outcome =
        match sandbox::launch(spec, opts, sandbox::Mode::Supervised).and_then(|s| s.wait()) {
            Ok(o) => o,
            Err(e) => return fail(e),
        };
    if let Some(msg) = &outcome.error {
        eprintln!("jobcell: {msg}");
    }
    if outcome.timed_out {
        eprintln!(
            "jobcell: timed out after {}",
            timeout.unwrap_or("the profile's timeout")
        );
    }
    let written = match json {
        None => Ok(()),
        Some("-") => writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string(&outcome).unwrap_or_default()
        ),
        Some(p) => std::fs::write(
            p,
            serde_json::to_string(&outcome).unwrap_or_default() + "\n",
        ),
    };
    if let Err(e) = written {
        eprintln!("jobcell: --json: writing the outcome: {e}");
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
            println!(
                "cgroup limits: enforced (delegated {} with controllers: {})",
                b.display(),
                ctl.trim()
            );
        }
        Err(r) => {
            println!("cgroup limits: not enforced, rlimits only ({r})");
            println!("  fix: boot with systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all, and delegate a cgroup to this user (systemd Delegate=yes, or chown a directory and set JOBCELL_CGROUP_PARENT)");
        }
    }
    let seccomp_ok =
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("Seccomp:"));
    println!("seccomp: {}", yes_no(seccomp_ok));
    let have = |n: &str| sandbox::idmap::helper(n).is_some();
    println!(
        "newuidmap/newgidmap: {}",
        yes_no(have("newuidmap") && have("newgidmap"))
    );
    println!("pasta (egress): {}", yes_no(have("pasta")));
    ExitCode::SUCCESS
}

/// Where OCI verb errors are also logged (`--log`, `--log-format`).
static LOG: std::sync::OnceLock<(PathBuf, bool)> = std::sync::OnceLock::new();

fn oci_fail(e: impl std::fmt::Display) -> ExitCode {
    let msg = e.to_string();
    eprintln!("jobcell: {msg}");
    if let Some((path, json)) = LOG.get() {
        let line = if *json {
            serde_json::json!({"level": "error", "msg": msg}).to_string()
        } else {
            format!("level=error msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    ExitCode::from(1)
}

fn parse_ids(s: &str) -> Result<(u32, u32), String> {
    profile::parse_user(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Usage errors are failures before any command ran: one line, exit 125 (the run contract), not clap's 2.
    let cli = match parse_args(std::env::args_os().collect()) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("jobcell: {first} (see jobcell --help)");
            return ExitCode::from(125);
        }
    };
    if let Some(p) = &cli.log {
        let _ = LOG.set((p.clone(), cli.log_format == "json"));
    }
    let _ = cli.systemd_cgroup;
    // Only the OCI verbs need the state directory; resolving it reads /proc, so `run` skips it.
    let root = || cli.root.clone().unwrap_or_else(oci::state::default_root);
    let done = |r: Result<(), OciError>| match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => oci_fail(e),
    };
    match cli.cmd {
        Cmd::Serve(a) => match jobcell::api::serve_main(a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jobcell serve: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Ctl(a) => ExitCode::from(jobcell::ctl::main(a).clamp(0, 255) as u8),
        Cmd::Run(a) => run(*a, &root),
        Cmd::Check => check(),
        Cmd::Create(a) => {
            let _ = (a.no_pivot, a.no_new_keyring);
            let o = CreateOpts {
                bundle: a.bundle,
                pid_file: a.pid_file,
                console_socket: a.console_socket,
            };
            done(oci::create(&root(), &a.id, &o))
        }
        Cmd::Start { id } => done(oci::start(&root(), &id)),
        Cmd::State { id } => done(
            oci::state(&root(), &id)
                .map(|v| println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())),
        ),
        Cmd::Kill { id, signal, all } => done(oci::kill(
            &root(),
            &id,
            signal.as_deref().unwrap_or("TERM"),
            all,
        )),
        Cmd::Delete { id, force } => done(oci::delete(&root(), &id, force)),
        Cmd::Spec { bundle, rootless } => done(oci::spec(&bundle, rootless)),
        Cmd::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&oci::features()).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Cmd::Ps { id, format } => {
            done(oci::ps(&root(), &id, format == "json").map(|s| print!("{s}")))
        }
        Cmd::Exec(a) => {
            let user = match a.user.as_deref().map(parse_ids).transpose() {
                Ok(u) => u,
                Err(e) => return oci_fail(format!("--user: {e}")),
            };
            let o = ExecOpts {
                process_file: a.process,
                args: a.command,
                env: a.env,
                cwd: a.cwd,
                user,
                tty: a.tty,
                console_socket: a.console_socket,
                detach: a.detach,
                pid_file: a.pid_file,
            };
            match oci::exec(&root(), &a.id, &o) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => oci_fail(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(args: &[&str]) -> Option<String> {
        Cli::try_parse_from(args).ok().map(|c| match c.cmd {
            Cmd::Run(a) => format!(
                "{:?} {:?} {:?} {} {}",
                a, c.root, c.log, c.log_format, c.systemd_cgroup
            ),
            _ => "other".into(),
        })
    }

    fn fast(args: &[&str]) -> Option<String> {
        parse_args(args.iter().map(Into::into).collect())
            .ok()
            .map(|c| match c.cmd {
                Cmd::Run(a) => format!(
                    "{:?} {:?} {:?} {} {}",
                    a, c.root, c.log, c.log_format, c.systemd_cgroup
                ),
                _ => "other".into(),
            })
    }

    #[test]
    fn run_fast_path_means_what_the_full_parser_means() {
        for args in [
            &["jobcell", "run", "--", "/bin/true"][..],
            &[
                "jobcell", "run", "--memory", "64M", "--cpus", "0.5", "--", "sh", "-c", "x",
            ],
            &["jobcell", "run", "--root", "/tmp/x", "--", "true"],
            &[
                "jobcell",
                "run",
                "--log",
                "/tmp/l",
                "--log-format",
                "json",
                "id",
                "-b",
                "/b",
            ],
            &["jobcell", "--root", "/tmp/x", "run", "id", "--bundle", "/b"],
            &["jobcell", "run", "--systemd-cgroup", "--", "true"],
            &[
                "jobcell", "run", "--bind", "/a:/b:rw", "--env", "A=1", "--", "--root",
            ],
            &["jobcell", "run", "--no-such-flag", "--", "true"],
            &["jobcell", "run"],
        ] {
            assert_eq!(fast(args), full(args), "{args:?}");
        }
        assert_eq!(fast(&["jobcell", "check"]).as_deref(), Some("other"));
    }
}
