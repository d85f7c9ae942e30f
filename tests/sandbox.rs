//! The seccomp sandbox on real runs.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Starts `hello time 1500` with `extra` options and returns the `Seccomp:` and
/// `NoNewPrivs:` lines of /proc/PID/status while the guest runs, plus the run's result.
fn status_while_running(extra: &[&str]) -> (String, (i32, String, String)) {
    require_kvm();
    let hello = guest("hello");
    let mut cmd = tender();
    cmd.args(extra).arg(&hello).args(["time", "1500"]);
    let guest = Running::spawn(cmd);
    let status_path = format!("/proc/{}/status", guest.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let status = std::fs::read_to_string(&status_path).unwrap_or_default();
        let seccomp: Vec<&str> =
            status.lines().filter(|l| l.starts_with("Seccomp:") || l.starts_with("NoNewPrivs:")).collect();
        // Wait until the guest runs (the filter goes on just before its first instruction).
        if status.contains("Seccomp:\t2") || Instant::now() > deadline - Duration::from_secs(8) {
            lines = seccomp.join("\n");
            break;
        }
    }
    (lines, guest.wait())
}

#[test]
fn filter_is_active_while_the_guest_runs() {
    let (lines, (code, out, err)) = status_while_running(&[]);
    assert!(lines.contains("Seccomp:\t2"), "{lines}");
    assert!(lines.contains("NoNewPrivs:\t1"), "{lines}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("yielded"), "{out}");
}

#[test]
fn log_mode_installs_the_filter_too() {
    let (lines, (code, _, err)) = status_while_running(&["--seccomp=log"]);
    assert!(lines.contains("Seccomp:\t2"), "{lines}");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn off_mode_installs_no_filter() {
    let (lines, (code, _, err)) = status_while_running(&["--seccomp", "off"]);
    assert!(lines.contains("Seccomp:\t0"), "{lines}");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn bad_seccomp_value_is_rejected() {
    let (code, out, err) = run(&["--seccomp=maybe", "k"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_one_error_line(&err, "invalid --seccomp value 'maybe'");
}

/// Every way hello can end works under the filter (no SIGSYS on any exit path).
#[test]
fn every_exit_path_runs_under_the_filter() {
    require_kvm();
    let hello = guest("hello");
    let h = hello.to_str().unwrap();
    let dir = TempDir::new("sandbox-exits");
    let report = dir.0.join("r.json");
    let report_opt = format!("--report={}", report.display());
    let dump_opt = format!("--dumpcore={}", dir.0.display());
    let reported: Vec<&str> = vec![&report_opt, &dump_opt, h, "fault"];
    for (args, want) in [
        (vec![h], 0),
        (vec![h, "fail", "3"], 3),
        (vec![h, "panic"], 255),
        (vec![h, "fault"], 255),
        (vec![h, "alloc"], 0),
        (reported, 255),
        (vec!["--timeout=1", h, "time", "5000"], 1),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, want, "{args:?}: {out}{err}");
    }
}

/// Inherited fds are closed before the guest runs.
#[test]
fn stray_fds_are_closed() {
    require_kvm();
    let hello = guest("hello");
    let stray = std::fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stray);
    let mut cmd = tender();
    cmd.arg(&hello).args(["time", "1500"]);
    // SAFETY: between fork and exec the child only clears FD_CLOEXEC on an inherited fd.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            libc::fcntl(fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    let guest = Running::spawn(cmd);
    let fd_path = format!("/proc/{}/fd/{fd}", guest.pid());
    let status_path = format!("/proc/{}/status", guest.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if std::fs::read_to_string(&status_path).unwrap_or_default().contains("Seccomp:\t2") {
            break;
        }
    }
    // The number may be taken again by an fd tender made after closing it (process mode's
    // watchdog epoll set): what must be gone is the file the parent passed.
    let still_open = std::fs::read_link(&fd_path).is_ok_and(|target| target == std::path::Path::new("/dev/null"));
    let (code, _, err) = guest.wait();
    assert_eq!(code, 0, "{err}");
    assert!(!still_open, "fd {fd} inherited from the parent is still open while the guest runs");
}
