//! TEMPORARY local stand-in for the seccomp compiler (replaced by the seccomp branch; not committed).
use libseccomp::*;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction};
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
pub enum SeccompError { #[error("seccomp: {0}")] Msg(String) }
#[derive(Debug, Clone)]
pub struct CompiledFilter { bytes: Vec<u8> }
impl CompiledFilter { pub fn as_bytes(&self) -> &[u8] { &self.bytes } }
pub fn resolve(spec: &str, dirs: &[PathBuf]) -> Result<Option<LinuxSeccomp>, SeccompError> {
    if spec == "unconfined" { return Ok(None); }
    let _ = dirs;
    let p = if spec.contains('/') { PathBuf::from(spec) } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("seccomp").join(format!("{spec}.json")) };
    let t = std::fs::read_to_string(&p).map_err(|e| SeccompError::Msg(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&t).map(Some).map_err(|e| SeccompError::Msg(format!("{}: {e}", p.display())))
}
fn act(a: LinuxSeccompAction, e: Option<u32>) -> ScmpAction { match a { LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow, LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(e.unwrap_or(1) as i32), _ => ScmpAction::KillProcess } }
pub fn compile(p: &LinuxSeccomp, _strict: bool) -> Result<(CompiledFilter, Vec<String>), SeccompError> {
    let m = |e: libseccomp::error::SeccompError| SeccompError::Msg(e.to_string());
    let mut ctx = ScmpFilterContext::new(act(p.default_action(), p.default_errno_ret())).map_err(m)?;
    ctx.set_ctl_nnp(false).map_err(m)?;
    for s in p.syscalls().as_deref().unwrap_or_default() {
        for n in s.names() { if let Ok(sc) = ScmpSyscall::from_name(n) {
            let conds: Vec<ScmpArgCompare> = s.args().as_deref().unwrap_or_default().iter().map(|a| { let op = match a.op() { oci_spec::runtime::LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()), oci_spec::runtime::LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual, _ => ScmpCompareOp::Equal }; ScmpArgCompare::new(a.index() as u32, op, a.value_two().unwrap_or(a.value())) }).collect();
            let _ = if conds.is_empty() { ctx.add_rule(act(s.action(), s.errno_ret()), sc) } else { ctx.add_rule_conditional(act(s.action(), s.errno_ret()), sc, &conds) };
        } }
    }
    let (r, w) = nix::unistd::pipe().unwrap();
    ctx.export_bpf(&w).map_err(m)?; drop(w);
    let mut bytes = Vec::new(); use std::io::Read; std::fs::File::from(r).read_to_end(&mut bytes).unwrap();
    Ok((CompiledFilter { bytes }, vec![]))
}
pub fn install(f: &CompiledFilter) -> Result<(), nix::errno::Errno> {
    let prog = libc::sock_fprog { len: (f.bytes.len() / 8) as u16, filter: f.bytes.as_ptr() as *mut libc::sock_filter };
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 1, 0, &prog as *const _) };
    if r == 0 { Ok(()) } else { Err(nix::errno::Errno::last()) }
}
pub fn compile_cached(p: &LinuxSeccomp, strict: bool) -> Result<(CompiledFilter, Vec<String>), SeccompError> { compile(p, strict) }
