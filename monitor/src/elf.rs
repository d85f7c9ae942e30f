//! Loading and validating a unikernel ELF (ABI section 2).
//!
//! Only program headers are used, as solo5-hvt does: notes are found through PT_NOTE, and
//! segments through PT_LOAD. Section headers are never read, so they cannot confuse the loader.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, ET_EXEC, Header};
use std::borrow::Cow;
use std::path::Path;

use goblin::elf::program_header::{PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE, ProgramHeader};
use guest_abi::{
    ABI_TARGET_HVT, ABI_VERSION, GUEST_MIN_BASE, NOTE_ABI_MAX_DESC, NOTE_HEADER_SIZE, NOTE_MANIFEST_MAX_DESC,
    NOTE_MANIFEST_PAD, NOTE_NAME, NOTE_TYPE_ABI, NOTE_TYPE_MANIFEST,
};

use crate::manifest::{Manifest, ManifestError};

const PAGE_SIZE: u64 = 0x1000;
/// Largest kernel file tender reads (it must fit in guest memory anyway).
const MAX_KERNEL_FILE: u64 = guest_abi::MEM_MAX;
/// Smallest note a PT_NOTE may hold without the executable being rejected (an Elf64_Nhdr).
const NOTE_NHDR_SIZE: u64 = 12;
/// An Elf64_Ehdr.
const ELF64_HEADER_SIZE: u64 = 64;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    /// The file cannot be read (missing, not a regular file, too large): the reason.
    #[error("{0}")]
    File(String),
    #[error("invalid executable: {0}")]
    Invalid(&'static str),
    #[error("invalid executable: phdr[{index}] {reason}")]
    Segment { index: usize, reason: &'static str },
    #[error("invalid executable: note does not fall within valid size")]
    NoteSize,
    #[error("No Solo5 ABI information found in executable")]
    NoAbiNote,
    #[error("Executable is not for the solo5-hvt target (ABI target {0})")]
    WrongTarget(u32),
    #[error("Executable requests unsupported ABI version {0}")]
    WrongVersion(u32),
    #[error("No Solo5 manifest found in executable")]
    NoManifest,
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A PT_LOAD segment to copy into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub file_offset: usize,
    pub file_size: usize,
    /// Page-aligned extent `[start, end)` covering the segment in memory.
    pub start: u64,
    pub end: u64,
    pub writable: bool,
    /// PF_X: mapped executable in process mode (never together with `writable`).
    pub executable: bool,
}

/// A validated unikernel: entry point, segments and manifest.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// Largest page-aligned end of a loaded segment (boot info `kernel_end`).
    pub kernel_end: u64,
    pub manifest: Manifest,
}

/// Reads a kernel file (a path, or `@FD` for an open fd), refusing what cannot be one before
/// reading it all.
pub fn read_image(path: &Path) -> Result<Vec<u8>, ElfError> {
    let io_err = |e: std::io::Error| ElfError::File(e.to_string());
    let file = match kernel_fd(path) {
        // `@FD`: a runtime opened and checked this file; reading the fd itself means the file
        // checked is the file run, whatever happens to the path meanwhile.
        Some(fd) => {
            // SAFETY: the fd number came from the command line; it is only borrowed long enough
            // to duplicate it (an fd that is not open makes the dup fail with EBADF).
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            std::fs::File::from(borrowed.try_clone_to_owned().map_err(io_err)?)
        }
        None => std::fs::File::open(path).map_err(io_err)?,
    };
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(ElfError::File("not a regular file".into()));
    }
    if meta.len() > MAX_KERNEL_FILE {
        return Err(ElfError::File("file too large".into()));
    }
    // From offset 0 whatever the fd's position, and no more than the size checked above.
    let mut image = vec![0; meta.len() as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut image, 0).map_err(io_err)?;
    Ok(image)
}

