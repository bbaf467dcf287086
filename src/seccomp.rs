//! Seccomp for jobcell: owns loading, validating and resolving OCI `linux.seccomp`
//! profiles (`seccomp/*.json`), compiling them to a classic-BPF program with
//! libseccomp, and installing that program in the sandbox child.
//!
//! The split is deliberate: [`compile`] runs in the unprivileged parent before the
//! sandbox exists (it allocates, talks to libseccomp, may warn), and the child only
//! calls [`install`], which is a single `seccomp(2)` call on bytes that are already
//! in memory and never allocates, so it is safe between `fork`/`clone` and `execve`.
//!
//! Semantics worth knowing when writing profiles (they are libseccomp 2.5's):
//! - rules in one `syscalls[]` entry AND their `args`; entries are OR'ed;
//! - an unconditional rule for a syscall overrides every conditional rule for the
//!   same syscall (so "allow ioctl, but deny TIOCSTI" must make the allow
//!   conditional, e.g. `args[1] >= 0`); [`compile`] warns about (strict: rejects)
//!   such shadowed rules;
//! - one entry cannot compare the same argument twice;
//! - for `SCMP_CMP_MASKED_EQ`, `value` is the mask and `valueTwo` the expected value.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall,
};
use serde_json::Value;

/// The kernel's limit on classic-BPF program length (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;

/// Largest errno a profile may ask for (the kernel's `MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

const INSN_SIZE: usize = std::mem::size_of::<libc::sock_filter>();

/// A compiled seccomp filter: the raw BPF program (an array of `struct sock_filter`
/// in host byte order), ready for [`install`].
#[derive(Clone)]
pub struct CompiledFilter {
    insns: Vec<libc::sock_filter>,
}

impl CompiledFilter {
    /// The program as bytes (8 per instruction), e.g. to store in a cache.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: sock_filter is repr(C) {u16, u8, u8, u32}: 8 bytes, no padding, every
        // bit pattern valid; the slice borrows `self`.
        unsafe {
            std::slice::from_raw_parts(
                self.insns.as_ptr().cast::<u8>(),
                self.insns.len() * INSN_SIZE,
            )
        }
    }

    /// Number of BPF instructions.
    pub fn len_instructions(&self) -> usize {
        self.insns.len()
    }

    /// Rebuilds a filter from [`CompiledFilter::as_bytes`] output (for a cache).
    /// Checks only the shape (non-empty, whole instructions, at most 4096); the
    /// kernel verifies the program itself at [`install`] time.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SeccompError> {
        if bytes.is_empty() || bytes.len() % INSN_SIZE != 0 {
            return Err(SeccompError::InvalidFilter(format!(
                "{} bytes is not a whole, non-zero number of {INSN_SIZE}-byte BPF instructions",
                bytes.len()
            )));
        }
        let n = bytes.len() / INSN_SIZE;
        if n > MAX_INSTRUCTIONS {
            return Err(SeccompError::TooLarge(n));
        }
        let insns = bytes
            .chunks_exact(INSN_SIZE)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Self { insns })
    }
}

impl std::fmt::Debug for CompiledFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledFilter")
            .field("instructions", &self.insns.len())
            .finish()
    }
}

impl PartialEq for CompiledFilter {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CompiledFilter {}

/// Errors from loading, resolving and compiling seccomp profiles. Each message is
/// one line naming the file (or "seccomp profile" when there is none) and the
/// field, and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile file could not be read.
    #[error("seccomp profile {}: cannot read: {error}; fix: check that the file exists and is readable", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The profile is not valid JSON, has a field of the wrong type, or a value
    /// jobcell does not accept. `file` is the path, or "seccomp profile" when the
    /// profile did not come from a file.
    #[error("{file}: {field}: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
    /// A profile name was not found in any profile directory.
    #[error("seccomp profile `{name}` not found (looked for {searched}); fix: add {name}.json to one of those directories, pass a path to a .json file, or use `unconfined`")]
    NotFound { name: String, searched: String },
    /// libseccomp refused an operation.
    #[error("{file}: {field}: libseccomp error: {message}; fix: {hint}")]
    Libseccomp {
        file: String,
        field: String,
        message: String,
        hint: String,
    },
    /// A compiled filter (e.g. from a cache) has the wrong shape.
    #[error("seccomp filter bytes are invalid: {0}; fix: discard the cached filter and compile the profile again")]
    InvalidFilter(String),
    /// The compiled program exceeds the kernel's limit.
    #[error("seccomp filter has {0} BPF instructions, more than the kernel limit of 4096; fix: merge rules or list fewer architectures in the profile")]
    TooLarge(usize),
}

const NO_FILE: &str = "seccomp profile";

/// The shipped profiles, compiled into the binary so an installed jobcell needs no data files.
const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../seccomp/default.json")),
    ("strict", include_str!("../seccomp/strict.json")),
];

