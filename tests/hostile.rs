//! A hostile guest (examples/hostile, bins `hostile` and `hostile-net`) attacks the tender
//! through the ABI, one attack per run, always with the default seccomp filter on. tender must
//! end the run with the documented status and one-line message, or answer with the ABI's error
//! code, and never die itself (no death by a signal: no SIGSEGV, SIGSYS or abort) nor write
//! outside the guest (the block file is compared before and after every run).
//!
//! When tender answers instead of ending the run, the guest prints what it got and exits 42
//! ("answered" below). "refused" is exit 1 with one line `tender: <what>, rip=0x…` on stderr.
//! "#GP in the guest" is exit 255 with guest-rt's `guest-rt: trap: vector=13 (#GP)` line on
//! stdout and tender's `guest aborted (status 255) on a CPU exception (vector 13)` on stderr.
//! All runs use `--mem=32` (mem_size 0x2000000) and a 64 KiB block file of 512-byte blocks.
//!
//! | mode | attack | expected |
//! |---|---|---|
//! | `puts-out-of-range` | PUTS of 16 bytes at mem_size + 4 KiB | refused: `invalid guest access: gpa=0x2001000, size=16` |
//! | `puts-straddle` | PUTS at mem_size − 8, 16 bytes | refused, `invalid guest access` |
//! | `puts-ends-at-mem-size` | PUTS at mem_size − 16, 16 bytes (ends exactly at mem_size; the rule is strict) | refused, `invalid guest access` |
//! | `puts-empty-at-mem-size` | PUTS of 0 bytes at mem_size | refused (`gpa < mem_size` is required) |
//! | `puts-wrap`, `puts-wrap-gpa` | len 2^64 − 4097; gpa 2^64 − 8 | refused, `invalid guest access` |
//! | `puts-huge`, `puts-negative-len` | len 2^62; len −16 as i64 | refused, `invalid guest access` |
//! | `puts-just-below-end`, `puts-empty`, `puts-empty-dangling` | 1 byte at mem_size − 2; 0 bytes; 0 bytes at GPA 1 (a Rust empty slice's address; below guest memory in process mode, where an empty range is allowed all the same) | answered (allowed) |
//! | `puts-low-area` | 8 bytes from GPA 0x1000 (guest RAM the guest cannot map, the ABI allows it) | answered, 8 zero bytes printed |
//! | `puts-large` | 4 MiB in one PUTS | answered, all 4 MiB on stdout |
//! | `struct-out-of-range`, `struct-straddle`, `struct-ends-at-mem-size` | WALLTIME struct at mem_size + 4 KiB, mem_size − 4, mem_size − 8 | refused, `invalid guest access` |
//! | `struct-low-area` | WALLTIME struct at GPA 0x9000 (RAM) | answered (allowed) |
//! | `bad-handles` | BLOCK_READ with handles 0, 2, 63, 64, 2^32, 2^63, 2^64 − 1 | EINVAL (`ret=2`) each, answered |
//! | `net-call-on-block-handle` | NET_WRITE and NET_READ on the block device's handle | EINVAL each, answered |
//! | `block-ranges`, `ring-block-ranges` | BLOCK_WRITE and BLOCK_READ, by hypercall and through the block ring: offset at / past capacity, offset + len past capacity, overflowing, wrapping to 0; len 2^64 − 1, 2^63, −512 (2^32 − 1 in a ring entry); offset 1 and 256; len 511 and 513 | EINVAL each (24), answered; the block written first is intact (guest and host file), the refused reads left the buffer alone |
//! | `ring-block-bad-handles` | block ring reads on handles 0, 2, 63, 2^32 − 1; a net write and a net read on the block handle | EINVAL commits, the net write dropped, answered |
//! | `ring-block-read-out-of-range`, `ring-block-write-out-of-range`, `ring-block-read-into-ring`, `ring-block-read-into-text` | block ring entries: read into mem_size − 10; write from mem_size − 256; read into the ring; read into .text | refused by the I/O thread: `ring: invalid guest access: …`; file unchanged. With `--mem=4096` no block ring is offered |
//! | `block-buffer-out-of-range` | BLOCK_READ into mem_size | refused, `invalid guest access`; file unchanged |
//! | `block-write-buffer-straddle` | BLOCK_WRITE from mem_size − 256, 512 bytes | refused; file unchanged |
//! | `block-write-struct-in-rodata`, `block-read-struct-in-rodata` | the BLOCK_WRITE / BLOCK_READ struct itself in .rodata | refused: `… (write to memory outside the guest's writable RAM)`; nothing written to the file |
//! | `walltime-into-rodata`, `walltime-into-text`, `poll-into-rodata` | out-parameter structs in .rodata / .text | refused: `(write to memory outside the guest's writable RAM)` |
//! | `block-read-into-text`, `block-read-into-rodata`, `block-read-straddling-rodata` | BLOCK_READ data buffer in .text, in .rodata, across the end of .rodata into .data | refused: `(write to memory outside the guest's writable RAM)` |
//! | `write-text`, `write-rodata` | a plain store into the guest's own .text / .rodata (guest page tables allow it, the host mapping does not) | refused: `KVM: host/guest translation fault` (EFAULT: VMX, and this host) or `guest access to unmapped or read-only memory: write at gpa=…` (MMIO exit: KVM-PVM) |
//! | `outb`, `outw`, `inl` | 1- and 2-byte OUT, 4-byte IN on port 0x501 | refused: `Invalid guest port access: port=0x501, size=N, direction=…` |
//! | `outb-0x509` | 1-byte OUT one past the last hypercall port (open in guest-rt's I/O bitmap) | refused: `port=0x509, size=1` |
//! | `outl-0x600` | the ring's kick port: with a block device there is a ring (tender's block extension); with `--mem=4096` there is none | a kick, answered; with `--mem=4096` refused: `port=0x600, size=4` |
//! | `rep-outsd` | `rep outsd` of two WALLTIME struct addresses to 0x501 | KVM makes one exit per dword: two ordinary hypercalls, both structs filled, answered (a host batching them would give `size=8`, refused: also accepted) |
//! | `outl-0x500`, `outl-0x4ff`, `outl-0x509` | ports guest-rt's TSS I/O bitmap keeps closed at CPL 3 | #GP in the guest, never reaches tender |
//! | `hlt` | `hlt` at CPL 3 (where guest-rt runs all Rust) | #GP in the guest |
//! | `halt-cookie-straddle`, `halt-cookie-ends-at-mem-size`, `halt-cookie-out-of-range`, `halt-cookie-wrap` | HALT cookie (512 bytes) at mem_size − 100, mem_size − 512, mem_size + 4 KiB, 2^64 − 101 | refused, `invalid guest access: …, size=512` |
//! | `halt-cookie-ok`, `halt-cookie-last-fit`, `halt-cookie-in-text` | cookie at 2 MiB, at mem_size − 513, in .text (read-only is fine) | the guest's status (9), stderr empty |
//! | `halt-forged-trap` | HALT(255) with a made-up trap report as cookie | 255, tender prints the made-up frame: `(vector 77): rip=0xdeadbeef …` |
//! | `halt-status-minus-1`, `halt-status-256` | HALT with status −1, 256 | 255, 0 (the OS keeps 8 bits, as with solo5-hvt) |
//! | `triple-fault` | BLOCK_READ of zeros over guest-rt's IDT (the tender writes any guest RAM, CPL 0 structures too), then `ud2` | refused: `guest triple fault (KVM_EXIT_SHUTDOWN)` (VMX, this host) or `KVM: internal error exit: suberror=0x1` (KVM-PVM) |
//! | `cpl0-hlt` | the same deputy trick plants a DPL 3 #BP gate to our code; `int3` runs it at CPL 0: `hlt` | refused: `guest halted the CPU (hlt)` |
//! | `cpl0-port-0x500`, `cpl0-port-0x4ff` | at CPL 0: `outl` to 0x500 (hypercall 0), to 0x4ff | refused: `Invalid guest hypercall: num=0`; `Invalid guest port access: port=0x4ff, size=4` |
//! | `cpl0-mmio-read`, `cpl0-mmio-write` | at CPL 0: map GPA 0xffe00000 (no RAM there) and load / store | refused: `guest access to unmapped or read-only memory: read/write at gpa=0xffe00000` |
//! | raw CPL 0 ELF: `outl` to tender's debug port 0x604 with a forged debug-area pointer (in text, at 2^32 − 16) | only `tender-debug --gdb` serves that port | refused: `Invalid guest port access: port=0x604, size=4, direction=out` (under `--gdb`, forged areas end the run the same way: `monitor/tests/debug.rs`) |
//! | raw CPL 0 ELF: `hlt`; `lidt` of an empty IDT + `int3` | written by the test, no guest-rt | refused: `guest halted the CPU (hlt)`; triple fault as above |
//! | `loop`, `poll-forever` | busy loop; POLL with a 2^64 − 1 ns timeout | `--timeout=1`: `guest still running after --timeout=1s, stopped`, 1; SIGTERM / SIGINT: `exiting on signal 15` / `2`, 1 |
//! | net `oversize-frame`, `short-frame`, `empty-frame`, `huge-frame` | NET_WRITE of MTU + 15, 13, 0, 2^64 − 1 bytes | EINVAL, answered |
//! | net `max-frame` | NET_WRITE of exactly MTU + 14 bytes | OK (`ret=0`), answered |
//! | net `tiny-read`, `empty-read` | NET_READ into 1 byte (a frame is waiting), into 0 bytes | `ret=0 len=1` (the frame is cut, as the ABI says); `ret=1` (AGAIN) |
//! | net `wrong-handles` | NET_WRITE with handles 0, 2, 63, 64, 2^63, 2^64 − 1 | EINVAL each, answered |
//! | net `block-call-on-net-handle` | BLOCK_WRITE and BLOCK_READ on the NIC's handle | EINVAL each, answered |
//! | net `read-out-of-range`, `read-huge`, `write-out-of-range` | NET_READ at mem_size − 10 (1514 bytes), len 2^64 − 1; NET_WRITE at mem_size − 10 | refused, `invalid guest access` |
//! | net `read-into-text`, `read-struct-in-rodata` | NET_READ buffer in .text; NET_READ struct in .rodata | refused: `(write to memory outside the guest's writable RAM)` |
//! | net `ring-write-out-of-range`, `ring-read-out-of-range`, `ring-read-huge`, `ring-read-into-ring` | net ring entries: write at mem_size − 10; read at mem_size − 10, of 2^32 − 1 bytes, into the ring itself (also with `--mem=4096`: the ring at 4094 MiB) | refused by the I/O thread, which stops the vCPU: `ring: invalid guest access: …` |
//! | net `ring-read-into-text` | net ring read into .text | refused: `ring: … (write to memory outside the guest's writable RAM)` |
//! | net `ring-index-jump`, `ring-index-behind` | `ent_tail` 5000 ahead of the head; one behind it | refused: `ring: ent_tail=… is more than 1024 entries ahead of ent_head=…` |
//! | net `ring-bad-entries` | reads and writes on handles 0, 2, 63, 64, 2^32 − 1; operations 0 and 2^32 − 1; writes of 0, 13, MTU + 15 bytes | reads answered EINVAL, the rest dropped; every entry taken, answered |
//! | net `ring-read-waiting-into-text` | a waiting read (`TENDER_FEATURE_WAIT_READ`, wait 2^64 − 1 ns) into .text | refused as any read: `ring: invalid guest access` |
//! | net `ring-wait-forever` | 100 waiting reads, each asking to wait 2^64 − 1 ns | each answered (AGAIN once tender's 1 ms cap is over, or a frame), answered |
//! | net `ring-forged-host-indices` | the guest overwrites `ent_head` and `com_tail` (the host's), then posts a read | the tender keeps its own indices: `com_tail=1` and an ordinary answer (AGAIN, or a frame if the host's network stack sent one), answered |
//! | net `ring-kick-storm` | 10,000 kicks of port 0x600 | nothing happens (KVM counts them on the eventfd), answered |
//! | net `ring-kick-byte` | `outb` to the kick port (the ioeventfd is registered for 4-byte writes, as in solo5-hvt) | refused: `port=0x600, size=1` |
//! | net `ring-write-out-of-range-then-halt` | a write entry at mem_size − 10, then HALT(42) at once | refused all the same (found by the tender's last pass over the ring), 1 |
//!
//! Under `TENDER_MODE=process` (docs/PROCESS_MODE.md) the same attacks run as a process, with
//! these differences, each from the mode's design: `puts-low-area` and `struct-low-area` are
//! refused (`invalid guest access: gpa=0x1000` / `gpa=0x9000`: guest memory starts at 0x10000);
//! `write-text` and `write-rodata` end in a #PF caught by tender (255, `vector 14`: the host
//! mapping is read-only); `outl-0x500`, `outl-0x4ff` and `outl-0x509` are refused by tender
//! (`Invalid guest hypercall: num=0`, `Invalid guest port access`: no I/O bitmap, every `out`
//! traps to tender); `hlt`, and `rep-outsd` (no string instruction is decoded), are a #GP
//! caught by tender (its trap line only, no guest-rt line). The CPL 0 attacks (`triple-fault`, `cpl0-*`, the raw CPL 0 ELFs with `hlt` and an
//! empty IDT) are KVM-only (`kvm_only`). The direct system calls of a process-mode guest are in
//! `tests/process.rs`.
//!
//! Note: with no block (net) device attached, tender answers block (net) hypercalls with EINVAL;
//! solo5-hvt does not register them then and ends the run (`Invalid guest hypercall: num=N`).
//!
//! The `#[ignore]`d tests at the end pin down tender bugs found by this suite (see each one);
//! run them with `cargo test --release -p tender-tests --test hostile -- --ignored`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The guest's status when tender answered and the guest went on.
const ANSWERED: i32 = 42;
const DISK_BYTES: usize = 64 << 10;
const BLOCK: usize = 512;