/// The fd of a kernel given as `@FD` (as taps are given with `--net:NAME=@FD`); a file whose
/// name starts with `@` is reached as `./@name`.
pub fn kernel_fd(path: &Path) -> Option<std::os::fd::RawFd> {
    let digits = path.to_str()?.strip_prefix('@')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Kernel {
    /// Validates `image` for a guest of `mem_size` bytes.
    pub fn parse(image: &[u8], mem_size: u64) -> Result<Self, ElfError> {
        let header = check_header(image)?;
        let phdrs = program_headers(image, &header)?;
        check_abi_note(image, &phdrs)?;
        let manifest_bytes = find_note(image, &phdrs, NOTE_TYPE_MANIFEST, NOTE_MANIFEST_MAX_DESC, NOTE_MANIFEST_PAD)?
            .ok_or(ElfError::NoManifest)?;
        let manifest = Manifest::parse(&manifest_bytes)?;
        let segments = check_segments(image, &phdrs, mem_size)?;
        if header.e_entry < GUEST_MIN_BASE || header.e_entry >= mem_size {
            return Err(ElfError::Invalid("entry point outside guest memory"));
        }
        let kernel_end = segments.iter().map(|s| s.end).max().unwrap_or(GUEST_MIN_BASE);
        Ok(Kernel { entry: header.e_entry, segments, kernel_end, manifest })
    }
}

/// Whether `image` is meant for Solo5 at all: an ELF whose PT_NOTEs hold a Solo5 ABI note, of
/// any target or version. A container runtime uses this to tell unikernels from ordinary
/// programs; [`Kernel::parse`] then validates a unikernel fully.
pub fn has_solo5_abi_note(image: &[u8]) -> bool {
    abi_note_in(image)
}

/// [`has_solo5_abi_note`] for a file, reading only its ELF header, program headers and notes
/// (a few KiB), never the whole file: a runtime asks this of every container's program.
pub fn file_has_solo5_abi_note(file: &std::fs::File) -> bool {
    abi_note_in(file)
}

fn abi_note_in<B: ElfBytes + ?Sized>(bytes: &B) -> bool {
    let Some(head) = bytes.range(0, ELF64_HEADER_SIZE) else { return false };
    let Ok(header) = goblin::elf::Elf::parse_header(&head) else { return false };
    if header.e_ident[EI_CLASS] != ELFCLASS64 || header.e_ident[EI_DATA] != ELFDATA2LSB || header.e_phentsize != 56 {
        return false;
    }
    let table_len = u64::from(header.e_phnum) * u64::from(header.e_phentsize);
    let Some(table) = bytes.range(header.e_phoff, table_len) else { return false };
    let ctx = Ctx::new(Container::Big, Endian::Little);
    let Ok(phdrs) = ProgramHeader::parse(&table, 0, usize::from(header.e_phnum), ctx) else { return false };
    matches!(find_note(bytes, &phdrs, NOTE_TYPE_ABI, NOTE_ABI_MAX_DESC, 0), Ok(Some(_)))
}

/// Where an ELF's bytes come from: an image in memory, or a file read piece by piece (callers
/// ask only for bounded ranges: headers and notes).
trait ElfBytes {
    /// The bytes `[offset, offset + len)`, or None if they are not all inside.
    fn range(&self, offset: u64, len: u64) -> Option<Cow<'_, [u8]>>;
}

impl ElfBytes for [u8] {
    fn range(&self, offset: u64, len: u64) -> Option<Cow<'_, [u8]>> {
        file_range(self, offset, len).map(Cow::Borrowed)
    }
}

impl ElfBytes for std::fs::File {
    fn range(&self, offset: u64, len: u64) -> Option<Cow<'_, [u8]>> {
        let mut buf = vec![0; usize::try_from(len).ok()?];
        std::os::unix::fs::FileExt::read_exact_at(self, &mut buf, offset).ok()?;
        Some(Cow::Owned(buf))
    }
}

fn check_header(image: &[u8]) -> Result<Header, ElfError> {
    let bad = ElfError::Invalid("invalid or unsupported executable (ELF header)");
    let header = goblin::elf::Elf::parse_header(image).map_err(|_| bad.clone())?;
    let ok = header.e_ident[EI_CLASS] == ELFCLASS64
        && header.e_ident[EI_DATA] == ELFDATA2LSB
        && header.e_version == 1
        && header.e_ehsize == 64
        && header.e_phentsize == 56
        && header.e_phnum >= 1;
    if !ok {
        return Err(bad);
    }
    if header.e_type != ET_EXEC {
        return Err(ElfError::Invalid("not an ET_EXEC executable (PIE and shared objects are not supported)"));
    }
    if header.e_machine != EM_X86_64 {
        return Err(ElfError::Invalid("not an x86-64 executable"));
    }
    Ok(header)
}

fn program_headers(image: &[u8], header: &Header) -> Result<Vec<ProgramHeader>, ElfError> {
    let offset = usize::try_from(header.e_phoff).map_err(|_| ElfError::Invalid("program headers outside the file"))?;
    let ctx = Ctx::new(Container::Big, Endian::Little);
    ProgramHeader::parse(image, offset, usize::from(header.e_phnum), ctx)
        .map_err(|_| ElfError::Invalid("program headers outside the file"))
}

