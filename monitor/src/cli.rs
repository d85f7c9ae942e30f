//! The command line, in solo5-hvt's spellings: options, then the kernel, then the guest's
//! arguments. A pre-pass takes out the `--X:NAME=VALUE` forms, which clap cannot express, and
//! finds where the kernel is; clap parses the rest.

use std::path::PathBuf;

use clap::Parser;
use guest_abi::{ABI_VERSION, MFT_NAME_MAX};

use crate::config::{BlockSpec, Config, Mode, NetSpec, parse_mem_mib};
use crate::devices::net::{TapSource, parse_mac};
use crate::inspect::{Format, Query};
use crate::sandbox::SeccompMode;

/// Options that take a value, which may be the next argument (`--mem 512`).
pub const VALUE_OPTIONS: [&str; 11] = [
    "--mode",
    "--mem",
    "--net",
    "--block",
    "--seccomp",
    "--dumpcore",
    "--report",
    "--timeout",
    "--user",
    "--chroot",
    "--ring-spin",
];

#[derive(Parser, Debug)]
#[command(
    name = "tender",
    about = "Run a Solo5 hvt unikernel in a KVM virtual machine (or, with --mode=process, as a process).",
    override_usage = "tender [OPTIONS] [--] KERNEL [ARGS...]",
    disable_version_flag = true,
    after_help = "Device options (NAME is a device the unikernel declares in its manifest):
      --block:NAME=PATH              Attach block device NAME to the file PATH
      --block-sector-size:NAME=N     Block size of NAME (a power of two >= 512; default 512)
      --net:NAME=IFACE               Attach net device NAME to the existing tap interface IFACE
      --net:NAME=@FD                 Attach net device NAME to the open tap file descriptor FD
      --net-mac:NAME=xx:xx:xx:xx:xx:xx  MAC address of NAME (default: random, locally administered);
                                     NAME may be the device that `--net IFACE` attaches