/// Directory of the compiled-filter cache: `$XDG_CACHE_HOME/jobcell` (or `~/.cache/jobcell`), `/var/cache/jobcell`
/// as root. Only the invoking user can write it, and a key names everything the bytes depend on.
fn cache_dir() -> Option<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Some(PathBuf::from("/var/cache/jobcell/seccomp"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("jobcell/seccomp"))
}

/// Names how [`compile`] lays out a filter; part of the cache key, so changing the layout (e.g. the
/// optimisation level) never reuses BPF compiled the old way.
const FILTER_LAYOUT: &str = "tree-v1";

/// Like [`compile`], but reuses BPF compiled earlier for the same profile, mode, libseccomp version and
/// architecture (compiling the default profile for three x86 ABIs costs ~20 ms; reading it back ~20 us).
/// The cache is best effort: any problem with it falls back to compiling.
pub fn compile_cached(
    profile: &LinuxSeccomp,
    strict: bool,
) -> Result<(CompiledFilter, Vec<String>), SeccompError> {
    use sha2::Digest;
    let Some(dir) = cache_dir() else {
        return compile(profile, strict);
    };
    let mut h = sha2::Sha256::new();
    h.update(serde_json::to_vec(profile).unwrap_or_default());
    h.update([u8::from(strict)]);
    h.update(format!(
        "{FILTER_LAYOUT}|{:?}|{:?}|{}",
        libseccomp::ScmpVersion::current()
            .ok()
            .map(|v| (v.major, v.minor, v.micro)),
        libseccomp::ScmpArch::native(),
        env!("CARGO_PKG_VERSION")
    ));
    let key = hex::encode(h.finalize());
    // One file: the warnings' length (u32 LE), the warnings (lines), then the BPF instructions.
    let path = dir.join(format!("{key}.bpf"));
    if let Ok(bytes) = std::fs::read(&path) {
        if let Some(hit) = split_cache_entry(bytes) {
            return Ok(hit);
        }
    }
    let (filter, warnings) = compile(profile, strict)?;
    let store = || -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let entry = cache_entry(&filter, &warnings);
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        std::fs::write(&tmp, entry)?;
        std::fs::rename(&tmp, &path)
    };
    let _ = store();
    Ok((filter, warnings))
}

fn cache_entry(filter: &CompiledFilter, warnings: &[String]) -> Vec<u8> {
    let text = warnings.join("\n");
    let mut entry = (text.len() as u32).to_le_bytes().to_vec();
    entry.extend_from_slice(text.as_bytes());
    entry.extend_from_slice(filter.as_bytes());
    entry
}

/// Parses a cache entry written by [`compile_cached`]; `None` for anything malformed (then it is recompiled).
fn split_cache_entry(mut bytes: Vec<u8>) -> Option<(CompiledFilter, Vec<String>)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(bytes.get(4..4usize.checked_add(len)?)?).ok()?;
    let warnings = text.lines().map(String::from).collect();
    let filter = CompiledFilter::from_bytes(bytes.split_off(4 + len)).ok()?;
    Some((filter, warnings))
}

