//! Why a VM could not be built: every error that stops tender before the guest's first
//! instruction, each one line for the user. Below `vm`, which returns it.

use crate::boot::BootError;
use crate::devices::block::BlockError;
use crate::devices::net::NetError;
use crate::devices::poll::PollError;
use crate::dumpcore::DumpError;
use crate::elf::ElfError;
use crate::jail::JailError;
use crate::kvm::KvmError;
use crate::memory::MemoryError;
use crate::process::{ProcessError, ScrubError};

/// Everything that can stop a run before the guest starts. Each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Kernel { path: String, reason: String },
    #[error("{path}: {source}")]
    Elf { path: String, source: ElfError },
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Poll(#[from] PollError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    DumpCore(#[from] DumpError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Scrub(#[from] ScrubError),
}