/// A recognisable image: every byte written by anyone shows.
fn disk_image() -> Vec<u8> {
    (0..DISK_BYTES).map(|i| (i % 251) as u8).collect()
}

struct Run {
    mode: String,
    code: i32,
    out: String,
    err: String,
    disk_before: Vec<u8>,
    disk_after: Vec<u8>,
}

impl Run {
    fn context(&self) -> String {
        let mut out = self.out.clone();
        if out.len() > 2000 {
            out.truncate(out.floor_char_boundary(2000));
            out.push_str("[…]");
        }
        format!("{}: status {}\nstdout: {out:?}\nstderr: {:?}", self.mode, self.code, self.err)
    }
}

/// Fails unless tender ended by itself (a signal death is always a tender bug).
fn status_of(mode: &str, output: &Output) -> i32 {
    assert_eq!(
        output.status.signal(),
        None,
        "{mode}: tender died of a signal; stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.status.code().expect("an exit status")
}

/// Runs `hostile MODE` with a fresh block file and the default sandbox.
fn run_hostile(mode: &str, extra: &[&str]) -> Run {
    require_kvm();
    let g = guest("hostile");
    let dir = TempDir::new("hostile");
    let disk_before = disk_image();
    let img = dir.file("disk.img", &disk_before);
    let attach = format!("--block:storage={}", img.display());
    let mut cmd = tender();
    if !extra.iter().any(|a| a.starts_with("--mem")) {
        cmd.arg("--mem=32");
    }
    cmd.arg(&attach).args(extra).arg(&g).arg(mode);
    let output = cmd.output().expect("spawn tender");
    let code = status_of(mode, &output);
    let (_, out, err) = decode(output);
    Run { mode: mode.into(), code, out, err, disk_before, disk_after: std::fs::read(&img).unwrap() }
}

/// How a run must end.
enum Want {
    /// Exit 1 and one line `tender: …, rip=0x…` on stderr containing one of these.
    Refused(&'static [&'static str]),
    /// Exit 42, nothing on stderr, and stdout contains each of these.
    Answered(&'static [&'static str]),
    /// Exit 255 after a #GP caught by guest-rt (in process mode: by tender, which prints the
    /// only trap line).
    GeneralProtection,
    /// Process mode: exit 255 with tender's line for a CPU exception with this vector (the
    /// host's page protections, not KVM, stopped the access).
    Exception(u8),
    /// The guest's own status; stderr empty or exactly this one line.
    Status(i32, Option<&'static str>),
}

