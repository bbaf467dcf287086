//! Command-line edge of jobcell: parses arguments (clap) and maps library errors to exit codes.
fn main() {}
