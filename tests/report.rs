//! `--report` and `--dumpcore`.

mod common;

use common::*;

fn hello() -> String {
    require_kvm();
    guest("hello").to_str().unwrap().to_string()
}

fn report_of(args: &[&str]) -> (i32, String) {
    let dir = TempDir::new("report");
    let path = dir.0.join("report.json");
    let opt = format!("--report={}", path.display());
    let mut all = vec![opt.as_str()];
    all.extend_from_slice(args);
    let (code, _, _) = run(&all);
    (code, std::fs::read_to_string(&path).unwrap_or_default())
}

#[test]
fn report_of_a_clean_exit() {
    let (code, r) = report_of(&[&hello(), "fail", "4"]);
    assert_eq!(code, 4);
    assert!(r.starts_with("{\"end\":{\"kind\":\"guest_exit\",\"status\":4},\"exit_code\":4,"), "{r}");
    assert!(r.contains("\"puts\":2,") && r.contains("\"halt\":1,") && r.contains("\"total\":3}"), "{r}");
    assert!(r.contains("\"time_to_first_instruction_us\":") && r.contains("\"wall_time_us\":"), "{r}");
    assert!(r.ends_with("}\n") && r.lines().count() == 1, "{r}");
}

#[test]
fn report_of_a_trap_names_vector_and_rip() {
    let (code, r) = report_of(&[&hello(), "fault"]);
    assert_eq!(code, 255);
    assert!(r.contains("{\"kind\":\"guest_trap\",\"status\":255,\"vector\":14,\"rip\":"), "{r}");
    assert!(r.contains("\"cr2\":8,"), "{r}");
}

#[test]
fn report_of_an_abort_a_setup_error_and_a_timeout() {
    let (code, r) = report_of(&[&hello(), "panic"]);
    assert_eq!(code, 255);
    assert!(r.contains("{\"kind\":\"guest_abort\",\"status\":255}"), "{r}");

    let (code, r) = report_of(&["/nonexistent/kernel"]);
    assert_eq!(code, 1);
    assert!(r.contains("{\"kind\":\"tender_error\",\"message\":\"/nonexistent/kernel: No such file"), "{r}");
    assert!(r.contains("\"time_to_first_instruction_us\":null"), "{r}");

    let (code, r) = report_of(&["--timeout=1", &hello(), "time", "5000"]);
    assert_eq!(code, 1);
    assert!(r.contains("{\"kind\":\"timeout\",\"seconds\":1}"), "{r}");
}

#[test]
fn report_counts_block_traffic() {
    require_kvm();
    let blk = guest("blk");
    let dir = TempDir::new("report-blk");
    let img = dir.file("d.img", &vec![0u8; 64 << 10]);
    let attach = format!("--block:storage={}", img.display());
    let traffic = "{\"name\":\"storage\",\"type\":\"block\",\"read_ops\":0,\"read_bytes\":0,\"write_ops\":1,\"write_bytes\":65536}";
    // Through the ring: counted in `devices`, no exit.
    let (code, r) = report_of(&[&attach, blk.to_str().unwrap(), "write", "1"]);
    assert_eq!(code, 0, "{r}");
    assert!(r.contains("\"block_ring\":true") && r.contains("\"block_write\":0,"), "{r}");
    assert!(r.contains(traffic), "{r}");
    // Through the hypercall: the same traffic, one exit.
    let (code, r) = report_of(&[&attach, blk.to_str().unwrap(), "write", "1", "--no-ring"]);
    assert_eq!(code, 0, "{r}");
    assert!(r.contains("\"block_ring\":true") && r.contains("\"block_write\":1,"), "{r}");
    assert!(r.contains(traffic), "{r}");
    // No room for the ring above 4 GiB - 2 MiB of guest memory: not offered.
    let (code, r) = report_of(&["--mem=4096", &attach, blk.to_str().unwrap(), "write", "1"]);
    assert_eq!(code, 0, "{r}");
    assert!(r.contains("\"block_ring\":false") && r.contains("\"block_write\":1,"), "{r}");
    assert!(r.contains(traffic), "{r}");
}

#[test]
fn report_to_an_open_fd() {
    let dir = TempDir::new("report-fd");
    let path = dir.0.join("r.json");
    let file = std::fs::File::create(&path).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut cmd = tender();
    cmd.arg(format!("--report=@{fd}")).arg(hello());
    inherit_fd(&mut cmd, fd);
    let (code, _, err) = decode(cmd.output().unwrap());
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&path).unwrap().contains("guest_exit"));
}

#[test]
fn dumpcore_writes_a_core_gdb_can_read() {
    let h = hello();
    let dir = TempDir::new("core");
    let opt = format!("--dumpcore={}", dir.0.display());
    let (code, _, err) = run(&[&opt, &h, "fault"]);
    assert_eq!(code, 255);
    assert!(err.contains("dumpcore: guest core written: core.tender."), "{err}");
    let cores: Vec<_> = std::fs::read_dir(&dir.0).unwrap().filter_map(|e| e.ok()).map(|e| e.path()).collect();
    assert_eq!(cores.len(), 1, "{cores:?}");
    let core = &cores[0];
    let bytes = std::fs::read(core).unwrap();
    let elf = goblin::elf::Elf::parse(&bytes).expect("the core is an ELF");
    assert_eq!(elf.header.e_type, goblin::elf::header::ET_CORE);
    let meta = std::fs::metadata(core).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert!(
        meta.blocks() * 512 < meta.len() / 4,
        "the core is sparse: {} blocks for {} bytes",
        meta.blocks(),
        meta.len()
    );

    // gdb (scripts/test.sh installs it) opens the core with the unikernel and shows where the
    // guest faulted, by symbol.
    let out = std::process::Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "bt", &h, core.to_str().unwrap()])
        .output()
        .expect("gdb is needed for this test (scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Program terminated with signal SIGSEGV"), "gdb: {text}");
    assert!(text.contains("#0  0x") && text.contains("__guest_rt_main"), "gdb backtrace: {text}");
}

#[test]
fn dumpcore_leaves_nothing_after_a_clean_run_and_rejects_bad_dirs() {
    let h = hello();
    let dir = TempDir::new("core-clean");
    let opt = format!("--dumpcore={}", dir.0.display());
    let (code, _, _) = run(&[&opt, &h]);
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    let (code, out, err) = run(&["--dumpcore=/nonexistent/dir", &h]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_one_error_line(&err, "dumpcore: cannot use directory /nonexistent/dir");
}