fn check(run: &Run, want: &Want) -> Result<(), String> {
    let fail = |what: &str| Err(format!("{what}\n{}", run.context()));
    let lines: Vec<&str> = run.err.lines().collect();
    match want {
        Want::Refused(any) => {
            if run.code != 1 {
                return fail("expected status 1");
            }
            if run.out.contains("the guest goes on") {
                return fail("the run must end");
            }
            let [line] = lines[..] else { return fail("expected exactly one line on stderr") };
            if !line.starts_with("tender: ") || !line.contains(", rip=0x") {
                return fail("expected `tender: <what>, rip=0x…`");
            }
            if !any.iter().any(|w| line.contains(w)) {
                return fail(&format!("expected one of {any:?}"));
            }
        }
        Want::Answered(all) => {
            if run.code != ANSWERED || !run.err.is_empty() || !run.out.contains("the guest goes on") {
                return fail("expected the tender to answer and the guest to go on (status 42)");
            }
            if let Some(w) = all.iter().find(|w| !run.out.contains(*w)) {
                return fail(&format!("expected {w:?} on stdout"));
            }
        }
        // In process mode the exception never reaches guest-rt's IDT: tender's line only.
        Want::GeneralProtection if process_mode() => {
            if run.code != 255 || run.out.contains("guest-rt: trap:") {
                return fail("expected a #GP caught by tender (status 255, no guest-rt trap line)");
            }
            let [line] = lines[..] else { return fail("expected exactly one line on stderr") };
            if !line.starts_with("tender: guest aborted (status 255) on a CPU exception (vector 13): rip=0x") {
                return fail("expected tender's trap line");
            }
        }
        Want::GeneralProtection => {
            if run.code != 255 || !run.out.contains("guest-rt: trap: vector=13 (#GP) error=0x0 rip=0x") {
                return fail("expected a #GP in the guest (status 255, guest-rt's trap line)");
            }
            let [line] = lines[..] else { return fail("expected exactly one line on stderr") };
            if !line.starts_with("tender: guest aborted (status 255) on a CPU exception (vector 13): rip=0x") {
                return fail("expected tender's trap line");
            }
        }
        Want::Exception(vector) => {
            let want = format!("tender: guest aborted (status 255) on a CPU exception (vector {vector}): rip=0x");
            if run.code != 255 || run.out.contains("the guest goes on") {
                return fail("expected status 255, the run ended");
            }
            let [line] = lines[..] else { return fail("expected exactly one line on stderr") };
            if !line.starts_with(&want) {
                return fail(&format!("expected {want:?}"));
            }
        }
        Want::Status(code, line) => {
            if run.code != *code {
                return fail(&format!("expected status {code}"));
            }
            match (line, &lines[..]) {
                (None, []) => {}
                (Some(want), [got]) if got == want => {}
                _ => return fail(&format!("expected stderr {line:?}")),
            }
        }
    }
    Ok(())
}

