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
    let out = Command::new(tender_path()).args(["--mode=qemu", "k"]).output().expect("spawn tender");
    let (code, _, err) = decode(out);
    assert_eq!(code, 1);
    assert_one_error_line(&err, "invalid --mode value 'qemu' (expected kvm or process)");
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

/// A raw CPL 0 guest that executes every instruction of Solo5's start-up and exit that process
/// mode emulates, as Solo5's hvt bindings do, with a real GDT (code 0x8, data 0x10, TSS 0x18)
/// and IDT at 2 MiB so that it also runs under KVM: `lgdt`, `lidt`, `push $8; lretq`, moves to
/// SS, DS and ES, `ltr`, `wrmsr` of FS_BASE (proved by reading `%fs:0`), then PUTS and HALT(7)
/// through `out`. HALT(9) if `%fs:0` is not what it stored.
#[rustfmt::skip]
const SOLO5_START: &[u8] = &[
    0x48, 0x83, 0xec, 0x40, // sub $0x40,%rsp: room for the CPU's read of a 32-byte far-return frame
    0xbb, 0x00, 0x00, 0x20, 0x00, // mov $0x200000,%ebx
    0x48, 0xc7, 0x03, 0x00, 0x00, 0x00, 0x00, // movq $0x0,(%rbx)
    0x48, 0xb8, 0xff, 0xff, 0x00, 0x00, 0x00, 0x9a, 0xaf, 0x00, // movabs $0xaf9a000000ffff,%rax
    0x48, 0x89, 0x43, 0x08, // mov %rax,0x8(%rbx)
    0x48, 0xb8, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, // movabs $0xcf92000000ffff,%rax
    0x48, 0x89, 0x43, 0x10, // mov %rax,0x10(%rbx)
    0x48, 0xb8, 0x67, 0x00, 0x00, 0x10, 0x20, 0x89, 0x00, 0x00, // movabs $0x892010000067,%rax (TSS at 0x201000)
    0x48, 0x89, 0x43, 0x18, // mov %rax,0x18(%rbx)
    0x48, 0xc7, 0x43, 0x20, 0x00, 0x00, 0x00, 0x00, // movq $0x0,0x20(%rbx)
    0x66, 0xc7, 0x83, 0x00, 0x01, 0x00, 0x00, 0x27, 0x00, // movw $0x27,0x100(%rbx)
    0x48, 0x89, 0x9b, 0x02, 0x01, 0x00, 0x00, // mov %rbx,0x102(%rbx)
    0x66, 0xc7, 0x83, 0x10, 0x01, 0x00, 0x00, 0xff, 0x0f, // movw $0xfff,0x110(%rbx)
    0x48, 0xc7, 0x83, 0x12, 0x01, 0x00, 0x00, 0x00, 0x20, 0x20, 0x00, // movq $0x202000,0x112(%rbx)
    0x0f, 0x01, 0x93, 0x00, 0x01, 0x00, 0x00, // lgdt 0x100(%rbx)
    0x0f, 0x01, 0x9b, 0x10, 0x01, 0x00, 0x00, // lidt 0x110(%rbx)
    0x6a, 0x08, // push $0x8
    0x48, 0x8d, 0x05, 0x03, 0x00, 0x00, 0x00, // lea 1f(%rip),%rax
    0x50, // push %rax
    0x48, 0xcb, // lretq
    0xb8, 0x10, 0x00, 0x00, 0x00, // 1: mov $0x10,%eax
    0x8e, 0xd0, // mov %eax,%ss
    0x8e, 0xd8, // mov %eax,%ds
    0x8e, 0xc0, // mov %eax,%es
    0xb8, 0x18, 0x00, 0x00, 0x00, // mov $0x18,%eax
    0x0f, 0x00, 0xd8, // ltr %ax
    0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // movabs $0x1122334455667788,%rax
    0x48, 0x89, 0x83, 0x00, 0x02, 0x00, 0x00, // mov %rax,0x200(%rbx)
    0x8d, 0x83, 0x00, 0x02, 0x00, 0x00, // lea 0x200(%rbx),%eax
    0x31, 0xd2, // xor %edx,%edx
    0xb9, 0x00, 0x01, 0x00, 0xc0, // mov $0xc0000100,%ecx
    0x0f, 0x30, // wrmsr
    0x64, 0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, // mov %fs:0x0,%rax
    0x48, 0xb9, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // movabs $0x1122334455667788,%rcx
    0x48, 0x39, 0xc8, // cmp %rcx,%rax
    0x75, 0x3b, // jne 2f
    0x48, 0x8d, 0x05, 0x55, 0x00, 0x00, 0x00, // lea msg(%rip),%rax
    0x48, 0x89, 0x83, 0x00, 0x03, 0x00, 0x00, // mov %rax,0x300(%rbx)
    0x48, 0xc7, 0x83, 0x08, 0x03, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, // movq $15,0x308(%rbx)
    0x8d, 0x83, 0x00, 0x03, 0x00, 0x00, // lea 0x300(%rbx),%eax
    0x66, 0xba, 0x02, 0x05, // mov $0x502,%dx
    0xef, // out %eax,(%dx): PUTS
    0x48, 0xc7, 0x83, 0x20, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // movq $0x0,0x320(%rbx)
    0xc7, 0x83, 0x28, 0x03, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, // movl $7,0x328(%rbx)
    0xeb, 0x15, // jmp 3f
    0x48, 0xc7, 0x83, 0x20, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 2: movq $0x0,0x320(%rbx)
    0xc7, 0x83, 0x28, 0x03, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, // movl $9,0x328(%rbx)
    0x8d, 0x83, 0x20, 0x03, 0x00, 0x00, // 3: lea 0x320(%rbx),%eax
    0x66, 0xba, 0x08, 0x05, // mov $0x508,%dx
    0xef, // out %eax,(%dx): HALT
    0xf4, // hlt
    b'c', b'p', b'l', b'0', b' ', b'l', b'i', b's', b't', b' ', b'd', b'o', b'n', b'e', b'\n', // msg
];

