//! Shared test harness: builds the real guest ELFs once, runs the real `tender` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Builds every guest in `examples/` (release, as users build them) once per test process and
/// returns the path of the ELF `name`.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args(["build", "--release", "--workspace", "--bins"])
            .current_dir(workspace_root())
            .output()
            .expect("run cargo build for the guests");
        assert!(out.status.success(), "building the guests failed:\n{}", String::from_utf8_lossy(&out.stderr));
    });
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("release").join(name);
    assert!(path.is_file(), "guest ELF {} missing", path.display());
    path
}

/// Tests boot real VMs: without /dev/kvm they must fail, loudly, not pass.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("these tests need read-write access to /dev/kvm (run as root on a KVM host): {e}");
    }
}

pub fn tender() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tender"));
    c.stdin(Stdio::null());
    c
}

/// Runs tender with `args`; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = tender().args(args).output().expect("spawn tender");
    decode(out)
}

pub fn decode(out: Output) -> (i32, String, String) {
    use std::os::unix::process::ExitStatusExt;
    let code = out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A scratch directory removed at drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("tender-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The error output must be exactly one line starting with `tender: ` and containing `want`.
pub fn assert_one_error_line(stderr: &str, want: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr:?}");
    assert!(lines[0].starts_with("tender: "), "{stderr:?}");
    assert!(lines[0].contains(want), "expected {want:?} in {stderr:?}");
}
