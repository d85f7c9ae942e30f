//! Booting the real hello unikernel, and everything tender must refuse before it boots anything.

mod common;

use common::*;
use goblin::elf::Elf;
use goblin::elf::program_header::{PF_W, PF_X, PT_LOAD, PT_NOTE};

fn hello() -> String {
    require_kvm();
    guest("hello").to_str().unwrap().to_string()
}

#[test]
fn hello_prints_greeting_and_command_line() {
    let (code, out, err) = run(&[&hello(), "one", "two  three"]);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(out.contains("Hello, world!"), "{out}");
    assert!(out.contains("cmdline: one two  three"), "{out}");
    assert_eq!(err, "");
}

#[test]
fn guest_exit_status_becomes_tender_status() {
    for status in ["0", "1", "7", "254"] {
        let (code, _, _) = run(&[&hello(), "fail", status]);
        assert_eq!(code.to_string(), status);
    }
}

#[test]
fn panic_aborts_with_255_and_a_message() {
    let (code, out, _) = run(&[&hello(), "panic"]);
    assert_eq!(code, 255);
    assert!(out.contains("panic") && out.contains("panicking as asked"), "{out}");
}

#[test]
fn fault_is_reported_by_guest_and_tender() {
    let (code, out, err) = run(&[&hello(), "fault"]);
    assert_eq!(code, 255);
    if process_mode() {
        // The exception reaches tender as SIGSEGV, not the guest's IDT: tender alone reports it.
        assert!(err.contains("(vector 14)"), "{err}");
    } else {
        assert!(out.contains("trap") && out.contains("#PF"), "guest line: {out}");
    }
    assert!(err.contains("CPU exception") && err.contains("rip=0x") && err.contains("cr2=0x8"), "{err}");
}

