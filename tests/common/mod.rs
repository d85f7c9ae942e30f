//! Shared test harness: builds the real guest ELFs once, runs the real `tender` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Where cargo puts what it builds: the directory above this test binary's profile directory
/// (`target/release/deps/boot-…` → `target`), which also honours `CARGO_TARGET_DIR`.
fn target_dir() -> PathBuf {
    profile_dir().parent().expect("target directory").to_path_buf()
}

/// `target/<profile>` of this test binary (`release` under `cargo test --release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent().and_then(Path::parent).expect("profile directory of the test binary").to_path_buf()
}

/// Runs `cargo build ARGS` in the workspace; a failure fails the test with cargo's output.
fn cargo_build(args: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .arg("build")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Builds every guest in `examples/` (release, as users build them) once per test process and
/// returns the path of the ELF `name`.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| cargo_build(&["--release", "--workspace", "--bins"]));
    let path = target_dir().join("release").join(name);
    assert!(path.is_file(), "guest ELF {} missing", path.display());
    path
}

/// `TENDER_MODE=process` (scripts/test.sh's second pass) runs every guest with
/// `--mode=process`: the same suites, without KVM.
pub fn process_mode() -> bool {
    std::env::var("TENDER_MODE").is_ok_and(|m| m == "process")
}

/// For tests of what only a KVM run has: guest code at CPL 0 (guest-rt's own start, raw CPL 0
/// ELFs), VM exits (HLT, triple fault, MMIO), the vCPU's registers. Under `TENDER_MODE=process`
/// it says why the test is skipped and returns true (the caller returns); otherwise it requires
/// /dev/kvm and returns false. Every use is listed in docs/PROCESS_MODE.md ("KVM-only tests").
pub fn kvm_only(why: &str) -> bool {
    if process_mode() {
        eprintln!("skipped under TENDER_MODE=process (KVM only): {why}");
        return true;
    }
    require_kvm();
    false
}

/// The guest `name` built with the `debug-guest` profile (symbols and frame info, for gdb).
pub fn debug_guest(name: &str) -> PathBuf {
    cargo_build(&["--profile", "debug-guest", "-p", name]);
    target_dir().join("debug-guest").join(name)
}

/// Tests boot real VMs: without /dev/kvm they must fail, loudly, not pass. In process mode they
/// need no KVM.
pub fn require_kvm() {
    if process_mode() {
        return;
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        panic!("these tests need read-write access to /dev/kvm (run as root on a KVM host): {e}");
    }
}

/// The tender under test: `TENDER_BIN` when set (scripts/test.sh runs the end-to-end suites
/// again against the static build that way); otherwise the workspace's own, built once per test
/// process for the profile of this test binary, so that `cargo test --workspace` works in debug
/// and in release alike.
pub fn tender_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("TENDER_BIN") {
                let bin = PathBuf::from(bin);
                assert!(bin.is_file(), "TENDER_BIN={} is not a file", bin.display());
                return bin;
            }
            let profile = profile_dir();
            match profile.file_name().and_then(|n| n.to_str()) {
                Some("release") => cargo_build(&["--release", "-p", "tender", "--bin", "tender"]),
                Some("debug") => cargo_build(&["-p", "tender", "--bin", "tender"]),
                other => panic!("test binary in an unknown profile directory {other:?}: set TENDER_BIN"),
            }
            profile.join("tender")
        })
        .clone()
}

/// Lets the child `cmd` starts inherit `fd` (as `@FD` options expect).
pub fn inherit_fd(cmd: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: between fork and exec the child only clears FD_CLOEXEC on an fd it inherited.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
}

/// tender-oci, built for this test binary's profile, beside the tender it runs (a `TENDER_BIN`
/// elsewhere is not used: tender-oci runs the tender in its own directory).
pub fn tender_oci_path() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile = profile_dir();
            match profile.file_name().and_then(|n| n.to_str()) {
                Some("release") => cargo_build(&["--release", "-p", "tender", "-p", "tender-oci", "--bins"]),
                _ => cargo_build(&["-p", "tender", "-p", "tender-oci", "--bins"]),
            }
            profile.join("tender-oci")
        })
        .clone()
}

pub fn tender() -> Command {
    let mut c = Command::new(tender_path());
    c.stdin(Stdio::null());
    if process_mode() {
        c.arg("--mode=process");
    }
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

/// A network namespace with tap devices, created for one test and removed at drop. Traffic
/// stays inside it: the guest and the host side of each tap both live there.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("tnd-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip ARGS` inside the namespace; panics on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name, "ip"];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Adds a tap `tap` with host address `addr` (CIDR) and the given MTU, and brings it up.
    pub fn tap(&self, tap: &str, addr: &str, mtu: u32) {
        self.ip(&["tuntap", "add", tap, "mode", "tap"]);
        self.ip(&["addr", "add", addr, "dev", tap]);
        self.ip(&["link", "set", tap, "mtu", &mtu.to_string()]);
        self.ip(&["link", "set", tap, "up"]);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).stdin(Stdio::null());
        c
    }

    /// tender inside the namespace (`TENDER_BIN` when set, as everywhere).
    pub fn tender(&self) -> Command {
        self.command(tender_path().to_str().expect("tender's path is UTF-8"))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Network tests need root (namespaces, taps): without it they fail, loudly.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "network tests need root (network namespaces and tap devices)");
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A running guest, killed at drop if still running.
pub struct Running {
    /// Taken by `wait`; still here at drop only if the test never waited.
    child: Option<std::process::Child>,
}

