//! jobcell: a rootless sandbox runtime for running untrusted jobs on Linux.
//!
//! The library owns every mechanism; `src/main.rs` is only the command-line edge.

pub mod cgroup;
pub mod net;
pub mod profile;
pub mod sandbox;
pub mod seccomp;
pub mod units;
pub mod oci;

pub mod api;
pub mod ctl;
pub mod executor;
pub mod secrets;
pub mod store;