#[test]
fn heap_and_clocks_work() {
    let (code, out, err) = run(&[&hello(), "alloc"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("alloc ok"), "{out}");
    let (code, out, err) = run(&["--mem=16", &hello(), "time"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn mem_option_spellings_and_rounding() {
    let h = hello();
    assert_eq!(run(&["--mem=16", &h]).0, 0);
    assert_eq!(run(&["--mem", "16", &h]).0, 0);
    let (code, _, err) = run(&["--mem=17", &h]);
    assert_eq!(code, 0);
    assert!(err.contains("adjusting memory to 16777216 bytes"), "{err}");
    assert_eq!(run(&["--", &h]).0, 0);
}

#[test]
fn bad_options_give_one_line_and_exit_1() {
    let h = hello();
    for (args, want) in [
        (vec!["--mem=0", &h], "below the minimum"),
        (vec!["--mem=4098", &h], "exceeds the max size"),
        (vec!["--mem=lots", &h], "Malformed argument to --mem"),
        (vec!["--frobnicate", &h], "unexpected argument '--frobnicate'"),
        (vec![], "Missing KERNEL"),
        (vec!["--block:disk=/nonexistent", &h], "Resource not declared in manifest: 'disk'"),
        (vec!["--net", "tap0", &h], "declares no NET_BASIC device"),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        assert_one_error_line(&err, want);
    }
}

#[test]
fn long_command_line_is_refused() {
    let long = "x".repeat(8192);
    let (code, _, err) = run(&[&hello(), &long]);
    assert_eq!(code, 1);
    assert_one_error_line(&err, "Guest command line too long (max=8191 characters)");
    let ok = "x".repeat(8191);
    assert_eq!(run(&[&hello(), &ok]).0, 0);
}

#[test]
fn help_and_version_go_to_stdout() {
    let (code, out, err) = run(&["--help"]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert!(out.contains("Usage: tender") && out.contains("--block:NAME=PATH"), "{out}");
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.contains("ABI version 2"), "{out}");
}

#[test]
fn missing_and_non_elf_kernels() {
    let (code, _, err) = run(&["/nonexistent/kernel"]);
    assert_eq!(code, 1);
    assert_one_error_line(&err, "/nonexistent/kernel: No such file or directory");
    let dir = TempDir::new("nonelf");
    let f = dir.file("k", b"#!/bin/sh\necho not an elf\n");
    let (code, _, err) = run(&[f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_one_error_line(&err, "invalid executable");
}

/// `@FD` as the kernel: the file a runtime opened and checked is the file run, from offset 0
/// whatever the fd's position; an fd that is not open is one clear line.
#[test]
fn kernel_from_an_open_fd() {
    use std::io::Read as _;
    let mut file = std::fs::File::open(hello()).unwrap();
    let mut first = [0u8; 16];
    file.read_exact(&mut first).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut cmd = tender();
    cmd.args([format!("@{fd}"), "from-fd".into()]);
    inherit_fd(&mut cmd, fd);
    let (code, out, err) = decode(cmd.output().unwrap());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cmdline: from-fd"), "{out}");
    let (code, _, err) = run(&["@99"]);
    assert_eq!(code, 1);
    assert_one_error_line(&err, "@99: Bad file descriptor");
}

/// The check a container runtime uses to tell unikernels from ordinary programs.
#[test]
fn solo5_abi_note_tells_unikernels_from_programs() {
    assert!(tender::elf::has_solo5_abi_note(&std::fs::read(hello()).unwrap()));
    assert!(!tender::elf::has_solo5_abi_note(&std::fs::read(tender_path()).unwrap()));
    assert!(!tender::elf::has_solo5_abi_note(b"#!/bin/sh\n"));
    // The same answer from a file, reading only headers and notes.
    let file = |p: &dyn AsRef<std::path::Path>| tender::elf::file_has_solo5_abi_note(&std::fs::File::open(p).unwrap());
    assert!(file(&hello()));
    assert!(!file(&tender_path()));
}

/// Byte-level edits of the real hello ELF.
struct Image {
    bytes: Vec<u8>,
}

impl Image {
    fn hello() -> Self {
        Image { bytes: std::fs::read(hello()).unwrap() }
    }

    fn phdrs(&self) -> Vec<(usize, goblin::elf::ProgramHeader)> {
        let elf = Elf::parse(&self.bytes).unwrap();
        let phoff = elf.header.e_phoff as usize;
        elf.program_headers.into_iter().enumerate().map(|(i, p)| (phoff + i * 56, p)).collect()
    }

    fn put_u16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, at: usize, v: u64) {
        self.bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// File offset of the note of type `ty` (the first note of its PT_NOTE).
    fn note(&self, ty: u32) -> usize {
        self.phdrs()
            .into_iter()
            .filter(|(_, p)| p.p_type == PT_NOTE)
            .map(|(_, p)| p.p_offset as usize)
            .find(|&off| u32::from_le_bytes(self.bytes[off + 8..off + 12].try_into().unwrap()) == ty)
            .expect("note present")
    }

    fn first_load(&self, writable: bool) -> (usize, goblin::elf::ProgramHeader) {
        self.phdrs()
            .into_iter()
            .find(|(_, p)| p.p_type == PT_LOAD && p.p_filesz > 0 && (p.p_flags & PF_W != 0) == writable)
            .expect("PT_LOAD")
    }

    fn run(&self, tag: &str) -> (i32, String) {
        let dir = TempDir::new(tag);
        let f = dir.file("kernel", &self.bytes);
        let (code, out, err) = run(&["--mem=8", f.to_str().unwrap()]);
        assert_eq!(out, "", "{tag}: nothing may run");
        (code, err)
    }
}

const ABI: u32 = guest_abi::NOTE_TYPE_ABI;
const MFT: u32 = guest_abi::NOTE_TYPE_MANIFEST;

#[test]
fn the_unmodified_image_boots() {
    let (code, err) = {
        let img = Image::hello();
        let dir = TempDir::new("unmodified");
        let f = dir.file("kernel", &img.bytes);
        let (c, _, e) = run(&["--mem=8", f.to_str().unwrap()]);
        (c, e)
    };
    assert_eq!(code, 0, "{err}");
}

#[test]
fn broken_elfs_are_rejected_with_one_line() {
    type Edit = fn(&mut Image);
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("truncated", |i| i.bytes.truncate(40), "invalid executable"),
        ("truncated-phdrs", |i| i.bytes.truncate(100), "invalid executable"),
        ("wrong-machine", |i| i.put_u16(18, 183), "not an x86-64 executable"),
        ("et-dyn", |i| i.put_u16(16, 3), "not an ET_EXEC executable"),
        ("32-bit", |i| i.bytes[4] = 1, "invalid executable"),
        (
            "no-abi-note",
            |i| {
                let n = i.note(ABI);
                i.put_u32(n + 8, 0x1234);
            },
            "No Solo5 ABI information found",
        ),
        (
            "wrong-target",
            |i| {
                let n = i.note(ABI);
                i.put_u32(n + 20, 2);
            },
            "not for the solo5-hvt target",
        ),
        (
            "wrong-version",
            |i| {
                let n = i.note(ABI);
                i.put_u32(n + 24, 1);
            },
            "unsupported ABI version 1",
        ),
        (
            "no-manifest",
            |i| {
                let n = i.note(MFT);
                i.put_u32(n + 8, 0x1234);
            },
            "No Solo5 manifest found",
        ),
        (
            "bad-manifest-version",
            |i| {
                let n = i.note(MFT);
                i.put_u32(n + 24, 2);
            },
            "Solo5 manifest is invalid",
        ),
        (
            "bad-manifest-count",
            |i| {
                let n = i.note(MFT);
                i.put_u32(n + 28, 3);
            },
            "Solo5 manifest is invalid",
        ),
        (
            "manifest-desc-too-big",
            |i| {
                let n = i.note(MFT);
                i.put_u32(n + 4, 100_000);
            },
            "note does not fall within valid size",
        ),
        (
            "manifest-desc-underflow",
            |i| {
                let n = i.note(MFT);
                i.put_u32(n + 4, 2);
            },
            "note does not fall within valid size",
        ),
        (
            "w+x",
            |i| {
                let (at, p) = i.first_load(false);
                i.put_u32(at + 4, p.p_flags | PF_W | PF_X);
            },
            "WRITE and EXEC",
        ),
        (
            "no-access",
            |i| {
                let (at, _) = i.first_load(false);
                i.put_u32(at + 4, 0);
            },
            "grants no access",
        ),
        (
            "outside-memory",
            |i| {
                let (at, _) = i.first_load(true);
                i.put_u64(at + 16, 0x7ff_0000);
            },
            "outside guest memory",
        ),
        (
            "below-min-base",
            |i| {
                let (at, _) = i.first_load(false);
                i.put_u64(at + 16, 0x1000);
            },
            "below the guest's minimum",
        ),
        (
            "huge-memsz",
            |i| {
                let (at, _) = i.first_load(true);
                i.put_u64(at + 40, u64::MAX - 10);
            },
            "outside guest memory",
        ),
        (
            "bad-align",
            |i| {
                let (at, _) = i.first_load(true);
                i.put_u64(at + 48, 3);
            },
            "not a power of two",
        ),
        (
            "filesz-beyond-file",
            |i| {
                let (at, _) = i.first_load(true);
                i.put_u64(at + 32, 1 << 40);
            },
            "outside",
        ),
        ("entry-too-low", |i| i.put_u64(24, 0x1000), "entry point outside guest memory"),
        ("entry-too-high", |i| i.put_u64(24, 0x1_0000_0000), "entry point outside guest memory"),
    ];
    for (tag, edit, want) in cases {
        let mut img = Image::hello();
        edit(&mut img);
        let (code, err) = img.run(tag);
        assert_eq!(code, 1, "{tag}: {err}");
        assert_one_error_line(&err, want);
    }
}

/// Without /dev/kvm (hidden here by a private, empty /dev), tender says so in one line.
#[test]
fn missing_dev_kvm_is_one_clear_line() {
    require_kvm();
    let h = hello();
    let script = format!("mount -t tmpfs none /dev && exec {} {h}", tender_path().display());
    let out = std::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) is needed for this test");
    let (code, stdout, stderr) = decode(out);
    assert_eq!((code, stdout.as_str()), (1, ""), "{stderr}");
    assert_one_error_line(&stderr, "cannot open /dev/kvm: No such file or directory");
}
