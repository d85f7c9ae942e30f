//! Model-based fuzzing of everything a guest or a user hands tender: the ELF loader (header,
//! PT_NOTE notes, manifest, PT_LOAD rules), the manifest parser, the guest-memory range checks
//! (also after `protect_read_only`), hypercall decoding and the command line.
//!
//! Each property runs a fixed number of cases from a fixed ChaCha seed, so every CI run checks
//! exactly the same inputs. The inputs are not only random bytes: valid hvt ELFs are *built* here
//! from guest-abi's note and manifest types (no binary corpus), then mutated at the offsets of
//! their header, program-header, note and manifest fields. Every result is compared with a small
//! reference model written from `SOLO5_HVT_ABI.md` sections 2 and 5, so a wrong accept or a
//! wrong reject fails as surely as a panic. A global counting allocator turns an absurd
//! allocation into a failed run.
//!
//! `PROPTEST_CASES=N` (or `FUZZ_CASES=N`) sets the case count of every property (a long session);
//! `TENDER_FUZZ_SEED=N` (a u64) varies the seed. See docs/FUZZING.md.

use std::alloc::System;
use std::sync::Mutex;
use std::time::Instant;

use cap::Cap;
use guest_abi::{
    ABI_TARGET_HVT, ABI_VERSION, AbiNote, BootInfo, GUEST_MIN_BASE, HcBlock, HcHalt, HcPoll, HcWalltime, Hypercall,
    MEM_ALIGN, MEM_MAX, MEM_MIN, MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, MFT_MAX_ENTRIES, MFT_NAME_SIZE,
    MFT_RESERVED_FIRST, MFT_VERSION, ManifestNote, MftEntry, NOTE_ABI_MAX_DESC, NOTE_HEADER_SIZE,
    NOTE_MANIFEST_MAX_DESC, NOTE_MANIFEST_PAD, NOTE_NAME, NOTE_TYPE_MANIFEST, TrapReport, mft_size,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use tender::Config;
use tender::cli::{self, Command};
use tender::config::{BlockSpec, NetSpec};
use tender::devices::net::TapSource;
use tender::elf::{Kernel, Segment};
use tender::manifest::Manifest;
use tender::memory::GuestRam;
use tender::sandbox::SeccompMode;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

// ---------------------------------------------------------------------------------------------
// Runner: fixed seed, bounded and overridable case count
// ---------------------------------------------------------------------------------------------

/// The fixed seed of every property (32 bytes for ChaCha).
const SEED: [u8; 32] = *b"tender/fuzz_model: fixed seed v1";

fn seed() -> [u8; 32] {
    let mut seed = SEED;
    if let Some(n) = std::env::var("TENDER_FUZZ_SEED").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        for (b, x) in seed.iter_mut().zip(n.to_le_bytes()) {
            *b ^= x;
        }
    }
    seed
}

/// `PROPTEST_CASES` (or `FUZZ_CASES`, as for fuzz_inputs.rs) overrides every property's default
/// case count.
fn cases(default: u32) -> u32 {
    ["PROPTEST_CASES", "FUZZ_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok().and_then(|v| v.trim().parse().ok()))
        .unwrap_or(default)
}

/// Runs `test` on `cases(default_cases)` inputs from the fixed seed; a failure panics with
/// proptest's shrunk (minimal) input.
fn fuzz<S: Strategy>(name: &str, default_cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let n = cases(default_cases);
    let config =
        ProptestConfig { cases: n, failure_persistence: None, max_shrink_iters: 10_000, ..ProptestConfig::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed()));
    let started = Instant::now();
    OUTCOMES.with_borrow_mut(|o| o.clear());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}");
    }
    let outcomes = OUTCOMES.with_borrow(|o| o.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    let outcomes = if outcomes.is_empty() { String::new() } else { format!(" [{outcomes}]") };
    eprintln!("fuzz_model: {name}: {n} cases passed in {:.2} s{outcomes}", started.elapsed().as_secs_f64());
}

thread_local! {
    /// How the inputs of the running property ended (accepted, or which error), for the log.
    static OUTCOMES: std::cell::RefCell<std::collections::BTreeMap<String, u64>> = Default::default();
}

fn count(outcome: &str) {
    OUTCOMES.with_borrow_mut(|o| *o.entry(outcome.to_string()).or_default() += 1);
}

/// The variant name of an error's Debug form (`Segment { .. }` -> `Segment`).
fn variant(e: &impl std::fmt::Debug) -> String {
    format!("{e:?}").split(|c: char| !c.is_alphanumeric()).next().unwrap_or_default().to_string()
}

/// Heap growth allowed while one input is parsed. Parsers see at most a few KiB here; the ELF
/// loader's largest legitimate allocation is its program-header table, bounded by the image.
const ALLOC_BUDGET: usize = 64 << 20;
static BUDGET_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with the process's heap capped at its current size plus [`ALLOC_BUDGET`]: an
/// absurd allocation (a length field trusted as a size) aborts the run with "memory allocation
/// of N bytes failed" instead of passing or swapping.
fn within_alloc_budget<R>(f: impl FnOnce() -> R) -> R {
    let _guard = BUDGET_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let _ = ALLOCATOR.set_limit(ALLOCATOR.allocated().saturating_add(ALLOC_BUDGET));
    let r = f();
    let _ = ALLOCATOR.set_limit(usize::MAX);
    r
}

// ---------------------------------------------------------------------------------------------
// Little-endian helpers
// ---------------------------------------------------------------------------------------------

fn rd(b: &[u8], at: usize, width: usize) -> u64 {
    b[at..at + width].iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x))
}

fn wr(b: &mut [u8], at: usize, width: usize, v: u64) {
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

// ---------------------------------------------------------------------------------------------
// ELF builder: a minimal, valid hvt unikernel image
// ---------------------------------------------------------------------------------------------

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const PT_TLS: u32 = 7;
const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
const PAGE: u64 = 0x1000;

#[derive(Clone, Copy, Debug, Default)]
struct Phdr {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

impl Phdr {
    fn read(b: &[u8]) -> Phdr {
        Phdr {
            p_type: rd(b, 0, 4) as u32,
            flags: rd(b, 4, 4) as u32,
            offset: rd(b, 8, 8),
            vaddr: rd(b, 16, 8),
            filesz: rd(b, 32, 8),
            memsz: rd(b, 40, 8),
            align: rd(b, 48, 8),
        }
    }

    fn write(&self, b: &mut [u8]) {
        wr(b, 0, 4, self.p_type.into());
        wr(b, 4, 4, self.flags.into());
        wr(b, 8, 8, self.offset);
        wr(b, 16, 8, self.vaddr);
        wr(b, 24, 8, self.vaddr); // p_paddr: ignored by the loader
        wr(b, 32, 8, self.filesz);
        wr(b, 40, 8, self.memsz);
        wr(b, 48, 8, self.align);
    }
}

fn entry_bytes(e: &MftEntry) -> Vec<u8> {
    let mut b = Vec::with_capacity(104);
    b.extend_from_slice(&e.name);
    b.extend_from_slice(&e.dev_type.to_le_bytes());
    b.extend_from_slice(&e.device);
    b.extend_from_slice(&e.host_private.to_le_bytes());
    b.push(e.attached);
    b.extend_from_slice(&e._pad);
    b
}

fn abi_note_bytes(n: &AbiNote) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [n.namesz, n.descsz, n.note_type] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&n.name);
    for v in [n.abi.target, n.abi.version, n.abi.reserved[0], n.abi.reserved[1]] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// The manifest note of a fixed-size manifest, field by field from guest-abi's `ManifestNote`.
fn manifest_note_bytes_fixed<const N: usize>(n: &ManifestNote<N>) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [n.namesz, n.descsz, n.note_type] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&n.name);
    b.extend_from_slice(&n._pad.to_le_bytes());
    b.extend_from_slice(&n.header.version.to_le_bytes());
    b.extend_from_slice(&n.header.entries.to_le_bytes());
    n.entries.iter().for_each(|e| b.extend_from_slice(&entry_bytes(e)));
    b
}

/// The same note for any number of entries (what `ManifestNote::<N>::new` lays out).
fn manifest_note_bytes(entries: &[MftEntry]) -> Vec<u8> {
    let mut b = Vec::new();
    let descsz = (NOTE_MANIFEST_PAD + mft_size(entries.len() as u32)) as u32;
    for v in [NOTE_NAME.len() as u32, descsz, NOTE_TYPE_MANIFEST] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&NOTE_NAME);
    b.extend_from_slice(&[0; 2 + NOTE_MANIFEST_PAD]);
    b.extend_from_slice(&MFT_VERSION.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    entries.iter().for_each(|e| b.extend_from_slice(&entry_bytes(e)));
    b
}