/// Runs each case; fails once, listing every case that went wrong. Unless `disk_may_change`,
/// the block file must be byte for byte what it was.
fn expect_all(cases: &[(&str, Want)], disk_may_change: bool) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(mode, want)| {
            let run = run_hostile(mode, &[]);
            let result = check(&run, want).and_then(|()| {
                if disk_may_change || run.disk_after == run.disk_before {
                    Ok(())
                } else {
                    Err(format!("{mode}: the block file changed"))
                }
            });
            result.err()
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

const READ_ONLY: &[&str] = &["(write to memory outside the guest's writable RAM), rip=0x"];

#[test]
fn bad_pointers_and_lengths_end_the_run() {
    use Want::Refused;
    expect_all(
        &[
            ("puts-out-of-range", Refused(&["tender: invalid guest access: gpa=0x2001000, size=16, rip="])),
            ("puts-straddle", Refused(&["tender: invalid guest access: gpa=0x1fffff8, size=16, rip="])),
            ("puts-ends-at-mem-size", Refused(&["tender: invalid guest access: gpa=0x1fffff0, size=16, rip="])),
            ("puts-empty-at-mem-size", Refused(&["tender: invalid guest access: gpa=0x2000000, size=0, rip="])),
            ("puts-wrap", Refused(&["gpa=0x200000, size=18446744073709547519, rip="])),
            ("puts-wrap-gpa", Refused(&["gpa=0xfffffffffffffff8, size=16, rip="])),
            ("puts-huge", Refused(&["gpa=0x200000, size=4611686018427387904, rip="])),
            ("puts-negative-len", Refused(&["gpa=0x200000, size=18446744073709551600, rip="])),
            ("struct-out-of-range", Refused(&["tender: invalid guest access: gpa=0x2001000, size=8, rip="])),
            ("struct-straddle", Refused(&["tender: invalid guest access: gpa=0x1fffffc, size=8, rip="])),
            ("struct-ends-at-mem-size", Refused(&["tender: invalid guest access: gpa=0x1fffff8, size=8, rip="])),
            ("block-buffer-out-of-range", Refused(&["tender: invalid guest access: gpa=0x2000000, size=512, rip="])),
            ("block-write-buffer-straddle", Refused(&["tender: invalid guest access: gpa=0x1ffff00, size=512, rip="])),
            ("halt-cookie-straddle", Refused(&["tender: invalid guest access: gpa=0x1ffff9c, size=512, rip="])),
            ("halt-cookie-ends-at-mem-size", Refused(&["tender: invalid guest access: gpa=0x1fffe00, size=512, rip="])),
            ("halt-cookie-out-of-range", Refused(&["tender: invalid guest access: gpa=0x2001000, size=512, rip="])),
            ("halt-cookie-wrap", Refused(&["gpa=0xffffffffffffff9b, size=512, rip="])),
        ],
        false,
    );
}

/// Below 0x10000 is guest RAM under KVM (where an hvt tender keeps page tables and the GDT) but
/// not in process mode, where guest memory starts at 0x10000 (docs/PROCESS_MODE.md): a pointer
/// there is refused like one above mem_size.
fn low_area(kvm: Want, refused: &'static [&'static str]) -> Want {
    if process_mode() { Want::Refused(refused) } else { kvm }
}

