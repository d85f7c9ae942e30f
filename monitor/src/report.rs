//! `--report=PATH|@FD`: one JSON object written at exit, for orchestrators. The shape is
//! documented in `docs/REPORT.md`.
//!
//! The report is formatted into a buffer reserved before the sandbox starts and written with
//! one `write`; no allocation happens at exit for ordinary runs.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use guest_abi::Hypercall;

use crate::devices::ring::Traffic;
use crate::outcome::RunEnd;

/// Exit counters, per hypercall number and for everything else.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub hypercalls: [u64; Hypercall::COUNT as usize],
    /// Time from tender's start to the first KVM_RUN.
    pub to_first_instruction: Option<Duration>,
    pub devices: Vec<DeviceStats>,
    /// The shared net ring was offered to the guest (its traffic is in `devices`, not `hypercalls`).
    pub net_ring: bool,
    /// The ring was offered for block requests too (tender's extension; traffic as above).
    pub block_ring: bool,
}

/// Per-device traffic. For a net device, ops are packets.
#[derive(Clone, Debug, Default)]
pub struct DeviceStats {
    pub name: String,
    pub kind: &'static str,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
}

impl DeviceStats {
    /// Adds the traffic that went through the ring to the hypercalls' figures.
    pub fn add(&mut self, ring: Traffic) {
        self.read_ops += ring.read_ops;
        self.read_bytes += ring.read_bytes;
        self.write_ops += ring.write_ops;
        self.write_bytes += ring.write_bytes;
    }
}

const HYPERCALL_NAMES: [&str; Hypercall::COUNT as usize] =
    ["invalid", "walltime", "puts", "poll", "block_write", "block_read", "net_write", "net_read", "halt"];

pub struct ReportFile {
    file: File,
    buf: String,
}

impl ReportFile {
    /// `@FD` writes to an fd the caller opened; anything else is a path, created or truncated.
    pub fn open(target: &str) -> std::io::Result<Self> {
        let file = match target.strip_prefix('@').and_then(|fd| fd.parse::<RawFd>().ok()) {
            Some(fd) => {
                // SAFETY: F_GETFD only probes the number; ownership is taken only if it is open.
                if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: the caller passed this open fd to tender for the report.
                unsafe { File::from_raw_fd(fd) }
            }
            None => File::create(target)?,
        };
        Ok(ReportFile { file, buf: String::with_capacity(16 * 1024) })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Formats and writes the report.
    pub fn write(&mut self, end: &Ending<'_>, wall: Duration, stats: &Stats) -> std::io::Result<()> {
        let b = &mut self.buf;
        b.clear();
        let _ = write!(b, "{{\"end\":");
        match end {
            Ending::Run(RunEnd::Halted { status, trap: None }) if *status == guest_abi::SOLO5_EXIT_ABORT => {
                let _ = write!(b, "{{\"kind\":\"guest_abort\",\"status\":{status}}}");
            }
            Ending::Run(RunEnd::Halted { status, trap: None }) => {
                let _ = write!(b, "{{\"kind\":\"guest_exit\",\"status\":{status}}}");
            }
            Ending::Run(RunEnd::Halted { status, trap: Some(t) }) => {
                let _ = write!(
                    b,
                    "{{\"kind\":\"guest_trap\",\"status\":{status},\"vector\":{},\"rip\":{},\"error_code\":{},\"cr2\":{},\"rsp\":{}}}",
                    t.vector.map_or("null".to_string(), |v| v.to_string()),
                    t.frame.rip,
                    t.frame.error_code,
                    t.frame.cr2,
                    t.frame.rsp
                );
            }
            Ending::Run(RunEnd::GuestError { error, rip }) => {
                let _ = write!(b, "{{\"kind\":\"guest_fault\",\"rip\":{rip},\"message\":");
                json_string(b, &error.to_string());
                b.push('}');
            }
            Ending::Run(RunEnd::HostError(msg)) => {
                let _ = write!(b, "{{\"kind\":\"tender_error\",\"message\":");
                json_string(b, msg);
                b.push('}');
            }
            Ending::Setup(msg) => {
                let _ = write!(b, "{{\"kind\":\"tender_error\",\"message\":");
                json_string(b, msg);
                b.push('}');
            }
            Ending::Run(RunEnd::Signal(sig)) => {
                let _ = write!(b, "{{\"kind\":\"signal\",\"signal\":{sig}}}");
            }
            Ending::Run(RunEnd::Timeout(secs)) => {
                let _ = write!(b, "{{\"kind\":\"timeout\",\"seconds\":{secs}}}");
            }
            Ending::Run(RunEnd::Killed) => b.push_str("{\"kind\":\"killed\"}"),
        }
        let code = match end {
            Ending::Run(e) => e.exit_code(),
            Ending::Setup(_) => 1,
        };
        let _ = write!(b, ",\"exit_code\":{code},\"wall_time_us\":{}", wall.as_micros());
        match stats.to_first_instruction {
            Some(d) => {
                let _ = write!(b, ",\"time_to_first_instruction_us\":{}", d.as_micros());
            }
            None => b.push_str(",\"time_to_first_instruction_us\":null"),
        }
        let _ = write!(b, ",\"net_ring\":{},\"block_ring\":{}", stats.net_ring, stats.block_ring);
        b.push_str(",\"exits\":{");
        let total: u64 = stats.hypercalls.iter().sum();
        for (name, n) in HYPERCALL_NAMES.iter().zip(stats.hypercalls.iter()).skip(1) {
            let _ = write!(b, "\"{name}\":{n},");
        }
        let _ = write!(b, "\"total\":{total}}},\"devices\":[");
        for (i, d) in stats.devices.iter().filter(|d| !d.kind.is_empty()).enumerate() {
            if i > 0 {
                b.push(',');
            }
            b.push_str("{\"name\":");
            json_string(b, &d.name);
            let _ = write!(
                b,
                ",\"type\":\"{}\",\"read_ops\":{},\"read_bytes\":{},\"write_ops\":{},\"write_bytes\":{}}}",
                d.kind, d.read_ops, d.read_bytes, d.write_ops, d.write_bytes
            );
        }
        b.push_str("]}\n");
        self.file.write_all(b.as_bytes())
    }
}

/// How tender ended, for the report.
pub enum Ending<'a> {
    Run(&'a RunEnd),
    /// Tender stopped before the guest ran.
    Setup(&'a str),
}

/// Appends `s` as a JSON string literal.
pub(crate) fn json_string(b: &mut String, s: &str) {
    b.push('"');
    for c in s.chars() {
        match c {
            '"' => b.push_str("\\\""),
            '\\' => b.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(b, "\\u{:04x}", c as u32);
            }
            c => b.push(c),
        }
    }
    b.push('"');
}
