//! jobcell: a rootless sandbox runtime for running untrusted jobs on Linux.
//!
//! The library owns every mechanism; `src/main.rs` is only the command-line edge.

pub mod seccomp;