/// The bytes `[offset, offset + len)` of the file, or None if they are not all inside it.
fn file_range(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let len = usize::try_from(len).ok()?;
    image.get(start..start.checked_add(len)?)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Finds the Solo5 note of type `note_type`: the first note of some PT_NOTE segment. Returns its
/// payload, which starts `pad` bytes after the 20-byte header.
fn find_note<'a, B: ElfBytes + ?Sized>(
    image: &'a B,
    phdrs: &[ProgramHeader],
    note_type: u32,
    max_desc: u32,
    pad: usize,
) -> Result<Option<Cow<'a, [u8]>>, ElfError> {
    for ph in phdrs.iter().filter(|p| p.p_type == PT_NOTE) {
        if ph.p_filesz < NOTE_NHDR_SIZE {
            return Err(ElfError::Invalid("PT_NOTE smaller than a note header"));
        }
        if ph.p_filesz < NOTE_HEADER_SIZE as u64 {
            continue;
        }
        let Some(head) = image.range(ph.p_offset, NOTE_HEADER_SIZE as u64) else {
            return Err(ElfError::Invalid("PT_NOTE outside the file"));
        };
        let (namesz, descsz, ntype) = (u32_at(&head, 0), u32_at(&head, 4), u32_at(&head, 8));
        if namesz as usize != NOTE_NAME.len() || head[12..18] != NOTE_NAME || ntype != note_type {
            continue;
        }
        let total = NOTE_HEADER_SIZE as u64 + u64::from(descsz);
        if descsz == 0 || descsz > max_desc || ph.p_filesz < total {
            return Err(ElfError::NoteSize);
        }
        let Some(payload_len) = (descsz as usize).checked_sub(pad) else {
            return Err(ElfError::NoteSize);
        };
        let Some(payload) = image.range(ph.p_offset + (NOTE_HEADER_SIZE + pad) as u64, payload_len as u64) else {
            return Err(ElfError::NoteSize);
        };
        return Ok(Some(payload));
    }
    Ok(None)
}

fn check_abi_note(image: &[u8], phdrs: &[ProgramHeader]) -> Result<(), ElfError> {
    let abi = find_note(image, phdrs, NOTE_TYPE_ABI, NOTE_ABI_MAX_DESC, 0)?.ok_or(ElfError::NoAbiNote)?;
    if abi.len() < 8 {
        return Err(ElfError::NoteSize);
    }
    let (target, version) = (u32_at(&abi, 0), u32_at(&abi, 4));
    if target != ABI_TARGET_HVT {
        return Err(ElfError::WrongTarget(target));
    }
    if version != ABI_VERSION {
        return Err(ElfError::WrongVersion(version));
    }
    Ok(())
}

/// The PT_LOAD rules of ABI section 2.4, with overflow-safe arithmetic throughout.
fn check_segments(image: &[u8], phdrs: &[ProgramHeader], mem_size: u64) -> Result<Vec<Segment>, ElfError> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut prev_vaddr = 0u64;
    let mut prev_end = 0u64;
    for (index, ph) in phdrs.iter().enumerate() {
        // Zero-filesz PT_LOADs (the empty .tdata at vaddr 0, the .bss) are skipped: guest RAM
        // starts zeroed, which is what they ask for.
        if ph.p_type != PT_LOAD || ph.p_filesz == 0 {
            continue;
        }
        let fail = |reason| Err(ElfError::Segment { index, reason });
        let (vaddr, align) = (ph.p_vaddr, ph.p_align);
        if vaddr < GUEST_MIN_BASE {
            return fail("is below the guest's minimum load address 0x100000");
        }
        if vaddr < prev_vaddr {
            return fail("is not in ascending address order");
        }
        if align == 0 || !align.is_power_of_two() {
            return fail("has an alignment that is not a power of two");
        }
        let start = vaddr & !(align - 1);
        if start < GUEST_MIN_BASE || start < prev_end {
            return fail("overlaps the low memory area or a previous segment");
        }
        if vaddr >= mem_size {
            return fail("is outside guest memory");
        }
        match vaddr.checked_add(ph.p_filesz) {
            Some(e) if e <= mem_size => {}
            _ => return fail("is outside guest memory"),
        }
        if ph.p_memsz < ph.p_filesz {
            return fail("has a memory size smaller than its file size");
        }
        let end = match vaddr.checked_add(ph.p_memsz).and_then(|e| e.checked_add(align - 1)) {
            Some(e) if (e & !(align - 1)) <= mem_size => e & !(align - 1),
            _ => return fail("is outside guest memory"),
        };
        if start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return fail("is not page aligned");
        }
        // solo5-hvt maps such a segment inaccessible and the guest dies on its first access;
        // tender would silently have made it readable. Neither is what the ELF asks for.
        if ph.p_flags & (PF_R | PF_W | PF_X) == 0 {
            return fail("grants no access (p_flags has none of R, W, X)");
        }
        if ph.p_flags & PF_W != 0 && ph.p_flags & PF_X != 0 {
            return fail("requests WRITE and EXEC permissions");
        }
        if file_range(image, ph.p_offset, ph.p_filesz).is_none() {
            return fail("has file contents outside the file");
        }
        segments.push(Segment {
            vaddr,
            file_offset: ph.p_offset as usize,
            file_size: ph.p_filesz as usize,
            start,
            end,
            writable: ph.p_flags & PF_W != 0,
            executable: ph.p_flags & PF_X != 0,
        });
        prev_vaddr = vaddr;
        prev_end = end;
    }
    if segments.is_empty() {
        return Err(ElfError::Invalid("no loadable segment"));
    }
    Ok(segments)
}