/// The privileged instructions of Solo5's start-up are emulated (the same raw ELF runs under
/// KVM, where they are the CPU's own).
#[test]
fn solo5_start_up_instructions_are_emulated() {
    let dir = TempDir::new("process-solo5-start");
    let elf = dir.file("cpl0", &raw_kernel(SOLO5_START, &[]));
    let (code, out, err) = run_process(&["--mem=4", elf.to_str().unwrap()]);
    assert_eq!((code, out.as_str(), err.as_str()), (7, "cpl0 list done\n", ""));
    if std::path::Path::new("/dev/kvm").exists() {
        let out = Command::new(tender_path()).args(["--mode=kvm", "--mem=4", elf.to_str().unwrap()]).output();
        let (code, out, err) = decode(out.expect("spawn tender"));
        assert_eq!((code, out.as_str(), err.as_str()), (7, "cpl0 list done\n", ""));
    }
}

/// Any other privileged instruction, a `wrmsr` of another MSR or of a non-canonical FS base, a
/// far return whose frame is not all in guest memory: the guest's CPU exception, status 255 and
/// tender's trap line at the instruction.
#[test]
fn other_privileged_instructions_are_guest_faults() {
    let dir = TempDir::new("process-privileged");
    let mov_ecx = |msr: u32| [&[0xb9][..], &msr.to_le_bytes()].concat();
    let cases: [(&str, Vec<u8>, u64); 7] = [
        ("cli", vec![0xfa], 0x100000),
        ("hlt", vec![0xf4], 0x100000),
        ("mov %rax,%cr3", vec![0x0f, 0x22, 0xd8], 0x100000),
        ("wrmsr GS_BASE", [mov_ecx(0xC000_0101), vec![0x0f, 0x30]].concat(), 0x100005),
        // mov $0x8000, %edx (FS base 0x8000_0000_0000: not canonical); wrmsr FS_BASE
        (
            "wrmsr FS_BASE non-canonical",
            [vec![0xba, 0x00, 0x80, 0x00, 0x00], mov_ecx(0xC000_0100), vec![0x0f, 0x30]].concat(),
            0x10000a,
        ),
        ("mov %eax,%fs", vec![0xb8, 0x10, 0, 0, 0, 0x8e, 0xe0], 0x100005),
        // At entry RSP = mem_size - 8: the frame's second half is the block ring's first bytes,
        // which the CPU reads, but which are not guest memory.
        ("lretq across mem_size", vec![0x48, 0xcb], 0x100000),
    ];
    let img = dir.file("disk.img", &[0u8; 4096]);
    let attach = format!("--block:storage={}", img.display());
    for (name, code, rip) in cases {
        let elf = dir.file("priv", &raw_kernel(&code, &[("storage", guest_abi::MFT_DEV_BLOCK_BASIC)]));
        let (status, out, err) = run_process(&["--mem=4", &attach, elf.to_str().unwrap()]);
        assert_eq!(status, 255, "{name}: {out}{err}");
        let want = format!("tender: guest aborted (status 255) on a CPU exception (vector 13): rip={rip:#x} ");
        assert!(err.starts_with(&want) && err.lines().count() == 1, "{name}: {err}");
    }
}

