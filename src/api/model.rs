//! Wire types of the orchestrator API: the job submission ([`JobSpec`]) with its validation,
//! shared with the local executor that runs the stored spec.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job submission (`POST /api/internal/jobs`), stored as submitted once valid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_scope: Option<String>,
}

/// A script to run with its interpreter.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
}

/// Resource limits of the job's sandbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mb: Option<u64>,
}

/// Default and maximum job timeout.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Non-empty, at most `max` bytes of letters, digits, `.`, `_`, `-` and the `extra` bytes.
pub(crate) fn name_ok(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

impl JobSpec {
    /// Checks every field; returns a short reason (for the log and audit) on failure.
    pub fn validate(&self) -> Result<(), String> {
        if !name_ok(&self.user_id, 128, b"@:") {
            return Err("userId must match [A-Za-z0-9._@:-]{1,128}".into());
        }
        match (&self.command, &self.script) {
            (Some(c), None) => {
                if c.is_empty() || c.len() > 1024 || c[0].is_empty() {
                    return Err("command must be a non-empty array".into());
                }
                if c.iter().any(|a| a.contains('\0')) {
                    return Err("command contains NUL".into());
                }
            }
            (None, Some(s)) => {
                if !matches!(s.kind.as_str(), "sh" | "bash" | "python" | "node") {
                    return Err("script.type must be sh, bash, python or node".into());
                }
                if s.content.contains('\0') {
                    return Err("script contains NUL".into());
                }
            }
            _ => return Err("exactly one of command and script is required".into()),
        }
        if let Some(p) = &self.profile {
            if !name_ok(p, 64, b"") || p.starts_with('.') {
                return Err("profile must be a profile name".into());
            }
        }
        if let Some(l) = &self.limits {
            if l.cpus.is_some_and(|c| !(c > 0.0 && c <= 1024.0)) {
                return Err("limits.cpus out of range".into());
            }
            if l.memory_mb.is_some_and(|m| !(4..=1 << 20).contains(&m)) {
                return Err("limits.memoryMb out of range".into());
            }
            if l.pids.is_some_and(|p| !(1..=1 << 20).contains(&p)) {
                return Err("limits.pids out of range".into());
            }
            if l.tmpfs_mb.is_some_and(|m| !(1..=1 << 20).contains(&m)) {
                return Err("limits.tmpfsMb out of range".into());
            }
        }
        if let Some(env) = &self.env {
            for (k, v) in env {
                let first_ok = k
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
                if !first_ok
                    || k.len() > 256
                    || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err("env keys must be [A-Za-z_][A-Za-z0-9_]*".into());
                }
                if k.starts_with("JOBCELL_") || k.starts_with("ACTIONS_") {
                    return Err("env keys JOBCELL_* and ACTIONS_* are reserved".into());
                }
                if v.contains('\0') {
                    return Err("env value contains NUL".into());
                }
            }
        }
        if self
            .timeout_seconds
            .is_some_and(|t| !(1..=MAX_TIMEOUT_SECS).contains(&t))
        {
            return Err("timeoutSeconds out of range".into());
        }
        if self.priority.is_some_and(|p| !(0..=3).contains(&p)) {
            return Err("priority must be 0-3".into());
        }
        if let Some(s) = &self.scheduled_for {
            if crate::store::parse_rfc3339(s).is_none() {
                return Err("scheduledFor must be RFC 3339".into());
            }
        }
        if let Some(n) = &self.network {
            if n != "none" && n != "egress" {
                return Err("network must be none or egress".into());
            }
        }
        if let Some(c) = &self.cache_scope {
            if !name_ok(c, 128, b"/@:") || c.contains("..") {
                return Err("cacheScope invalid".into());
            }
        }
        Ok(())
    }

    pub fn timeout_secs(&self) -> u64 {
        self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS)
    }
}