fn invalid(file: &str, field: impl Into<String>, message: impl Into<String>) -> SeccompError {
    SeccompError::Invalid {
        file: file.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

fn lib_err(
    field: impl Into<String>,
    e: &libseccomp::error::SeccompError,
    hint: &str,
) -> SeccompError {
    SeccompError::Libseccomp {
        file: NO_FILE.to_string(),
        field: field.into(),
        message: e.to_string(),
        hint: hint.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------

const ACTIONS: &[&str] = &[
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_NOTIFY",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_LOG",
    "SCMP_ACT_ALLOW",
];
const ARCHES: &[&str] = &[
    "SCMP_ARCH_NATIVE",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_RISCV64",
];
const FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
];
const OPS: &[&str] = &[
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

type FieldErr = (String, String);

fn want_object<'a>(
    v: &'a Value,
    field: &str,
    known: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, FieldErr> {
    let obj = v.as_object().ok_or_else(|| {
        (
            field.to_string(),
            format!("expected an object, found {}", type_name(v)),
        )
    })?;
    for key in obj.keys() {
        if !known.contains(&key.as_str()) {
            let f = if field.is_empty() {
                key.clone()
            } else {
                format!("{field}.{key}")
            };
            return Err((
                f,
                format!(
                    "unknown field; fix: remove it or use one of: {}",
                    known.join(", ")
                ),
            ));
        }
    }
    Ok(obj)
}

fn want_enum(v: &Value, field: &str, allowed: &[&str]) -> Result<(), FieldErr> {
    match v.as_str() {
        Some(s) if allowed.contains(&s) => Ok(()),
        Some(s) => Err((
            field.to_string(),
            format!(
                "unknown value `{s}`; fix: use one of: {}",
                allowed.join(", ")
            ),
        )),
        None => Err((
            field.to_string(),
            format!("expected a string, found {}", type_name(v)),
        )),
    }
}

fn want_uint(v: &Value, field: &str, max: u64) -> Result<u64, FieldErr> {
    match v.as_u64() {
        Some(n) if n <= max => Ok(n),
        Some(n) => Err((
            field.to_string(),
            format!("{n} is out of range; fix: use a value from 0 to {max}"),
        )),
        None => Err((
            field.to_string(),
            format!(
                "expected a non-negative integer, found {}",
                if v.is_number() {
                    format!("`{v}`")
                } else {
                    type_name(v).to_string()
                }
            ),
        )),
    }
}

fn want_array<'a>(v: &'a Value, field: &str) -> Result<&'a Vec<Value>, FieldErr> {
    v.as_array().ok_or_else(|| {
        (
            field.to_string(),
            format!("expected an array, found {}", type_name(v)),
        )
    })
}

fn required<'a>(
    obj: &'a serde_json::Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<&'a Value, FieldErr> {
    obj.get(key).ok_or_else(|| {
        let f = if field.is_empty() {
            key.to_string()
        } else {
            format!("{field}.{key}")
        };
        (f, "missing required field; fix: add it".to_string())
    })
}

/// Structural check of the JSON (types, enums, unknown keys), so that errors can
/// name the exact field; serde's own errors only give a line and column.
fn check_json(v: &Value) -> Result<(), FieldErr> {
    let top = want_object(
        v,
        "",
        &[
            "defaultAction",
            "defaultErrnoRet",
            "architectures",
            "flags",
            "listenerPath",
            "listenerMetadata",
            "syscalls",
        ],
    )
    .map_err(|(f, m)| {
        if f.is_empty() {
            ("(top level)".to_string(), m)
        } else {
            (f, m)
        }
    })?;
    want_enum(
        required(top, "", "defaultAction")?,
        "defaultAction",
        ACTIONS,
    )?;
    if let Some(e) = top.get("defaultErrnoRet") {
        want_uint(e, "defaultErrnoRet", MAX_ERRNO.into())?;
    }
    if let Some(a) = top.get("architectures") {
        for (i, x) in want_array(a, "architectures")?.iter().enumerate() {
            want_enum(x, &format!("architectures[{i}]"), ARCHES)?;
        }
    }
    if let Some(a) = top.get("flags") {
        for (i, x) in want_array(a, "flags")?.iter().enumerate() {
            want_enum(x, &format!("flags[{i}]"), FLAGS)?;
        }
    }
    for key in ["listenerPath", "listenerMetadata"] {
        if let Some(x) = top.get(key) {
            if !x.is_string() {
                return Err((
                    key.to_string(),
                    format!("expected a string, found {}", type_name(x)),
                ));
            }
        }
    }
    if let Some(s) = top.get("syscalls") {
        for (i, rule) in want_array(s, "syscalls")?.iter().enumerate() {
            let rf = format!("syscalls[{i}]");
            let r = want_object(rule, &rf, &["names", "action", "errnoRet", "args"])?;
            let names = want_array(required(r, &rf, "names")?, &format!("{rf}.names"))?;
            if names.is_empty() {
                return Err((
                    format!("{rf}.names"),
                    "is empty; fix: list at least one syscall name".to_string(),
                ));
            }
            for (j, n) in names.iter().enumerate() {
                match n.as_str() {
                    Some(s) if !s.is_empty() => {}
                    _ => {
                        return Err((
                            format!("{rf}.names[{j}]"),
                            format!("expected a syscall name, found {}", type_name(n)),
                        ))
                    }
                }
            }
            want_enum(
                required(r, &rf, "action")?,
                &format!("{rf}.action"),
                ACTIONS,
            )?;
            if let Some(e) = r.get("errnoRet") {
                want_uint(e, &format!("{rf}.errnoRet"), MAX_ERRNO.into())?;
            }
            if let Some(args) = r.get("args") {
                for (k, a) in want_array(args, &format!("{rf}.args"))?.iter().enumerate() {
                    let af = format!("{rf}.args[{k}]");
                    let o = want_object(a, &af, &["index", "value", "valueTwo", "op"])?;
                    want_uint(required(o, &af, "index")?, &format!("{af}.index"), 5)?;
                    want_uint(required(o, &af, "value")?, &format!("{af}.value"), u64::MAX)?;
                    if let Some(x) = o.get("valueTwo") {
                        want_uint(x, &format!("{af}.valueTwo"), u64::MAX)?;
                    }
                    want_enum(required(o, &af, "op")?, &format!("{af}.op"), OPS)?;
                }
            }
        }
    }
    Ok(())
}

/// Semantic checks shared by [`load_profile`] and [`compile`].
fn check_profile(p: &LinuxSeccomp) -> Result<(), FieldErr> {
    if p.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(notify_unsupported("defaultAction"));
    }
    if let Some(e) = p.default_errno_ret() {
        if e > MAX_ERRNO {
            return Err((
                "defaultErrnoRet".into(),
                format!("{e} is out of range; fix: use an errno from 1 to {MAX_ERRNO}"),
            ));
        }
    }
    for (i, r) in p.syscalls().iter().flatten().enumerate() {
        let rf = format!("syscalls[{i}]");
        if r.names().is_empty() {
            return Err((
                format!("{rf}.names"),
                "is empty; fix: list at least one syscall name".into(),
            ));
        }
        if r.action() == LinuxSeccompAction::ScmpActNotify {
            return Err(notify_unsupported(&format!("{rf}.action")));
        }
        if let Some(e) = r.errno_ret() {
            if e > MAX_ERRNO {
                return Err((
                    format!("{rf}.errnoRet"),
                    format!("{e} is out of range; fix: use an errno from 1 to {MAX_ERRNO}"),
                ));
            }
        }
        let mut seen = [false; 6];
        for (k, a) in r.args().iter().flatten().enumerate() {
            let af = format!("{rf}.args[{k}]");
            let idx = a.index();
            if idx > 5 {
                return Err((
                    format!("{af}.index"),
                    format!("{idx} is out of range; fix: syscall arguments are numbered 0 to 5"),
                ));
            }
            if seen[idx] {
                return Err((
                    format!("{af}.index"),
                    format!("argument {idx} is compared twice in one rule, which libseccomp cannot express; fix: split the comparisons into separate syscalls[] entries"),
                ));
            }
            seen[idx] = true;
        }
    }
    Ok(())
}

fn notify_unsupported(field: &str) -> FieldErr {
    (
        field.to_string(),
        "SCMP_ACT_NOTIFY is not supported by jobcell run; fix: use SCMP_ACT_ERRNO or SCMP_ACT_KILL_PROCESS".into(),
    )
}

/// Parses and validates profile JSON. `file` labels error messages.
fn parse_profile(text: &str, file: &str) -> Result<LinuxSeccomp, SeccompError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        invalid(
            file,
            format!("line {} column {}", e.line(), e.column()),
            format!("invalid JSON ({e}); fix: correct the syntax"),
        )
    })?;
    check_json(&value).map_err(|(f, m)| invalid(file, f, m))?;
    let profile: LinuxSeccomp = serde_json::from_value(value).map_err(|e| {
        invalid(
            file,
            "(document)",
            format!("{e}; fix: follow the OCI linux.seccomp format"),
        )
    })?;
    check_profile(&profile).map_err(|(f, m)| invalid(file, f, m))?;
    Ok(profile)
}

