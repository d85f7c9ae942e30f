//! `tender-debug`: `tender` plus a GDB stub (`--gdb[=PORT]`, or solo5-hvt-debug's `--gdb
//! --gdb-port=N`). Without `--gdb` it runs exactly as `tender`. The stub lives here, outside the
//! monitor crate, so that `tender` itself (the trusted part) neither contains it nor allows the
//! system calls it needs.

mod conn;
mod kick;
mod stub;
mod target;

use std::process::ExitCode;

use tender::{cli, front};

/// What `tender-debug --help` adds to tender's help.
const GDB_HELP: &str = "
tender-debug adds (before KERNEL):
      --gdb[=PORT]       Wait for gdb on 127.0.0.1:PORT (default 1234; 0 picks a free port) before
                         the guest's first instruction; the port is printed on stderr
      --gdb-port=N       The port, as solo5-hvt-debug spells it (with --gdb)
With --gdb: gdb's kill ends the run with status 1; detach or a lost connection lets the guest run
to its own end. Without --gdb, tender-debug runs exactly as tender.
";

/// solo5-hvt-debug's default port.
const DEFAULT_PORT: u16 = 1234;

/// Takes the gdb options out of the options before the kernel; returns the port to listen on.
fn take_gdb_options(args: &mut Vec<String>) -> Result<Option<u16>, String> {
    let mut gdb = false;
    let mut port = None;
    let mut i = 0;
    let parse_port = |v: &str| v.parse::<u16>().map_err(|_| format!("Malformed gdb port: '{v}'"));
    while i < args.len() {
        let arg = args[i].as_str();
        if arg == "--" || !arg.starts_with('-') || arg == "-" {
            break;
        }
        if arg == "--gdb" {
            gdb = true;
        } else if let Some(v) = arg.strip_prefix("--gdb=") {
            (gdb, port) = (true, Some(parse_port(v)?));
        } else if let Some(v) = arg.strip_prefix("--gdb-port=") {
            port = Some(parse_port(v)?);
        } else if arg == "--gdb-port" {
            let v = args.get(i + 1).ok_or("--gdb-port needs a value")?;
            port = Some(parse_port(v)?);
            args.remove(i + 1);
        } else {
            // Skip the separate value of an option, which may start with '-'.
            i += if cli::VALUE_OPTIONS.contains(&arg) { 2 } else { 1 };
            continue;
        }
        args.remove(i);
    }
    match (gdb, port) {
        (true, p) => Ok(Some(p.unwrap_or(DEFAULT_PORT))),
        (false, Some(_)) => Err("--gdb-port needs --gdb".into()),
        (false, None) => Ok(None),
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let port = match take_gdb_options(&mut args) {
        Ok(p) => p,
        Err(e) => return front::fail(&e),
    };
    let help = args.iter().take_while(|a| *a != "--" && a.starts_with('-')).any(|a| a == "--help" || a == "-h");
    let mut command = match cli::parse(args) {
        Ok(cli::Command::Info(text)) if help => cli::Command::Info(text + GDB_HELP),
        Ok(c) => c,
        Err(e) => return front::fail(&e.to_string()),
    };
    if let (Some(_), cli::Command::Run { config, .. }) = (port, &mut command) {
        // The stub watches KVM's vCPU; a process-mode guest has none (docs/PROCESS_MODE.md).
        if config.mode == tender::config::Mode::Process {
            return front::fail("--gdb is not available with --mode=process");
        }
        // Offer guests the cooperative path for their CPL 3 code (guest-abi, DebugArea).
        config.debugger = true;
    }
    match port {
        None => front::run(command, |_| Ok(())),
        Some(port) => front::run(command, |vm| stub::Stub::listen(vm, port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(args: &[&str]) -> (Result<Option<u16>, String>, Vec<String>) {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let r = take_gdb_options(&mut v);
        (r, v)
    }

    #[test]
    fn gdb_options_in_both_spellings() {
        assert_eq!(take(&["--gdb", "k", "--gdb"]), (Ok(Some(1234)), vec!["k".into(), "--gdb".into()]));
        assert_eq!(take(&["--gdb=0", "k"]).0, Ok(Some(0)));
        assert_eq!(take(&["--gdb", "--gdb-port=4321", "k"]).0, Ok(Some(4321)));
        assert_eq!(take(&["--gdb-port", "77", "--gdb", "k"]), (Ok(Some(77)), vec!["k".into()]));
        assert_eq!(take(&["--mem", "--gdb", "k"]).0, Ok(None), "a value, not the option");
        assert_eq!(take(&["--", "--gdb"]).0, Ok(None));
        assert!(take(&["--gdb=x", "k"]).0.is_err());
        assert!(take(&["--gdb-port=9", "k"]).0.is_err());
    }
}
