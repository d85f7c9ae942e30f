//! tender: a small, hardened KVM monitor for Solo5 hvt (ABI v2) unikernels.
//!
//! The binary is a thin front end: [`cli::parse`] turns the command line into a [`Config`],
//! [`Vm::new`] validates and builds everything, [`Vm::run`] runs the guest to its end.

pub mod attach;
pub mod boot;
pub mod cli;
pub mod config;
pub mod devices;
pub mod dumpcore;
pub mod elf;
pub mod error;
pub mod front;
pub mod hypercalls;
pub mod inspect;
pub mod jail;
pub mod kvm;
pub mod manifest;
pub mod memory;
pub mod observe;
pub mod outcome;
pub mod process;
pub mod report;
pub mod sandbox;
pub mod signals;
pub mod vm;

pub use config::Config;
pub use error::Error;
pub use outcome::RunEnd;
pub use vm::Vm;
