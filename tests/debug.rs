//! `tender-debug --gdb`: real gdb against real guests. The CPL 0 path (KVM_SET_GUEST_DEBUG,
//! hardware breakpoints, single-step) is tested on a raw ELF that never leaves CPL 0; the
//! cooperative CPL 3 path on `examples/gdbtarget` built with the `debug-guest` profile.

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
        let out = self
            .gdb_command(elf, commands)
            .output()
            .expect("gdb is needed for these tests (scripts/test.sh installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The system call tender-debug is in (`/proc/PID/syscall`): 0 (`read`) while it serves gdb.
    fn syscall(&self) -> Option<String> {
        let s = std::fs::read_to_string(format!("/proc/{}/syscall", self.child.id())).ok()?;
        s.split_whitespace().next().map(str::to_string)
    }

    /// Waits (bounded) until tender-debug runs the guest: in neither `read` (serving gdb) nor
    /// `accept4`, and still so a moment later (not a passing step between two of gdb's packets).
    fn wait_until_running(&self) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let running = || !matches!(self.syscall().as_deref(), Some("0") | Some("288"));
        loop {
            if running() {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if running() {
                    return true;
                }
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// gdb with `commands`, where each `continue` is ended by a Ctrl-C (SIGINT to gdb, which sends
    /// gdb's interrupt) once gdb is about to resume and the guest runs (computing, or waiting in
    /// POLL); a `c` resumes without one (to run to a breakpoint first).
    fn gdb_interrupting(&self, elf: &std::path::Path, commands: &[&str]) -> String {
        // gdb -batch prints no "Continuing.": an `echo` before each `continue` marks the moment.
        const MARK: &str = "resuming for a Ctrl-C";
        let echo = format!("echo {MARK}\\n");
        let marked: Vec<&str> =
            commands.iter().flat_map(|c| if *c == "continue" { vec![echo.as_str(), *c] } else { vec![*c] }).collect();
        let mut child = self
            .gdb_command(Some(elf), &marked)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gdb is needed for these tests");
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let reader = {
            let printed = printed.clone();
            let mut stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    printed.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let interrupts = commands.iter().filter(|c| **c == "continue").count();
        for i in 1..=interrupts {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while printed.lock().unwrap().matches(MARK).count() < i {
                if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if !self.wait_until_running() {
                eprintln!("continue {i}: tender-debug is in syscall {:?}", self.syscall());
                break;
            }
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        // A gdb still waiting (a stop that never came) must not hang the test.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        reader.join().unwrap();
        let stdout = printed.lock().unwrap().clone();
        stdout + &String::from_utf8_lossy(&out.stderr)
    }

    fn gdb_command(&self, elf: Option<&std::path::Path>, commands: &[&str]) -> Command {
        let mut cmd = Command::new("gdb");
        cmd.args(["-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", "set confirm off"]);
        if let Some(elf) = elf {
            cmd.arg("-ex").arg(format!("file {}", elf.display()));
        }
        cmd.arg("-ex").arg(format!("target remote 127.0.0.1:{}", self.port));
        for c in commands {
            cmd.args(["-ex", c]);
        }
        cmd.stdin(Stdio::null());
        cmd
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
fn gdb_is_refused_in_process_mode() {
    let out = Command::new(tender_debug()).args(["--gdb=0", "--mode=process"]).arg(guest("hello")).output().unwrap();
    let (code, out, err) = decode(out);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_one_error_line(&err, "--gdb is not available with --mode=process");
}

#[test]
fn tender_debug_without_gdb_runs_as_tender() {
    require_kvm();
    let out = Command::new(tender_debug()).arg(guest("hello")).output().unwrap();
    let (code, out, err) = decode(out);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hello, world!"));
    let help = Command::new(tender_debug()).arg("--help").output().unwrap();
    let (code, text, _) = decode(help);
    assert_eq!(code, 0);
    assert!(text.contains("--gdb[=PORT]") && text.contains("--gdb-port=N"), "{text}");
}

/// `examples/gdbtarget` with symbols and frame info.
fn gdbtarget() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| debug_guest("gdbtarget")).clone()
}

#[test]
fn cpl3_break_stepi_memory_set_var_bt_and_continue_to_exit() {
    let elf = gdbtarget();
    let d = Debuggee::start(&[elf.to_str().unwrap()]);
    let out = d.gdb(
        Some(&elf),
        &[
            "set var gdbtarget::ANSWER = 99",
            "break gdbtarget::step",
            "continue",
            "info registers rip cs",
            "stepi",
            "info registers rip",
            "x/4bx gdbtarget::step",
            "bt",
            "watch gdbtarget::ANSWER",
            "continue",
            "delete",
            "continue",
        ],
    );
    let rip_at = |line: &str| -> u64 {
        out.lines()
            .filter(|l| l.starts_with("rip "))
            .nth(if line == "break" { 0 } else { 1 })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| panic!("no rip in:\n{out}"))
    };
    assert!(out.contains("Breakpoint 1, "), "{out}");
    assert!(out.contains("<gdbtarget::step>"), "stopped at the function's first instruction:\n{out}");
    assert!(out.contains("cs             0x23"), "at CPL 3:\n{out}");
    assert!(rip_at("stepi") > rip_at("break"), "stepi moves rip:\n{out}");
    assert!(out.contains("<gdbtarget::step>:\t0x"), "x/4bx reads the function's bytes:\n{out}");
    assert!(!out.contains("<gdbtarget::step>:\t0xcc"), "gdb never sees its own int3:\n{out}");
    assert!(out.contains("gdbtarget::main ()"), "bt shows the caller:\n{out}");
    assert!(out.contains("Could not insert hardware watchpoint 2"), "refused for a guest that registered:\n{out}");
    assert!(out.contains("exited with code 0144"), "99 + 1 = 100 (octal 0144):\n{out}");
    let (code, stdout, err) = d.wait();
    assert_eq!(code, 100, "{err}");
    assert_eq!(stdout, "answer: 100\n", "set var changed what the guest prints");
}

#[test]
fn cpl3_kill_gives_1() {
    let elf = gdbtarget();
    let d = Debuggee::start(&[elf.to_str().unwrap()]);
    d.gdb(Some(&elf), &["break gdbtarget::step", "continue", "kill"]);
    let (code, out, err) = d.wait();
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.ends_with("tender: guest killed by the debugger\n"), "{err}");
}

#[test]
fn ctrl_c_stops_a_busy_guest_and_one_waiting_in_poll_and_both_resume() {
    let elf = gdbtarget();
    for mode in ["busy", "poll"] {
        let d = Debuggee::start(&[elf.to_str().unwrap(), mode]);
        // First to main (at CPL 3; an interrupt during `_start` would stop at CPL 0).
        let mut commands =
            vec!["tbreak gdbtarget::main", "c", "continue", "info registers cs", "shell sleep 1", "continue"];
        commands.extend(["bt 1", "x/i $pc"]);
        commands.extend(["stepi", "x/i $pc"].repeat(5));
        commands.push("kill");
        let out = d.gdb_interrupting(&elf, &commands);
        assert_eq!(out.matches("Program received signal SIGINT").count(), 2, "{mode}: stopped twice:\n{out}");
        assert!(out.contains("cs             0x23"), "{mode}: interrupted at CPL 3:\n{out}");
        assert!(out.contains("gdbtarget::main ()"), "{mode}:\n{out}");
        // Each stepi moves on by one instruction; a step over the POLL's `out` (whose trap KVM
        // loses) stops right after it, at the hypercall's exit.
        let pcs: Vec<(u64, &str)> = out
            .lines()
            .filter_map(|l| l.strip_prefix("=> 0x"))
            .filter_map(|l| {
                let (addr, rest) = l.split_once(' ')?;
                Some((u64::from_str_radix(addr, 16).ok()?, rest.split_once(":\t")?.1))
            })
            .collect();
        assert_eq!(pcs.len(), 6, "{mode}:\n{out}");
        assert!(pcs.windows(2).all(|w| w[0].0 != w[1].0), "{mode}: every stepi moved:\n{out}");
        let outs: Vec<_> = pcs.windows(2).filter(|w| w[0].1.starts_with("out ")).collect();
        assert!(outs.iter().all(|w| w[1].0 == w[0].0 + 1), "{mode}: stopped right after the out:\n{out}");
        if mode == "poll" {
            assert!(!outs.is_empty(), "the POLL loop steps over its out:\n{out}");
        }
        let (code, _, err) = d.wait();
        assert_eq!(code, 1, "{mode}: {err}");
    }
}

/// The debug port under --gdb with forged areas: the run ends as for any bad port access.
#[test]
fn forged_debug_areas_end_the_run() {
    let dir = TempDir::new("gdb-forged");
    for (tag, area) in [("outside", 0xffff_ff00u32), ("no-magic", 0x10_0100), ("read-only", 0x10_0000)] {
        let a = area.to_le_bytes();
        let code = [0xb8, a[0], a[1], a[2], a[3], 0x66, 0xba, 0x04, 0x06, 0xef, 0xeb, 0xfe];
        let mut padded = code.to_vec();
        padded.resize(0x200, 0);
        let elf = dir.file(tag, &raw_kernel(&padded, &[]));
        let d = Debuggee::start(&["--mem=8", elf.to_str().unwrap()]);
        d.gdb(None, &["continue"]);
        let (code, _, err) = d.wait();
        assert_eq!(code, 1, "{tag}: {err}");
        assert!(err.contains("Invalid guest port access: port=0x604"), "{tag}: {err}");
    }
}