/// A guest that points its FS base at garbage (with `wrfsbase`, which user mode may run, or with
/// the emulated `wrmsr`) and then traps still gets tender's clean trap line: the handlers never
/// run tender's code with the guest's FS base.
#[test]
fn garbage_fs_base_then_trap_is_a_clean_trap_line() {
    let dir = TempDir::new("process-fs-garbage");
    // movabs $0x7fffdead0000,%rax
    let garbage = [&[0x48, 0xb8][..], &0x7fff_dead_0000u64.to_le_bytes()].concat();
    let cases: [(&str, Vec<u8>, u64); 2] = [
        // wrfsbase %rax; ud2
        ("wrfsbase", [garbage.clone(), vec![0xf3, 0x48, 0x0f, 0xae, 0xd0, 0x0f, 0x0b]].concat(), 0x10000f),
        // mov %rax,%rdx; shr $32,%rdx; mov $0xc0000100,%ecx; wrmsr; ud2
        (
            "wrmsr",
            [
                garbage,
                vec![0x48, 0x89, 0xc2, 0x48, 0xc1, 0xea, 0x20, 0xb9, 0x00, 0x01, 0x00, 0xc0, 0x0f, 0x30, 0x0f, 0x0b],
            ]
            .concat(),
            0x100018,
        ),
    ];
    for (name, code, rip) in cases {
        let elf = dir.file("fs", &raw_kernel(&code, &[]));
        let (status, out, err) = run_process(&["--mem=4", elf.to_str().unwrap()]);
        assert_eq!(status, 255, "{name}: {out}{err}");
        let want = format!("tender: guest aborted (status 255) on a CPU exception (vector 6): rip={rip:#x} ");
        assert!(err.starts_with(&want) && err.lines().count() == 1, "{name}: {err}");
    }
}

/// A raw guest that blocks every signal on its thread with a forged `rt_sigreturn` frame
/// (`ucontext` at 2 MiB: the alternate stack disabled, RIP at the spin loop, user CS and SS,
/// every signal in `uc_sigmask`), then spins.
#[rustfmt::skip]
const BLOCK_SIGNALS_AND_SPIN: &[u8] = &[
    0xbf, 0x00, 0x00, 0x20, 0x00, // mov $0x200000,%edi
    0xc7, 0x47, 0x18, 0x02, 0x00, 0x00, 0x00, // movl $SS_DISABLE,0x18(%rdi): uc_stack.ss_flags
    0x48, 0x8d, 0x05, 0x44, 0x00, 0x00, 0x00, // lea 1f(%rip),%rax
    0x48, 0x89, 0x87, 0xa8, 0x00, 0x00, 0x00, // mov %rax,0xa8(%rdi): rip
    0x48, 0xc7, 0x87, 0xa0, 0x00, 0x00, 0x00, 0x00, 0xf0, 0x1f, 0x00, // movq $0x1ff000,0xa0(%rdi): rsp
    0x48, 0xc7, 0x87, 0xb0, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, // movq $0x202,0xb0(%rdi): eflags
    0x66, 0xc7, 0x87, 0xb8, 0x00, 0x00, 0x00, 0x33, 0x00, // movw $0x33,0xb8(%rdi): cs
    0x66, 0xc7, 0x87, 0xbe, 0x00, 0x00, 0x00, 0x2b, 0x00, // movw $0x2b,0xbe(%rdi): ss
    0x48, 0xc7, 0x87, 0x28, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, // movq $-1,0x128(%rdi): uc_sigmask
    0x48, 0x89, 0xfc, // mov %rdi,%rsp
    0xb8, 0x0f, 0x00, 0x00, 0x00, // mov $SYS_rt_sigreturn,%eax
    0x0f, 0x05, // syscall
    0xeb, 0xfe, // 1: jmp 1b
];

