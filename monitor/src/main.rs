//! `tender`: the command-line front end. All the work is in the library.

use std::process::ExitCode;

use tender::cli::{self, Command};
use tender::{RunEnd, Vm};

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let (config, warnings) = match command {
        Command::Info(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Command::Run { config, warnings } => (config, warnings),
    };
    for w in warnings {
        eprintln!("tender: warning: {w}");
    }
    let mut vm = match Vm::new(&config) {
        Ok(vm) => vm,
        Err(e) => return fail(&e.to_string()),
    };
    let end = vm.run();
    match &end {
        RunEnd::Halted {
            trap: Some(t),
            status,
        } => eprintln!(
            "tender: guest aborted (status {status}) on a CPU exception: rip={:#x} rsp={:#x} error={:#x} cr2={:#x}",
            t.rip, t.rsp, t.error_code, t.cr2
        ),
        RunEnd::Halted { .. } => {}
        RunEnd::GuestError { error, rip } => eprintln!("tender: {error}, rip={rip:#x}"),
        RunEnd::HostError(msg) => eprintln!("tender: {msg}"),
        RunEnd::Signal(sig) => eprintln!("tender: exiting on signal {sig}"),
    }
    exit_sandboxed(end.exit_code())
}

/// Ends the process from inside the sandbox: no destructors (the filter allows no munmap or
/// close) and no std runtime cleanup (which calls sigaltstack). Nothing is buffered: guest output
/// and messages are written unbuffered.
fn exit_sandboxed(code: u8) -> ! {
    // SAFETY: _exit only ends the process; nothing needs to run before.
    unsafe { libc::_exit(i32::from(code)) }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("tender: {msg}");
    ExitCode::FAILURE
}
