//! Entering the sandbox just before the guest runs (the last step of the start, after the jail
//! closed every fd the run does not need): set no-new-privs, install the seccomp allowlist built
//! from the fds that remain.

use tender_seccomp::{Allowlist, Mode, SandboxError};

/// `--seccomp=on|log|off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Filter on; a call outside the allowlist kills tender (SIGSYS).
    #[default]
    On,
    /// Filter on, but violations are only logged by the kernel. For debugging.
    Log,
    /// No filter. For debugging.
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(SeccompMode::On),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            _ => Err(format!("invalid --seccomp value '{s}' (expected on, log or off)")),
        }
    }
}

/// Installs the filter for `allow` (unless `mode` is off).
pub fn enter(allow: &Allowlist, mode: SeccompMode) -> Result<(), SandboxError> {
    let mode = match mode {
        SeccompMode::Off => return Ok(()),
        SeccompMode::On => Mode::Kill,
        SeccompMode::Log => Mode::Log,
    };
    let program = allow.compile(mode)?;
    tender_seccomp::install(&program)
}