#[test]
fn what_the_abi_allows_is_allowed() {
    use Want::{Answered, Status};
    expect_all(
        &[
            ("puts-just-below-end", Answered(&[])),
            ("puts-empty", Answered(&[])),
            ("puts-empty-dangling", Answered(&[])),
            (
                "puts-low-area",
                low_area(
                    Answered(&["hostile: puts-low-area\n\0\0\0\0\0\0\0\0hostile: the tender answered"]),
                    &["tender: invalid guest access: gpa=0x1000, size=8, rip="],
                ),
            ),
            ("struct-low-area", low_area(Answered(&[]), &["tender: invalid guest access: gpa=0x9000, size=8, rip="])),
            ("halt-cookie-ok", Status(9, None)),
            ("halt-cookie-last-fit", Status(9, None)),
            ("halt-cookie-in-text", Status(9, None)),
            ("halt-status-minus-1", Status(255, None)),
            ("halt-status-256", Status(0, None)),
            (
                "halt-forged-trap",
                Status(
                    255,
                    Some(
                        "tender: guest aborted (status 255) on a CPU exception (vector 77): rip=0xdeadbeef \
                         rsp=0x5555 error=0x77 cr2=0x1bad",
                    ),
                ),
            ),
        ],
        false,
    );
    let run = run_hostile("puts-large", &[]);
    check(&run, &Want::Answered(&[])).unwrap();
    assert!(run.out.len() > 4 << 20, "all 4 MiB were printed: got {} bytes", run.out.len());
}

#[test]
fn out_parameters_never_reach_read_only_memory() {
    use Want::Refused;
    expect_all(
        &[
            ("walltime-into-rodata", Refused(READ_ONLY)),
            ("walltime-into-text", Refused(READ_ONLY)),
            ("poll-into-rodata", Refused(READ_ONLY)),
            ("block-read-into-text", Refused(READ_ONLY)),
            ("block-read-into-rodata", Refused(READ_ONLY)),
            ("block-read-straddling-rodata", Refused(READ_ONLY)),
            ("block-read-struct-in-rodata", Refused(READ_ONLY)),
            // Checked before the pwrite: the pattern it points at never reaches the file.
            ("block-write-struct-in-rodata", Refused(READ_ONLY)),
        ],
        false,
    );
}

#[test]
fn stores_into_read_only_guest_memory_end_the_run() {
    // EFAULT from KVM_RUN on VMX (and on this host's kernel); an MMIO exit on KVM-PVM.
    const EITHER: &[&str] = &[
        "tender: KVM: host/guest translation fault (guest write to read-only memory), rip=0x",
        "tender: guest access to unmapped or read-only memory: ",
    ];
    // In process mode the host mapping of .text and .rodata is read-only: a #PF (vector 14).
    let want = || if process_mode() { Want::Exception(14) } else { Want::Refused(EITHER) };
    expect_all(&[("write-text", want()), ("write-rodata", want())], false);
}

/// A port guest-rt's TSS I/O bitmap closes at CPL 3: under KVM the `out` is a #GP in the guest.
/// In process mode there is no I/O bitmap (every `out` traps to tender), and tender refuses the
/// port as it refuses any port that is not a hypercall.
fn closed_port(refused: &'static [&'static str]) -> Want {
    if process_mode() { Want::Refused(refused) } else { Want::GeneralProtection }
}

#[test]
fn wrong_port_accesses() {
    use Want::{GeneralProtection, Refused};
    expect_all(
        &[
            ("outb", Refused(&["tender: Invalid guest port access: port=0x501, size=1, direction=out, rip=0x"])),
            ("outw", Refused(&["tender: Invalid guest port access: port=0x501, size=2, direction=out, rip=0x"])),
            ("inl", Refused(&["tender: Invalid guest port access: port=0x501, size=4, direction=in, rip=0x"])),
            ("outb-0x509", Refused(&["tender: Invalid guest port access: port=0x509, size=1, direction=out, rip="])),
            ("outl-0x500", closed_port(&["tender: Invalid guest hypercall: num=0, rip=0x"])),
            (
                "outl-0x4ff",
                closed_port(&["tender: Invalid guest port access: port=0x4ff, size=4, direction=out, rip=0x"]),
            ),
            (
                "outl-0x509",
                closed_port(&["tender: Invalid guest port access: port=0x509, size=4, direction=out, rip=0x"]),
            ),
            ("hlt", GeneralProtection),
        ],
        false,
    );
    // One exit per dword (what KVM does), or all of them in one exit of 8 bytes: both are handled.
    let run = run_hostile("rep-outsd", &[]);
    let per_dword = check(&run, &Want::Answered(&["first filled: true, second filled: true"]));
    let batched = check(&run, &Want::Refused(&["Invalid guest port access: port=0x501, size=8, direction=out"]));
    // In process mode the trap handler decodes no string instruction: a #GP caught by tender
    // ends the run before anything is read.
    let gp = check(&run, &Want::GeneralProtection)
        .and_then(|()| if process_mode() { Ok(()) } else { Err("under KVM `rep outsd` is served or refused".into()) });
    assert!(per_dword.is_ok() || batched.is_ok() || gp.is_ok(), "{per_dword:?}\n{batched:?}\n{gp:?}");
}