Everything after KERNEL is passed to the guest as its command line.
`tender inspect [--abi] [--format=json|text] KERNEL` prints what KERNEL declares, without running
it (`tender inspect --help`); a kernel file named `inspect` runs as `tender -- inspect`.
To debug a unikernel with gdb, run it with `tender-debug --gdb[=PORT]` (see the README).
Exit status: the guest's status when it exits (255 when it aborts or faults); 1 when tender
reports an error (a host fault during the run too: a block file that fails, a tap that goes
away, a closed stdout), the guest breaks the ABI, or tender is stopped by SIGINT, SIGTERM or
SIGUSR1. Killed by SIGSYS (159): a system call outside the sandbox (with --mode=process, also the
guest's own). With --mode=process the guest can forge the exit status and the report."
)]
struct Cli {
    /// What runs the guest: kvm (a KVM virtual machine, the default) or process (tender's own
    /// process, without /dev/kvm; a weaker wall: see docs/PROCESS_MODE.md)
    #[arg(long, value_name = "kvm|process", default_value = "kvm")]
    mode: Mode,
    /// Guest memory in MiB (rounded down to 2 MiB; 2 to 4096)
    #[arg(long, value_name = "MB", default_value_t = guest_abi::MEM_DEFAULT_MIB.to_string())]
    mem: String,
    /// Attach the unikernel's only net device to the tap interface IFACE
    #[arg(long, value_name = "IFACE|@FD")]
    net: Option<String>,
    /// Attach the unikernel's only block device to the file PATH
    #[arg(long, value_name = "PATH")]
    block: Option<PathBuf>,
    /// Syscall sandbox: on (default), log (violations only logged, for debugging), off (for debugging)
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    seccomp: SeccompMode,
    /// On a guest abort or fault, write an ELF core of the guest into DIR (for gdb)
    #[arg(long, value_name = "DIR")]
    dumpcore: Option<PathBuf>,
    /// Write a JSON report of the run to PATH (or to the open fd N with @N) at exit
    #[arg(long, value_name = "PATH|@FD")]
    report: Option<String>,
    /// Stop the guest after SECONDS (exit status 1)
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Before the guest runs, drop to USER and GROUP (names or numbers; default: USER's primary
    /// group) with no supplementary groups. Needs root
    #[arg(long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Before the guest runs, make DIR tender's root (DIR must be owned by root and not writable
    /// by group or others). Needs root
    #[arg(long, value_name = "DIR")]
    chroot: Option<PathBuf>,
    /// How long the I/O thread of the shared ring looks at an empty ring, in µs, before it
    /// sleeps until the guest kicks it (0: at once; at most 1000)
    #[arg(long, value_name = "US", default_value_t = crate::devices::ring::SPIN_DEFAULT_US,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::devices::ring::SPIN_MAX_US)))]
    ring_spin: u32,
    /// Before the guest runs, move tender into new mount, IPC and UTS namespaces (the network
    /// namespace, where the taps are, stays). Needs root
    #[arg(long)]
    unshare: bool,
    /// Print version and ABI version
    #[arg(long)]
    version: bool,
    /// The unikernel ELF: a path, or @FD for an open file descriptor FD
    #[arg(value_name = "KERNEL")]
    kernel: Option<PathBuf>,
}

/// `tender inspect`: the manifest or ABI of an ELF, as solo5-elftool prints them.
#[derive(Parser, Debug)]
#[command(
    name = "tender inspect",
    about = "Print what a unikernel declares (its manifest, or with --abi its ABI), without running it.",
    override_usage = "tender inspect [--abi] [--format=json|text] KERNEL",
    disable_version_flag = true,
    after_help = "The JSON is what `solo5-elftool query-manifest` (or `query-abi`) prints for the same ELF.
Exit status: 0, or 1 with one line on stderr when KERNEL is not a valid hvt unikernel."
)]
struct InspectCli {
    /// Print the ABI target and version instead of the manifest
    #[arg(long)]
    abi: bool,
    /// json (default, solo5-elftool's) or text (for people)
    #[arg(long, value_name = "json|text", default_value = "json")]
    format: Format,
    /// The unikernel ELF
    #[arg(value_name = "KERNEL")]
    kernel: PathBuf,
}

/// What the command line asks for.
// One per process: boxing the config would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run `config`; print `warnings` first; write a report to `report` at exit.
    Run { config: Config, warnings: Vec<String>, report: Option<String> },
    /// Text for stdout, exit 0.
    Info(String),
    /// `tender inspect`: print what `kernel` declares.
    Inspect { kernel: PathBuf, query: Query, format: Format },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct CliError(pub String);

fn invalid(opt: &str) -> CliError {
    CliError(format!("Invalid option: `{opt}'"))
}

/// A `--KIND:NAME=VALUE` option.
struct Named<'a> {
    kind: &'a str,
    name: &'a str,
    value: &'a str,
}

fn split_named(arg: &str) -> Option<Named<'_>> {
    let rest = arg.strip_prefix("--")?;
    let (kind, rest) = rest.split_once(':')?;
    let (name, value) = rest.split_once('=')?;
    Some(Named { kind, name, value })
}

