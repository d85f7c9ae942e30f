//! `tender-debug --gdb`: real gdb against real guests. The CPL 0 path (KVM_SET_GUEST_DEBUG,
//! hardware breakpoints, single-step) is tested on a raw ELF that never leaves CPL 0.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::*;

/// Built with the guests (`cargo build --release --workspace --bins`).
fn tender_debug() -> PathBuf {
    guest("tender-debug")
}

/// A tender-debug waiting for gdb; killed at drop if still running.
struct Debuggee {
    child: Child,
    port: u16,
    first_line: String,
}

impl Debuggee {
    fn start(args: &[&str]) -> Self {
        require_kvm();
        let mut child = Command::new(tender_debug())
            .arg("--gdb=0")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tender-debug");
        let mut first_line = String::new();
        BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut first_line).unwrap();
        let port = first_line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {first_line:?}"));
        Debuggee { child, port, first_line }
    }

    /// Runs gdb in batch mode with `commands` (after connecting); returns what it printed.
    fn gdb(&self, elf: Option<&std::path::Path>, commands: &[&str]) -> String {
        let mut cmd = Command::new("gdb");
        cmd.args(["-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", "set confirm off"]);
        if let Some(elf) = elf {
            cmd.arg("-ex").arg(format!("file {}", elf.display()));
        }
        cmd.arg("-ex").arg(format!("target remote 127.0.0.1:{}", self.port));
        for c in commands {
            cmd.args(["-ex", c]);
        }
        let out =
            cmd.stdin(Stdio::null()).output().expect("gdb is needed for these tests (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Waits (bounded) for tender-debug to end: (status, stdout, rest of stderr).
    fn wait(mut self) -> (i32, String, String) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "tender-debug did not end");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut out = String::new();
        let mut err = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let (code, _, _) =
            decode(std::process::Output { status: self.child.wait().unwrap(), stdout: vec![], stderr: vec![] });
        (code, out, err)
    }
}

impl Drop for Debuggee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// At CPL 0 from its first instruction: eax = 1 + 2, ebx = eax, then HALT with status 7.
fn cpl0_guest(dir: &TempDir) -> PathBuf {
    let mut code: Vec<u8> = [
        &[0xb8, 1, 0, 0, 0][..], // 0x100000 mov eax, 1
        &[0x83, 0xc0, 0x02],     // 0x100005 add eax, 2
        &[0x89, 0xc3],           // 0x100008 mov ebx, eax
        &[0xba, 0x08, 5, 0, 0],  // 0x10000a mov edx, 0x508 (HALT)
        &[0xb8, 0, 1, 0x10, 0],  // 0x10000f mov eax, 0x100100
        &[0xef],                 // 0x100014 out dx, eax
        &[0xeb, 0xfe],           // 0x100015 jmp .
    ]
    .concat();
    code.resize(0x100, 0x90);
    code.extend_from_slice(&0u64.to_le_bytes()); // HcHalt: no cookie,
    code.extend_from_slice(&7u32.to_le_bytes()); // status 7
    code.extend_from_slice(&0u32.to_le_bytes());
    dir.file("cpl0", &raw_kernel(&code, &[]))
}

#[test]
fn cpl0_hardware_breakpoint_stepi_registers_memory_and_exit() {
    let dir = TempDir::new("gdb-cpl0");
    let elf = cpl0_guest(&dir);
    let d = Debuggee::start(&["--mem=8", elf.to_str().unwrap()]);
    assert!(d.first_line.starts_with("tender-debug: waiting for gdb on 127.0.0.1:"), "{}", d.first_line);
    let out = d.gdb(
        None,
        &[
            "info registers rip",
            "break *0x100008",
            "continue",
            "info registers rip rax",
            "stepi",
            "info registers rip rbx",
            "x/4bx 0x100000",
            "continue",
        ],
    );
    assert!(out.contains("rip            0x100000"), "stopped before the first instruction:\n{out}");
    assert!(out.contains("Breakpoint 1, 0x0000000000100008"), "{out}");
    assert!(out.contains("rax            0x3"), "{out}");
    assert!(out.contains("rip            0x10000a"), "stepi moved rip by one instruction:\n{out}");
    assert!(out.contains("rbx            0x3"), "{out}");
    assert!(out.contains("0x100000:\t0xb8\t0x01\t0x00\t0x00"), "{out}");
    assert!(out.contains("exited with code 07"), "{out}");
    let (code, _, err) = d.wait();
    assert_eq!(code, 7, "{err}");
}

#[test]
fn cpl0_at_most_four_hardware_breakpoints() {
    let dir = TempDir::new("gdb-cpl0-five");
    let elf = cpl0_guest(&dir);
    let d = Debuggee::start(&["--mem=8", elf.to_str().unwrap()]);
    let out = d.gdb(
        None,
        &[
            "break *0x100005",
            "break *0x100008",
            "break *0x10000a",
            "break *0x10000f",
            "break *0x100014",
            "continue",
            "kill",
        ],
    );
    assert!(out.contains("Cannot insert breakpoint"), "a fifth breakpoint is refused:\n{out}");
    let (code, _, err) = d.wait();
    assert!(err.contains("at most 4 breakpoints and watchpoints in all"), "{err}");
    assert_eq!(code, 1);
}

#[test]
fn kill_ends_the_run_with_1_and_detach_lets_it_run_on() {
    let dir = TempDir::new("gdb-kill");
    let elf = cpl0_guest(&dir);
    let d = Debuggee::start(&["--mem=8", elf.to_str().unwrap()]);
    d.gdb(None, &["kill"]);
    let (code, out, err) = d.wait();
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_one_error_line(&err, "tender: guest killed by the debugger");

    let d = Debuggee::start(&["--mem=8", elf.to_str().unwrap()]);
    d.gdb(None, &["break *0x100008", "detach"]);
    let (code, _, err) = d.wait();
    assert_eq!(code, 7, "after detach the guest runs to its own end: {err}");

    // A connection that is simply lost (gdb killed) is a detach too.
    let d = Debuggee::start(&["--mem=8", elf.to_str().unwrap()]);
    let mut gdb = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set architecture i386:x86-64"])
        .arg("-ex")
        .arg(format!("target remote 127.0.0.1:{}", d.port))
        .args(["-ex", "shell kill -9 $PPID"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = gdb.wait();
    let (code, _, err) = d.wait();
    assert_eq!(code, 7, "{err}");
}

#[test]
fn malformed_packets_never_panic() {
    use std::io::Write;
    let dir = TempDir::new("gdb-garbage");
    let elf = cpl0_guest(&dir);
    let d = Debuggee::start(&["--mem=8", elf.to_str().unwrap()]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", d.port)).unwrap();
    for junk in [&b"$m#00"[..], b"$Z0,zz,1#12", b"$mffffffffffffffff,ffff#00", b"\xff\xfe$$$###", b"$g#67", b"$D#44"] {
        let _ = s.write_all(junk);
    }
    drop(s);
    let (code, _, err) = d.wait();
    assert_eq!(code, 7, "junk, then a lost connection: the guest runs to its end: {err}");
}

#[test]
fn tender_itself_has_no_gdb_stub() {
    let (code, out, err) = run(&["--gdb", "x"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_one_error_line(&err, "the GDB stub is in tender-debug, not tender");
}

#[test]
fn tender_debug_without_gdb_runs_as_tender() {
    require_kvm();
    let out = Command::new(tender_debug()).arg(guest("hello")).output().unwrap();
    let (code, out, err) = decode(out);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hello, world!"));
}
