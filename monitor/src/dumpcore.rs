//! `--dumpcore=DIR`: when the guest aborts or faults, an ELF core of the guest (registers and
//! resident memory, sparse) that gdb opens together with the unikernel ELF.
//!
//! The file is created before the sandbox is entered, as an unnamed O_TMPFILE in DIR, and only
//! named `DIR/core.tender.<pid>` when there is something to dump: a clean run leaves nothing
//! behind. The naming (`linkat`) is not done by tender itself but by a tiny helper process forked
//! before the jail and the filter ([`CoreDump::start_linker`]): it holds the file and the
//! directory, waits for one byte on a socket, links the file to that one fixed name and exits.
//! So the sandboxed monitor needs no call that takes a path (a subverted one could only trigger
//! that one link), and the link works after `--user` dropped the capability it needs
//! (`CAP_DAC_READ_SEARCH`, for `AT_EMPTY_PATH`): the helper keeps root.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use guest_abi::TrapFrame;
use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::jail::close_all_except;
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
    #[error("dumpcore: cannot start the helper that names the core: {0}")]
    Linker(std::io::Error),
}

/// An armed core dump: the unnamed file, and the directory (until the link helper takes it).
pub struct CoreDump {
    file: File,
    dir: Option<File>,
    /// `core.tender.<pid>`.
    name: CString,
    /// Our end of the socket to the link helper, once it runs. A `File`, so that it is written
    /// and read with write(2) and read(2), which the filter allows on it (a `UnixStream` would
    /// use sendto and recvfrom).
    linker: Option<File>,
    /// mincore's result vector, allocated up front (nothing is allocated in the sandbox).
    residency: Vec<u8>,
    header: Vec<u8>,
}

impl CoreDump {
    pub fn arm(dir: &std::path::Path, guest_bytes: u64) -> Result<Self, DumpError> {
        let err = |e| DumpError::Dir(dir.display().to_string(), e);
        let dir_file = File::open(dir).map_err(err)?;
        let cdir = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| err(std::io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a NUL-terminated path; O_TMPFILE creates an unnamed file we then own.
        let fd = unsafe { libc::open(cdir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o600) };
        if fd < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        let pages = (guest_bytes as usize).div_ceil(PAGE);
        let name = CString::new(format!("core.tender.{}", std::process::id())).unwrap_or_default();
        Ok(CoreDump {
            file,
            dir: Some(dir_file),
            name,
            linker: None,
            residency: vec![0; pages],
            header: Vec::with_capacity(PAGE),
        })
    }

    /// Forks the link helper (see the module's documentation). Call while tender has one
    /// thread, before the jail: the helper keeps tender's ids and needs nothing after the fork
    /// but its three fds. tender keeps the file and its end of the socket, and closes the
    /// directory.
    pub fn start_linker(&mut self) -> Result<(), DumpError> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let (ours, theirs) = UnixStream::pair().map_err(DumpError::Linker)?;
        let mut keep = [theirs.as_raw_fd(), self.file.as_raw_fd(), dir.as_raw_fd()];
        // SAFETY: tender has one thread here, and the child runs only `link_helper`, which makes
        // raw system calls and allocates nothing.
        match unsafe { nix::unistd::fork() }.map_err(|e| DumpError::Linker(e.into()))? {
            nix::unistd::ForkResult::Child => link_helper(&mut keep, self.name.as_ptr()),
            nix::unistd::ForkResult::Parent { .. } => {
                self.linker = Some(File::from(std::os::fd::OwnedFd::from(ours)));
                Ok(())
            }
        }
    }

    /// Fds the sandbox must allow: the core file (writes) and the socket to the link helper.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.file.as_raw_fd(), self.linker.as_ref().map_or(-1, AsRawFd::as_raw_fd)]
    }

    /// Writes the core and has the helper name it. Returns the name, for the message.
    pub fn write(
        &mut self,
        ram: &GuestRam,
        regs: &kvm_regs,
        sregs: &kvm_sregs,
        trap: Option<&TrapFrame>,
    ) -> std::io::Result<String> {
        // Guest memory from its lowest address (0 under KVM, 0x10000 in process mode).
        let (start, size) = (ram.base(), ram.limit() - ram.base());
        self.build_header(start, size, regs, sregs, trap);
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
        let linker = self.linker.as_mut().ok_or_else(|| std::io::Error::other("the link helper was not started"))?;
        let mut errno = [0u8; 4];
        linker.write_all(&[1])?;
        linker.read_exact(&mut errno).map_err(|_| std::io::Error::other("the link helper is gone"))?;
        match i32::from_ne_bytes(errno) {
            0 => Ok(format!("{} ({written} of {pages} pages written)", self.name.to_string_lossy())),
            errno => Err(std::io::Error::from_raw_os_error(errno)),
        }
    }

    fn build_header(&mut self, start: u64, size: u64, regs: &kvm_regs, sregs: &kvm_sregs, trap: Option<&TrapFrame>) {
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
        // PT_LOAD: all guest memory at its guest addresses, RWX.
        push32(h, 1);
        push32(h, 7);
        push64(h, DATA_OFFSET);
        push64(h, start);
        push64(h, start);
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

/// The link helper's whole life, in the child of the fork: only raw system calls, no allocation.
/// It ignores the terminal's signals (tender decides how a run ends), keeps only `keep` (its end
/// of the socket, the core file, the directory), and waits. One byte: link the file as `name`
/// in the directory, answer with the errno (0 for success), exit. End of file (tender ended
/// without a core): exit.
fn link_helper(keep: &mut [RawFd; 3], name: *const libc::c_char) -> ! {
    let [sock, file, dir] = *keep;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP] {
        // SAFETY: setting a disposition to SIG_IGN runs no code of ours.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // SAFETY: fds 0-2 are tender's stdio, which the helper never uses; close_all_except then
    // closes every other fd but the three it needs.
    unsafe { libc::close_range(0, 2, 0) };
    let _ = close_all_except(keep);
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let mut byte = 0u8;
    let got = loop {
        // SAFETY: reads one byte into `byte`.
        let n = unsafe { libc::read(sock, (&raw mut byte).cast(), 1) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    if got == 1 {
        // SAFETY: links our own unnamed file into our own directory fd under `name`, a
        // NUL-terminated string that lives in the (copied) memory of the parent.
        let rc = unsafe { libc::linkat(file, c"".as_ptr(), dir, name, libc::AT_EMPTY_PATH) };
        let errno = if rc == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) };
        let answer = errno.to_ne_bytes();
        // SAFETY: writes four bytes from `answer`.
        unsafe { libc::write(sock, answer.as_ptr().cast(), answer.len()) };
    }
    // SAFETY: ends the helper without running anything of the parent's.
    unsafe { libc::_exit(0) }
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
