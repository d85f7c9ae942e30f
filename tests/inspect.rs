//! `tender inspect`: the manifest and ABI of real ELFs, printed as solo5-elftool prints them,
//! without creating a VM; invalid ELFs refused with the same line as a run.

mod common;

use common::*;
use guest_abi::{MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC};

fn inspect(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    run(&all)
}

#[test]
fn manifests_of_the_examples_as_solo5_elftool_prints_them() {
    let hello = guest("hello");
    let (code, out, err) = inspect(&[hello.to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, "{\n  \"type\": \"solo5.manifest\",\n  \"version\": 1,\n  \"devices\": [\n  ]\n}\n");

    let http = guest("http");
    let (code, out, _) = inspect(&[http.to_str().unwrap()]);
    assert_eq!(code, 0);
    let want = r#"{
  "type": "solo5.manifest",
  "version": 1,
  "devices": [
    { "name": "service", "type": "NET_BASIC" }
  ]
}
"#;
    assert_eq!(out, want);
    let (_, text, _) = inspect(&["--format=text", http.to_str().unwrap()]);
    assert_eq!(text, "manifest version 1, 1 device(s)\n  service  NET_BASIC\n");
}

#[test]
fn abi_as_solo5_elftool_prints_it() {
    let http = guest("http");
    let (code, out, _) = inspect(&["--abi", http.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert_eq!(out, "{\n  \"type\": \"solo5.abi\",\n  \"target\": \"hvt\",\n  \"version\": 2\n}\n");
    let (_, text, _) = inspect(&["--abi", "--format", "text", http.to_str().unwrap()]);
    assert_eq!(text, "target hvt, ABI version 2\n");
}

#[test]
fn a_manifest_with_many_devices() {
    let names: Vec<String> = (0..63).map(|i| format!("dev{i}")).collect();
    let devices: Vec<(&str, u32)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), if i % 2 == 0 { MFT_DEV_NET_BASIC } else { MFT_DEV_BLOCK_BASIC }))
        .collect();
    let dir = TempDir::new("inspect-many");
    let elf = dir.file("many", &raw_kernel(&[0xeb, 0xfe], &devices));
    let (code, out, err) = inspect(&[elf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // What solo5-elftool query-manifest prints for the same manifest.
    let mut want = String::from("{\n  \"type\": \"solo5.manifest\",\n  \"version\": 1,\n  \"devices\": [\n");
    for i in 0..63 {
        let ty = if i % 2 == 0 { "NET_BASIC" } else { "BLOCK_BASIC" };
        let comma = if i < 62 { "," } else { "" };
        want.push_str(&format!("    {{ \"name\": \"dev{i}\", \"type\": \"{ty}\" }}{comma}\n"));
    }
    want.push_str("  ]\n}\n");
    assert_eq!(out, want);
    let (_, text, _) = inspect(&["--format=text", elf.to_str().unwrap()]);
    assert!(text.starts_with("manifest version 1, 63 device(s)\n  dev0   NET_BASIC\n"), "{text}");
    assert_eq!(text.lines().count(), 64);
}

#[test]
fn invalid_elfs_give_the_same_line_as_a_run() {
    let dir = TempDir::new("inspect-bad");
    let not_elf = dir.file("notelf", b"#!/bin/sh\n");
    let mut no_access = raw_kernel(&[0xeb, 0xfe], &[]);
    no_access[64 + 4..64 + 8].copy_from_slice(&0u32.to_le_bytes()); // text PT_LOAD p_flags = 0
    let no_access = dir.file("noaccess", &no_access);
    let missing = dir.0.join("missing");
    for (path, want) in [
        (not_elf, "invalid executable"),
        (no_access, "phdr[0] grants no access (p_flags has none of R, W, X)"),
        (missing, "No such file or directory"),
    ] {
        let p = path.to_str().unwrap();
        let (code, out, err) = inspect(&[p]);
        assert_eq!((code, out.as_str()), (1, ""), "{p}");
        assert_one_error_line(&err, want);
        let (run_code, _, run_err) = run(&["--mem=8", p]);
        assert_eq!((run_code, run_err.as_str()), (1, err.as_str()), "a run says the same about {p}");
    }
}

#[test]
fn a_kernel_named_inspect_still_runs() {
    require_kvm();
    let dir = TempDir::new("inspect-name");
    std::fs::copy(guest("hello"), dir.0.join("inspect")).unwrap();
    for args in [&["--", "inspect", "x"][..], &["./inspect", "x"][..]] {
        let out = tender().args(args).current_dir(&dir.0).output().unwrap();
        let (code, out, err) = decode(out);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Hello, world!"), "{out}");
    }
}