/// A note that is not Solo5's (a GNU build-id), which the loader must skip.
fn foreign_note_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    for v in [4u32, 8, 3] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(b"GNU\0");
    b.extend_from_slice(&[0xab; 8]);
    b
}

/// `.note.solo5.not_openbsd`: name "OpenBSD", type 1, 4 zero bytes.
fn openbsd_note_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    for v in [8u32, 4, 1] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(b"OpenBSD\0");
    b.extend_from_slice(&[0; 4]);
    b
}

#[derive(Clone, Debug)]
struct LoadSpec {
    vaddr: u64,
    data: Vec<u8>,
    memsz: u64,
    align: u64,
    flags: u32,
}

/// Optional parts of a real Solo5 binary, all of which the loader must tolerate.
#[derive(Clone, Copy, Debug, Default)]
struct Extras {
    interp: bool,
    tdata_at_zero: bool,
    bss: bool,
    tls_and_stack: bool,
    openbsd_note: bool,
    foreign_note: bool,
    /// A PT_NOTE of 12..20 bytes: skipped, not an error.
    short_note: bool,
    manifest_first: bool,
}

#[derive(Clone, Debug)]
struct ElfSpec {
    entry: u64,
    mem_size: u64,
    loads: Vec<LoadSpec>,
    manifest: Vec<MftEntry>,
    extras: Extras,
}

/// A field of the built image that mutations aim at.
#[derive(Clone, Copy, Debug)]
struct Field {
    at: usize,
    width: usize,
    /// 0: ELF header, 1: program header, 2: note or manifest.
    group: u8,
}

#[derive(Clone, Debug)]
struct Built {
    image: Vec<u8>,
    fields: Vec<Field>,
    segments: Vec<Segment>,
    manifest_payload: Vec<u8>,
}

fn build(spec: &ElfSpec) -> Built {
    let x = spec.extras;
    // Note blobs, in PT_NOTE order.
    let mut notes: Vec<(Vec<u8>, u64)> = Vec::new(); // (bytes, p_filesz)
    if x.short_note {
        notes.push((vec![0; 16], 16));
    }
    if x.openbsd_note {
        let b = openbsd_note_bytes();
        let n = b.len() as u64;
        notes.push((b, n));
    }
    if x.foreign_note {
        let b = foreign_note_bytes();
        let n = b.len() as u64;
        notes.push((b, n));
    }
    let abi = abi_note_bytes(&AbiNote::HVT);
    let mft = manifest_note_bytes(&spec.manifest);
    let (abi_len, mft_len) = (abi.len() as u64, mft.len() as u64);
    let abi_index = notes.len() + usize::from(x.manifest_first);
    let mft_index = notes.len() + usize::from(!x.manifest_first);
    if x.manifest_first {
        notes.push((mft, mft_len));
        notes.push((abi, abi_len));
    } else {
        notes.push((abi, abi_len));
        notes.push((mft, mft_len));
    }

    let mut phdrs: Vec<Phdr> = Vec::new();
    if x.interp {
        phdrs.push(Phdr { p_type: PT_INTERP, flags: PF_R, align: 1, ..Phdr::default() });
    }
    if x.tdata_at_zero {
        phdrs.push(Phdr { p_type: PT_LOAD, flags: PF_R, align: PAGE, ..Phdr::default() });
    }
    let first_load = phdrs.len();
    for l in &spec.loads {
        let len = l.data.len() as u64;
        phdrs.push(Phdr {
            p_type: PT_LOAD,
            flags: l.flags,
            vaddr: l.vaddr,
            filesz: len,
            memsz: l.memsz,
            align: l.align,
            ..Phdr::default()
        });
    }
    if x.bss {
        let end = spec.loads.last().map_or(GUEST_MIN_BASE, |l| align_up(l.vaddr + l.memsz, l.align));
        phdrs.push(Phdr {
            p_type: PT_LOAD,
            flags: PF_R | PF_W,
            vaddr: end,
            memsz: 2 << 20,
            align: PAGE,
            ..Phdr::default()
        });
    }
    if x.tls_and_stack {
        phdrs.push(Phdr { p_type: PT_TLS, flags: PF_R, align: 8, ..Phdr::default() });
        phdrs.push(Phdr { p_type: PT_GNU_STACK, flags: PF_R | PF_W, align: 16, ..Phdr::default() });
    }
    let first_note = phdrs.len();
    for (_, filesz) in &notes {
        phdrs.push(Phdr { p_type: PT_NOTE, flags: PF_R, filesz: *filesz, memsz: *filesz, align: 8, ..Phdr::default() });
    }

    // File layout: ELF header, program headers, notes, interpreter string, segment contents.
    let mut image = vec![0u8; EHDR_SIZE + PHDR_SIZE * phdrs.len()];
    let place = |image: &mut Vec<u8>, bytes: &[u8], align: usize| -> u64 {
        image.resize(image.len().next_multiple_of(align), 0);
        let at = image.len();
        image.extend_from_slice(bytes);
        at as u64
    };
    let mut note_at = Vec::new();
    for (i, (bytes, _)) in notes.iter().enumerate() {
        let at = place(&mut image, bytes, 8);
        phdrs[first_note + i].offset = at;
        note_at.push(at as usize);
    }
    if x.interp {
        let interp = b"/nonexistent/solo5/\0";
        phdrs[0].offset = place(&mut image, interp, 1);
        phdrs[0].filesz = interp.len() as u64;
        phdrs[0].memsz = interp.len() as u64;
    }
    let mut segments = Vec::new();
    for (i, l) in spec.loads.iter().enumerate() {
        let at = place(&mut image, &l.data, 16);
        phdrs[first_load + i].offset = at;
        segments.push(Segment {
            vaddr: l.vaddr,
            file_offset: at as usize,
            file_size: l.data.len(),
            start: l.vaddr & !(l.align - 1),
            end: align_up(l.vaddr + l.memsz, l.align),
            writable: l.flags & PF_W != 0,
            executable: l.flags & PF_X != 0,
        });
    }

    // ELF header.
    image[0..4].copy_from_slice(b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // ELFDATA2LSB
    image[6] = 1; // EV_CURRENT
    wr(&mut image, 16, 2, 2); // ET_EXEC
    wr(&mut image, 18, 2, 62); // EM_X86_64
    wr(&mut image, 20, 4, 1);
    wr(&mut image, 24, 8, spec.entry);
    wr(&mut image, 32, 8, EHDR_SIZE as u64);
    wr(&mut image, 52, 2, EHDR_SIZE as u64);
    wr(&mut image, 54, 2, PHDR_SIZE as u64);
    wr(&mut image, 56, 2, phdrs.len() as u64);
    for (i, ph) in phdrs.iter().enumerate() {
        ph.write(&mut image[EHDR_SIZE + i * PHDR_SIZE..]);
    }

    // Where mutations aim: every header, program-header, note and manifest field.
    let mut fields: Vec<Field> =
        [(4, 1), (5, 1), (16, 2), (18, 2), (20, 4), (24, 8), (32, 8), (52, 2), (54, 2), (56, 2)]
            .into_iter()
            .map(|(at, width)| Field { at, width, group: 0 })
            .collect();
    for i in 0..phdrs.len() {
        let base = EHDR_SIZE + i * PHDR_SIZE;
        for (off, width) in [(0, 4), (4, 4), (8, 8), (16, 8), (32, 8), (40, 8), (48, 8)] {
            fields.push(Field { at: base + off, width, group: 1 });
        }
    }
    for &at in &note_at {
        for (off, width) in [(0, 4), (4, 4), (8, 4), (12, 8)] {
            fields.push(Field { at: at + off, width, group: 2 });
        }
    }
    let abi_at = note_at[abi_index];
    fields.extend([Field { at: abi_at + 20, width: 4, group: 2 }, Field { at: abi_at + 24, width: 4, group: 2 }]);
    let mft_at = note_at[mft_index] + NOTE_HEADER_SIZE + NOTE_MANIFEST_PAD;
    fields.extend([Field { at: mft_at, width: 4, group: 2 }, Field { at: mft_at + 4, width: 4, group: 2 }]);
    let n = spec.manifest.len();
    for e in [0, 1, n - 1, n / 2] {
        if e < n {
            let base = mft_at + 8 + e * 104;
            for (off, width) in [(0, 1), (67, 1), (68, 4), (88, 8), (96, 1), (97, 1)] {
                fields.push(Field { at: base + off, width, group: 2 });
            }
        }
    }
    let manifest_payload = image[mft_at..mft_at + mft_size(n as u32)].to_vec();
    Built { image, fields, segments, manifest_payload }
}

// ---------------------------------------------------------------------------------------------
// Reference model of ABI section 2 (written from the fact sheet, not from elf.rs)
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct ModelKernel {
    entry: u64,
    segments: Vec<Segment>,
    kernel_end: u64,
    /// The manifest as the guest will see it: host-private field and padding zeroed.
    manifest_guest_bytes: Vec<u8>,
}

/// `image[offset..offset + len]`, if it is all inside the image.
fn range(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let (offset, len) = (u128::from(offset), u128::from(len));
    if offset + len > image.len() as u128 {
        return None;
    }
    Some(&image[offset as usize..(offset + len) as usize])
}

/// ABI 2.2: the first note of each PT_NOTE, in phdr order. `Err` rejects the executable.
fn model_note<'a>(image: &'a [u8], phdrs: &[Phdr], ty: u32, max: u32, pad: u64) -> Result<Option<&'a [u8]>, ()> {
    for ph in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        if ph.filesz < 12 {
            return Err(());
        }
        if ph.filesz < 20 {
            continue;
        }
        let head = range(image, ph.offset, 20).ok_or(())?;
        if rd(head, 0, 4) != 6 || head[12..18] != *b"Solo5\0" || rd(head, 8, 4) != u64::from(ty) {
            continue;
        }
        let descsz = rd(head, 4, 4);
        if descsz < 1 || descsz > u64::from(max) || ph.filesz < 20 + descsz || descsz < pad {
            return Err(());
        }
        return range(image, ph.offset + 20 + pad, descsz - pad).map(Some).ok_or(());
    }
    Ok(None)
}