impl Running {
    pub fn spawn(mut cmd: Command) -> Self {
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn tender");
        Running { child: Some(child) }
    }

    /// A child spawned by the caller, with its stderr piped.
    pub fn from_child(child: std::process::Child) -> Self {
        Running { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// Sends SIGTERM and collects (code, stdout, stderr).
    pub fn stop(self) -> (i32, String, String) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        self.wait()
    }

    pub fn wait(mut self) -> (i32, String, String) {
        let child = self.child.take().expect("not waited for yet");
        decode(child.wait_with_output().expect("wait for tender"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `ping` to `addr` inside `ns` answers (the guest is up), for at most `secs`.
pub fn wait_for_ping(ns: &NetNs, addr: &str, secs: u32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(u64::from(secs));
    while std::time::Instant::now() < deadline {
        let ok = ns.command("ping").args(["-c", "1", "-W", "1", addr]).output().map(|o| o.status.success());
        if ok.unwrap_or(false) {
            return true;
        }
    }
    false
}

/// Waits until the guest's stack answers a UDP datagram to closed port 9 with ICMP port
/// unreachable, for at most `secs`. Unlike `wait_for_ping` it sends no echo request: a guest
/// run with `--count=N` counts every echo request it sees, including one the host queued behind
/// ARP while the guest booted and delivered after `ping` had given up.
pub fn wait_for_port_unreachable(ns: &NetNs, addr: &str, secs: u32) -> bool {
    let target = format!("{addr}:9");
    in_netns(ns, move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
        socket.connect(&target).expect("connect the UDP socket");
        socket.set_read_timeout(Some(std::time::Duration::from_millis(200))).expect("set a read timeout");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(u64::from(secs));
        let mut buf = [0u8; 16];
        while std::time::Instant::now() < deadline {
            let _ = socket.send(b"up?");
            if let Err(e) = socket.recv(&mut buf)
                && e.kind() == std::io::ErrorKind::ConnectionRefused
            {
                return true;
            }
        }
        false
    })
}

/// Runs `f` on a thread inside `ns`: sockets it creates live in the namespace.
pub fn in_netns<T: Send + 'static>(ns: &NetNs, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let nsfd = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns moves only this thread into the namespace.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&nsfd), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// A minimal hvt ELF around `code` (loaded at 0x100000, entered at CPL 0 as the ABI starts
/// every guest), with the ABI note and a manifest declaring `devices` (name, manifest type): for
/// tests that need CPL 0 or a manifest of their own, without guest-rt.
pub fn raw_kernel(code: &[u8], devices: &[(&str, u32)]) -> Vec<u8> {
    let le32 = |v: &[u32]| v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let abi_note: Vec<u8> =
        [le32(&[6, 16, guest_abi::NOTE_TYPE_ABI]), b"Solo5\0\0\0".to_vec(), le32(&[1, 2, 0, 0])].concat();
    let entries = devices.len() as u32 + 1;
    let mut mft_note: Vec<u8> = [
        le32(&[6, 4 + 8 + 104 * entries, guest_abi::NOTE_TYPE_MANIFEST]),
        b"Solo5\0\0\0".to_vec(),
        le32(&[0, 1, entries]),
    ]
    .concat();
    for (name, ty) in std::iter::once(&("", guest_abi::MFT_RESERVED_FIRST)).chain(devices) {
        let mut entry = vec![0u8; 104];
        entry[..name.len()].copy_from_slice(name.as_bytes());
        entry[68..72].copy_from_slice(&ty.to_le_bytes());
        mft_note.extend_from_slice(&entry);
    }
    let (abi_at, mft_at) = (0x100, 0x128);
    let code_at = (mft_at + mft_note.len()).next_multiple_of(0x1000);
    let mut f = vec![0u8; code_at];
    let put = |f: &mut Vec<u8>, at: usize, b: &[u8]| f[at..at + b.len()].copy_from_slice(b);
    // ELF header.
    put(&mut f, 0, b"\x7fELF\x02\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &0x10_0000u64.to_le_bytes()); // entry
    put(&mut f, 32, &64u64.to_le_bytes()); // phoff
    put(&mut f, 52, &64u16.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &3u16.to_le_bytes()); // phnum
    put(&mut f, abi_at, &abi_note);
    put(&mut f, mft_at, &mft_note);
    // Program headers: PT_LOAD (R+X) of the code, then the two PT_NOTEs.
    let phdr = |ty: u32, flags: u32, off: usize, vaddr: u64, size: usize, align: u64| -> Vec<u8> {
        let (off, size) = (off as u64, size as u64);
        [le32(&[ty, flags]), [off, vaddr, vaddr, size, size, align].iter().flat_map(|v| v.to_le_bytes()).collect()]
            .concat()
    };
    put(&mut f, 64, &phdr(1, 5, code_at, 0x10_0000, code.len(), 0x1000));
    put(&mut f, 120, &phdr(4, 4, abi_at, 0, abi_note.len(), 4));
    put(&mut f, 176, &phdr(4, 4, mft_at, 0, mft_note.len(), 8));
    f.extend_from_slice(code);
    f
}
