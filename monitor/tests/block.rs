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

#[test]
fn guest_verifies_whole_disk_for_several_sizes_and_sector_sizes() {
    let dir = TempDir::new("blk-sizes");
    for (size, sector) in [(512usize, 512u16), (64 << 10, 512), (1 << 20, 4096), (3 << 20, 512), (8 << 20, 4096)] {
        let img = dir.file("disk.img", &vec![0u8; size]);
        let attach = format!("--block:storage={}", img.display());
        let sector_opt = format!("--block-sector-size:storage={sector}");
        let (code, out, err) = run(&[&attach, &sector_opt, &blk()]);
        assert_eq!(code, 0, "size {size} sector {sector}: {out}{err}");
        assert!(
            out.contains(&format!("blk: {} blocks of {sector} bytes verified", size / usize::from(sector))),
            "{out}"
        );
        assert!(out.contains("blk: byte ranges ok"), "{out}");
        assert!(out.contains("blk: error cases ok"), "{out}");
    }
}

#[test]
fn guest_writes_reach_the_host_file_and_host_writes_reach_the_guest() {
    let dir = TempDir::new("blk-io");
    let size = 1 << 20;
    let img = dir.file("disk.img", &vec![0u8; size]);
    let attach = format!("--block:storage={}", img.display());
    let (code, out, err) = run(&[&attach, &blk(), "write", "42"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::read(&img).unwrap() == pattern(size, 42), "the file holds what the guest wrote");

    std::fs::write(&img, pattern(size, 7)).unwrap();
    let (code, out, err) = run(&[&attach, &blk(), "verify", "7"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&[&attach, &blk(), "verify", "8"]);
    assert_eq!(code, 1, "a wrong pattern is detected: {out}");
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
/// the end of the file) ends the run with one clear line, never silently.
#[test]
fn host_io_failure_ends_the_run() {
    let b = blk();
    let dir = TempDir::new("blk-shrink");
    let size = 16 << 20;
    let img = dir.file("disk.img", &pattern(size, 5));
    let attach = format!("--block:storage={}", img.display());
    let mut cmd = tender();
    cmd.args([&attach, &b, "verify", "5"]);
    let guest = Running::spawn(cmd);
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(4096).unwrap();
    let (code, out, err) = guest.wait();
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("verified"), "{out}");
    assert_one_error_line(&err, "Fatal error on storage: read failed");
}
