//! tender: a small, hardened KVM monitor for Solo5 hvt (ABI v2) unikernels.
//!
//! The binary is a thin front end: [`cli::parse`] turns the command line into a [`Config`],
//! [`Vm::new`] validates and builds everything, [`Vm::run`] runs the guest to its end.

pub mod boot;
pub mod cli;
pub mod config;
pub mod devices;
pub mod dumpcore;
pub mod elf;
pub mod kvm;
pub mod manifest;
pub mod memory;
pub mod report;
pub mod sandbox;
pub mod signals;
pub mod vm;

pub use config::Config;
pub use vm::{RunEnd, Vm};

/// Everything that can stop a run before the guest starts. Each is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {reason}")]
    Kernel { path: String, reason: String },
    #[error("{path}: {source}")]
    Elf { path: String, source: elf::ElfError },
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Block(#[from] devices::block::BlockError),
    #[error(transparent)]
    Net(#[from] devices::net::NetError),
    #[error(transparent)]
    Poll(#[from] devices::poll::PollError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Kvm(#[from] kvm::KvmError),
    #[error(transparent)]
    DumpCore(#[from] dumpcore::DumpError),
}
