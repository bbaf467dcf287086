//! Command-line edge of jobcell: parses arguments (clap) and maps library errors to exit codes.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jobcell",
    version,
    about = "Rootless sandbox runtime for untrusted jobs"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the embedded API server (and the local executor).
    Serve(jobcell::api::ServeArgs),
    /// Helper for job scripts inside a sandbox.
    Ctl(jobcell::ctl::CtlArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve(args) => jobcell::api::serve_main(args)?,
        Cmd::Ctl(args) => std::process::exit(jobcell::ctl::main(args)),
    }
    Ok(())
}