/// Reads, parses and validates a profile file in the OCI `linux.seccomp` format.
/// Unknown fields are rejected (a misspelt `errnoRet` must not silently become EPERM).
pub fn load_profile(path: &Path) -> Result<LinuxSeccomp, SeccompError> {
    let text = std::fs::read_to_string(path).map_err(|error| SeccompError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    parse_profile(&text, &path.display().to_string())
}

/// Resolves a `--seccomp` style value: `unconfined` gives `None`; a bare NAME
/// (letters, digits, `.`, `_`, `-`; no `/`, not ending in `.json`) is looked up as
/// `<dir>/NAME.json` in `profile_dirs`, first match wins; anything else is a path.
pub fn resolve(spec: &str, profile_dirs: &[PathBuf]) -> Result<Option<LinuxSeccomp>, SeccompError> {
    if spec == "unconfined" {
        return Ok(None);
    }
    if spec.contains('/') || spec.ends_with(".json") {
        return load_profile(Path::new(spec)).map(Some);
    }
    let valid_name = !spec.is_empty()
        && !spec.starts_with('.')
        && spec
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid_name {
        return Err(invalid(
            NO_FILE,
            "name",
            format!("`{spec}` is not a profile name; fix: use a name like `default` (letters, digits, . _ -), a path containing `/`, or `unconfined`"),
        ));
    }
    let file = format!("{spec}.json");
    for dir in profile_dirs {
        let candidate = dir.join(&file);
        if candidate.is_file() {
            return load_profile(&candidate).map(Some);
        }
    }
    if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
        // Shipped with the binary and checked by parse_profile in the tests, so the typed parse suffices
        // (it is several times faster than parsing into a Value and checking every field name).
        return serde_json::from_str(text)
            .map(Some)
            .map_err(|e| invalid(&format!("built-in {file}"), "(document)", e.to_string()));
    }
    let searched = if profile_dirs.is_empty() {
        "no profile directories configured".to_string()
    } else {
        profile_dirs
            .iter()
            .map(|d| d.join(&file).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(SeccompError::NotFound {
        name: spec.to_string(),
        searched,
    })
}

// ---------------------------------------------------------------------------
// Compilation
// ---------------------------------------------------------------------------

fn map_action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    field: &str,
) -> Result<ScmpAction, SeccompError> {
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            let (f, m) = notify_unsupported(field);
            return Err(invalid(NO_FILE, f, m));
        }
    })
}

fn map_arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::native(),
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
    }
}

/// ABIs a process on this host can actually use. Architectures a profile lists
/// outside this set (aarch64 on an x86_64 host) could never match, so they are
/// left out of the filter to keep it small.
fn runnable_here(native: ScmpArch, arch: ScmpArch) -> bool {
    match native {
        ScmpArch::X8664 => matches!(arch, ScmpArch::X8664 | ScmpArch::X86 | ScmpArch::X32),
        ScmpArch::Aarch64 => matches!(arch, ScmpArch::Aarch64 | ScmpArch::Arm),
        _ => true,
    }
}