/// `--timeout` and SIGTERM still end a guest that blocked every signal on its thread: the
/// watchdog thread takes them and ends the run with the line and status of a normal end.
#[test]
fn watchdog_ends_a_guest_that_blocks_signals() {
    let dir = TempDir::new("process-watchdog");
    let elf = dir.file("spin", &raw_kernel(BLOCK_SIGNALS_AND_SPIN, &[]));
    let (code, out, err) = run_process(&["--mem=4", "--timeout=1", elf.to_str().unwrap()]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (1, "", "tender: guest still running after --timeout=1s, stopped\n")
    );

    let mut cmd = process_tender();
    cmd.args(["--mem=4", elf.to_str().unwrap()]);
    let guest = Running::spawn(cmd);
    // Every signal but SIGKILL and SIGSTOP blocked on the guest's (main) thread.
    let status = format!("/proc/{}/status", guest.pid());
    let blocked = || std::fs::read_to_string(&status).unwrap_or_default().contains("SigBlk:\tfffffffffffbfeff");
    for _ in 0..250 {
        if blocked() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(blocked(), "the forged frame blocked the guest's signals");
    let (code, out, err) = guest.stop();
    assert_eq!((code, out.as_str(), err.as_str()), (1, "", "tender: exiting on signal 15\n"));
}

/// `--dumpcore` in process mode: the core has the registers of the signal context where the
/// guest faulted and guest memory at its guest addresses (from 0x10000), and is named by the
/// link helper, a process outside the sandbox (no `linkat` in tender's filter). gdb reads it.
#[test]
fn dumpcore_writes_the_guest_core() {
    let dir = TempDir::new("process-core");
    let hello = guest("hello");
    let opt = format!("--dumpcore={}", dir.0.display());
    let (code, out, err) = run_process(&[&opt, hello.to_str().unwrap(), "fault"]);
    assert_eq!(code, 255, "{out}{err}");
    assert!(err.contains("dumpcore: guest core written: core.tender."), "{err}");
    let cores: Vec<_> = std::fs::read_dir(&dir.0).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert_eq!(cores.len(), 1, "{cores:?}");
    let bytes = std::fs::read(&cores[0]).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).expect("the core is an ELF");
    assert_eq!(elf.header.e_type, goblin::elf::header::ET_CORE);
    let load = elf.program_headers.iter().find(|p| p.p_type == goblin::elf::program_header::PT_LOAD).unwrap();
    assert_eq!(load.p_vaddr, 0x10000);
    // The trap line's RIP is the core's.
    let rip = err.split("rip=0x").nth(1).and_then(|r| r.split(' ').next()).unwrap();
    let rip = u64::from_str_radix(rip, 16).unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "bt", hello.to_str().unwrap(), cores[0].to_str().unwrap()])
        .output()
        .expect("gdb is needed for this test (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Program terminated with signal SIGSEGV"), "gdb: {text}");
    assert!(text.contains(&format!("#0  {rip:#018x}")), "gdb, at {rip:#x}: {text}");
    assert!(text.contains("__guest_rt_main"), "gdb backtrace: {text}");

    // A clean run leaves nothing behind.
    let (code, _, err) = run_process(&[&opt, hello.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
}
