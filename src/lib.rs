//! jobcell: a rootless sandbox runtime for running untrusted jobs on Linux.
//!
//! The library owns every mechanism; `src/main.rs` is only the command-line edge.

pub mod api;
pub mod cgroup;
pub mod ctl;
pub mod executor;
pub mod net;
pub mod oci;
pub mod profile;
pub mod sandbox;
pub mod seccomp;
pub mod secrets;
pub mod store;
pub mod units;
