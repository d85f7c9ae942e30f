//! Property tests over everything a guest or a user hands the tender: the ELF loader (notes,
//! manifest, segments), the manifest parser, the guest-memory range checks, hypercall decoding
//! and the command line. Fixed seed, bounded case count: the same cases on every CI run.
//! `FUZZ_CASES=N` runs more (docs/FUZZING.md); a finding prints the minimal failing input.

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tender::elf::Kernel;
use tender::manifest::Manifest;
use tender::memory::GuestRam;

mod common;

const SEED: [u8; 32] = *b"tender-fuzz-seed-v1-fixed-seed!!";
const MEM: u64 = 32 << 20;

fn runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default_cases);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED))
}

/// What every accepted kernel must satisfy.
fn check_invariants(k: &Kernel, image_len: usize) {
    assert!(k.entry >= 0x10_0000 && k.entry < MEM);
    let mut prev_end = 0;
    for s in &k.segments {
        assert!(s.start >= 0x10_0000 && s.start >= prev_end && s.start <= s.vaddr);
        assert!(s.end <= MEM && s.end % 0x1000 == 0 && s.start % 0x1000 == 0);
        assert!(s.file_offset + s.file_size <= image_len);
        assert!(s.vaddr + s.file_size as u64 <= s.end);
        prev_end = s.end;
    }
    let m = &k.manifest.entries;
    assert!(!m.is_empty() && m.len() <= 64 && m[0].dev_type == guest_abi::MFT_RESERVED_FIRST);
}

#[test]
fn elf_loader_never_panics_and_accepts_only_valid_kernels() {
    let seed_image = std::fs::read(common::guest("hello")).unwrap();
    assert!(Kernel::parse(&seed_image, MEM).is_ok());
    // Mutations concentrated on the first 4 KiB (headers, program headers) and the notes.
    let edit = (0usize..seed_image.len(), any::<u8>());
    let strategy = (proptest::collection::vec(edit, 1..16), prop::option::of(0usize..seed_image.len()));
    runner(3000)
        .run(&strategy, |(edits, truncate)| {
            let mut image = seed_image.clone();
            for (at, value) in edits {
                let at = if at % 3 == 0 { at % 4096.min(image.len()) } else { at };
                image[at] = value;
            }
            if let Some(len) = truncate.filter(|l| l % 5 == 0) {
                image.truncate(len);
            }
            if let Ok(k) = Kernel::parse(&image, MEM) {
                check_invariants(&k, image.len());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn elf_loader_survives_random_bytes_behind_a_valid_ident() {
    let strategy = proptest::collection::vec(any::<u8>(), 0..2048);
    runner(3000)
        .run(&strategy, |mut bytes| {
            let ident = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3e\0\x01\0\0\0";
            for (i, b) in ident.iter().enumerate().take(bytes.len()) {
                bytes[i] = *b;
            }
            if let Ok(k) = Kernel::parse(&bytes, MEM) {
                check_invariants(&k, bytes.len());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn manifest_parser_never_panics() {
    let strategy = (1u32..70, proptest::collection::vec(any::<u8>(), 0..7000), any::<bool>());
    runner(3000)
        .run(&strategy, |(entries, mut bytes, shaped)| {
            if shaped {
                // Well-formed header and size, random entries.
                bytes.resize(8 + 104 * entries as usize, 0);
                bytes[0..4].copy_from_slice(&1u32.to_le_bytes());
                bytes[4..8].copy_from_slice(&entries.to_le_bytes());
            }
            if let Ok(m) = Manifest::parse(&bytes) {
                assert!(!m.entries.is_empty() && m.entries.len() <= 64);
                assert!(m.entries.iter().all(|e| e.attached == 0 && e.name[67] == 0));
                assert_eq!(m.to_guest_bytes().len(), bytes.len());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn guest_pointer_checks_match_the_abi_rule() {
    let mut ram = GuestRam::new(MEM, MEM).unwrap();
    ram.protect_read_only(0x10_0000, 0x10_3000, false).unwrap();
    let near = |x: u64| prop_oneof![Just(x), x.saturating_sub(64)..x.saturating_add(64)];
    let value =
        prop_oneof![any::<u64>(), near(0), near(MEM), near(1 << 32), near(u64::MAX), near(0x10_0000), near(0x10_3000)];
    runner(20000)
        .run(&(value.clone(), value), |(gpa, len)| {
            let ok = gpa < MEM && gpa.checked_add(len).is_some_and(|end| end < MEM);
            prop_assert_eq!(ram.check(gpa, len).is_ok(), ok);
            let overlaps_ro = ok && gpa < 0x10_3000 && gpa.saturating_add(len.max(1)) > 0x10_0000;
            prop_assert_eq!(ram.check_write(gpa, len).is_ok(), ok && !overlaps_ro);
            // Typed accesses never panic, whatever the pointer.
            let _ = ram.read_arg::<guest_abi::HcBlock>(gpa);
            if !overlaps_ro && gpa > 0x20_0000 {
                let _ = ram.write_arg(gpa, guest_abi::HcWalltime { nsecs: 1 });
            }
            let _ = ram.slice(gpa, len);
            Ok(())
        })
        .unwrap();
}

#[test]
fn hypercall_decoding_accepts_only_4_byte_outs_to_known_ports() {
    let strategy = (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..9));
    runner(20000)
        .run(&strategy, |(port, data)| {
            match tender::vm::decode_out(port, &data) {
                Ok((call, gpa)) => {
                    prop_assert_eq!(data.len(), 4);
                    prop_assert_eq!(call.port(), port);
                    prop_assert!(gpa <= u64::from(u32::MAX));
                }
                Err(_) => prop_assert!(data.len() != 4 || !(0x501..=0x508).contains(&port)),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn command_line_never_panics_and_errors_are_one_line() {
    let word = prop_oneof![
        Just("--mem".to_string()),
        Just("--net".to_string()),
        Just("--block".to_string()),
        Just("--".to_string()),
        "--(mem|net|block|seccomp|report|timeout|dumpcore)=[a-z0-9@:./-]{0,12}",
        "--(block|net|net-mac|block-sector-size|foo):[A-Za-z0-9-]{0,5}=[a-z0-9@:/]{0,12}",
        "[a-z0-9./-]{0,10}",
        any::<String>(),
    ];
    runner(5000)
        .run(&proptest::collection::vec(word, 0..8), |argv| {
            if let Err(e) = tender::cli::parse(argv) {
                prop_assert!(!e.0.contains('\n'), "{}", e.0);
            }
            Ok(())
        })
        .unwrap();
}