fn map_op(op: LinuxSeccompOperator, value: u64) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value),
    }
}

/// Per-syscall bookkeeping to detect rules libseccomp would silently shadow.
#[derive(Default)]
struct Seen {
    unconditional: Option<(ScmpAction, String)>,
    conditional: Vec<(ScmpAction, String)>,
}

/// Compiles a profile to BPF for this host. Returns the filter and warnings
/// (one line each). With `strict`, anything that would be a warning is an error.
///
/// - unknown syscall names (libseccomp does not know them): warning and skipped;
///   error when `strict`. Names that exist only on ABIs not in the filter (e.g.
///   `mmap2` in an x86_64-only filter) are skipped silently;
/// - `SCMP_ACT_NOTIFY` is an error; `flags`, `listenerPath`, `listenerMetadata`
///   are ignored with a warning;
/// - the bad-architecture action is KILL_PROCESS; libseccomp's own
///   no_new_privs handling is off (the launcher sets no_new_privs).
///
/// Compiling `default.json` takes tens of milliseconds (libseccomp's BPF
/// generation for three x86 ABIs), so results are memoised in-process (last
/// [`MEMO_ENTRIES`] distinct profiles, compared by value); the output is
/// deterministic, so a cross-process cache of [`CompiledFilter::as_bytes`] is sound
/// as long as its key covers the profile, `strict`, the libseccomp version and the
/// host architecture.
pub fn compile(
    profile: &LinuxSeccomp,
    strict: bool,
) -> Result<(CompiledFilter, Vec<String>), SeccompError> {
    if let Ok(memo) = MEMO.lock() {
        if let Some(hit) = memo
            .iter()
            .find(|m| m.strict == strict && m.profile == *profile)
        {
            return Ok((hit.filter.clone(), hit.warnings.clone()));
        }
    }
    let (filter, warnings) = compile_uncached(profile, strict)?;
    if let Ok(mut memo) = MEMO.lock() {
        if memo.len() >= MEMO_ENTRIES {
            memo.remove(0);
        }
        memo.push(Memo {
            profile: profile.clone(),
            strict,
            filter: filter.clone(),
            warnings: warnings.clone(),
        });
    }
    Ok((filter, warnings))
}

/// How many compiled profiles [`compile`] keeps in memory.
pub const MEMO_ENTRIES: usize = 8;

struct Memo {
    profile: LinuxSeccomp,
    strict: bool,
    filter: CompiledFilter,
    warnings: Vec<String>,
}

static MEMO: std::sync::Mutex<Vec<Memo>> = std::sync::Mutex::new(Vec::new());

fn compile_uncached(
    profile: &LinuxSeccomp,
    strict: bool,
) -> Result<(CompiledFilter, Vec<String>), SeccompError> {
    check_profile(profile).map_err(|(f, m)| invalid(NO_FILE, f, m))?;
    let mut warnings = Vec::new();
    let mut warn = |field: String, msg: String| -> Result<(), SeccompError> {
        if strict {
            Err(invalid(NO_FILE, field, msg))
        } else {
            warnings.push(format!("{NO_FILE}: {field}: {msg}"));
            Ok(())
        }
    };

    let default = map_action(
        profile.default_action(),
        profile.default_errno_ret(),
        "defaultAction",
    )?;
    let mut ctx = ScmpFilterContext::new(default)
        .map_err(|e| lib_err("defaultAction", &e, "use a supported default action"))?;
    ctx.set_act_badarch(ScmpAction::KillProcess)
        .map_err(|e| lib_err("(bad-arch action)", &e, "upgrade libseccomp"))?;
    ctx.set_ctl_nnp(false)
        .map_err(|e| lib_err("(no_new_privs control)", &e, "upgrade libseccomp"))?;
    // A binary tree of syscall numbers instead of a linear list: the kernel walks the filter for every
    // syscall number when it is loaded (to build its allow cache) and on every syscall, so the tree loads in
    // less than half the time. libseccomp before 2.5 has no such option and keeps the linear list.
    let _ = ctx.set_ctl_optimize(2);

    let native = ScmpArch::native();
    let mut arches = vec![native];
    for (i, a) in profile.architectures().iter().flatten().enumerate() {
        let arch = map_arch(*a);
        if !runnable_here(native, arch) || arches.contains(&arch) {
            continue;
        }
        ctx.add_arch(arch).map_err(|e| {
            lib_err(
                format!("architectures[{i}]"),
                &e,
                "remove this architecture or upgrade libseccomp",
            )
        })?;
        arches.push(arch);
    }

    if let Some(flags) = profile.flags() {
        if !flags.is_empty() {
            warn(
                "flags".into(),
                "filter flags are ignored by jobcell; fix: remove `flags`".into(),
            )?;
        }
    }
    if profile.listener_path().is_some() || profile.listener_metadata().is_some() {
        warn(
            "listenerPath".into(),
            "listenerPath/listenerMetadata are ignored (SCMP_ACT_NOTIFY is not supported); fix: remove them".into(),
        )?;
    }

    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for (i, rule) in profile.syscalls().iter().flatten().enumerate() {
        add_rule(&mut ctx, &arches, default, i, rule, &mut seen, &mut warn)?;
    }

    for (name, s) in &seen {
        if let Some((ua, uf)) = &s.unconditional {
            if let Some((_, cf)) = s.conditional.iter().find(|(a, _)| a != ua) {
                warn(
                    cf.clone(),
                    format!("conditional rule for `{name}` is overridden by the unconditional rule in {uf} (libseccomp ignores conditional rules for a syscall that also has an unconditional one); fix: make the rule in {uf} conditional, e.g. an `args` entry with op SCMP_CMP_GE and value 0"),
                )?;
            }
        }
    }

    let bytes = export(&ctx)?;
    let filter = CompiledFilter::from_bytes(bytes)?;
    Ok((filter, warnings))
}

