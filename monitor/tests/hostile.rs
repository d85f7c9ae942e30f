//! A hostile guest (examples/hostile) attacks the tender through the ABI, one attack per run,
//! always with the seccomp filter on. tender must end the run with the documented line and
//! status, or answer with the ABI's error code, and never die itself (no death by a signal:
//! no SIGSEGV, SIGSYS or abort), never write outside the guest.
//!
//! | attack | expected |
//! |---|---|
//! | PUTS buffer out of RAM, straddling its end, ending exactly at it, wrapping 2^64, huge | `invalid guest access`, 1 |
//! | PUTS from the low area (0x1000, guest RAM) | allowed, prints it, guest goes on |
//! | argument struct out of RAM / straddling its end | `invalid guest access`, 1 |
//! | block calls with handles 0, 2, 63, 64, 2^32, 2^63, 2^64-1 | EINVAL (`ret=2`), guest goes on |
//! | block offset at/past capacity, offset+len past or overflowing, huge or negative len, misaligned, partial block | EINVAL each; the block written before is intact (checked in the guest and in the host file) |
//! | block buffer out of RAM | `invalid guest access`, 1 |
//! | WALLTIME/POLL out-parameters in .rodata, BLOCK_READ into .text | `invalid guest access … (write to memory outside the guest's writable RAM)`, 1 |
//! | a store into the guest's own text | `host/guest translation fault` (EFAULT) or `guest access to unmapped or read-only memory` (MMIO exit, KVM-PVM), 1 |
//! | `outb`, `inl` on a hypercall port | `Invalid guest port access`, 1 |
//! | `rep outsd` of two dwords | KVM delivers one exit per dword: two ordinary hypercalls, guest goes on |
//! | a port guest-rt's I/O bitmap keeps closed (0x500) | #GP in the guest: `guest-rt: trap`, 255 |
//! | HALT cookie straddling the end of RAM / out of it | `invalid guest access`, 1 |
//! | HALT with a valid cookie | the guest's status (9) |
//! | `hlt` (privileged at CPL 3) | #GP in the guest, 255 |
//! | an endless loop | SIGTERM: `exiting on signal 15`, 1; `--timeout=1`: the timeout line, 1 |
//! | net: frame over MTU+14, wrong handles | EINVAL, guest goes on |
//! | net: empty frame (shorter than an Ethernet header) | EINVAL, guest goes on |
//! | net: NET_READ into a 1-byte buffer | OK with length 1 (the frame is cut, as the ABI says) |
//! | net: NET_READ buffer straddling the end of RAM | `invalid guest access`, 1 |
//!
//! | `hlt` at CPL 0 (a raw ELF built by the test) | `guest halted the CPU (hlt)`, 1 |
//! | a triple fault at CPL 0 (empty IDT, `int3`) | `guest triple fault (KVM_EXIT_SHUTDOWN)` (VMX) or `KVM: internal error exit: suberror=0x1` (KVM-PVM), 1 |
//!
//! guest-rt runs all application code at CPL 3, where `hlt` and `lidt` are refused by the CPU; the
//! CPL 0 cases use a minimal hvt ELF that the test writes itself.

mod common;

use common::*;

fn attack(name: &str, extra: &[&str]) -> (i32, String, String, Vec<u8>) {
    require_kvm();
    let g = guest("hostile");
    let dir = TempDir::new("hostile");
    let img = dir.file("disk.img", &vec![0u8; 64 << 10]);
    let attach = format!("--block:storage={}", img.display());
    let mut args = vec!["--mem=32", &attach];
    args.extend_from_slice(extra);
    args.push(g.to_str().unwrap());
    args.push(name);
    let output = tender().args(&args).output().expect("spawn tender");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), None, "{name}: tender died of a signal");
    let (code, out, err) = decode(output);
    (code, out, err, std::fs::read(&img).unwrap())
}

fn assert_ends(name: &str, want_code: i32, want_line: &str) {
    let (code, out, err, _) = attack(name, &[]);
    assert_eq!(code, want_code, "{name}: {out}{err}");
    assert!(!out.contains("the guest goes on"), "{name}: the run must end: {out}");
    assert_one_error_line(&err, want_line);
}

