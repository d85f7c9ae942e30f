//! The README's exit-code table, row by row, on real runs. Rows that need a device or a hostile
//! guest are also covered in block.rs, network.rs and hostile.rs; this file keeps the whole table
//! in one place.

mod common;

use std::time::Duration;

use common::*;

fn hello() -> String {
    require_kvm();
    guest("hello").to_str().unwrap().to_string()
}

#[test]
fn guest_status_passes_through() {
    for status in ["0", "42", "255"] {
        assert_eq!(run(&[&hello(), "fail", status]).0.to_string(), status);
    }
}

#[test]
fn abort_and_trap_are_255() {
    assert_eq!(run(&[&hello(), "panic"]).0, 255);
    assert_eq!(run(&[&hello(), "fault"]).0, 255);
}

#[test]
fn refusing_to_start_is_1() {
    assert_eq!(run(&["--mem=1", &hello()]).0, 1);
    assert_eq!(run(&["/nonexistent"]).0, 1);
}

#[test]
fn timeout_is_1() {
    let (code, _, err) = run(&["--timeout=1", &hello(), "time", "10000"]);
    assert_eq!(code, 1);
    assert_one_error_line(&err, "guest still running after --timeout=1s, stopped");
}

/// SIGINT and SIGTERM end a running guest with status 1 and one line, as solo5-hvt does; so
/// does SIGUSR1 (which the ring's I/O thread uses to stop the vCPU).
#[test]
fn sigint_sigterm_and_sigusr1_are_1() {
    for (sig, num) in [(libc::SIGINT, 2), (libc::SIGTERM, 15), (libc::SIGUSR1, 10)] {
        let mut cmd = tender();
        cmd.args([&hello(), "time", "10000"]);
        let guest = Running::spawn(cmd);
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(guest.pid() as i32, sig) };
        let started = std::time::Instant::now();
        let (code, _, err) = guest.wait();
        assert_eq!(code, 1, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "the signal ended the run promptly");
        assert_one_error_line(&err, &format!("exiting on signal {num}"));
    }
}