fn add_rule(
    ctx: &mut ScmpFilterContext,
    arches: &[ScmpArch],
    default: ScmpAction,
    i: usize,
    rule: &LinuxSyscall,
    seen: &mut BTreeMap<String, Seen>,
    warn: &mut impl FnMut(String, String) -> Result<(), SeccompError>,
) -> Result<(), SeccompError> {
    let rf = format!("syscalls[{i}]");
    let action = map_action(rule.action(), rule.errno_ret(), &format!("{rf}.action"))?;
    if rule.errno_ret().is_some()
        && !matches!(
            rule.action(),
            LinuxSeccompAction::ScmpActErrno | LinuxSeccompAction::ScmpActTrace
        )
    {
        warn(
            format!("{rf}.errnoRet"),
            "is ignored for this action; fix: remove it or use SCMP_ACT_ERRNO".into(),
        )?;
    }
    let conds: Vec<ScmpArgCompare> = rule
        .args()
        .iter()
        .flatten()
        .map(|a| {
            let (op, datum) = match a.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => {
                    (map_op(a.op(), a.value()), a.value_two().unwrap_or(0))
                }
                other => (map_op(other, a.value()), a.value()),
            };
            ScmpArgCompare::new(a.index() as u32, op, datum)
        })
        .collect();
    for (k, a) in rule.args().iter().flatten().enumerate() {
        if a.op() != LinuxSeccompOperator::ScmpCmpMaskedEq && a.value_two().is_some() {
            warn(
                format!("{rf}.args[{k}].valueTwo"),
                "is only used with SCMP_CMP_MASKED_EQ and is ignored here; fix: remove it".into(),
            )?;
        }
    }

    for (j, name) in rule.names().iter().enumerate() {
        let nf = format!("{rf}.names[{j}]");
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            warn(
                nf,
                format!("unknown syscall `{name}` (libseccomp does not know it); fix: correct the name or remove it"),
            )?;
            continue;
        };
        // Known to libseccomp but not on any ABI in this filter: nothing to do.
        let present = arches.iter().any(|&arch| {
            ScmpSyscall::from_name_by_arch(name, arch)
                .map(|s| s.as_raw_syscall() >= 0)
                .unwrap_or(false)
        });
        if !present {
            continue;
        }
        if action == default {
            // libseccomp rejects rules whose action equals the default action. An
            // unconditional one is a no-op anyway; a conditional one would only
            // matter against a catch-all rule, so say so.
            if !conds.is_empty() {
                warn(
                    nf,
                    format!("conditional rule for `{name}` has the default action and is dropped (libseccomp cannot express it); fix: give the catch-all rule for `{name}` a narrower condition"),
                )?;
            }
            continue;
        }
        let s = seen.entry(name.clone()).or_default();
        if conds.is_empty() {
            if let Some((prev, pf)) = &s.unconditional {
                if *prev != action {
                    warn(
                        nf.clone(),
                        format!("`{name}` already has an unconditional rule with a different action in {pf}; libseccomp keeps only one; fix: list it once"),
                    )?;
                }
            } else {
                s.unconditional = Some((action, nf.clone()));
            }
        } else {
            s.conditional.push((action, nf.clone()));
        }
        let res = if conds.is_empty() {
            ctx.add_rule(action, syscall)
        } else {
            ctx.add_rule_conditional(action, syscall, &conds)
        };
        res.map_err(|e| {
            lib_err(
                nf,
                &e,
                &format!("check the action and args of {rf} for `{name}`"),
            )
        })?;
    }
    Ok(())
}