fn valid_device_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MFT_NAME_MAX && name.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Parses `args` (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    // Errors quote the user's words; control characters in them must not break the one line.
    parse_args(args).map_err(|e| {
        let mut line = String::with_capacity(e.0.len());
        for c in e.0.chars() {
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
        CliError(line)
    })
}

/// A clap error as one line, or the help text it carries.
fn from_clap(e: clap::Error) -> Result<Command, CliError> {
    if e.kind() == clap::error::ErrorKind::DisplayHelp {
        return Ok(Command::Info(e.render().to_string()));
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid command line");
    Err(CliError(first.trim_start_matches("error: ").to_string()))
}

fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, CliError> {
    let args: Vec<String> = args.into_iter().collect();
    // Only as the very first word: `tender -- inspect` and `tender ./inspect` run a kernel file
    // of that name.
    if args.first().is_some_and(|a| a == "inspect") {
        let cli = match InspectCli::try_parse_from(&args) {
            Ok(cli) => cli,
            Err(e) => return from_clap(e),
        };
        let query = if cli.abi { Query::Abi } else { Query::Manifest };
        return Ok(Command::Inspect { kernel: cli.kernel, query, format: cli.format });
    }
    let mut for_clap = vec!["tender".to_string()];
    let mut named: Vec<Named<'_>> = Vec::new();
    let mut guest_args: &[String] = &[];
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            if let Some(kernel) = args.get(i + 1) {
                for_clap.extend(["--".to_string(), kernel.clone()]);
                guest_args = &args[i + 2..];
            }
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            for_clap.push(arg.clone());
            guest_args = &args[i + 1..];
            break;
        }
        if arg == "--gdb" || arg.starts_with("--gdb=") || arg.starts_with("--gdb-port") {
            return Err(CliError(format!(
                "{arg}: the GDB stub is in tender-debug, not tender: run tender-debug {arg} ..."
            )));
        }
        // `--KIND:NAME=VALUE`: a colon in the option's name, before any `=` (a colon in a value,
        // as in `--report=/tmp/a:b`, is just part of the value).
        if arg.starts_with("--") && arg.split('=').next().is_some_and(|name| name.contains(':')) {
            named.push(split_named(arg).ok_or_else(|| invalid(arg))?);
        } else {
            match args.get(i + 1) {
                // Joined, so that clap takes a value starting with '-' (`--report -x`), as getopt
                // does for an option with a required argument.
                Some(value) if VALUE_OPTIONS.contains(&arg.as_str()) => {
                    for_clap.push(format!("{arg}={value}"));
                    i += 1;
                }
                _ => for_clap.push(arg.clone()),
            }
        }
        i += 1;
    }

    let cli = match Cli::try_parse_from(&for_clap) {
        Ok(cli) => cli,
        Err(e) => return from_clap(e),
    };
    if cli.version {
        return Ok(Command::Info(format!(
            "tender {} (Solo5 hvt ABI version {ABI_VERSION})\n",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let kernel = cli.kernel.ok_or_else(|| CliError("Missing KERNEL operand (see --help)".into()))?;

    let mut config = Config::new(kernel);
    let mut warnings = Vec::new();
    let (mem, adjusted) = parse_mem_mib(&cli.mem).map_err(|e| CliError(e.to_string()))?;
    if adjusted {
        warnings.push(format!("adjusting memory to {mem} bytes"));
    }
    config.mem_bytes = mem;
    config.mode = cli.mode;
    config.seccomp = cli.seccomp;
    config.dumpcore = cli.dumpcore;
    config.timeout = cli.timeout;
    config.user = cli.user;
    config.chroot = cli.chroot;
    config.unshare = cli.unshare;
    config.ring_spin_us = cli.ring_spin;
    config.guest_args = guest_args.to_vec();
    if let Some(path) = cli.block {
        config.blocks.push(BlockSpec { name: None, path, block_size: None });
    }
    if let Some(iface) = cli.net {
        config.nets.push(NetSpec { name: None, source: tap_source(&iface)?, mac: None });
    }

    // Attachments first, so that sector sizes and MACs can refer to them in any order.
    for n in named.iter().filter(|n| n.kind == "block" || n.kind == "net") {
        let opt = format!("--{}:{}={}", n.kind, n.name, n.value);
        if !valid_device_name(n.name) || n.value.is_empty() {
            return Err(invalid(&opt));
        }
        let name = Some(n.name.to_string());
        if n.kind == "block" {
            config.blocks.push(BlockSpec { name, path: n.value.into(), block_size: None });
        } else {
            config.nets.push(NetSpec { name, source: tap_source(n.value)?, mac: None });
        }
    }
    for n in named.iter().filter(|n| n.kind != "block" && n.kind != "net") {
        let opt = format!("--{}:{}={}", n.kind, n.name, n.value);
        let name = Some(n.name.to_string());
        match n.kind {
            "block-sector-size" => {
                let size: u16 = n.value.parse().map_err(|_| sector_size_error())?;
                if size < 512 || !size.is_power_of_two() {
                    return Err(sector_size_error());
                }
                let spec = config.blocks.iter_mut().find(|b| b.name == name);
                spec.ok_or_else(|| CliError(format!("{opt}: no --block:{}=PATH given", n.name)))?.block_size =
                    Some(size);
            }
            "net-mac" => {
                let mac = parse_mac(n.value).ok_or_else(|| CliError(format!("{opt}: malformed MAC address")))?;
                let only_unnamed = config.nets.len() == 1 && config.nets[0].name.is_none();
                let spec = match config.nets.iter_mut().position(|s| s.name == name) {
                    Some(i) => &mut config.nets[i],
                    // `--net TAP` for the only net device: this names it, so attaching checks
                    // that NAME is that device.
                    None if only_unnamed => {
                        config.nets[0].name = name;
                        &mut config.nets[0]
                    }
                    None => return Err(CliError(format!("{opt}: no --net:{}=IFACE given", n.name))),
                };
                spec.mac = Some(mac);
            }
            _ => return Err(invalid(&opt)),
        }
    }
    Ok(Command::Run { config, warnings, report: cli.report })
}

fn sector_size_error() -> CliError {
    CliError("Block size must be a power of two greater than or equal to 512".into())
}

fn tap_source(value: &str) -> Result<TapSource, CliError> {
    match value.strip_prefix('@') {
        Some(fd) => fd
            .parse::<i32>()
            .ok()
            .filter(|fd| *fd >= 0)
            .map(TapSource::Fd)
            .ok_or_else(|| CliError(format!("Malformed file descriptor: '{value}'"))),
        None => Ok(TapSource::Interface(value.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, CliError> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run { config, .. } => Ok(config),
            other => Err(CliError(format!("{other:?}"))),
        }
    }

    #[test]
    fn inspect_is_a_command_only_as_the_first_word() {
        let parsed = parse(["inspect", "--abi", "--format=text", "k"].map(String::from)).unwrap();
        assert_eq!(parsed, Command::Inspect { kernel: "k".into(), query: Query::Abi, format: Format::Text });
        let parsed = parse(["inspect", "k"].map(String::from)).unwrap();
        assert_eq!(parsed, Command::Inspect { kernel: "k".into(), query: Query::Manifest, format: Format::Json });
        assert_eq!(run(&["--", "inspect", "x"]).unwrap().kernel, PathBuf::from("inspect"));
        assert_eq!(run(&["./inspect"]).unwrap().kernel, PathBuf::from("./inspect"));
        assert_eq!(run(&["--mem=8", "inspect"]).unwrap().kernel, PathBuf::from("inspect"));
        assert!(parse(["inspect", "--format=xml", "k"].map(String::from)).unwrap_err().0.contains("xml"));
        assert!(parse(["inspect"].map(String::from)).is_err());
    }

    #[test]
    fn options_kernel_and_guest_args() {
        let c = run(&["--mem", "64", "--net", "tap0", "k.elf", "--mem=3", "a"]).unwrap();
        assert_eq!(c.mem_bytes, 64 << 20);
        assert_eq!(c.kernel, PathBuf::from("k.elf"));
        assert_eq!(c.guest_args, ["--mem=3", "a"]);
        assert_eq!(c.nets[0].source, TapSource::Interface("tap0".into()));
        let c = run(&["--report", "-x", "--block", "-d", "k.elf"]).unwrap();
        assert_eq!(c.blocks[0].path, PathBuf::from("-d"), "a separate value may start with '-'");
        assert_eq!(run(&["--mem", "-5", "k"]).unwrap_err().0, "Malformed argument to --mem: '-5'");
        let c = run(&["--user", "nobody:nogroup", "--chroot", "/var/empty", "--unshare", "k"]).unwrap();
        assert_eq!(c.user.as_deref(), Some("nobody:nogroup"));
        assert_eq!((c.chroot.as_deref(), c.unshare), (Some(std::path::Path::new("/var/empty")), true));
        assert_eq!(run(&["k"]).unwrap().mode, Mode::Kvm, "KVM unless asked");
        assert_eq!(run(&["--mode", "process", "k"]).unwrap().mode, Mode::Process);
        assert_eq!(run(&["--mode=kvm", "k"]).unwrap().mode, Mode::Kvm);
        let c = run(&["--mem=8", "--", "-k", "x"]).unwrap();
        assert_eq!((c.mem_bytes, c.kernel.to_str().unwrap()), (8 << 20, "-k"));
        assert_eq!(c.guest_args, ["x"]);
    }

    #[test]
    fn ring_spin() {
        assert_eq!(run(&["k"]).unwrap().ring_spin_us, crate::devices::ring::SPIN_DEFAULT_US);
        assert_eq!(run(&["--ring-spin=0", "k"]).unwrap().ring_spin_us, 0);
        assert_eq!(run(&["--ring-spin", "1000", "k", "--ring-spin=5"]).unwrap().ring_spin_us, 1000);
        assert_eq!(run(&["k", "--ring-spin=5"]).unwrap().guest_args, ["--ring-spin=5"], "the guest's word");
    }

    #[test]
    fn named_devices() {
        let c = run(&[
            "--block-sector-size:d=4096",
            "--block:d=/tmp/x",
            "--net:n0=@3",
            "--net-mac:n0=02:00:00:00:00:01",
            "k",
        ])
        .unwrap();
        assert_eq!(c.blocks[0].block_size, Some(4096));
        assert_eq!(c.nets[0].source, TapSource::Fd(3));
        assert_eq!(c.nets[0].mac, Some([2, 0, 0, 0, 0, 1]));
        let c = run(&["--net", "tap0", "--net-mac:service=02:00:00:00:00:02", "k"]).unwrap();
        assert_eq!(c.nets[0].name.as_deref(), Some("service"), "the shorthand's device gets the MAC's name");
        assert_eq!(c.nets[0].mac, Some([2, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn errors_are_one_line() {
        for (args, want) in [
            (&["--foo", "k"][..], "unexpected argument '--foo'"),
            (&[][..], "Missing KERNEL"),
            (&["--mem=0", "k"][..], "below the minimum"),
            (&["--mode=qemu", "k"][..], "invalid --mode value 'qemu' (expected kvm or process)"),
            (&["--mem=abc", "k"][..], "Malformed argument to --mem"),
            (&["--block:bad-name=/x", "k"][..], "Invalid option"),
            (&["--block:d", "k"][..], "Invalid option"),
            (&["--block:d=/x", "--block-sector-size:d=1000", "k"][..], "power of two"),
            (&["--net:n=@x", "k"][..], "Malformed file descriptor"),
            (&["--ring-spin=1001", "k"][..], "1001 is not in 0..=1000"),
            (&["--ring-spin=-1", "k"][..], "--ring-spin"),
            (&["--ring-spin=5us", "k"][..], "invalid value '5us'"),
            (&["--net:n=t", "--net-mac:n=zz", "k"][..], "malformed MAC"),
            (&["--net:n=t", "--net-mac:m=02:00:00:00:00:01", "k"][..], "no --net:m=IFACE given"),
            (&["--net:n=t", "--net-mac:n=+2:00:00:00:00:01", "k"][..], "malformed MAC"),
        ] {
            let e = run(args).unwrap_err().0;
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{args:?}: {e}");
        }
    }
}
