//! What `tender` (and `tender-debug`) do with a parsed command line: print, inspect, or build and
//! run the VM, report how it ended, and exit from inside the sandbox.

use std::process::ExitCode;
use std::time::Instant;

use crate::cli::Command;
use crate::jail::Jail;
use crate::observe::Observer;
use crate::report::{Ending, ReportFile, Stats};
use crate::{Error, Vm};

/// One line on stderr. Never panics: a closed stderr (`tender … 2>&1 | head -1`) must not turn a
/// message into a panic, whose abort would also break out of the sandbox's allowlist.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Carries out `command`. For a run, `attach` is called once the VM is built, before the guest's
/// first instruction (and before the sandbox): it returns the observer of the run (`()` for a
/// plain one), or the one-line reason it cannot.
pub fn run<O: Observer>(command: Command, attach: impl FnOnce(&Vm) -> Result<O, String>) -> ExitCode {
    let started = Instant::now();
    let (config, warnings, report) = match command {
        Command::Info(text) => {
            let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Command::Inspect { kernel, query, format } => {
            return match crate::inspect::inspect(&kernel, query, format) {
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
    let setup_failed = |report: &mut Option<ReportFile>, msg: &str| {
        if let Some(r) = report.as_mut() {
            let _ = r.write(&Ending::Setup(msg), started.elapsed(), &Stats::default());
        }
        fail(msg)
    };
    // The start, in the order `jail` documents: the jail resolved and checked before anything is
    // opened, the VM built (everything opened), the observer attached (a debugger's connection),
    // the VM taken into the jail (the ring's thread starts inside it), then the filter and the
    // guest (`run_observed`).
    let exit_files: Vec<i32> = report.iter().map(ReportFile::fd).collect();
    let built = Jail::new(config.user.as_deref(), config.chroot.as_deref(), config.unshare)
        .map_err(Error::from)
        .and_then(|jail| Ok((jail, Vm::new(&config)?)));
    let (mut jail, mut vm) = match built {
        Ok(built) => built,
        Err(e) => return setup_failed(&mut report, &e.to_string()),
    };
    let mut observer = match attach(&vm) {
        Ok(o) => o,
        Err(msg) => return setup_failed(&mut report, &msg),
    };
    if let Err(e) = vm.confine(&mut jail, &exit_files, &observer) {
        return setup_failed(&mut report, &e.to_string());
    }
    for w in &vm.warnings {
        say!("tender: warning: {w}");
    }
    let setup_warnings = vm.warnings.len();
    let end = vm.run_observed(&exit_files, &mut observer);
    for w in &vm.warnings[setup_warnings..] {
        say!("tender: warning: {w}");
    }
    if let Some(msg) = end.message() {
        say!("tender: {msg}");
    }
    observer.end(&end);
    if let Some(msg) = vm.dump_core(&end) {
        say!("tender: {msg}");
    }
    if let Some(r) = report.as_mut()
        && let Err(e) = r.write(&Ending::Run(&end), started.elapsed(), vm.stats())
    {
        say!("tender: cannot write the report: {e}");
    }
    exit_sandboxed(end.exit_code())
}

/// `tender: MSG` on stderr; status 1.
pub fn fail(msg: &str) -> ExitCode {
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