/// libseccomp 2.5 has no in-memory export, so export into a memfd and read it back.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    let export_err = |what: &str, e: String| SeccompError::Libseccomp {
        file: NO_FILE.to_string(),
        field: "(export)".to_string(),
        message: format!("{what}: {e}"),
        hint: "check that memfd_create is available and memory is not exhausted".to_string(),
    };
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"jobcell-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(export_err(
            "memfd_create",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    // SAFETY: fd is a freshly created descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ctx.export_bpf(&fd)
        .map_err(|e| export_err("export_bpf", e.to_string()))?;
    let mut file = File::from(fd);
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| export_err("reading the exported filter", e.to_string()))?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// Installation
// ---------------------------------------------------------------------------

/// Installs the filter on the calling thread with `seccomp(SECCOMP_SET_MODE_FILTER)`.
///
/// Does not allocate or take locks, so it is safe in a forked child right before
/// `execve`. The caller must already have set no_new_privs (or hold CAP_SYS_ADMIN),
/// otherwise this fails with `EACCES`. The filter is inherited across fork and exec
/// and cannot be removed.
pub fn install(filter: &CompiledFilter) -> Result<(), nix::errno::Errno> {
    let prog = libc::sock_fprog {
        // from_bytes guarantees 1..=4096 instructions, so this fits in u16.
        len: filter.insns.len() as u16,
        filter: filter.insns.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at a live, correctly sized instruction array for the
    // duration of the call; the kernel copies it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &prog as *const libc::sock_fprog,
        )
    };
    nix::errno::Errno::result(ret).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("seccomp")
    }

    fn parse(text: &str) -> Result<LinuxSeccomp, SeccompError> {
        parse_profile(text, "test.json")
    }

    #[test]
    fn shipped_profiles_compile_strictly_without_warnings() {
        for name in ["default", "strict"] {
            let p = load_profile(&profile_dir().join(format!("{name}.json"))).unwrap();
            let (f, warnings) = compile(&p, true).unwrap();
            assert!(warnings.is_empty(), "{name}: {warnings:?}");
            assert!(f.len_instructions() > 10 && f.len_instructions() <= MAX_INSTRUCTIONS);
            eprintln!("{name}.json: {} BPF instructions", f.len_instructions());
        }
    }

    #[test]
    fn unknown_syscall_warns_or_errors_when_strict() {
        let p = parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpid","no_such_call"],"action":"SCMP_ACT_ERRNO"}]}"#).unwrap();
        let (_, w) = compile(&p, false).unwrap();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("syscalls[0].names[1]") && w[0].contains("no_such_call"),
            "{w:?}"
        );
        let e = compile(&p, true).unwrap_err().to_string();
        assert!(
            e.contains("syscalls[0].names[1]") && e.contains("no_such_call") && e.contains("fix:"),
            "{e}"
        );
    }

    #[test]
    fn invalid_json_names_file_and_position() {
        let e = parse("{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n ]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.json: line 2 column"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            (r#"{"defaultAction":"SCMP_ACT_NOPE"}"#, "defaultAction"),
            (
                r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":"38"}"#,
                "defaultErrnoRet",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":-1}"#,
                "defaultErrnoRet",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_Z80"]}"#,
                "architectures[0]",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":{}}"#,
                "syscalls",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":"read","action":"SCMP_ACT_ERRNO"}]}"#,
                "syscalls[0].names",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"]}]}"#,
                "syscalls[0].action",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoret":5}]}"#,
                "syscalls[0].errnoret",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1.5,"op":"SCMP_CMP_EQ"}]}]}"#,
                "syscalls[0].args[0].value",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
                "syscalls[0].args[0].index",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"EQ"}]}]}"#,
                "syscalls[0].args[0].op",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_EQ"},{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]}]}"#,
                "syscalls[0].args[1].index",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
                "syscalls[0].action",
            ),
            (r#"[]"#, "(top level)"),
        ];
        for (text, field) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("test.json: {field}: ")),
                "{text}\n=> {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn load_profile_reports_path() {
        let e = load_profile(Path::new("/nonexistent/x.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/x.json") && e.contains("fix:"),
            "{e}"
        );
    }

    #[test]
    fn notify_is_rejected_by_compile() {
        let p = LinuxSeccomp::default();
        let mut p2 = p.clone();
        p2.set_default_action(LinuxSeccompAction::ScmpActNotify);
        let e = compile(&p2, false).unwrap_err().to_string();
        assert!(e.contains("not supported by jobcell run"), "{e}");
    }

    #[test]
    fn shadowed_conditional_rule_is_reported() {
        let p = parse(r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,"syscalls":[
            {"names":["ioctl"],"action":"SCMP_ACT_ALLOW"},
            {"names":["ioctl"],"action":"SCMP_ACT_ERRNO","args":[{"index":1,"value":4294967295,"valueTwo":21522,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#).unwrap();
        let (_, w) = compile(&p, false).unwrap();
        assert!(
            w.iter()
                .any(|w| w.contains("overridden") && w.contains("syscalls[1].names[0]")),
            "{w:?}"
        );
        assert!(compile(&p, true).is_err());
    }

    #[test]
    fn resolve_names_paths_and_unconfined() {
        let dirs = tempfile::tempdir().unwrap();
        let a = dirs.path().join("a");
        let b = dirs.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("p.json"), r#"{"defaultAction":"SCMP_ACT_LOG"}"#).unwrap();
        std::fs::write(b.join("p.json"), r#"{"defaultAction":"SCMP_ACT_TRAP"}"#).unwrap();
        std::fs::write(b.join("q.json"), r#"{"defaultAction":"SCMP_ACT_KILL"}"#).unwrap();
        let search = [a.clone(), b.clone()];
        assert!(resolve("unconfined", &search).unwrap().is_none());
        let p = resolve("p", &search).unwrap().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActLog);
        let q = resolve("q", &search).unwrap().unwrap();
        assert_eq!(q.default_action(), LinuxSeccompAction::ScmpActKill);
        let path = b.join("p.json");
        let p = resolve(path.to_str().unwrap(), &search).unwrap().unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActTrap);
        let e = resolve("missing", &search).unwrap_err().to_string();
        assert!(e.contains("missing.json") && e.contains("fix:"), "{e}");
        assert!(resolve("..", &search).is_err());
        assert!(resolve("", &search).is_err());
        let shipped = resolve("default", &[profile_dir()]).unwrap().unwrap();
        assert_eq!(shipped.default_errno_ret(), Some(38));
    }

    #[test]
    fn filter_bytes_round_trip() {
        let p = load_profile(&profile_dir().join("default.json")).unwrap();
        let (f, _) = compile(&p, true).unwrap();
        let g = CompiledFilter::from_bytes(f.as_bytes().to_vec()).unwrap();
        assert_eq!(f, g);
        assert_eq!(f.as_bytes().len(), f.len_instructions() * 8);
        assert!(CompiledFilter::from_bytes(vec![]).is_err());
        assert!(CompiledFilter::from_bytes(vec![0; 12]).is_err());
        assert!(matches!(
            CompiledFilter::from_bytes(vec![0; 8 * 4097]),
            Err(SeccompError::TooLarge(4097))
        ));
        // Deterministic output, so a cache keyed by a profile hash is sound.
        let (f2, _) = compile_uncached(&p, true).unwrap();
        assert_eq!(f, f2);
    }

    #[test]
    fn builtin_profiles_pass_every_check_of_a_user_file() {
        // resolve() trusts the built-in text (typed parse only); prove it would pass the full checks.
        for (name, text) in BUILTIN {
            let checked = parse_profile(text, name).unwrap();
            let fast = resolve(name, &[]).unwrap().unwrap();
            assert_eq!(checked, fast, "{name}");
            compile_uncached(&checked, true).unwrap();
        }
    }

    #[test]
    fn cache_entries_round_trip_and_reject_damage() {
        let p = resolve("default", &[]).unwrap().unwrap();
        let (f, _) = compile(&p, false).unwrap();
        let w = vec!["a: one".to_string(), "b: two".to_string()];
        let e = cache_entry(&f, &w);
        assert_eq!(split_cache_entry(e.clone()), Some((f.clone(), w)));
        assert_eq!(split_cache_entry(cache_entry(&f, &[])), Some((f, vec![])));
        assert_eq!(split_cache_entry(e[..e.len() - 3].to_vec()), None); // torn write
        assert_eq!(split_cache_entry(vec![255, 255, 255, 255, 1]), None);
        assert_eq!(split_cache_entry(vec![0, 0]), None);
    }

    #[test]
    fn filter_is_a_tree_not_a_list() {
        // With the linear layout the last listed syscall sits behind every other comparison; the tree keeps
        // any syscall within a few dozen instructions of the filter's start.
        let p = resolve("default", &[]).unwrap().unwrap();
        let (f, _) = compile_uncached(&p, false).unwrap();
        let jumps = f
            .as_bytes()
            .chunks(8)
            .filter(|i| u16::from_ne_bytes([i[0], i[1]]) == 0x15) // BPF_JMP|BPF_JEQ|BPF_K
            .count();
        let gt = f
            .as_bytes()
            .chunks(8)
            .filter(|i| matches!(u16::from_ne_bytes([i[0], i[1]]), 0x25 | 0x35)) // JGT / JGE
            .count();
        assert!(
            gt > 30,
            "expected range comparisons of a binary tree, got {gt} (and {jumps} JEQ)"
        );
    }

    #[test]
    fn compile_time_default_profile() {
        let p = load_profile(&profile_dir().join("default.json")).unwrap();
        let mut times: Vec<std::time::Duration> = (0..50)
            .map(|_| {
                let t = std::time::Instant::now();
                let r = compile_uncached(&p, false).unwrap();
                let d = t.elapsed();
                std::hint::black_box(r);
                d
            })
            .collect();
        times.sort();
        eprintln!(
            "compile(default.json): median {:?}, min {:?}, max {:?} over 50 runs",
            times[25], times[0], times[49]
        );
        let _ = compile(&p, false).unwrap();
        let t = std::time::Instant::now();
        let _ = compile(&p, false).unwrap();
        eprintln!("compile(default.json) memoised: {:?}", t.elapsed());
    }
}