/// ABI 2.3 (`mft_validate`).
fn model_manifest(b: &[u8]) -> Option<Vec<u8>> {
    if b.len() < 8 || rd(b, 0, 4) != 1 {
        return None;
    }
    let n = rd(b, 4, 4);
    if !(1..=64).contains(&n) || b.len() as u64 != 8 + 104 * n {
        return None;
    }
    let entries: Vec<&[u8]> = b[8..].chunks(104).collect();
    if rd(entries[0], 68, 4) != 0x4000_0000 || entries[0][0] != 0 {
        return None;
    }
    if entries.iter().any(|e| e[67] != 0 || e[96] != 0) {
        return None;
    }
    let mut guest = b.to_vec();
    for e in guest[8..].chunks_mut(104) {
        e[88..96].fill(0);
        e[97..104].fill(0);
    }
    Some(guest)
}

/// ABI 2.1, 2.2 and 2.4, plus tender's two tightenings: an ABI note shorter than its target and
/// version fields, or an image with no non-empty PT_LOAD, is rejected.
fn model_kernel(image: &[u8], mem: u64) -> Option<ModelKernel> {
    let h = image.get(..64)?;
    if h[..4] != *b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return None;
    }
    let (e_type, machine, version, entry) = (rd(h, 16, 2), rd(h, 18, 2), rd(h, 20, 4), rd(h, 24, 8));
    let (phoff, ehsize, phentsize, phnum) = (rd(h, 32, 8), rd(h, 52, 2), rd(h, 54, 2), rd(h, 56, 2));
    if version != 1 || ehsize != 64 || phentsize != 56 || phnum < 1 || e_type != 2 || machine != 62 {
        return None;
    }
    let table = range(image, phoff, phnum * 56)?;
    let phdrs: Vec<Phdr> = table.chunks(56).map(Phdr::read).collect();

    let abi = model_note(image, &phdrs, 0x3149_4241, 32, 0).ok()??;
    if abi.len() < 8 || rd(abi, 0, 4) != 1 || rd(abi, 4, 4) != 2 {
        return None;
    }
    let manifest = model_note(image, &phdrs, 0x3154_464d, 6668, 4).ok()??;
    let manifest_guest_bytes = model_manifest(manifest)?;

    let (min, mem) = (0x10_0000u128, u128::from(mem));
    let mut segments = Vec::new();
    let (mut prev_vaddr, mut prev_end) = (0u128, 0u128);
    for ph in phdrs.iter().filter(|p| p.p_type == PT_LOAD && p.filesz != 0) {
        let (vaddr, filesz, memsz, align) =
            (u128::from(ph.vaddr), u128::from(ph.filesz), u128::from(ph.memsz), u128::from(ph.align));
        if vaddr < min || vaddr < prev_vaddr || !ph.align.is_power_of_two() {
            return None;
        }
        let start = vaddr - vaddr % align;
        let end = (vaddr + memsz).div_ceil(align) * align;
        let ok = start >= min
            && start >= prev_end
            && vaddr < mem
            && vaddr + filesz <= mem
            && memsz >= filesz
            && end <= mem
            && start % 4096 == 0
            && end % 4096 == 0
            && !(ph.flags & PF_W != 0 && ph.flags & PF_X != 0)
            && ph.flags & (PF_R | PF_W | PF_X) != 0
            && range(image, ph.offset, ph.filesz).is_some();
        if !ok {
            return None;
        }
        segments.push(Segment {
            vaddr: ph.vaddr,
            file_offset: ph.offset as usize,
            file_size: ph.filesz as usize,
            start: start as u64,
            end: end as u64,
            writable: ph.flags & PF_W != 0,
            executable: ph.flags & PF_X != 0,
        });
        (prev_vaddr, prev_end) = (vaddr, end);
    }
    if segments.is_empty() || u128::from(entry) < min || u128::from(entry) >= mem {
        return None;
    }
    let kernel_end = segments.iter().map(|s| s.end).max()?;
    Some(ModelKernel { entry, segments, kernel_end, manifest_guest_bytes })
}

/// The ABI invariants of an accepted kernel, checked directly on the result and the raw image.
fn check_invariants(k: &Kernel, image: &[u8], mem: u64) -> Result<(), TestCaseError> {
    prop_assert!(k.entry >= GUEST_MIN_BASE && k.entry < mem, "entry {:#x}", k.entry);
    prop_assert!(!k.segments.is_empty());
    let phnum = rd(image, 56, 2) as usize;
    let phoff = rd(image, 32, 8) as usize;
    let loads: Vec<Phdr> = (0..phnum)
        .map(|i| Phdr::read(&image[phoff + i * PHDR_SIZE..]))
        .filter(|p| p.p_type == PT_LOAD && p.filesz != 0)
        .collect();
    prop_assert_eq!(loads.len(), k.segments.len());
    let mut prev_end = 0;
    for (s, ph) in k.segments.iter().zip(&loads) {
        prop_assert!(ph.flags & PF_W == 0 || ph.flags & PF_X == 0, "W+X segment accepted: {:?}", s);
        prop_assert_eq!((s.vaddr, s.file_offset as u64, s.file_size as u64), (ph.vaddr, ph.offset, ph.filesz));
        prop_assert_eq!(s.writable, ph.flags & PF_W != 0);
        prop_assert!(s.start % PAGE == 0 && s.end % PAGE == 0, "not page aligned: {:?}", s);
        prop_assert!(s.start >= GUEST_MIN_BASE && s.start >= prev_end, "overlap or low: {:?}", s);
        prop_assert!(s.start <= s.vaddr && s.vaddr + s.file_size as u64 <= s.end && s.end <= mem, "{:?}", s);
        prop_assert!(s.vaddr.checked_add(ph.memsz).is_some_and(|e| e <= s.end), "memsz beyond end: {:?}", s);
        prop_assert!(s.file_offset.checked_add(s.file_size).is_some_and(|e| e <= image.len()), "file: {:?}", s);
        prev_end = s.end;
    }
    prop_assert_eq!(k.kernel_end, k.segments.iter().map(|s| s.end).max().unwrap_or(0));
    let m = &k.manifest.entries;
    prop_assert!((1..=MFT_MAX_ENTRIES as usize).contains(&m.len()));
    prop_assert!(m[0].dev_type == MFT_RESERVED_FIRST && m[0].name[0] == 0, "entry 0 not reserved");
    prop_assert!(m.iter().all(|e| e.name[MFT_NAME_SIZE - 1] == 0 && e.attached == 0));
    Ok(())
}

