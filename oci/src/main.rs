//! `tender-oci`: a runc-compatible OCI runtime. Unikernel containers run with tender; every
//! other container goes to runc. Each command maps to one call in the modules below.

mod cgroup;
mod console;
mod create;
mod detect;
mod init;
mod lifecycle;
mod log;
mod network;
mod passthrough;
mod plan;
mod state;
mod urunc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

use crate::log::Log;
use crate::state::{Owner, Root};

/// Where state goes without `--root` (podman calls `state` without it).
const DEFAULT_ROOT: &str = "/run/tender-oci";
/// Flags engines pass that liboci-cli does not know; tender-oci has no use for them.
const IGNORED_FLAGS: [&str; 2] = ["--rootless", "--log-level"];

#[derive(Parser, Debug)]
#[command(
    name = "tender-oci",
    version,
    about = "An OCI runtime: Solo5 hvt unikernel containers run with tender, every other container with runc.",
    after_help = "Unikernel containers: process.args[0] in the rootfs is an ELF with a Solo5 ABI note.\n\
        See docs/CONTAINERS.md for images, podman, containerd and Kubernetes."
)]
struct Opts {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0} is not supported by tender-oci")]
    Command(&'static str),
    #[error(transparent)]
    Create(#[from] create::CreateError),
    #[error(transparent)]
    Lifecycle(#[from] lifecycle::LifecycleError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Pass(#[from] passthrough::PassError),
}

/// The arguments without the flags tender-oci ignores (`--rootless=false`, `--rootless false`).
fn strip_ignored(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) && !a.starts_with('-') {
            continue;
        }
        match IGNORED_FLAGS.iter().find(|f| a == *f || a.starts_with(&format!("{f}="))) {
            Some(f) => skip_value = a == f,
            None => out.push(a.clone()),
        }
    }
    out
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Opts::try_parse_from(std::iter::once("tender-oci".to_string()).chain(strip_ignored(&raw))) {
        Ok(o) => o,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            Log::default().error(text.lines().next().unwrap_or("bad command line").trim_start_matches("error: "));
            return ExitCode::FAILURE;
        }
    };
    let log = Log { path: opts.global.log.clone(), json: opts.global.log_format.as_deref() == Some("json") };
    match run(opts, &raw) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            log.error(&e.to_string());
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Opts, raw: &[String]) -> Result<i32, Error> {
    let root = Root(opts.global.root.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)));
    let id = match &opts.cmd {
        Cmd::Standard(c) => match c.as_ref() {
            StandardCmd::Create(c) => {
                let args = create::CreateArgs {
                    root: &root,
                    id: &c.container_id,
                    bundle: &c.bundle,
                    pid_file: c.pid_file.as_deref(),
                    console_socket: c.console_socket.as_deref(),
                    systemd_cgroup: opts.global.systemd_cgroup,
                    raw,
                };
                return Ok(create::create(&args)?);
            }
            StandardCmd::Start(c) => &c.container_id,
            StandardCmd::State(c) => &c.container_id,
            StandardCmd::Kill(c) => &c.container_id,
            StandardCmd::Delete(c) => &c.container_id,
        },
        Cmd::Common(c) => match c.as_ref() {
            CommonCmd::Features(_) => {
                println!("{}", features());
                return Ok(0);
            }
            CommonCmd::Exec(c) => &c.container_id,
            CommonCmd::Pause(c) => &c.container_id,
            CommonCmd::Resume(c) => &c.container_id,
            CommonCmd::Ps(c) => &c.container_id,
            CommonCmd::Update(c) => &c.container_id,
            CommonCmd::Events(c) => &c.container_id,
            _ => return Err(Error::Command("this command")),
        },
    };
    let mut record = root.load(id)?;
    if record.owner == Owner::Runc {
        if matches!(&opts.cmd, Cmd::Standard(c) if matches!(c.as_ref(), StandardCmd::Delete(_))) {
            let status = passthrough::run(raw, &root.runc_root())?;
            if status == 0 {
                root.remove(id)?;
            }
            return Ok(status);
        }
        return Err(passthrough::exec(raw, &root.runc_root()).into());
    }
    match &opts.cmd {
        Cmd::Standard(c) => match c.as_ref() {
            StandardCmd::Start(_) => lifecycle::start(&root, &mut record)?,
            StandardCmd::State(_) => {
                println!("{:#}", record.oci_state());
            }
            StandardCmd::Kill(k) => lifecycle::signal(&record, lifecycle::parse_signal(&k.signal)?, k.all)?,
            StandardCmd::Delete(d) => lifecycle::delete(&root, &record, d.force)?,
            StandardCmd::Create(_) => unreachable!("handled above"),
        },
        Cmd::Common(c) => {
            let what = match c.as_ref() {
                CommonCmd::Exec(_) => "exec",
                CommonCmd::Pause(_) => "pause",
                CommonCmd::Resume(_) => "resume",
                CommonCmd::Ps(_) => "ps",
                CommonCmd::Update(_) => "update",
                _ => "events",
            };
            return Err(lifecycle::LifecycleError::Unsupported(what).into());
        }
    }
    Ok(0)
}

/// `features`: what this runtime supports, in the OCI features document's shape.
fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": [],
        "mountOptions": ["bind", "rbind", "ro", "rw"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "cgroup": { "v1": true, "v2": true, "systemd": false },
            "seccomp": { "enabled": false },
        },
        "annotations": {
            "org.opencontainers.runc.version": "passed through to runc for ordinary containers",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_flags_are_ignored() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(strip_ignored(&s(&["--rootless=false", "state", "x"])), s(&["state", "x"]));
        assert_eq!(
            strip_ignored(&s(&["--rootless", "false", "--root", "/r", "kill", "x"])),
            s(&["--root", "/r", "kill", "x"])
        );
    }
}
