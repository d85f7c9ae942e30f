//! Containers that are not unikernels go to runc, with the caller's arguments and a runc root
//! under tender-oci's root.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

/// The runc this runtime hands ordinary containers to (found on PATH).
pub const RUNC: &str = "runc";

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("cannot run {RUNC}: {0}")]
    Spawn(std::io::Error),
}

/// runc's arguments: the caller's, with `--root` replaced by `runc_root`.
pub fn runc_args(args: &[String], runc_root: &Path) -> Vec<String> {
    let mut out = vec!["--root".to_string(), runc_root.display().to_string()];
    let mut i = 0;
    let mut in_globals = true;
    while i < args.len() {
        let a = &args[i];
        if in_globals && a == "--root" {
            i += 2;
            continue;
        }
        if in_globals && a.starts_with("--root=") {
            i += 1;
            continue;
        }
        // Global options come first; the first word that is not an option or an option's value
        // is the command.
        if in_globals && !a.starts_with('-') && !is_global_value(args, i) {
            in_globals = false;
        }
        out.push(a.clone());
        i += 1;
    }
    out
}

/// Whether `args[i]` is the value of the global option before it (`--log PATH`).
fn is_global_value(args: &[String], i: usize) -> bool {
    i > 0 && ["--log", "--log-format", "--criu", "--rootless"].contains(&args[i - 1].as_str())
}

/// Replaces this process with runc.
pub fn exec(args: &[String], runc_root: &Path) -> PassError {
    PassError::Spawn(Command::new(RUNC).args(runc_args(args, runc_root)).exec())
}

/// Runs runc and returns its exit status (for `create` and `delete`, which keep or drop
/// tender-oci's record after it).
pub fn run(args: &[String], runc_root: &Path) -> Result<i32, PassError> {
    let status = Command::new(RUNC).args(runc_args(args, runc_root)).status().map_err(PassError::Spawn)?;
    Ok(status.code().unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn root_is_replaced_and_the_rest_kept() {
        let got = runc_args(
            &s(&["--root", "/run/x", "--log", "/l", "--log-format", "json", "create", "--bundle", "b", "--root", "id"]),
            Path::new("/run/x/runc"),
        );
        assert_eq!(
            got,
            s(&[
                "--root",
                "/run/x/runc",
                "--log",
                "/l",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "b",
                "--root",
                "id"
            ])
        );
        let got = runc_args(&s(&["--root=/r", "--systemd-cgroup", "kill", "id", "TERM"]), Path::new("/r/runc"));
        assert_eq!(got, s(&["--root", "/r/runc", "--systemd-cgroup", "kill", "id", "TERM"]));
    }
}
