//! What a run needs, independent of how it was asked for (command line, tests, benchmarks).

use std::os::fd::RawFd;
use std::path::PathBuf;

use guest_abi::{MEM_ALIGN, MEM_DEFAULT_MIB, MEM_MAX, MEM_MIN};

use crate::devices::net::TapSource;
use crate::sandbox::SeccompMode;

/// `--mode=kvm|process`: what runs the guest's instructions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// A KVM virtual machine (the default, and the stronger wall).
    #[default]
    Kvm,
    /// tender's own process, behind the seccomp filter and the jail only (docs/PROCESS_MODE.md).
    Process,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Mode::Kvm),
            "process" => Ok(Mode::Process),
            _ => Err(format!("invalid --mode value '{s}' (expected kvm or process)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub kernel: PathBuf,
    pub mode: Mode,
    /// Guest memory in bytes: a multiple of 2 MiB, 2 MiB to 4 GiB.
    pub mem_bytes: u64,
    /// Guest arguments, joined with spaces into the guest command line.
    pub guest_args: Vec<String>,
    pub blocks: Vec<BlockSpec>,
    pub nets: Vec<NetSpec>,
    pub seccomp: SeccompMode,
    /// `--dumpcore=DIR`: write a guest core there on an abort or a guest fault.
    pub dumpcore: Option<PathBuf>,
    /// `--timeout=SECONDS`: end the run after this long.
    pub timeout: Option<u64>,
    /// `--user=USER[:GROUP]`: the user (and group) tender drops to before the guest runs.
    pub user: Option<String>,
    /// `--chroot=DIR`: the directory tender makes its root before the guest runs.
    pub chroot: Option<PathBuf>,
    /// `--unshare`: new mount, IPC and UTS namespaces before the guest runs.
    pub unshare: bool,
    /// `--ring-spin=US`: how long the ring's I/O thread looks at an empty ring before it sleeps.
    pub ring_spin_us: u32,
    /// Set by `tender-debug --gdb` (no option of `tender`'s): advertise TENDER_FEATURE_DEBUG.
    pub debugger: bool,
}

impl Config {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Config {
            kernel: kernel.into(),
            mode: Mode::Kvm,
            mem_bytes: MEM_DEFAULT_MIB << 20,
            guest_args: Vec::new(),
            blocks: Vec::new(),
            nets: Vec::new(),
            seccomp: SeccompMode::default(),
            dumpcore: None,
            timeout: None,
            user: None,
            chroot: None,
            unshare: false,
            ring_spin_us: crate::devices::ring::SPIN_DEFAULT_US,
            debugger: false,
        }
    }
}

/// `--block:NAME=PATH` (or `--block PATH` for the only block device, `name: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    pub name: Option<String>,
    pub path: PathBuf,
    pub block_size: Option<u16>,
}

/// `--net:NAME=IFACE|@FD` (or `--net IFACE` for the only net device, `name: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub name: Option<String>,
    pub source: TapSource,
    pub mac: Option<[u8; 6]>,
}

impl NetSpec {
    pub fn fd(&self) -> Option<RawFd> {
        match self.source {
            TapSource::Fd(fd) => Some(fd),
            TapSource::Interface(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MemSizeError {
    #[error("Malformed argument to --mem: '{0}'")]
    Malformed(String),
    #[error("guest memory size {0} MiB is below the minimum of 2 MiB")]
    TooSmall(u64),
    #[error("guest memory size {0} bytes exceeds the max size {MEM_MAX} bytes")]
    TooLarge(u128),
}

/// Parses `--mem`'s MiB value into bytes, rounded down to 2 MiB. The second value is true when
/// rounding changed it (the caller warns).
pub fn parse_mem_mib(value: &str) -> Result<(u64, bool), MemSizeError> {
    let mib: u64 = value.trim().parse().map_err(|_| MemSizeError::Malformed(value.into()))?;
    let bytes = u128::from(mib) << 20;
    let rounded = bytes / u128::from(MEM_ALIGN) * u128::from(MEM_ALIGN);
    if rounded > u128::from(MEM_MAX) {
        return Err(MemSizeError::TooLarge(bytes));
    }
    if rounded < u128::from(MEM_MIN) {
        return Err(MemSizeError::TooSmall(mib));
    }
    Ok((rounded as u64, rounded != bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes() {
        assert_eq!(parse_mem_mib("512"), Ok((512 << 20, false)));
        assert_eq!(parse_mem_mib("3"), Ok((2 << 20, true)));
        assert_eq!(parse_mem_mib("4097"), Ok((4096 << 20, true)));
        assert!(matches!(parse_mem_mib("4098"), Err(MemSizeError::TooLarge(_))));
        assert!(matches!(parse_mem_mib("1"), Err(MemSizeError::TooSmall(1))));
        assert!(matches!(parse_mem_mib("0"), Err(MemSizeError::TooSmall(0))));
        for bad in ["", "-1", "abc", "1.5", "99999999999999999999999"] {
            assert!(matches!(parse_mem_mib(bad), Err(MemSizeError::Malformed(_))), "{bad}");
        }
    }
}
