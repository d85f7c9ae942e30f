//! Host faults during a run: the host side of a device fails under a running guest. Each one
//! either ends the run with one line and exit status 1, or leaves tender blocked (no CPU) until
//! the host recovers. The table in docs/FAULTS.md names the test for each fault; "no CPU" is read
//! from /proc/PID/stat, never from wall-clock timings.

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GUEST_IP: &str = "10.0.0.2";
/// The guest's two ways to its devices: the shared ring (default) and the hypercalls.
const PATHS: [(&str, &[&str]); 2] = [("ring", &[]), ("hypercalls", &["--no-ring"])];
/// How long a "no busy loop" check watches the process.
const WATCH: Duration = Duration::from_secs(3);
/// CPU time a blocked tender may use while watched: a tenth of it. A busy loop uses all of it
/// (one core or more); a guest that waits in POLL uses almost none.
const IDLE_CPU: Duration = Duration::from_millis(300);

/// User plus system CPU time of process `pid` (all its threads), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("a stat line") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The CPU time process `pid` uses during [`WATCH`].
fn cpu_while_watched(pid: u32) -> Duration {
    let before = cpu_time(pid);
    std::thread::sleep(WATCH);
    cpu_time(pid) - before
}

/// `http` on a fresh tap in a fresh namespace, writing its report to `report`, serving once a
/// connection succeeds.
fn http(tag: &str, extra: &[&str], report: &std::path::Path) -> (NetNs, Running) {
    require_kvm();
    require_root();
    let g = guest("http").to_str().unwrap().to_string();
    let ns = NetNs::new(tag);
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let mut cmd = ns.tender();
    // The timeout only bounds a broken tender; a correct one never reaches it.
    cmd.args(["--timeout=60", &format!("--report={}", report.display()), "--net:service=tap0"])
        .args([&g, "--ipv4=10.0.0.2/24"])
        .args(extra);
    let guest = Running::spawn(cmd);
    assert!(answers(&ns), "the guest never accepted a connection");
    (ns, guest)
}

/// Whether the guest accepts a TCP connection on port 80 within 30 seconds.
fn answers(ns: &NetNs) -> bool {
    in_netns(ns, || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = format!("{GUEST_IP}:80").parse().unwrap();
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
}

/// The tap is deleted under the running guest: its fd now fails with EBADFD and epoll reports
/// an error on it for ever. tender ends the run (whichever thread sees it first: POLL, a
/// NET_READ/NET_WRITE, or the ring's thread) with one line naming the device; solo5-hvt spins.
#[test]
fn a_deleted_tap_ends_the_run_with_one_line() {
    for (path, extra) in PATHS {
        let dir = TempDir::new("tap-del");
        let report = dir.0.join("report.json");
        let (ns, guest) = http("tapdel", extra, &report);
        ns.ip(&["link", "del", "tap0"]);
        let (code, out, err) = guest.wait();
        assert_eq!(code, 1, "{path}: {out}{err}");
        assert_one_error_line(&err, "Fatal error on service: ");
        assert!(err.contains("File descriptor in bad state"), "{path}: {err}");
        let json = std::fs::read_to_string(&report).expect("the report was written");
        assert!(json.contains(r#""kind":"tender_error","message":"Fatal error on service: "#), "{path}: {json}");
    }
}

/// The tap goes down, then up again: no CPU while it is down (frames the guest sends meanwhile
/// are dropped), and the service answers again once it is up.
#[test]
fn a_tap_down_then_up_costs_no_cpu_and_the_service_comes_back() {
    for (path, extra) in PATHS {
        let dir = TempDir::new("tap-down");
        let (ns, guest) = http("tapdown", extra, &dir.0.join("report.json"));
        ns.ip(&["link", "set", "tap0", "down"]);
        let cpu = cpu_while_watched(guest.pid());
        assert!(cpu < IDLE_CPU, "{path}: {cpu:?} of CPU in {WATCH:?} with the tap down");
        ns.ip(&["link", "set", "tap0", "up"]);
        assert!(answers(&ns), "{path}: the service never came back");
        let (code, out, err) = guest.stop();
        assert_eq!(code, 1, "{path}: {out}{err}");
        assert_one_error_line(&err, "exiting on signal 15");
    }
}

/// `cmd` run in a private mount namespace with a 256 KiB tmpfs mounted on `dir`, which holds a
/// sparse 1 MiB block file `disk.img` (so guest writes run out of space). The mount goes away
/// with the namespace.
fn on_a_full_filesystem(dir: &TempDir, tender_args: &str) -> (i32, String, String) {
    let d = dir.0.display();
    let script = format!(
        "mount -t tmpfs -o size=256k none {d} && truncate -s 1M {d}/disk.img && exec {} {tender_args}",
        tender_path().display()
    );
    let out = Command::new("unshare").args(["-m", "sh", "-c", &script]).stdin(Stdio::null()).output();
    decode(out.expect("unshare (util-linux) is needed"))
}

/// A block file on a full filesystem: the write the guest asked for cannot land, so the run ends
/// (the guest must never believe it did), on both paths.
#[test]
fn a_block_file_on_a_full_filesystem_ends_the_run() {
    require_kvm();
    require_root();
    let b = guest("blk").to_str().unwrap().to_string();
    for (path, extra) in PATHS {
        let dir = TempDir::new("blk-full");
        let args = format!("--block:storage={}/disk.img {b} write 42 {}", dir.0.display(), extra.join(" "));
        let (code, out, err) = on_a_full_filesystem(&dir, &args);
        assert_eq!(code, 1, "{path}: {out}{err}");
        assert_one_error_line(&err, "Fatal error on storage: write failed: No space left on device");
    }
}

/// `hostile puts-large` (4 MiB in one PUTS) with its stdout on `stdout`.
fn puts_large(dir: &TempDir, stdout: std::io::PipeWriter) -> Running {
    require_kvm();
    let img = dir.file("disk.img", &vec![0u8; 1 << 20]);
    let mut cmd = tender();
    cmd.args(["--timeout=60", "--mem=32", &format!("--block:storage={}", img.display())])
        .args([guest("hostile").to_str().unwrap(), "puts-large"]);
    let child = cmd.stdout(stdout).stderr(Stdio::piped()).spawn().expect("spawn tender");
    Running::from_child(child)
}

/// stdout closed by its reader while the guest prints: the write fails with EPIPE (tender
/// ignores SIGPIPE, as Rust programs do) and the run ends with one line.
#[test]
fn a_closed_stdout_ends_the_run_with_one_line() {
    let dir = TempDir::new("stdout-closed");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let (code, out, err) = puts_large(&dir, writer).wait();
    assert_eq!(code, 1, "{out}{err}");
    assert_one_error_line(&err, "Fatal error on console: write failed: Broken pipe");
}

/// A reader that stops reading: tender blocks in write(2) with no CPU, and SIGTERM still ends
/// the run at once.
#[test]
fn a_stalled_stdout_reader_blocks_without_cpu_and_sigterm_ends_it() {
    let dir = TempDir::new("stdout-stalled");
    let (mut reader, writer) = std::io::pipe().unwrap();
    let guest = puts_large(&dir, writer);
    // Wait until the guest has filled the pipe: the first bytes are there.
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut reader, &mut first).expect("the guest prints");
    let cpu = cpu_while_watched(guest.pid());
    assert!(cpu < IDLE_CPU, "{cpu:?} of CPU in {WATCH:?} blocked on stdout");
    let (code, _, err) = guest.stop();
    assert_eq!(code, 1, "{err}");
    assert_one_error_line(&err, "exiting on signal 15");
    drop(reader);
}