#[test]
fn bad_handles_get_einval() {
    let run = run_hostile("bad-handles", &[]);
    check(&run, &Want::Answered(&[])).unwrap();
    assert_eq!(run.out.matches(": ret=2\n").count(), 7, "{}", run.context());
    let run = run_hostile("net-call-on-block-handle", &[]);
    check(&run, &Want::Answered(&["NET_WRITE: ret=2\n", "NET_READ: ret=2\n"])).unwrap();
    assert_eq!(run.disk_after, run.disk_before);
}

#[test]
fn block_ranges_get_einval_and_data_stays_intact() {
    // By hypercall, then the same requests through tender's block ring.
    for mode in ["block-ranges", "ring-block-ranges"] {
        let run = run_hostile(mode, &[]);
        check(&run, &Want::Answered(&["read buffer intact: true", "block 0 intact: true"])).unwrap();
        assert_eq!(run.out.matches(": ret=2\n").count(), 24, "{}", run.context());
        assert!(!run.out.contains(": ret=0"), "{}", run.context());
        // The host file: block 0 is what the guest wrote before the attacks, the rest untouched.
        assert!(run.disk_after[..BLOCK].iter().all(|&b| b == 0x5a), "{mode}: block 0 was overwritten");
        assert!(run.disk_after[BLOCK..] == run.disk_before[BLOCK..], "{mode}: an attack wrote to the file");
    }
}

/// Tender's block extension of the ring: bad handles and net operations on the block handle are
/// answered EINVAL; a buffer the request may not use ends the run from the I/O thread, with
/// the file untouched. With `--mem=4096` there is no room for the ring above a block-only
/// guest's memory: no ring, and port 0x600 is an ordinary bad port again.
#[test]
fn block_ring_attacks() {
    use Want::{Answered, Refused};
    expect_all(
        &[
            (
                "ring-block-bad-handles",
                Answered(&[
                    "handle 0x0: ret=Some(2)",
                    "handle 0x2: ret=Some(2)",
                    "handle 0x3f: ret=Some(2)",
                    "handle 0xffffffff: ret=Some(2)",
                    "net read on the block handle: ret=Some(2)",
                ]),
            ),
            (
                "ring-block-read-out-of-range",
                Refused(&["tender: ring: invalid guest access: gpa=0x1fffff6, size=512, rip="]),
            ),
            (
                "ring-block-write-out-of-range",
                Refused(&["tender: ring: invalid guest access: gpa=0x1ffff00, size=512, rip="]),
            ),
            (
                "ring-block-read-into-ring",
                Refused(&["tender: ring: invalid guest access: gpa=0x2000000, size=512, rip="]),
            ),
            (
                "ring-block-read-into-text",
                Refused(&[
                    "tender: ring: invalid guest access: gpa=0x10",
                    "(write to memory outside the guest's writable RAM)",
                ]),
            ),
            ("outl-0x600", Answered(&["the tender answered"])),
        ],
        false,
    );
    let run = run_hostile("ring-block-ranges", &["--mem=4096"]);
    assert_eq!(run.code, 3, "no block ring at --mem=4096: {}", run.context());
    assert!(run.out.contains("the tender offers no block ring"), "{}", run.context());
    let run = run_hostile("outl-0x600", &["--mem=4096"]);
    check(&run, &Want::Refused(&["tender: Invalid guest port access: port=0x600, size=4, direction=out, rip="]))
        .unwrap();
}

#[test]
fn cpl0_only_exits_reached_through_the_tender_end_the_run() {
    if kvm_only("guest-rt's CPL 0 structures (IDT, page tables) and VM exits") {
        return;
    }
    use Want::Refused;
    let cases = [
        // Where the host decides: SHUTDOWN on VMX (and here), an internal error on KVM-PVM.
        (
            "triple-fault",
            Refused(&[
                "tender: guest triple fault (KVM_EXIT_SHUTDOWN), rip=",
                "tender: KVM: internal error exit: suberror=0x1",
            ]),
        ),
        ("cpl0-hlt", Refused(&["tender: guest halted the CPU (hlt), rip=0x"])),
        ("cpl0-port-0x500", Refused(&["tender: Invalid guest hypercall: num=0, rip=0x"])),
        ("cpl0-port-0x4ff", Refused(&["tender: Invalid guest port access: port=0x4ff, size=4, direction=out, rip="])),
        ("cpl0-mmio-read", Refused(&["tender: guest access to unmapped or read-only memory: read at gpa=0xffe00000"])),
        (
            "cpl0-mmio-write",
            Refused(&["tender: guest access to unmapped or read-only memory: write at gpa=0xffe00000"]),
        ),
    ];
    for (mode, want) in &cases {
        let run = run_hostile(mode, &[]);
        check(&run, want).unwrap();
        // The attack's scratch area (last 512 bytes) is all it wrote.
        let keep = DISK_BYTES - BLOCK;
        assert!(run.disk_after[..keep] == run.disk_before[..keep], "{mode}: wrote outside its scratch block");
    }
}

fn raw_cpl0_kernel(code: &[u8]) -> Vec<u8> {
    raw_kernel(code, &[])
}

