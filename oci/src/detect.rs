//! Which containers are unikernels: `process.args[0]`, resolved inside the rootfs and never
//! through a link out of it (openat2 with RESOLVE_IN_ROOT), is an ELF with a Solo5 ABI note.

use std::fs::File;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot open the rootfs {path}: {err}")]
    Rootfs { path: String, err: nix::Error },
    #[error("cannot read {path} in the rootfs: {err}")]
    Read { path: String, err: tender::elf::ElfError },
}

/// A unikernel found in a rootfs: the open file (what tender will run) and its bytes.
pub struct Unikernel {
    pub file: File,
    pub image: Vec<u8>,
}

/// Opens `path` inside `rootfs`. None when the path does not resolve to a regular file there
/// (then the container is not a unikernel, and runc reports what is wrong with it).
pub fn open_in_root(rootfs: &Path, path: &str) -> Result<Option<File>, DetectError> {
    let dir = nix::fcntl::open(rootfs, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|err| DetectError::Rootfs { path: rootfs.display().to_string(), err })?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(&dir, path, how) {
        Ok(fd) => {
            let file = File::from(fd);
            let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
            Ok(regular.then_some(file))
        }
        Err(_) => Ok(None),
    }
}

/// Keeps `file` when it is a Solo5 unikernel: only its headers and notes are read to decide,
/// then a unikernel is read whole by tender's own reader, through the open fd.
pub fn unikernel(file: File, path: &str) -> Result<Option<Unikernel>, DetectError> {
    if !tender::elf::file_has_solo5_abi_note(&file) {
        return Ok(None);
    }
    let fd = std::path::PathBuf::from(format!("@{}", std::os::fd::AsRawFd::as_raw_fd(&file)));
    let image = tender::elf::read_image(&fd).map_err(|err| DetectError::Read { path: path.into(), err })?;
    Ok(Some(Unikernel { file, image }))
}
