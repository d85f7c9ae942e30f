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
        ("syscall-mprotect", &victim),
        ("syscall-sigaltstack", &victim),
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

/// A guest's own `pwrite64` on the block file's fd lands only inside the file: the filter
/// checks count and offset against the file's size (docs/SECCOMP.md), so a write at or across
/// the end kills tender with SIGSYS and the file keeps its size and contents.
#[test]
fn direct_block_writes_stay_inside_the_file() {
    const SIZE: usize = 64 << 10;
    let dir = TempDir::new("process-pwrite");
    let img = dir.file("disk.img", &[0u8; SIZE]);
    let hostile = guest("hostile");
    let attach = format!("--block:storage={}", img.display());
    let pwrite = |fd: u32, offset: usize| {
        let args =
            ["--mem=32", &attach, hostile.to_str().unwrap(), "syscall-pwrite", &fd.to_string(), &offset.to_string()];
        run_process(&args)
    };
    // The block file's fd is the one where an in-bounds write is let through (every other fd
    // is SIGSYS): tender opens its files in the same order on every run.
    let last = SIZE - 512;
    let fd = (3..32)
        .find(|&fd| pwrite(fd, last).1.contains(&format!("syscall-pwrite {fd} {last} returned 512")))
        .expect("an in-bounds pwrite64 on the block file's fd is allowed");
    let mut want = vec![0u8; SIZE];
    want[last..].fill(0xAA);
    assert_eq!(std::fs::read(&img).unwrap(), want, "the allowed write landed in the last block");
    for offset in [SIZE, SIZE - 256, SIZE + 512, 1 << 40, usize::MAX] {
        let (code, out, err) = pwrite(fd, offset);
        assert_eq!(code, 128 + libc::SIGSYS, "pwrite at {offset}: {out}{err}");
        assert!(!out.contains("returned"), "{out}");
    }
    assert_eq!(std::fs::read(&img).unwrap(), want, "the file kept its size and contents");
}

/// The guest shares tender's address space: the command line and environment tender was
/// started with are wiped before it runs (what /proc/PID/cmdline and environ show is that
/// memory).
#[test]
fn command_line_and_environment_are_wiped() {
    let mut cmd = process_tender();
    cmd.env("TENDER_TEST_SECRET", "s3cret-env-value");
    cmd.args(["--mem=16", guest("hello").to_str().unwrap(), "time", "10000", "s3cret-arg-value"]);
    let guest = Running::spawn(cmd);
    let proc = format!("/proc/{}", guest.pid());
    let mut seen = (Vec::new(), Vec::new());
    for _ in 0..100 {
        let filtered = std::fs::read_to_string(format!("{proc}/status")).unwrap_or_default().contains("Seccomp:\t2");
        seen = (
            std::fs::read(format!("{proc}/cmdline")).unwrap_or_default(),
            std::fs::read(format!("{proc}/environ")).unwrap_or_default(),
        );
        if filtered {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out, err) = guest.stop();
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("cmdline: time 10000 s3cret-arg-value"), "the guest still got its arguments: {out}");
    let (cmdline, environ) = (String::from_utf8_lossy(&seen.0), String::from_utf8_lossy(&seen.1));
    assert!(cmdline.starts_with("tender"), "{cmdline:?}");
    for secret in ["s3cret", "--mem", "hello", "TENDER_TEST_SECRET", "PATH="] {
        assert!(!cmdline.contains(secret) && !environ.contains(secret), "{secret}: {cmdline:?} {environ:?}");
    }
    assert!(environ.bytes().all(|b| b == 0), "{environ:?}");
}

/// Under KVM the same attacks never reach the host: `syscall` is an invalid opcode in a guest that
/// never enabled it (VMX), or enters the guest's own LSTAR, 0, and page-faults (KVM-PVM here);
/// either way guest-rt reports the trap, status 255.
#[test]
fn direct_system_calls_are_ud_under_kvm() {
    if kvm_only("`syscall` in a KVM guest") {
        return;
    }
    let dir = TempDir::new("kvm-syscalls");
    let img = dir.file("disk.img", &[0u8; 64 << 10]);
    let attach = format!("--block:storage={}", img.display());
    let (code, out, err) = run(&["--mem=32", &attach, guest("hostile").to_str().unwrap(), "syscall-exit"]);
    assert_eq!(code, 255, "{out}{err}");
    assert!(out.contains("#UD") || out.contains("#PF") && out.contains("rip=0x0 "), "{out}");
}