#[test]
fn bad_buffers_and_structs_end_the_run() {
    for name in [
        "puts-out-of-range",
        "puts-straddle",
        "puts-ends-at-mem-size",
        "puts-wrap",
        "puts-huge",
        "struct-out-of-range",
        "struct-straddle",
        "block-buffer-out-of-range",
        "halt-cookie-straddle",
        "halt-cookie-out-of-range",
    ] {
        assert_ends(name, 1, "tender: invalid guest access: gpa=0x");
    }
}

#[test]
fn out_parameters_never_reach_read_only_memory() {
    for name in ["walltime-into-rodata", "poll-into-rodata", "block-read-into-text"] {
        assert_ends(name, 1, "(write to memory outside the guest's writable RAM), rip=0x");
    }
}

#[test]
fn writing_its_own_text_ends_the_run() {
    let (code, _, err, _) = attack("write-text", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("host/guest translation fault") || err.contains("guest access to unmapped or read-only memory"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn wrong_port_accesses() {
    assert_ends("outb", 1, "Invalid guest port access: port=0x501, size=1, direction=out");
    assert_ends("inl", 1, "Invalid guest port access: port=0x501, size=4, direction=in");
    let (code, out, _, _) = attack("rep-outsd", &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out, err, _) = attack("port-outside-bitmap", &[]);
    assert_eq!(code, 255, "{err}");
    assert!(out.contains("guest-rt: trap: vector=13 (#GP)"), "{out}");
    let (code, out, _, _) = attack("hlt", &[]);
    assert_eq!(code, 255);
    assert!(out.contains("(#GP)"), "{out}");
}

#[test]
fn bad_handles_and_block_ranges_get_einval_and_data_stays_intact() {
    let (code, out, err, _) = attack("bad-handles", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("ret=2").count(), 7, "{out}");
    let (code, out, err, disk) = attack("block-ranges", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("ret=2").count(), 8, "{out}");
    assert!(out.contains("block 0 intact: true"), "{out}");
    assert!(disk[..512].iter().all(|&b| b == 0x5a), "the host file holds the block written before the attacks");
    assert!(disk[512..].iter().all(|&b| b == 0), "nothing else was written");
}

#[test]
fn allowed_edge_cases() {
    let (code, out, _, _) = attack("puts-low-area", &[]);
    assert_eq!(code, 0);
    assert!(out.contains("the guest goes on"), "{out}");
    let (code, _, err, _) = attack("halt-cookie-ok", &[]);
    assert_eq!((code, err.as_str()), (9, ""));
}

#[test]
fn endless_loop_ends_by_timeout_and_by_sigterm() {
    let (code, _, err, _) = attack("loop", &["--timeout=1"]);
    assert_eq!(code, 1);
    assert_one_error_line(&err, "guest still running after --timeout=1s, stopped");

    let g = guest("hostile");
    let dir = TempDir::new("hostile-loop");
    let img = dir.file("disk.img", &vec![0u8; 4096]);
    let mut cmd = tender();
    cmd.args([format!("--block:storage={}", img.display()), g.to_str().unwrap().into(), "loop".into()]);
    let running = Running::spawn(cmd);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (code, _, err) = running.stop();
    assert_eq!(code, 1);
    assert_one_error_line(&err, "exiting on signal 15");
}

#[test]
fn net_attacks() {
    require_kvm();
    require_root();
    let g = guest("hostile-net").to_str().unwrap().to_string();
    let ns = NetNs::new("hostile");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let run_in_ns = |name: &str| {
        let out = ns.tender().args(["--mem=32", "--net:service=tap0", &g, name]).output().unwrap();
        decode(out)
    };
    let (code, out, _) = run_in_ns("oversize-frame");
    assert!(code == 0 && out.contains("ret=2"), "{out}");
    let (code, out, _) = run_in_ns("empty-frame");
    assert!(code == 0 && out.contains("ret=2"), "{out}");
    let (code, out, _) = run_in_ns("wrong-handles");
    assert!(code == 0 && out.matches("ret=2").count() == 4, "{out}");
    let (code, _, err) = run_in_ns("read-out-of-range");
    assert_eq!(code, 1);
    assert_one_error_line(&err, "invalid guest access");

    // A frame read into one byte: the guest waits, the test sends a ping (an ARP first).
    let mut cmd = ns.tender();
    cmd.args(["--mem=32", "--net:service=tap0", &g, "tiny-read"]);
    let guest_run = Running::spawn(cmd);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = ns.command("ping").args(["-c", "1", "-W", "1", "10.0.0.2"]).output();
    let (code, out, err) = guest_run.wait();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ret=0 len=1"), "{out}");
}

/// A minimal hvt ELF around `code` (loaded at 0x100000, entered at CPL 0 as the ABI starts
/// every guest), with the ABI note and an empty manifest: for attacks that need CPL 0, which
/// guest-rt never gives application code.
fn raw_cpl0_kernel(code: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
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
    // Notes at 0x100 (ABI) and 0x128 (manifest with the reserved entry only).
    let abi_note: Vec<u8> = [6u32, 16, guest_abi::NOTE_TYPE_ABI]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(*b"Solo5\0\0\0")
        .chain([1u32, 2, 0, 0].iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    put(&mut f, 0x100, &abi_note);
    let mut mft_note: Vec<u8> = [6u32, 4 + 8 + 104, guest_abi::NOTE_TYPE_MANIFEST]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .chain(*b"Solo5\0\0\0")
        .chain([0u32, 1, 1].iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    let mut entry = vec![0u8; 104];
    entry[68..72].copy_from_slice(&guest_abi::MFT_RESERVED_FIRST.to_le_bytes());
    mft_note.extend_from_slice(&entry);
    put(&mut f, 0x128, &mft_note);
    // Program headers: PT_LOAD (R+X) of the code, then the two PT_NOTEs.
    let phdr = |ty: u32, flags: u32, off: u64, vaddr: u64, size: u64, align: u64| -> Vec<u8> {
        [ty, flags]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain([off, vaddr, vaddr, size, size, align].iter().flat_map(|v| v.to_le_bytes()))
            .collect()
    };
    put(&mut f, 64, &phdr(1, 5, 0x1000, 0x10_0000, code.len() as u64, 0x1000));
    put(&mut f, 120, &phdr(4, 4, 0x100, 0, abi_note.len() as u64, 4));
    put(&mut f, 176, &phdr(4, 4, 0x128, 0, mft_note.len() as u64, 8));
    f.extend_from_slice(code);
    f
}

fn run_raw(tag: &str, code: &[u8]) -> (i32, String) {
    require_kvm();
    let dir = TempDir::new(tag);
    let kernel = dir.file("kernel", &raw_cpl0_kernel(code));
    let output = tender().args(["--mem=8", kernel.to_str().unwrap()]).output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), None, "{tag}: tender died of a signal");
    let (code, _, err) = decode(output);
    (code, err)
}

/// `hlt` with interrupts off at CPL 0: the vCPU would sleep forever; tender ends the run.
#[test]
fn kvm_hlt_exit_ends_the_run() {
    let (code, err) = run_raw("hlt", &[0xf4, 0xeb, 0xfe]);
    assert_eq!(code, 1, "{err}");
    assert_one_error_line(&err, "guest halted the CPU (hlt), rip=0x100001");
}

/// An empty IDT and a breakpoint: #BP cannot be delivered, nor the #DF after it: a triple fault.
/// VMX reports KVM_EXIT_SHUTDOWN; KVM-PVM an internal error (HOST_KVM_NOTES).
#[test]
fn triple_fault_ends_the_run() {
    // lidt [0x100010] (ten zero bytes there: limit 0); int3; then the zero IDTR.
    let mut code = vec![0x0f, 0x01, 0x1c, 0x25, 0x10, 0x00, 0x10, 0x00, 0xcc, 0xeb, 0xfe];
    code.resize(0x20, 0);
    let (code, err) = run_raw("triple", &code);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("guest triple fault (KVM_EXIT_SHUTDOWN)")
            || err.contains("KVM: internal error exit: suberror=0x1"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
