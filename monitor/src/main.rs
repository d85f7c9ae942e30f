//! `tender`: the command-line front end. All the work is in the library.

use std::process::ExitCode;

/// One line on stderr. Never panics: a closed stderr (`tender … 2>&1 | head -1`) must not turn a
/// message into a panic, whose abort would also break out of the sandbox's allowlist.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
use std::time::Instant;

use tender::cli::{self, Command};
use tender::report::{Ending, ReportFile, Stats};
use tender::{RunEnd, Vm};

fn main() -> ExitCode {
    let started = Instant::now();
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let (config, warnings, report) = match command {
        Command::Info(text) => {
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Command::Inspect { kernel, query, format } => {
            return match tender::inspect::inspect(&kernel, query, format) {
                Ok(text) => {
                    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            };
        }
        Command::Run { config, warnings, report } => (config, warnings, report),
    };
    let mut report = match report.as_deref().map(ReportFile::open).transpose() {
        Ok(r) => r,
        Err(e) => return fail(&format!("cannot open the report file: {e}")),
    };
    for w in warnings {
        say!("tender: warning: {w}");
    }
    let mut vm = match Vm::new(&config) {
        Ok(vm) => vm,
        Err(e) => {
            let msg = e.to_string();
            if let Some(r) = report.as_mut() {
                let _ = r.write(&Ending::Setup(&msg), started.elapsed(), &Stats::default());
            }
            return fail(&msg);
        }
    };
    for w in &vm.warnings {
        say!("tender: warning: {w}");
    }
    let setup_warnings = vm.warnings.len();
    let exit_files: Vec<i32> = report.iter().map(ReportFile::fd).collect();
    let end = vm.run(&exit_files);
    for w in &vm.warnings[setup_warnings..] {
        say!("tender: warning: {w}");
    }
    match &end {
        RunEnd::Halted { trap: Some(t), status } => say!(
            "tender: guest aborted (status {status}) on a CPU exception{}: rip={:#x} rsp={:#x} error={:#x} cr2={:#x}",
            t.vector.map(|v| format!(" (vector {v})")).unwrap_or_default(),
            t.frame.rip,
            t.frame.rsp,
            t.frame.error_code,
            t.frame.cr2
        ),
        RunEnd::Halted { .. } => {}
        RunEnd::GuestError { error, rip } => say!("tender: {error}, rip={rip:#x}"),
        RunEnd::HostError(msg) => say!("tender: {msg}"),
        RunEnd::Signal(sig) => say!("tender: exiting on signal {sig}"),
        RunEnd::Timeout(secs) => say!("tender: guest still running after --timeout={secs}s, stopped"),
    }
    if let Some(msg) = vm.dump_core(&end) {
        say!("tender: {msg}");
    }
    if let Some(r) = report.as_mut()
        && let Err(e) = r.write(&Ending::Run(&end), started.elapsed(), &vm.stats)
    {
        say!("tender: cannot write the report: {e}");
    }
    exit_sandboxed(end.exit_code())
}

fn fail(msg: &str) -> ExitCode {
    say!("tender: {msg}");
    ExitCode::FAILURE
}

/// Ends the process from inside the sandbox: no destructors (the filter allows no munmap or
/// close) and no std runtime cleanup (which calls sigaltstack). Nothing is buffered: guest output
/// and messages are written unbuffered.
fn exit_sandboxed(code: u8) -> ! {
    // SAFETY: _exit only ends the process; nothing needs to run before.
    unsafe { libc::_exit(i32::from(code)) }
}