fn run_raw(tag: &str, code: &[u8]) -> (i32, String) {
    require_kvm();
    let dir = TempDir::new(tag);
    let kernel = dir.file("kernel", &raw_cpl0_kernel(code));
    let output = tender().args(["--mem=8", kernel.to_str().unwrap()]).output().unwrap();
    let code = status_of(tag, &output);
    (code, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// tender's debug port exists only under `tender-debug --gdb`: elsewhere, a forged report there
/// is an unknown port (guest-abi TENDER_DEBUG_PORT).
#[test]
fn the_debug_port_without_a_debugger_ends_the_run() {
    for area in [0x10_0100u32, 0xffff_fff0] {
        let a = area.to_le_bytes();
        // mov eax, area; mov dx, 0x604; out dx, eax; jmp .
        let (code, err) =
            run_raw("debug-port", &[0xb8, a[0], a[1], a[2], a[3], 0x66, 0xba, 0x04, 0x06, 0xef, 0xeb, 0xfe]);
        assert_eq!(code, 1, "{err}");
        assert_one_error_line(&err, "Invalid guest port access: port=0x604, size=4, direction=out");
    }
}

/// `hlt` with interrupts off at CPL 0: the vCPU would sleep forever; tender ends the run.
#[test]
fn kvm_hlt_exit_ends_the_run() {
    if kvm_only("a raw CPL 0 ELF and the HLT exit") {
        return;
    }
    let (code, err) = run_raw("hlt", &[0xf4, 0xeb, 0xfe]);
    assert_eq!(code, 1, "{err}");
    assert_one_error_line(&err, "guest halted the CPU (hlt), rip=0x100001");
}

/// An empty IDT and a breakpoint: #BP cannot be delivered, nor the #DF after it: a triple fault.
/// VMX reports KVM_EXIT_SHUTDOWN; KVM-PVM an internal error (HOST_KVM_NOTES).
#[test]
fn triple_fault_ends_the_run() {
    if kvm_only("a raw CPL 0 ELF: lidt and a triple fault") {
        return;
    }
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

#[test]
fn endless_runs_end_by_timeout() {
    for mode in ["loop", "poll-forever"] {
        let started = Instant::now();
        let run = run_hostile(mode, &["--timeout=1"]);
        assert_eq!(run.code, 1, "{}", run.context());
        assert_one_error_line(&run.err, "guest still running after --timeout=1s, stopped");
        assert!(started.elapsed() < Duration::from_secs(10), "{mode}: took {:?}", started.elapsed());
    }
}

/// Starts `hostile MODE` and returns once the guest printed its first line (it is running, with
/// tender's signal handlers installed).
fn start_hostile(mode: &str, dir: &TempDir) -> (Child, BufReader<std::process::ChildStdout>) {
    require_kvm();
    let img = dir.file("disk.img", &disk_image());
    let mut child = tender()
        .args(["--mem=32", &format!("--block:storage={}", img.display()), guest("hostile").to_str().unwrap(), mode])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tender");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, format!("hostile: {mode}\n"));
    (child, stdout)
}

/// Waits at most `limit` for `child`; kills it (and fails) if it is still running then.
fn wait_at_most(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: tender still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn endless_runs_end_by_sigterm_and_sigint() {
    for (sig, name) in [(libc::SIGTERM, "15"), (libc::SIGINT, "2")] {
        for mode in ["loop", "poll-forever"] {
            let dir = TempDir::new("hostile-signal");
            let (child, _stdout) = start_hostile(mode, &dir);
            // Well inside the loop, or the POLL's wait (see the ignored race test below).
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(child.id() as i32, sig) };
            let output = wait_at_most(child, Duration::from_secs(10), mode);
            assert_eq!(status_of(mode, &output), 1);
            assert_one_error_line(&String::from_utf8_lossy(&output.stderr), &format!("exiting on signal {name}"));
        }
    }
}

#[test]
fn net_attacks() {
    require_kvm();
    require_root();
    let g = guest("hostile-net").to_str().unwrap().to_string();
    let ns = NetNs::new("hostile");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let run_in_ns = |mode: &str| {
        // --timeout: a ring attack the tender failed to stop would otherwise spin for 10 s.
        let output = ns.tender().args(["--mem=32", "--timeout=30", "--net:service=tap0", &g, mode]).output().unwrap();
        let code = status_of(mode, &output);
        let (_, out, err) = decode(output);
        Run { mode: mode.into(), code, out, err, disk_before: vec![], disk_after: vec![] }
    };
    use Want::{Answered, Refused};
    let cases = [
        ("oversize-frame", Answered(&["hostile-net: ret=2\n"])),
        ("max-frame", Answered(&["hostile-net: ret=0\n"])),
        ("short-frame", Answered(&["hostile-net: ret=2\n"])),
        ("empty-frame", Answered(&["hostile-net: ret=2\n"])),
        ("huge-frame", Answered(&["hostile-net: ret=2\n"])),
        ("empty-read", Answered(&["hostile-net: ret=1 len=0\n"])),
        ("block-call-on-net-handle", Answered(&["BLOCK_WRITE: ret=2\n", "BLOCK_READ: ret=2\n"])),
        ("read-out-of-range", Refused(&["tender: invalid guest access: gpa=0x1fffff6, size=1514, rip="])),
        ("read-huge", Refused(&[", size=18446744073709551615, rip="])),
        ("write-out-of-range", Refused(&["tender: invalid guest access: gpa=0x1fffff6, size=60, rip="])),
        ("read-into-text", Refused(READ_ONLY)),
        ("read-struct-in-rodata", Refused(READ_ONLY)),
        ("ring-write-out-of-range", Refused(&["tender: ring: invalid guest access: gpa=0x1fffff6, size=60, rip="])),
        ("ring-read-out-of-range", Refused(&["tender: ring: invalid guest access: gpa=0x1fffff6, size=1514, rip="])),
        ("ring-read-huge", Refused(&["tender: ring: invalid guest access: gpa=", ", size=4294967295, rip="])),
        ("ring-read-into-ring", Refused(&["tender: ring: invalid guest access: gpa=0x2000000, size=1514, rip="])),
        ("ring-read-into-text", Refused(&["tender: ring: invalid guest access: gpa=0x10"])),
        ("ring-read-waiting-into-text", Refused(&["tender: ring: invalid guest access: gpa=0x10"])),
        ("ring-wait-forever", Answered(&["hostile-net: 100 waiting reads answered\n"])),
        (
            "ring-index-jump",
            Refused(&["tender: ring: ent_tail=0x1388 is more than 1024 entries ahead of ent_head=0x0"]),
        ),
        (
            "ring-index-behind",
            Refused(&["tender: ring: ent_tail=0xffffffff is more than 1024 entries ahead of ent_head=0x0"]),
        ),
        ("ring-bad-entries", Answered(&["hostile-net: every entry taken\n"])),
        ("ring-forged-host-indices", Answered(&["hostile-net: com_tail=1 ret="])),
        ("ring-kick-storm", Answered(&[])),
        ("ring-kick-byte", Refused(&["tender: Invalid guest port access: port=0x600, size=1, direction=out, rip="])),
        (
            "ring-write-out-of-range-then-halt",
            Refused(&["tender: ring: invalid guest access: gpa=0x1fffff6, size=60, rip="]),
        ),
    ];
    let mut failures: Vec<String> =
        cases.iter().filter_map(|(mode, want)| check(&run_in_ns(mode), want).err()).collect();
    let run = run_in_ns("wrong-handles");
    if check(&run, &Answered(&[])).is_err() || run.out.matches(": ret=2\n").count() != 6 {
        failures.push(run.context());
    }
    // With --mem=4096 the ring takes the top 2 MiB of the 4 GiB cap: the guest's memory ends,
    // and the ring starts, at 4094 MiB (ABI section 3).
    let output = ns.tender().args(["--mem=4096", "--net:service=tap0", &g, "ring-read-into-ring"]).output().unwrap();
    let code = status_of("ring-read-into-ring", &output);
    let (_, out, err) = decode(output);
    let run =
        Run { mode: "ring-read-into-ring (4096)".into(), code, out, err, disk_before: vec![], disk_after: vec![] };
    if let Err(e) = check(&run, &Refused(&["ring: invalid guest access: gpa=0xffe00000, size=1514, rip="])) {
        failures.push(e);
    }
    let run = run_in_ns("ring-bad-entries");
    if run.out.matches("hostile-net: ring read ret=2\n").count() != 5 {
        failures.push(format!("expected five EINVAL commits\n{}", run.context()));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // A frame read into one byte: the guest waits, the test sends a ping (an ARP first).
    let mut cmd = ns.tender();
    cmd.args(["--mem=32", "--net:service=tap0", &g, "tiny-read"]);
    let guest_run = Running::spawn(cmd);
    std::thread::sleep(Duration::from_millis(300));
    let _ = ns.command("ping").args(["-c", "1", "-W", "1", "10.0.0.2"]).output();
    let (code, out, err) = guest_run.wait();
    let run = Run { mode: "tiny-read".into(), code, out, err, disk_before: vec![], disk_after: vec![] };
    check(&run, &Answered(&["hostile-net: ret=0 len=1\n"])).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tender bugs found by this suite. Each test states what should happen; they fail today.
// ---------------------------------------------------------------------------------------------

/// A SIGTERM that lands after KVM_RUN returned for a POLL and before tender blocks in
/// epoll_wait is lost: the handler only sets a flag and `immediate_exit`, which epoll_wait does
/// not look at, so tender sleeps for the guest's whole timeout (here ~584 years). Measured: 24
/// of 150 runs hung. The same holds for SIGINT and for `--timeout`'s SIGALRM.
#[test]

fn a_signal_just_before_a_poll_is_never_lost() {
    let mut hung = 0;
    for i in 0..100u64 {
        let dir = TempDir::new("hostile-poll-race");
        let (child, _stdout) = start_hostile("poll-forever", &dir);
        // Right when the guest goes from its PUTS to the POLL, at slightly varying moments.
        std::thread::sleep(Duration::from_micros(i % 20 * 5));
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut child = child;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                hung += 1;
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(hung, 0, "SIGTERM was lost in {hung} of 100 runs");
}

/// With stderr a broken pipe (e.g. `tender … 2>&1 | head -1`), the end-of-run line makes
/// `eprintln!` panic; the panic aborts, and inside the sandbox abort's syscalls are not allowed:
/// tender dies of SIGSYS (`--seccomp=off`: SIGABRT). It should still exit with its status.
#[test]

fn a_broken_stderr_does_not_kill_tender() {
    require_kvm();
    let dir = TempDir::new("hostile-stderr");
    let img = dir.file("disk.img", &disk_image());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = tender()
        .args(["--mem=32", &format!("--block:storage={}", img.display()), guest("hostile").to_str().unwrap()])
        .arg("puts-out-of-range")
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(output.status.signal(), None, "tender died of a signal");
    assert_eq!(output.status.code(), Some(1));
}

/// A guest printing to a stdout nobody drains blocks tender in write(2). A signal interrupts the
/// write, and PUTS looks for a pending signal before it writes again, so `--timeout` bounds the
/// run even then (it once retried on EINTR without looking, and never ended).
#[test]
fn timeout_ends_a_run_blocked_on_its_output() {
    require_kvm();
    let dir = TempDir::new("hostile-stdout");
    let img = dir.file("disk.img", &disk_image());
    let (reader, writer) = std::io::pipe().unwrap();
    let child = tender()
        .args(["--timeout=1", "--mem=32", &format!("--block:storage={}", img.display())])
        .args([guest("hostile").to_str().unwrap(), "puts-large"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_at_most(child, Duration::from_secs(5), "puts-large with --timeout=1")
    }));
    drop(reader);
    let output = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(status_of("puts-large", &output), 1);
    assert_one_error_line(&String::from_utf8_lossy(&output.stderr), "guest still running after --timeout=1s");
}
