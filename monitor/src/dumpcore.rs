//! `--dumpcore=DIR`: when the guest aborts or faults, an ELF core of the guest (registers and
//! resident memory, sparse) that gdb opens together with the unikernel ELF.
//!
//! The file is created before the sandbox is entered, as an unnamed O_TMPFILE in DIR, and only
//! linked into DIR as `core.tender.<pid>` when there is something to dump: a clean run leaves
//! nothing behind, and the sandbox never has to open a path.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use guest_abi::TrapFrame;
use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::memory::GuestRam;

const PAGE: usize = 0x1000;
/// Where guest memory starts in the file: after the ELF header, two phdrs and the note.
const DATA_OFFSET: u64 = PAGE as u64;
const NT_PRSTATUS: u32 = 1;
const PRSTATUS_SIZE: usize = 336;
const PR_REG_OFFSET: usize = 112;
const SIGSEGV: u16 = 11;

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("dumpcore: cannot use directory {0}: {1}")]
    Dir(String, std::io::Error),
}

/// An armed core dump: the unnamed file and the directory to link it into.
pub struct CoreDump {
    file: File,
    dir: File,
    name: PathBuf,
    /// mincore's result vector, allocated up front (nothing is allocated in the sandbox).
    residency: Vec<u8>,
    header: Vec<u8>,
}

impl CoreDump {
    pub fn arm(dir: &Path, guest_bytes: u64) -> Result<Self, DumpError> {
        let err = |e| DumpError::Dir(dir.display().to_string(), e);
        let dir_file = File::open(dir).map_err(err)?;
        let cdir = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a NUL-terminated path; O_TMPFILE creates an unnamed file we then own.
        let fd = unsafe { libc::open(cdir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o600) };
        if fd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let pages = (guest_bytes as usize).div_ceil(PAGE);
        Ok(CoreDump {
            file,
            dir: dir_file,
            name: format!("core.tender.{}", std::process::id()).into(),
            residency: vec![0; pages],
            header: Vec::with_capacity(PAGE),
        })
    }

    /// Fds the sandbox must allow: the core file (writes) and the directory (link).
    pub fn fds(&self) -> [RawFd; 2] {
        [self.file.as_raw_fd(), self.dir.as_raw_fd()]
    }

    /// Writes the core and links it into the directory. Returns the path, for the message.
    pub fn write(
        &mut self,
        ram: &GuestRam,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
        trap: Option<&TrapFrame>,
    ) -> std::io::Result<String> {
        let size = ram.limit();
        self.build_header(size, regs, sregs, trap);
        pwrite_all(&self.file, &self.header, 0)?;
        let base = ram.host_base();
        // SAFETY: `base..base+size` is our guest mapping; mincore only reads page residency and
        // writes one byte per page into `residency`, which has that many bytes.
        let rc = unsafe { libc::mincore(base.cast(), size as usize, self.residency.as_mut_ptr()) };
        let all_resident = rc != 0;
        let pages = (size as usize) / PAGE;
        let mut written = 0usize;
        for page in 0..pages {
            // The last page is always written, so the file has its full (sparse) length.
            let resident = all_resident || self.residency[page] & 1 != 0 || page + 1 == pages;
            if resident {
                // SAFETY: page < pages, so the range is inside the guest mapping.
                let bytes = unsafe { std::slice::from_raw_parts(base.add(page * PAGE), PAGE) };
                pwrite_all(&self.file, bytes, DATA_OFFSET + (page * PAGE) as u64)?;
                written += 1;
            }
        }
        let name = std::ffi::CString::new(self.name.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: links our own unnamed file into our own directory fd under a fixed name.
        let rc = unsafe {
            libc::linkat(self.file.as_raw_fd(), c"".as_ptr(), self.dir.as_raw_fd(), name.as_ptr(), libc::AT_EMPTY_PATH)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(format!("{} ({written} of {pages} pages written)", self.name.display()))
    }

    fn build_header(&mut self, size: u64, regs: &kvm_regs, sregs: &kvm_sregs, trap: Option<&TrapFrame>) {
        let h = &mut self.header;
        h.clear();
        let note_desc = prstatus(regs, sregs, trap);
        let note_len = 12 + 8 + note_desc.len();
        // ELF header.
        h.extend_from_slice(b"\x7fELF\x02\x01\x01\xff"); // 64-bit, LE, v1, OSABI standalone
        h.extend_from_slice(&[0; 8]);
        push16(h, 4); // ET_CORE
        push16(h, 62); // EM_X86_64
        push32(h, 1);
        push64(h, 0); // entry
        push64(h, 64); // phoff
        push64(h, 0); // shoff
        push32(h, 0); // flags
        push16(h, 64);
        push16(h, 56);
        push16(h, 2); // phnum
        push16(h, 64);
        push16(h, 0);
        push16(h, 0);
        // PT_NOTE
        push32(h, 4);
        push32(h, 0);
        push64(h, 64 + 2 * 56);
        push64(h, 0);
        push64(h, 0);
        push64(h, note_len as u64);
        push64(h, 0);
        push64(h, 4);
        // PT_LOAD: all guest memory at vaddr 0, RWX.
        push32(h, 1);
        push32(h, 7);
        push64(h, DATA_OFFSET);
        push64(h, 0);
        push64(h, 0);
        push64(h, size);
        push64(h, size);
        push64(h, PAGE as u64);
        // NT_PRSTATUS note named "CORE".
        push32(h, 5);
        push32(h, note_desc.len() as u32);
        push32(h, NT_PRSTATUS);
        h.extend_from_slice(b"CORE\0\0\0\0");
        h.extend_from_slice(&note_desc);
    }
}

/// A Linux x86-64 `struct elf_prstatus`, with the registers of the faulting context when the
/// guest left a trap frame.
fn prstatus(r: &kvm_regs, s: &kvm_sregs, trap: Option<&TrapFrame>) -> [u8; PRSTATUS_SIZE] {
    let mut p = [0u8; PRSTATUS_SIZE];
    p[12..14].copy_from_slice(&SIGSEGV.to_le_bytes());
    p[32..36].copy_from_slice(&1u32.to_le_bytes()); // pid
    let (rip, cs, rflags, rsp, ss) = match trap {
        Some(t) => (t.rip, t.cs, t.rflags, t.rsp, t.ss),
        None => (r.rip, u64::from(s.cs.selector), r.rflags, r.rsp, u64::from(s.ss.selector)),
    };
    let regs = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        u64::MAX, // orig_rax
        rip,
        cs,
        rflags,
        rsp,
        ss,
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ];
    for (i, v) in regs.iter().enumerate() {
        let at = PR_REG_OFFSET + i * 8;
        p[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    p
}

fn push16(h: &mut Vec<u8>, v: u16) {
    h.extend_from_slice(&v.to_le_bytes());
}
fn push32(h: &mut Vec<u8>, v: u32) {
    h.extend_from_slice(&v.to_le_bytes());
}
fn push64(h: &mut Vec<u8>, v: u64) {
    h.extend_from_slice(&v.to_le_bytes());
}

fn pwrite_all(file: &File, mut buf: &[u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    while !buf.is_empty() {
        let n = file.write_at(buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}