/// Parses under the allocation cap and compares with the model, both ways.
fn check_kernel(image: &[u8], mem: u64) -> Result<Option<Kernel>, TestCaseError> {
    let got = within_alloc_budget(|| Kernel::parse(image, mem));
    let want = model_kernel(image, mem);
    match (got, want) {
        (Ok(k), Some(w)) => {
            count("accepted");
            check_invariants(&k, image, mem)?;
            let got = ModelKernel {
                entry: k.entry,
                segments: k.segments.clone(),
                kernel_end: k.kernel_end,
                manifest_guest_bytes: k.manifest.to_guest_bytes(),
            };
            prop_assert_eq!(got, w);
            Ok(Some(k))
        }
        (Err(e), None) => {
            let text = e.to_string();
            count(&text.replace(|c: char| c.is_ascii_digit(), "").replace("invalid executable: ", ""));
            prop_assert!(!text.is_empty() && !text.contains('\n'), "error not one line: {:?}", text);
            Ok(None)
        }
        (Ok(k), None) => {
            check_invariants(&k, image, mem)?;
            Err(TestCaseError::fail(format!("accepted, but the ABI rejects it (mem {mem:#x}): {k:?}")))
        }
        (Err(e), Some(_)) => Err(TestCaseError::fail(format!("rejected ({e}), but the ABI accepts it (mem {mem:#x})"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies for ELF images
// ---------------------------------------------------------------------------------------------

fn flags_strategy() -> impl Strategy<Value = u32> {
    // Not 0: a segment that grants no access is refused (the mutations still make such flags).
    prop_oneof![Just(PF_R | PF_X), Just(PF_X), Just(PF_R), Just(PF_R | PF_W), Just(PF_W)]
}

/// One raw load: gap in pages before it, alignment, offset inside its alignment unit, contents,
/// bss-like extra memory, flags.
fn load_strategy() -> impl Strategy<Value = (u64, u64, u64, Vec<u8>, u64, u32)> {
    (
        0u64..4,
        prop_oneof![Just(PAGE), Just(PAGE), Just(2 * PAGE), Just(0x10000)],
        any::<u64>(),
        vec(any::<u8>(), 1..48),
        prop_oneof![Just(0u64), 0u64..0x3000],
        flags_strategy(),
    )
}

fn name_strategy() -> impl Strategy<Value = [u8; MFT_NAME_SIZE]> {
    prop_oneof![
        // A real device name: 1..=67 alphanumerics.
        vec(prop_oneof![b'a'..=b'z', b'A'..=b'Z', b'0'..=b'9'], 1..=67).prop_map(|v| {
            let mut n = [0u8; MFT_NAME_SIZE];
            n[..v.len()].copy_from_slice(&v);
            n
        }),
        // Anything the parser must still accept: any bytes, byte 67 NUL.
        vec(any::<u8>(), 67).prop_map(|v| {
            let mut n = [0u8; MFT_NAME_SIZE];
            n[..67].copy_from_slice(&v);
            n
        }),
    ]
}

fn device_entry_strategy() -> impl Strategy<Value = MftEntry> {
    let ty = prop_oneof![Just(MFT_DEV_BLOCK_BASIC), Just(MFT_DEV_NET_BASIC), any::<u32>()];
    (name_strategy(), ty, any::<[u8; 16]>()).prop_map(|(name, ty, device)| {
        let mut e = MftEntry::new_raw(name, ty);
        e.device = device;
        e
    })
}

/// A valid manifest: the reserved entry, then 0..=63 devices (mostly few).
fn manifest_strategy() -> impl Strategy<Value = Vec<MftEntry>> {
    let count = prop_oneof![8 => 0usize..4, 2 => 0usize..=63, 1 => Just(63)];
    count.prop_flat_map(|n| vec(device_entry_strategy(), n)).prop_map(|devices| {
        let mut v = vec![MftEntry::RESERVED];
        v.extend(devices);
        v
    })
}

fn extras_strategy() -> impl Strategy<Value = Extras> {
    any::<[bool; 8]>().prop_map(|b| Extras {
        interp: b[0],
        tdata_at_zero: b[1],
        bss: b[2],
        tls_and_stack: b[3],
        openbsd_note: b[4],
        foreign_note: b[5],
        short_note: b[6],
        manifest_first: b[7],
    })
}

/// A valid hvt image: 1..=4 ascending, page-aligned, non-overlapping loads, an entry and a
/// memory size that fit, a valid manifest, and any of the optional parts.
fn elf_spec_strategy() -> impl Strategy<Value = ElfSpec> {
    (vec(load_strategy(), 1..=4), manifest_strategy(), extras_strategy(), any::<u64>(), 0u8..8).prop_map(
        |(raw, manifest, extras, entry_pick, mem_pick)| {
            let mut cursor = GUEST_MIN_BASE;
            let mut loads = Vec::new();
            for (gap, align, off, data, extra, flags) in raw {
                let start = align_up(cursor + gap * PAGE, align);
                let vaddr = start + off % align;
                let memsz = data.len() as u64 + extra;
                cursor = align_up(vaddr + memsz, align);
                loads.push(LoadSpec { vaddr, data, memsz, align, flags });
            }
            let mem_size = match mem_pick {
                0 => cursor, // the last segment ends exactly at the end of memory
                1 => u64::MAX,
                2 => MEM_MAX,
                n => align_up(cursor, MEM_ALIGN) + u64::from(n - 3) * MEM_ALIGN,
            };
            let entry = match entry_pick % 4 {
                0 => loads[0].vaddr,
                1 => mem_size - 1,
                _ => GUEST_MIN_BASE + entry_pick % (mem_size - GUEST_MIN_BASE),
            };
            ElfSpec { entry, mem_size, loads, manifest, extras }
        },
    )
}

/// A value worth writing into a field: edges of the ABI's limits, of memory and of the image,
/// the field's own value nudged, or anything.
fn interesting(pick: u64, raw: u64, old: u64, mem: u64, len: u64) -> u64 {
    let values = [
        0,
        1,
        2,
        3,
        4,
        7,
        8,
        11,
        12,
        15,
        16,
        17,
        19,
        20,
        21,
        24,
        36,
        56,
        64,
        0xff,
        0xfff,
        PAGE,
        PAGE + 1,
        0xffff,
        0xfffff,
        GUEST_MIN_BASE,
        GUEST_MIN_BASE + 1,
        u64::from(NOTE_ABI_MAX_DESC),
        u64::from(NOTE_ABI_MAX_DESC) + 1,
        u64::from(NOTE_MANIFEST_MAX_DESC),
        u64::from(NOTE_MANIFEST_MAX_DESC) + 1,
        u64::from(MFT_MAX_ENTRIES),
        u64::from(MFT_MAX_ENTRIES) + 1,
        u64::from(MFT_RESERVED_FIRST),
        u64::from(u32::MAX),
        1 << 32,
        1 << 63,
        u64::MAX - PAGE + 1,
        u64::MAX - 1,
        u64::MAX,
        mem,
        mem.wrapping_sub(1),
        mem.wrapping_add(1),
        mem.wrapping_sub(PAGE),
        len,
        len.wrapping_sub(1),
        len.wrapping_add(1),
        old.wrapping_add(1),
        old.wrapping_sub(1),
        old.wrapping_add(PAGE),
        old.wrapping_sub(PAGE),
        old.wrapping_add(8),
        old.wrapping_sub(8),
        old << 1,
        old >> 1,
        !old,
    ];
    match (pick as usize) % (values.len() + 8) {
        i if i < values.len() => values[i],
        _ => raw,
    }
}

/// One mutation, as raw numbers interpreted against the image at hand (so shrinking works).
type Mutation = (u8, u64, u64);

fn apply(image: &mut Vec<u8>, fields: &[Field], mem: u64, (kind, a, b): Mutation) {
    let len = image.len();
    match kind % 10 {
        0 if len > 0 => image[a as usize % len] ^= 1 << (b % 8),
        1 if len > 0 => image[a as usize % len] = b as u8,
        2..=6 => {
            // Header fields are few but decide everything: aim at each group equally often.
            let group: Vec<&Field> = fields.iter().filter(|f| f.group == (kind % 10 - 2) % 3).collect();
            let f = group[a as usize % group.len()];
            if f.at + f.width <= len {
                let old = rd(image, f.at, f.width);
                wr(image, f.at, f.width, interesting(b, b.rotate_left(17), old, mem, len as u64));
            }
        }
        7 => image.truncate(a as usize % (len + 1)),
        8 => image.extend(std::iter::repeat_n(b as u8, a as usize % 4096)),
        9 if len >= 8 => {
            let at = a as usize % (len - 7);
            wr(image, at, 8, b);
        }
        _ => {}
    }
}

fn mem_strategy() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        6 => Just(None),
        1 => prop_oneof![
            Just(0u64),
            Just(GUEST_MIN_BASE),
            Just(GUEST_MIN_BASE + PAGE),
            Just(MEM_MIN),
            Just(MEM_MAX),
            Just(u64::MAX),
            any::<u64>()
        ]
        .prop_map(Some),
    ]
}

// ---------------------------------------------------------------------------------------------
// ELF properties
// ---------------------------------------------------------------------------------------------

/// The builder's dynamic manifest note is byte for byte guest-abi's `ManifestNote`, and the
/// smallest image it builds is accepted with exactly the expected layout.
#[test]
fn builder_matches_guest_abi_and_minimal_image_is_accepted() {
    let disk = MftEntry::new("disk", MFT_DEV_BLOCK_BASIC);
    let net = MftEntry::new("net0", MFT_DEV_NET_BASIC);
    let fixed = ManifestNote::new([MftEntry::RESERVED, disk, net]);
    assert_eq!(manifest_note_bytes_fixed(&fixed), manifest_note_bytes(&[MftEntry::RESERVED, disk, net]));
    assert_eq!(abi_note_bytes(&AbiNote::HVT).len(), size_of::<AbiNote>());
    assert_eq!((AbiNote::HVT.abi.target, AbiNote::HVT.abi.version), (ABI_TARGET_HVT, ABI_VERSION));

    let spec = ElfSpec {
        entry: 0x10_0020,
        mem_size: MEM_MIN,
        loads: vec![
            LoadSpec { vaddr: 0x10_0000, data: vec![0xf4; 0x30], memsz: 0x30, align: PAGE, flags: PF_R | PF_X },
            LoadSpec { vaddr: 0x10_1000, data: vec![7; 8], memsz: 0x2000, align: PAGE, flags: PF_R | PF_W },
        ],
        manifest: vec![MftEntry::RESERVED, disk, net],
        extras: Extras { interp: true, tdata_at_zero: true, bss: true, openbsd_note: true, ..Extras::default() },
    };
    let built = build(&spec);
    assert!(built.image.len() < 1024, "the minimal image stays tiny: {} bytes", built.image.len());
    let k = Kernel::parse(&built.image, spec.mem_size).expect("the minimal image is valid");
    assert_eq!(k.entry, 0x10_0020);
    assert_eq!(k.segments, built.segments);
    assert_eq!(k.kernel_end, 0x10_3000);
    assert_eq!(k.manifest.to_guest_bytes(), built.manifest_payload);
    assert_eq!(k.manifest.find("net0").map(|(h, _)| h), Some(2));
    assert!(model_kernel(&built.image, spec.mem_size).is_some());
}

/// Every valid builder image is accepted, agrees with the model, and round-trips its manifest;
/// loading it leaves the file bytes in place and only the non-writable segments protected.
#[test]
fn valid_images_are_accepted_and_round_trip() {
    fuzz("valid_images", 2_000, elf_spec_strategy(), |spec| {
        let built = build(&spec);
        let Some(k) = check_kernel(&built.image, spec.mem_size)? else {
            return Err(TestCaseError::fail("a valid image was rejected"));
        };
        prop_assert_eq!(k.entry, spec.entry);
        prop_assert_eq!(&k.segments, &built.segments);
        prop_assert_eq!(k.manifest.to_guest_bytes(), built.manifest_payload);

        // Load it as the VM does, and check the protection the loader leaves behind.
        let mem = spec.mem_size;
        if mem % MEM_ALIGN == 0 && mem <= 64 << 20 {
            let mut ram = GuestRam::new(mem, mem).expect("guest RAM");
            tender::boot::load_kernel(&mut ram, &k, &built.image, false).expect("load");
            for (s, l) in k.segments.iter().zip(&spec.loads) {
                if let Ok(view) = ram.slice(s.vaddr, s.file_size as u64) {
                    let mut bytes = vec![0u8; s.file_size];
                    view.copy_to(&mut bytes[..]);
                    prop_assert_eq!(&bytes, &l.data);
                }
                let last = s.end - 8;
                if s.writable {
                    if s.end < mem {
                        ram.write_arg(last, HcWalltime { nsecs: 0x5a5a }).expect("writable segment");
                        prop_assert_eq!(ram.read_arg::<HcWalltime>(last).map(|w| w.nsecs), Ok(0x5a5a));
                    }
                } else {
                    prop_assert!(
                        ram.write_arg(s.start, HcWalltime { nsecs: 1 }).is_err(),
                        "write into a read-only segment"
                    );
                    prop_assert!(
                        ram.write_arg(last, HcWalltime { nsecs: 1 }).is_err(),
                        "write into a read-only segment"
                    );
                    prop_assert!(ram.slice_mut(s.start.saturating_sub(4), 8).is_err());
                    if s.end < mem {
                        prop_assert!(ram.read_arg::<HcWalltime>(last).is_ok(), "reading stays allowed");
                    }
                }
            }
        }
        Ok(())
    });
}

/// Mutated valid images: the loader never panics or allocates absurdly, and accepts exactly
/// what the ABI model accepts.
#[test]
fn mutated_images_match_the_abi_model() {
    let strategy = (elf_spec_strategy(), vec(any::<Mutation>(), 1..=6), mem_strategy());
    fuzz("mutated_images", 20_000, strategy, |(spec, mutations, mem)| {
        let built = build(&spec);
        let mut image = built.image;
        let mem = mem.unwrap_or(spec.mem_size);
        for m in mutations {
            apply(&mut image, &built.fields, mem, m);
        }
        check_kernel(&image, mem).map(|_| ())
    });
}

/// Program-header tables of random entries behind a valid ELF header: each field is either
/// plausible (a PT_NOTE pointing at one of the notes planted in the file, a PT_LOAD just above
/// 0x100000) or an edge value, so that every rule of the loader is reached, not just the first.
#[test]
fn random_program_headers_match_the_abi_model() {
    let phdr = (
        prop_oneof![3 => Just(PT_LOAD), 3 => Just(PT_NOTE), 1 => Just(0u32), 1 => any::<u32>()],
        any::<[(bool, u64); 6]>(),
    );
    // Planted notes: the ABI note, a manifest note of 1 or 2 entries, or junk; descsz kept or not.
    let descsz = prop_oneof![3 => Just(None), 1 => any::<u64>().prop_map(Some)];
    let plant = (0u8..3, 0u16..64, descsz);
    let strategy = (vec(phdr, 1..8), vec(plant, 0..5), any::<(bool, u64, u64, u64)>(), mem_strategy());
    fuzz(
        "random_program_headers",
        10_000,
        strategy,
        |(phdrs, plants, (plausible_entry, entry, phnum_pick, fill), mem)| {
            let mem = mem.unwrap_or(MEM_MIN << (fill % 4));
            let table_end = EHDR_SIZE + PHDR_SIZE * phdrs.len();
            let mut image = vec![0u8; table_end];
            let mut notes: Vec<(u64, u64)> = Vec::new(); // (offset, length)
            for (i, (kind, gap, descsz)) in plants.into_iter().enumerate() {
                // The first two are always the ABI note and a manifest.
                let mut note = match if i < 2 { i as u8 } else { kind } {
                    0 => abi_note_bytes(&AbiNote::HVT),
                    1 => manifest_note_bytes(
                        &[MftEntry::RESERVED, MftEntry::new("d", MFT_DEV_BLOCK_BASIC)][..1 + usize::from(gap % 2 == 0)],
                    ),
                    _ => vec![(fill >> 16) as u8; 4 + usize::from(gap)],
                };
                if let (Some(d), true) = (descsz, note.len() >= 8) {
                    let value = interesting(d, d, rd(&note, 4, 4), mem, note.len() as u64);
                    wr(&mut note, 4, 4, value & 0xffff_ffff);
                }
                image.resize((image.len() + usize::from(gap)).next_multiple_of(8), (fill >> 8) as u8);
                notes.push((image.len() as u64, note.len() as u64));
                image.extend_from_slice(&note);
            }
            image.resize(image.len() + (fill >> 24) as usize % 512, (fill >> 8) as u8);
            let total = image.len() as u64;
            let entry = if plausible_entry {
                GUEST_MIN_BASE + entry % 0x8000
            } else {
                interesting(entry, entry, 0, mem, total)
            };
            let header = build(&ElfSpec {
                entry,
                mem_size: mem,
                loads: vec![],
                manifest: vec![MftEntry::RESERVED],
                extras: Extras::default(),
            })
            .image;
            image[..EHDR_SIZE].copy_from_slice(&header[..EHDR_SIZE]);
            let phnum = if phnum_pick % 8 == 0 { phnum_pick as u16 } else { phdrs.len() as u16 };
            wr(&mut image, 56, 2, phnum.into());
            for (i, (p_type, picks)) in phdrs.iter().enumerate() {
                let edge = |k: usize, old: u64| interesting(picks[k].1, picks[k].1 >> 7, old, mem, total);
                let r = |k: usize| picks[k].1;
                let note = notes.get(r(1) as usize % notes.len().max(1)).copied().unwrap_or((total, 0));
                let filesz = if *p_type == PT_NOTE { note.1 } else { 1 + r(3) % 64 };
                let plausible = [
                    u64::from(PF_R) | (r(0) % 2 * u64::from(PF_X)),
                    if *p_type == PT_NOTE { note.0 } else { r(1) % total },
                    GUEST_MIN_BASE + r(2) % 8 * PAGE + if r(2) & 1 << 40 != 0 { r(2) % PAGE } else { 0 },
                    filesz,
                    filesz + r(4) % 0x2000,
                    if *p_type == PT_NOTE { 8 } else { PAGE },
                ];
                // All plausible, all but one, a coin per field, or all at the edges.
                let (mode, odd_one) = (picks[5].1 >> 32 & 3, (picks[5].1 >> 40) as usize % 6);
                let keep = |k: usize| match mode {
                    0 => true,
                    1 => k != odd_one,
                    2 => picks[k].0,
                    _ => false,
                };
                let v = |k: usize, old: u64| if keep(k) { plausible[k] } else { edge(k, old) };
                let ph = Phdr {
                    p_type: *p_type,
                    flags: v(0, 0) as u32 & 7,
                    offset: v(1, table_end as u64),
                    vaddr: v(2, GUEST_MIN_BASE),
                    filesz: v(3, 36),
                    memsz: v(4, 0x2000),
                    align: v(5, PAGE),
                };
                ph.write(&mut image[EHDR_SIZE + i * PHDR_SIZE..]);
            }
            check_kernel(&image, mem).map(|_| ())
        },
    );
}

/// Arbitrary bytes, sometimes behind a valid ELF identification.
#[test]
fn random_bytes_match_the_abi_model() {
    let strategy = (vec(any::<u8>(), 0..1024), any::<bool>(), mem_strategy());
    fuzz("random_bytes", 10_000, strategy, |(mut bytes, with_header, mem)| {
        let mem = mem.unwrap_or(MEM_MIN);
        if with_header {
            let header = build(&ElfSpec {
                entry: GUEST_MIN_BASE,
                mem_size: mem,
                loads: vec![],
                manifest: vec![MftEntry::RESERVED],
                extras: Extras::default(),
            })
            .image;
            let n = bytes.len().min(EHDR_SIZE);
            bytes[..n].copy_from_slice(&header[..n]);
        }
        check_kernel(&bytes, mem).map(|_| ())
    });
}

// ---------------------------------------------------------------------------------------------
// Manifest properties
// ---------------------------------------------------------------------------------------------

fn check_manifest(bytes: &[u8]) -> Result<(), TestCaseError> {
    let got = within_alloc_budget(|| Manifest::parse(bytes));
    match (got, model_manifest(bytes)) {
        (Ok(m), Some(guest)) => {
            count("accepted");
            prop_assert!((1..=64).contains(&m.entries.len()));
            prop_assert!(m.entries[0].dev_type == MFT_RESERVED_FIRST && m.entries[0].name[0] == 0);
            prop_assert_eq!(m.to_guest_bytes(), guest);
            // What the guest gets parses again, to the same thing.
            let again = Manifest::parse(&m.to_guest_bytes()).map(|m| m.to_guest_bytes());
            prop_assert_eq!(again, Ok(m.to_guest_bytes()));
        }
        (Err(e), None) => {
            count(&e.to_string());
            prop_assert!(!e.to_string().contains('\n'));
        }
        (Ok(_), None) => return Err(TestCaseError::fail("accepted a manifest the ABI rejects")),
        (Err(e), Some(_)) => return Err(TestCaseError::fail(format!("rejected a valid manifest: {e}"))),
    }
    Ok(())
}

/// Valid manifests (with host-private fields and padding set) mutated at their fields, resized
/// by a byte or an entry, or replaced by random bytes: the parser agrees with `mft_validate`.
#[test]
fn manifests_match_the_abi_model() {
    let host = vec(any::<(u64, [u8; 7])>(), 64);
    let edit = (0u8..8, any::<u16>(), any::<u64>());
    let strategy = (manifest_strategy(), host, vec(edit, 0..4), vec(any::<u8>(), 0..300), 0u8..8);
    fuzz("manifests", 10_000, strategy, |(entries, host, edits, random, shape)| {
        let mut b = match shape {
            0 => random,
            1 => {
                // A plausible header in front of random bytes.
                let mut b = random;
                b.splice(
                    0..b.len().min(8),
                    [MFT_VERSION.to_le_bytes(), ((b.len() as u32) / 104).to_le_bytes()].concat(),
                );
                b
            }
            _ => manifest_note_bytes(&entries)[NOTE_HEADER_SIZE + NOTE_MANIFEST_PAD..].to_vec(),
        };
        if shape >= 2 {
            for (e, (private, pad)) in b[8..].chunks_mut(104).zip(&host) {
                wr(e, 88, 8, *private);
                e[97..104].copy_from_slice(pad);
            }
        }
        for (what, at, v) in edits {
            let n = (b.len().saturating_sub(8) / 104).max(1);
            let entry = 8 + (usize::from(at) % n) * 104;
            let (off, width) = match what {
                0 => (0, 4),
                1 => (4, 4),
                2 => (entry, 1),
                3 => (entry + 67, 1),
                4 => (entry + 68, 4),
                5 => (entry + 96, 1),
                6 => {
                    b.truncate(b.len().saturating_sub(usize::from(at) % 2 * 103 + 1));
                    continue;
                }
                _ => {
                    b.extend(std::iter::repeat_n(0, if at % 2 == 0 { 1 } else { 104 }));
                    continue;
                }
            };
            if off + width <= b.len() {
                let old = rd(&b, off, width);
                let len = b.len() as u64;
                wr(&mut b, off, width, interesting(v, v, old, 0, len));
            }
        }
        if shape == 7 && b.len() >= 8 {
            // Keep the entry count in step with the size (after edits that added or cut entries).
            let n = (b.len() - 8) / 104;
            wr(&mut b, 4, 4, n as u64);
        }
        check_manifest(&b)
    });
}

// ---------------------------------------------------------------------------------------------
// Guest memory properties
// ---------------------------------------------------------------------------------------------

/// A guest address or length, picked relative to the edges that matter.
#[derive(Clone, Copy, Debug)]
struct Pick {
    anchor: u8,
    delta: i16,
    raw: u64,
}

fn pick_strategy() -> impl Strategy<Value = Pick> {
    (any::<u8>(), prop_oneof![Just(0i16), -80i16..=80, any::<i16>()], any::<u64>())
        .prop_map(|(anchor, delta, raw)| Pick { anchor, delta, raw })
}

fn gpa_of(p: Pick, limit: u64, total: u64, ranges: &[(u64, u64)]) -> u64 {
    let mut anchors = vec![0, limit, total, 1 << 32, u64::MAX, GUEST_MIN_BASE, 1 << 31];
    for &(s, e) in ranges {
        anchors.extend([s, e]);
    }
    let base = match (p.anchor as usize) % (anchors.len() + 2) {
        i if i < anchors.len() => anchors[i],
        _ => return p.raw,
    };
    base.wrapping_add_signed(p.delta.into())
}

fn len_of(p: Pick, gpa: u64, limit: u64) -> u64 {
    let anchors = [
        0,
        1,
        8,
        size_of::<HcBlock>() as u64,
        512,
        limit.wrapping_sub(gpa),                    // ends exactly at mem_size
        u64::MAX - gpa,                             // ends at 2^64 - 1
        u64::MAX.wrapping_sub(gpa).wrapping_add(1), // wraps to exactly 0
        1 << 32,
        u64::MAX,
    ];
    let base = match (p.anchor as usize) % (anchors.len() + 2) {
        i if i < anchors.len() => anchors[i],
        _ => return p.raw,
    };
    base.wrapping_add_signed(p.delta.into())
}

/// The ABI 5.1 rule, written out.
fn model_check(gpa: u64, len: u64, limit: u64) -> bool {
    u128::from(gpa) < u128::from(limit) && u128::from(gpa) + u128::from(len) < u128::from(limit)
}

/// `check` plus: the range touches no protected range (an empty range touches what it is in).
fn model_check_write(gpa: u64, len: u64, limit: u64, ranges: &[(u64, u64)]) -> bool {
    let (g, l) = (u128::from(gpa), u128::from(len));
    model_check(gpa, len, limit)
        && !ranges.iter().any(|&(s, e)| {
            let (s, e) = (u128::from(s), u128::from(e));
            if l == 0 { s <= g && g < e } else { g < e && s < g + l }
        })
}

/// Every accessor on one (gpa, len): the result matches the model; nothing panics or faults
/// (a write that got past the checks into a protected page would kill the test with SIGSEGV).
fn check_access(ram: &GuestRam, ranges: &[(u64, u64)], gpa: u64, len: u64) -> Result<(), TestCaseError> {
    let (limit, total) = (ram.limit(), ram.total());
    let in_map = limit <= total; // a RAM whose limit is beyond its mapping must still fail cleanly
    let ok = model_check(gpa, len, limit);
    let ok_w = model_check_write(gpa, len, limit, ranges);
    count(match (ok, ok_w) {
        (false, _) => "out of range",
        (true, false) => "read-only",
        (true, true) => "writable",
    });
    prop_assert_eq!(ram.check(gpa, len).is_ok(), ok, "check({:#x}, {:#x}) limit {:#x}", gpa, len, limit);
    prop_assert_eq!(ram.check_write(gpa, len).is_ok(), ok_w, "check_write({:#x}, {:#x})", gpa, len);
    if let Err(f) = ram.check_write(gpa, len) {
        prop_assert!(!f.to_string().contains('\n'));
    }
    let s = ram.slice(gpa, len);
    if in_map {
        prop_assert_eq!(s.as_ref().map(|s| s.len() as u64).ok(), ok.then_some(len));
    }
    let s = ram.slice_mut(gpa, len);
    if in_map {
        prop_assert_eq!(s.as_ref().map(|s| s.len() as u64).ok(), ok_w.then_some(len));
    }
    macro_rules! typed {
        ($($t:ty),*) => {$(
            let n = size_of::<$t>() as u64;
            let r = ram.read_arg::<$t>(gpa);
            prop_assert!(r.is_err() || model_check(gpa, n, limit));
            if in_map {
                prop_assert_eq!(r.is_ok(), model_check(gpa, n, limit), "read_arg {}", stringify!($t));
            }
            let w = ram.write_arg(gpa, <$t>::default());
            prop_assert!(w.is_err() || model_check_write(gpa, n, limit, ranges));
            if in_map {
                prop_assert_eq!(w.is_ok(), model_check_write(gpa, n, limit, ranges), "write_arg {}", stringify!($t));
            }
        )*};
    }
    typed!(HcWalltime, HcPoll, HcBlock, HcHalt, BootInfo, TrapReport);
    if model_check_write(gpa, 40, limit, ranges) && in_map {
        let v = HcBlock { handle: gpa, offset: len, data: !gpa, len: 40, ret: 3, _pad: 0 };
        prop_assert!(ram.write_arg(gpa, v).is_ok());
        let back = ram.read_arg::<HcBlock>(gpa).map(|b| (b.handle, b.offset, b.data, b.len, b.ret));
        prop_assert_eq!(back, Ok((gpa, len, !gpa, 40, 3)));
    }
    Ok(())
}

/// Small guests (2 to 8 MiB, with or without a device area above mem_size, or a limit beyond
/// the mapping) with random protected ranges, probed at the edges.
#[test]
fn guest_ram_checks_match_the_abi_rule() {
    let layout = (1u64..=4, 0u8..3, vec((0u64..2048, 1u64..64), 0..4));
    let strategy = (layout, vec((pick_strategy(), pick_strategy()), 1..24));
    fuzz("guest_ram_small", 3_000, strategy, |((units, shape, raw_ranges), probes)| {
        let limit = units * MEM_ALIGN;
        let total = match shape {
            0 => limit,
            1 => limit + MEM_ALIGN,     // a net-ring area above mem_size
            _ => limit - MEM_ALIGN / 2, // misconfigured: limit beyond the mapping
        };
        let mut ram = GuestRam::new(total, limit).expect("guest RAM");
        let mut ranges = Vec::new();
        for (page, pages) in raw_ranges {
            let start = (page * PAGE) % limit.min(total);
            let end = (start + pages * PAGE).min(limit.min(total));
            ram.protect_read_only(start, end, false).expect("protect");
            if start < end {
                ranges.push((start, end));
            }
        }
        for (g, l) in probes {
            let gpa = gpa_of(g, limit, total, &ranges);
            check_access(&ram, &ranges, gpa, len_of(l, gpa, limit))?;
        }
        Ok(())
    });
}

/// The largest guest (4 GiB: mem_size is 2^32, the top of the 32-bit hypercall GPA range),
/// with protected ranges at the bottom and at the very top of memory.
#[test]
fn guest_ram_checks_at_4_gib() {
    let mut ram = GuestRam::new(MEM_MAX, MEM_MAX).expect("4 GiB of guest RAM (lazily mapped)");
    let ranges = [(0x10_0000, 0x10_3000), (MEM_MAX - 3 * PAGE, MEM_MAX - 2 * PAGE), (MEM_MAX - PAGE, MEM_MAX)];
    for (s, e) in ranges {
        ram.protect_read_only(s, e, false).expect("protect");
    }
    fuzz("guest_ram_4gib", 20_000, (pick_strategy(), pick_strategy()), |(g, l)| {
        let gpa = gpa_of(g, MEM_MAX, MEM_MAX, &ranges);
        check_access(&ram, &ranges, gpa, len_of(l, gpa, MEM_MAX))
    });
}

// ---------------------------------------------------------------------------------------------
// Hypercall decoding
// ---------------------------------------------------------------------------------------------

/// Only a 4-byte OUT to 0x501..=0x508 is a hypercall; 0x500 (number 0) is an invalid hypercall;
/// everything else is an invalid port access. The GPA is the zero-extended u32.
#[test]
fn hypercall_decoding_matches_the_abi() {
    let port = prop_oneof![0x4f8u16..0x510, Just(0x600u16), any::<u16>()];
    fuzz("decode_out", 20_000, (port, vec(any::<u8>(), 0..9)), |(port, data)| {
        let got = tender::vm::decode_out(port, &data);
        count(&got.as_ref().map_or_else(variant, |(call, _)| format!("{call:?}")));
        let nr = port.wrapping_sub(0x500);
        match &got {
            Ok((call, gpa)) => {
                prop_assert_eq!(data.len(), 4);
                prop_assert!((1..=8).contains(&nr));
                prop_assert_eq!(Some(*call), Hypercall::from_nr(nr));
                prop_assert_eq!(call.port(), port);
                prop_assert_eq!(*gpa, u64::from(u32::from_le_bytes([data[0], data[1], data[2], data[3]])));
            }
            Err(e) => {
                prop_assert!(data.len() != 4 || !(1..=8).contains(&nr), "valid hypercall refused: {}", e);
                prop_assert!(!e.to_string().contains('\n'));
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// What every successful parse must satisfy.
fn check_command(cmd: &Command) -> Result<(), TestCaseError> {
    let Command::Run { config, .. } = cmd else { return Ok(()) };
    let m = config.mem_bytes;
    prop_assert!(m % MEM_ALIGN == 0 && (MEM_MIN..=MEM_MAX).contains(&m), "mem {}", m);
    prop_assert!(config.timeout.is_none_or(|t| t >= 1));
    let valid = |n: &Option<String>| {
        n.as_ref().is_none_or(|n| !n.is_empty() && n.len() <= 67 && n.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    for b in &config.blocks {
        prop_assert!(valid(&b.name), "block name {:?}", b.name);
        prop_assert!(b.block_size.is_none_or(|s| s >= 512 && s.is_power_of_two()));
    }
    for n in &config.nets {
        prop_assert!(valid(&n.name), "net name {:?}", n.name);
        prop_assert!(!matches!(n.source, TapSource::Fd(fd) if fd < 0));
    }
    Ok(())
}

fn token_strategy(text: impl Strategy<Value = String> + Clone + 'static) -> impl Strategy<Value = String> {
    let opt = prop_oneof![
        Just("--mem"),
        Just("--net"),
        Just("--block"),
        Just("--seccomp"),
        Just("--dumpcore"),
        Just("--report"),
        Just("--timeout"),
        Just("--ring-spin"),
        Just("--version"),
        Just("--help"),
        Just("-h"),
        Just("--"),
        Just("-"),
        Just("--memory"),
        Just("--mem:"),
        Just("--x"),
    ];
    let kind = prop_oneof![
        Just("block"),
        Just("net"),
        Just("block-sector-size"),
        Just("net-mac"),
        Just("mem"),
        Just("seccomp"),
        Just(""),
        Just("report")
    ];
    let number = prop_oneof![
        Just("0".to_string()),
        Just("1".to_string()),
        Just("2".to_string()),
        Just("3".to_string()),
        Just("512".to_string()),
        Just("4096".to_string()),
        Just("4097".to_string()),
        Just("4098".to_string()),
        Just("65536".to_string()),
        Just("-1".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("@3".to_string()),
        Just("@-1".to_string()),
        Just("02:00:00:00:00:01".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    let value = prop_oneof![number.clone(), text.clone(), Just(String::new()), Just("on".into()), Just("off".into())];
    prop_oneof![
        3 => opt.clone().prop_map(String::from),
        3 => (opt, value.clone()).prop_map(|(o, v)| format!("{o}={v}")),
        3 => (kind.clone(), text.clone(), value).prop_map(|(k, n, v)| format!("--{k}:{n}={v}")),
        1 => (kind, text.clone()).prop_map(|(k, n)| format!("--{k}:{n}")),
        2 => number,
        2 => text,
    ]
}

/// Arguments without control characters: the parser never panics, errors are one line, and
/// anything accepted is a sane configuration.
#[test]
fn command_line_never_panics_and_errors_are_one_line() {
    let text = "[a-zA-Z0-9@:=/. é_-]{0,12}".prop_map(|s| s);
    fuzz("cli_random_argv", 10_000, vec(token_strategy(text), 0..8), |argv| {
        match cli::parse(argv.clone()) {
            Ok(cmd) => {
                count(if matches!(cmd, Command::Run { .. }) { "run" } else { "info" });
                check_command(&cmd)?;
            }
            Err(e) => {
                count("error");
                prop_assert!(!e.0.is_empty() && !e.0.contains('\n'), "{:?} -> {:?}", argv, e.0);
            }
        }
        Ok(())
    });
}

/// Any characters at all, control characters included (`any::<String>()` has none).
fn any_text() -> impl Strategy<Value = String> + Clone {
    vec(any::<char>(), 0..12).prop_map(|v| v.into_iter().collect())
}

/// Arguments with any characters at all, control characters included: no panic.
#[test]
fn command_line_never_panics_on_any_text() {
    fuzz("cli_any_text", 5_000, vec(token_strategy(any_text()), 0..8), |argv| {
        if let Ok(cmd) = cli::parse(argv) {
            check_command(&cmd)?;
        }
        Ok(())
    });
}

/// A well-formed command line, as a user would write it, and the configuration it means.
#[derive(Clone, Debug)]
struct CliSpec {
    argv: Vec<String>,
    want: Config,
    warnings: Vec<String>,
    report: Option<String>,
}

/// `--opt=value` or `--opt value`.
fn spelled(opt: &str, value: &str, eq: bool) -> Vec<String> {
    if eq { vec![format!("{opt}={value}")] } else { vec![opt.to_string(), value.to_string()] }
}

fn cli_spec_strategy(path: impl Strategy<Value = String> + Clone + 'static) -> impl Strategy<Value = CliSpec> {
    let name = "[a-zA-Z0-9]{1,67}";
    let opt_path = || prop::option::of((path.clone(), any::<bool>()));
    let named_blocks = vec((name, path.clone(), prop::option::of(9u32..=15)), 0..3);
    let mac = any::<[u8; 6]>();
    let named_nets = vec(
        (name, prop_oneof![path.clone(), (0i32..=i32::MAX).prop_map(|fd| format!("@{fd}"))], prop::option::of(mac)),
        0..3,
    );
    let simple = (
        prop::option::of((2u64..=4097, any::<bool>())),
        prop::option::of((0u8..3, any::<bool>())),
        opt_path(),
        opt_path(),
        opt_path(),
        opt_path(),
        prop::option::of((1u64..=u64::MAX, any::<bool>())),
        prop::option::of((0u32..=1000, any::<bool>())),
    );
    let tail = (path.clone(), any::<bool>(), vec(any_text(), 0..4));
    (simple, named_blocks, named_nets, tail).prop_map(move |(simple, blocks, nets, (kernel, dashdash, args))| {
        let (mem, seccomp, block, net, dumpcore, report, timeout, ring_spin) = simple;
        let mut argv = Vec::new();
        let mut want = Config::new(kernel.clone());
        let mut warnings = Vec::new();
        if let Some((mib, eq)) = mem {
            argv.extend(spelled("--mem", &mib.to_string(), eq));
            let bytes = (mib << 20) / MEM_ALIGN * MEM_ALIGN;
            want.mem_bytes = bytes;
            if bytes != mib << 20 {
                warnings.push(format!("adjusting memory to {bytes} bytes"));
            }
        }
        if let Some((mode, eq)) = seccomp {
            argv.extend(spelled("--seccomp", ["on", "log", "off"][usize::from(mode)], eq));
            want.seccomp = [SeccompMode::On, SeccompMode::Log, SeccompMode::Off][usize::from(mode)];
        }
        if let Some((p, eq)) = &block {
            argv.extend(spelled("--block", p, *eq));
            want.blocks.push(BlockSpec { name: None, path: p.into(), block_size: None });
        }
        if let Some((p, eq)) = &net {
            argv.extend(spelled("--net", p, *eq));
            want.nets.push(NetSpec { name: None, source: TapSource::Interface(p.clone()), mac: None });
        }
        if let Some((p, eq)) = &dumpcore {
            argv.extend(spelled("--dumpcore", p, *eq));
            want.dumpcore = Some(p.into());
        }
        if let Some((p, eq)) = &report {
            argv.extend(spelled("--report", p, *eq));
        }
        if let Some((t, eq)) = timeout {
            argv.extend(spelled("--timeout", &t.to_string(), eq));
            want.timeout = Some(t);
        }
        if let Some((us, eq)) = ring_spin {
            argv.extend(spelled("--ring-spin", &us.to_string(), eq));
            want.ring_spin_us = us;
        }
        let mut seen = std::collections::HashSet::new();
        for (n, p, shift) in blocks.into_iter().filter(|(n, ..)| seen.insert(n.clone())) {
            argv.push(format!("--block:{n}={p}"));
            if let Some(shift) = shift {
                argv.push(format!("--block-sector-size:{n}={}", 1u32 << shift));
            }
            let block_size = shift.map(|s| 1u16 << s);
            want.blocks.push(BlockSpec { name: Some(n), path: p.into(), block_size });
        }
        for (n, src, mac) in nets.into_iter().filter(|(n, ..)| seen.insert(n.clone())) {
            if let Some(m) = mac {
                // The MAC may come before the device it names.
                let text: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
                argv.push(format!("--net-mac:{n}={}", text.join(":")));
            }
            argv.push(format!("--net:{n}={src}"));
            let source = match src.strip_prefix('@').and_then(|fd| fd.parse().ok()) {
                Some(fd) => TapSource::Fd(fd),
                None => TapSource::Interface(src.clone()),
            };
            want.nets.push(NetSpec { name: Some(n), source, mac });
        }
        if dashdash {
            argv.push("--".into());
        }
        argv.push(kernel);
        argv.extend(args.iter().cloned());
        want.guest_args = args;
        CliSpec { argv, want, warnings, report: report.map(|(p, _)| p) }
    })
}

fn check_cli_spec(spec: CliSpec) -> Result<(), TestCaseError> {
    match cli::parse(spec.argv.clone()) {
        Ok(Command::Run { config, warnings, report }) => {
            prop_assert_eq!(config, spec.want);
            prop_assert_eq!(warnings, spec.warnings);
            prop_assert_eq!(report, spec.report);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("{:?} -> {:?}", spec.argv, other))),
    }
}

/// Well-formed command lines (options in both spellings, named devices, MACs before their
/// device, guest arguments that look like options) parse to exactly what they mean. Values are
/// paths and interface names; `option_values_may_contain_colons` adds ':' to them.
#[test]
fn well_formed_command_lines_parse_to_what_they_mean() {
    let path = "[a-zA-Z0-9_./][a-zA-Z0-9_./ =@é-]{0,15}".prop_map(|s| s);
    fuzz("cli_well_formed", 5_000, cli_spec_strategy(path), check_cli_spec);
}

// ---------------------------------------------------------------------------------------------
// Regressions: two command-line bugs these properties found (fixed with them, in 88a73b5).
// Each test keeps the minimal reproducer and the property that found it.
// ---------------------------------------------------------------------------------------------

/// `--OPT=VALUE` was refused as "Invalid option" when VALUE contained ':' (the cli.rs pre-pass
/// took any `--...:...` argument for a `--KIND:NAME=VALUE` device option). Paths such as
/// `/dev/disk/by-path/pci-0000:00:1f.2-ata-1` and interfaces such as `tap:0` are legitimate.
/// Found as `["--dumpcore=0:", "a"]`.
#[test]
fn option_values_may_contain_colons() {
    for arg in ["--report=/tmp/a:b", "--block=/dev/disk/by-path/pci-0000:00:1f.2", "--dumpcore=/tmp/c:d", "--net=tap:0"]
    {
        let r = cli::parse([arg.to_string(), "k".to_string()]);
        assert!(matches!(r, Ok(Command::Run { .. })), "{arg} -> {r:?}");
    }
    let path = "[a-zA-Z0-9_./][a-zA-Z0-9_./ =@é:-]{0,15}".prop_map(|s| s);
    fuzz("cli_well_formed_with_colons", 5_000, cli_spec_strategy(path), check_cli_spec);
}

/// Errors quote the offending argument; an argument with a newline (or a terminal escape) gave a
/// multi-line error: `tender --mem=$'1\n2' k` printed "Malformed argument to --mem: '1" and "2'"
/// on two lines. Found as `["--block:\n=0", "18446744073709551615"]`.
#[test]
fn errors_are_one_line_for_any_text() {
    let r = cli::parse(["--mem=1\n2".to_string(), "k".to_string()]);
    assert!(r.as_ref().is_err_and(|e| !e.0.contains('\n')), "{r:?}");
    fuzz("cli_any_text_one_line", 5_000, vec(token_strategy(any_text()), 0..8), |argv| {
        if let Err(e) = cli::parse(argv.clone()) {
            prop_assert!(!e.0.is_empty() && !e.0.contains('\n'), "{:?} -> {:?}", argv, e.0);
        }
        Ok(())
    });
}
