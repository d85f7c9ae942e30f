//! `--mode=process` (docs/PROCESS_MODE.md) where it differs from a KVM run: no /dev/kvm needed,
//! guest memory at its own addresses in tender's process, and the filter as the whole wall
//! against a guest that makes system calls itself. The suites that also run in this mode
//! (scripts/test.sh's `TENDER_MODE=process` pass) cover the rest.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// tender with `--mode=process`, whatever TENDER_MODE says.
fn process_tender() -> Command {
    let mut c = Command::new(tender_path());
    c.stdin(std::process::Stdio::null()).arg("--mode=process");
    c
}

fn run_process(args: &[&str]) -> (i32, String, String) {
    decode(process_tender().args(args).output().expect("spawn tender"))
}

fn require_root() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(unsafe { libc::getuid() }, 0, "this test needs root (mount namespaces)");
}

/// With /dev/kvm gone (an empty /dev in a throw-away mount namespace), a KVM run refuses to
/// start and a process-mode run works.
#[test]
fn runs_without_dev_kvm() {
    require_root();
    let hello = guest("hello");
    let script = "mount -t tmpfs none /dev && exec \"$@\"";
    let in_ns = |args: &[&str]| {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script, "sh"])
            .arg(tender_path())
            .args(args)
            .output()
            .expect("run unshare");
        decode(out)
    };
    let (code, out, err) = in_ns(&["--mode=kvm", hello.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_one_error_line(&err, "cannot open /dev/kvm");
    let (code, out, err) = in_ns(&["--mode=process", hello.to_str().unwrap(), "fail", "7"]);
    assert_eq!(code, 7, "{out}{err}");
    assert!(out.contains("Hello, world!") && out.contains("cmdline: fail 7"), "{out}");
    assert!(std::path::Path::new("/dev/kvm").exists(), "the host's /dev was not touched");
}

/// Guest memory is one mapping from 0x10000 to mem_size in tender's process, and the guest
/// runs under the filter.
#[test]
fn guest_memory_is_mapped_at_its_guest_addresses() {
    let mut cmd = process_tender();
    cmd.args(["--mem=16", guest("hello").to_str().unwrap(), "time", "10000"]);
    let guest = Running::spawn(cmd);
    let status = format!("/proc/{}/status", guest.pid());
    let maps = format!("/proc/{}/maps", guest.pid());
    let mut seen = String::new();
    for _ in 0..100 {
        seen = std::fs::read_to_string(&maps).unwrap_or_default();
        let filtered = std::fs::read_to_string(&status).unwrap_or_default().contains("Seccomp:\t2");
        if filtered && seen.lines().any(|l| l.starts_with("00010000-")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, _, err) = guest.stop();
    assert_eq!(code, 1, "{err}");
    // Text read+execute, the boot info page read-only, the rest read-write; nothing executable
    // and writable; nothing of the guest's below 0x10000 or above 16 MiB.
    let guest_lines: Vec<&str> = seen
        .lines()
        .filter(|l| u64::from_str_radix(l.split('-').next().unwrap_or(""), 16).is_ok_and(|a| a < 0x100_0000))
        .collect();
    assert!(guest_lines.first().is_some_and(|l| l.starts_with("00010000-00100000 r--p")), "{seen}");
    assert!(guest_lines.iter().any(|l| l.contains(" r-xp ")), "{seen}");
    assert!(guest_lines.iter().all(|l| !l.contains("wx")), "{seen}");
    assert!(guest_lines.last().is_some_and(|l| l.split(' ').next().unwrap().ends_with("-01000000")), "{seen}");
}

#[test]
fn mode_option_is_checked() {
    for (args, want) in [
        (&["--mode=qemu", "k"][..], "invalid --mode value 'qemu' (expected kvm or process)"),
        (&["--mode=process", "--dumpcore=/tmp", "k"][..], "--dumpcore is not available with --mode=process"),
    ] {
        let out = Command::new(tender_path()).args(args).output().expect("spawn tender");
        let (code, _, err) = decode(out);
        assert_eq!(code, 1);
        assert_one_error_line(&err, want);
    }
}

/// The guest's own system calls meet the filter: each call outside the allowlist kills tender
/// with SIGSYS (status 128 + 31), and nothing on the host changed.
#[test]
fn direct_system_calls_die_of_sigsys() {
    let dir = TempDir::new("process-syscalls");
    let img = dir.file("disk.img", &[0u8; 64 << 10]);
    let victim = dir.file("victim", b"host file");
    let created = dir.0.join("created");
    let hostile = guest("hostile");
    let attach = format!("--block:storage={}", img.display());
    for (attack, path) in [
        ("syscall-openat", &created),
        ("syscall-linkat", &victim),
        ("syscall-exit", &victim),
        ("syscall-rt_sigaction", &victim),
        ("syscall-mmap", &victim),
    ] {
        let (code, out, err) =
            run_process(&["--mem=32", &attach, hostile.to_str().unwrap(), attack, path.to_str().unwrap()]);
        assert_eq!(code, 128 + libc::SIGSYS, "{attack}: {out}{err}");
        assert!(!out.contains("returned"), "{attack}: {out}");
    }
    assert!(!created.exists(), "openat created no file");
    assert!(!dir.0.join("victim.link").exists(), "linkat made no link");
    assert_eq!(std::fs::read(&victim).unwrap(), b"host file");
    assert_eq!(std::fs::read(&img).unwrap(), vec![0u8; 64 << 10], "the block file is untouched");
}

/// Under KVM the same attacks never reach the host: `syscall` is an invalid opcode in a guest that
/// never enabled it (VMX), or enters the guest's own LSTAR, 0, and page-faults (KVM-PVM here);
/// either way guest-rt reports the trap, status 255.
#[test]
fn direct_system_calls_are_ud_under_kvm() {
    require_kvm();
    if process_mode() {
        return;
    }
    let dir = TempDir::new("kvm-syscalls");
    let img = dir.file("disk.img", &[0u8; 64 << 10]);
    let attach = format!("--block:storage={}", img.display());
    let (code, out, err) = run(&["--mem=32", &attach, guest("hostile").to_str().unwrap(), "syscall-exit"]);
    assert_eq!(code, 255, "{out}{err}");
    assert!(out.contains("#UD") || out.contains("#PF") && out.contains("rip=0x0 "), "{out}");
}
