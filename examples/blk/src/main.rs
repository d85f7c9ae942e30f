//! Exercises the block device `storage`:
//!
//! - no arguments: writes a pattern over the whole disk, in batched requests, reads it back in
//!   single-block requests and verifies it, then checks that the tender refuses bad requests;
//! - `write SEED`: writes the pattern for SEED over the whole disk;
//! - `verify SEED`: checks that the disk holds the pattern for SEED (exit 1 if not);
//! - `reverify SEED`: checks it again and again, until a check or a request fails.
//!
//! The requests go through tender's block ring when it offers one; `--no-ring` (anywhere on the
//! command line) keeps them on the hypercalls. The first line says which path is in use.
//!
//! The pattern: the 8-byte word at byte offset `o` is `(o ^ seed) * 0x9E3779B97F4A7C15`, LE.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use guest_rt::abi::SOLO5_R_EINVAL;
use guest_rt::device::Error;
use guest_rt::{BlockDevice, hypercall, println};

guest_rt::unikernel!(main, block: ["storage"]);

/// Bytes per batched request.
const BATCH: u64 = 64 << 10;

fn word(offset: u64, seed: u64) -> [u8; 8] {
    ((offset ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_le_bytes()
}

fn fill(buf: &mut [u8], offset: u64, seed: u64) {
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&word(offset + i as u64 * 8, seed));
    }
}

/// Offset of the first wrong byte, if any.
fn check(buf: &[u8], offset: u64, seed: u64) -> Option<u64> {
    buf.chunks_exact(8)
        .enumerate()
        .find(|(i, c)| *c != word(offset + *i as u64 * 8, seed))
        .map(|(i, _)| offset + i as u64 * 8)
}

fn write_all(disk: &BlockDevice, seed: u64) -> Result<(), Error> {
    let batch = BATCH.max(disk.block_size()) / disk.block_size() * disk.block_size();
    let mut buf = vec![0u8; batch as usize];
    let mut offset = 0;
    while offset < disk.capacity() {
        let len = batch.min(disk.capacity() - offset) as usize;
        fill(&mut buf[..len], offset, seed);
        disk.write(offset, &buf[..len])?;
        offset += len as u64;
    }
    Ok(())
}

/// Reads the disk back one block per request; returns the first mismatch.
fn verify_all(disk: &BlockDevice, seed: u64) -> Result<Option<u64>, Error> {
    let mut buf = vec![0u8; disk.block_size() as usize];
    for block in 0..disk.blocks() {
        let offset = block * disk.block_size();
        disk.read(offset, &mut buf)?;
        if let Some(bad) = check(&buf, offset, seed) {
            return Ok(Some(bad));
        }
    }
    Ok(None)
}

/// Unaligned byte ranges through `read_at`/`write_at`: what is written reads back, and the
/// bytes around it keep the pattern.
fn byte_ranges(disk: &BlockDevice, seed: u64) -> Result<bool, Error> {
    let cap = disk.capacity();
    for (offset, len) in [(3u64, 10usize), (500, 1100), (cap / 2 + 7, 3000), (cap - 5, 5), (0, cap.min(9000) as usize)]
    {
        if offset + len as u64 > cap {
            continue;
        }
        let data: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
        disk.write_at(offset, &data)?;
        let mut back = vec![0u8; len];
        disk.read_at(offset, &mut back)?;
        if back != data {
            println!("blk: byte range {offset}+{len} did not read back");
            return Ok(false);
        }
        // Restore the pattern over the range, through the same path.
        let start = offset - offset % 8;
        let end = (offset + len as u64).div_ceil(8) * 8;
        let mut pattern = vec![0u8; (end.min(cap) - start) as usize];
        fill(&mut pattern, start, seed);
        disk.write_at(start, &pattern)?;
    }
    Ok(verify_all(disk, seed)?.is_none())
}

/// Requests the tender must refuse with EINVAL, sent raw so that guest-rt's own checks do not
/// catch them first.
fn error_cases(disk: &BlockDevice) -> bool {
    let h = disk.handle();
    let bs = disk.block_size();
    let cap = disk.capacity();
    let mut block = vec![0u8; bs as usize];
    let mut two = vec![0u8; 2 * bs as usize];
    let cases: [(&str, i32); 7] = [
        ("read at capacity", hypercall::block_read(h, cap, &mut block)),
        ("read past the end", hypercall::block_read(h, cap - bs, &mut two)),
        ("misaligned offset", hypercall::block_read(h, 1, &mut block)),
        ("partial block", hypercall::block_read(h, 0, &mut block[..bs as usize - 1])),
        ("offset overflow", hypercall::block_read(h, u64::MAX - bs + 1, &mut block)),
        ("write past the end", hypercall::block_write(h, cap, &block)),
        ("wrong handle", hypercall::block_read(h + 1, 0, &mut block)),
    ];
    let mut ok = true;
    for (what, ret) in cases {
        if ret != SOLO5_R_EINVAL {
            println!("blk: {what}: expected EINVAL, got {ret}");
            ok = false;
        }
    }
    ok && disk.read(cap, &mut block) == Err(Error::Invalid)
}

fn run(disk: &BlockDevice, mode: &str, seed: u64) -> Result<i32, Error> {
    match mode {
        "write" => {
            write_all(disk, seed)?;
            println!("blk: wrote pattern {seed}");
        }
        "verify" => {
            if let Some(bad) = verify_all(disk, seed)? {
                println!("blk: mismatch at offset {bad}");
                return Ok(1);
            }
            println!("blk: pattern {seed} verified");
        }
        "reverify" => loop {
            if let Some(bad) = verify_all(disk, seed)? {
                println!("blk: mismatch at offset {bad}");
                return Ok(1);
            }
        },
        _ => {
            write_all(disk, seed)?;
            if let Some(bad) = verify_all(disk, seed)? {
                println!("blk: mismatch at offset {bad}");
                return Ok(1);
            }
            println!("blk: {} blocks of {} bytes verified", disk.blocks(), disk.block_size());
            if !byte_ranges(disk, seed)? {
                return Ok(1);
            }
            println!("blk: byte ranges ok");
            if !error_cases(disk) {
                return Ok(1);
            }
            println!("blk: error cases ok");
        }
    }
    Ok(0)
}

fn main() -> i32 {
    let mut args = guest_rt::ring::args();
    let mode = args.next().unwrap_or("");
    let seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let disk = match BlockDevice::open("storage") {
        Ok(d) => d,
        Err(e) => {
            println!("blk: cannot open storage: {e:?}");
            return 2;
        }
    };
    println!("blk: block ring {}", if guest_rt::ring::block_active() { "on" } else { "off" });
    match run(&disk, mode, seed) {
        Ok(status) => status,
        Err(e) => {
            println!("blk: I/O error: {e:?}");
            3
        }
    }
}
