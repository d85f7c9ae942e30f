//! Block devices: the real `blk` unikernel against real image files.

mod common;

use common::*;

/// The pattern `blk` writes and checks: each 8-byte word at byte offset `o` holds
/// `(o ^ seed) * 0x9E3779B97F4A7C15`, little-endian.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len / 8).flat_map(|w| ((((w as u64) * 8) ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes()).collect()
}

fn blk() -> String {
    require_kvm();
    guest("blk").to_str().unwrap().to_string()
}

/// The guest's two ways to the disk: tender's block ring (the default; tender maps it for any
/// guest up to --mem=4094), and the hypercalls.
const PATHS: [(&str, &[&str]); 2] = [("on", &[]), ("off", &["--no-ring"])];

/// `tender ARGS blk GUEST_ARGS`, asking the guest for the given path to the disk.
fn run_blk(args: &[&str], path: (&str, &[&str]), guest_args: &[&str]) -> (i32, String, String) {
    let b = blk();
    let (ring, extra) = path;
    let all: Vec<&str> = args.iter().chain([&b.as_str()]).chain(guest_args).chain(extra).copied().collect();
    let (code, out, err) = run(&all);
    assert!(out.starts_with(&format!("blk: block ring {ring}\n")), "{all:?}: {out}{err}");
    (code, out, err)
}

#[test]
fn guest_verifies_whole_disk_for_several_sizes_and_sector_sizes() {
    let dir = TempDir::new("blk-sizes");
    for (size, sector) in [(512usize, 512u16), (64 << 10, 512), (1 << 20, 4096), (3 << 20, 512), (8 << 20, 4096)] {
        for path in PATHS {
            let img = dir.file("disk.img", &vec![0u8; size]);
            let attach = format!("--block:storage={}", img.display());
            let sector_opt = format!("--block-sector-size:storage={sector}");
            let (code, out, err) = run_blk(&[&attach, &sector_opt], path, &[]);
            assert_eq!(code, 0, "size {size} sector {sector} ring {}: {out}{err}", path.0);
            let blocks = size / usize::from(sector);
            assert!(out.contains(&format!("blk: {blocks} blocks of {sector} bytes verified")), "{out}");
            assert!(out.contains("blk: byte ranges ok"), "{out}");
            assert!(out.contains("blk: error cases ok"), "{out}");
        }
    }
}

#[test]
fn guest_writes_reach_the_host_file_and_host_writes_reach_the_guest() {
    let dir = TempDir::new("blk-io");
    let size = 1 << 20;
    for path in PATHS {
        let img = dir.file("disk.img", &vec![0u8; size]);
        let attach = format!("--block:storage={}", img.display());
        let (code, out, err) = run_blk(&[&attach], path, &["write", "42"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(std::fs::read(&img).unwrap() == pattern(size, 42), "the file holds what the guest wrote");

        std::fs::write(&img, pattern(size, 7)).unwrap();
        let (code, out, err) = run_blk(&[&attach], path, &["verify", "7"]);
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, _) = run_blk(&[&attach], path, &["verify", "8"]);
        assert_eq!(code, 1, "a wrong pattern is detected: {out}");
    }
}

#[test]
fn shorthand_attaches_the_only_block_device() {
    let dir = TempDir::new("blk-short");
    let img = dir.file("disk.img", &vec![0u8; 64 << 10]);
    let (code, out, err) = run(&["--block", img.to_str().unwrap(), &blk()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn bad_images_and_options_are_rejected() {
    let dir = TempDir::new("blk-bad");
    let b = blk();
    let odd = dir.file("odd.img", &vec![0u8; 1000]);
    let small = dir.file("small.img", &vec![0u8; 512]);
    let empty = dir.file("empty.img", b"");
    let ok = dir.file("ok.img", &vec![0u8; 4096]);
    let attach = |p: &std::path::Path| format!("--block:storage={}", p.display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![attach(&odd), b.clone()], "storage: Backing storage size must be block aligned (512 bytes)"),
        (vec![attach(&empty), b.clone()], "storage: Backing storage must be at least 1 block (512 bytes) in size"),
        (
            vec![attach(&small), "--block-sector-size:storage=4096".into(), b.clone()],
            "storage: Backing storage size must be block aligned (4096 bytes)",
        ),
        (
            vec!["--block:storage=/nonexistent/disk.img".into(), b.clone()],
            "Could not open block device: /nonexistent/disk.img",
        ),
        (vec![attach(&ok), "--block-sector-size:storage=1000".into(), b.clone()], "power of two"),
        (vec![attach(&ok), "--block-sector-size:storage=256".into(), b.clone()], "power of two"),
        (vec![format!("--block:other={}", ok.display()), b.clone()], "Resource not declared in manifest: 'other'"),
        (vec![b.clone()], "Device 'storage' of type BLOCK_BASIC declared but not attached"),
        (vec![attach(&ok), attach(&ok), b.clone()], "attached more than once"),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert_one_error_line(&err, want);
    }
}

/// A host I/O failure during the run (here: the image shrinks under the guest, so a read finds
/// the end of the file) ends the run with one clear line, never silently, on both paths.
#[test]
fn host_io_failure_ends_the_run() {
    let b = blk();
    let dir = TempDir::new("blk-shrink");
    let size = 1 << 20;
    for (ring, extra) in PATHS {
        let img = dir.file("disk.img", &pattern(size, 5));
        let attach = format!("--block:storage={}", img.display());
        let mut cmd = tender();
        // The guest reads the disk over and over, so the shrink always lands during a run; the
        // timeout only bounds a broken tender.
        cmd.args(["--timeout=60", &attach, &b, "reverify", "5"]).args(extra);
        let guest = Running::spawn(cmd);
        wait_until_open(guest.pid(), &img);
        std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(4096).unwrap();
        let (code, out, err) = guest.wait();
        assert_eq!(code, 1, "ring {ring}: {out}{err}");
        assert!(out.starts_with(&format!("blk: block ring {ring}\n")), "{out}");
        assert!(!out.contains("mismatch"), "{out}");
        assert_one_error_line(&err, "Fatal error on storage: read failed");
    }
}

/// Waits until process `pid` holds `file` open (the tender has attached it).
fn wait_until_open(pid: u32, file: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let fds = format!("/proc/{pid}/fd");
    loop {
        let entries = std::fs::read_dir(&fds).into_iter().flatten().flatten();
        if entries.filter_map(|e| std::fs::read_link(e.path()).ok()).any(|target| target == file) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "tender never opened {}", file.display());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
