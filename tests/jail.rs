//! The jail (`--user`, `--chroot`, `--unshare`, and the limits of every run) on real runs: what
//! /proc shows of every thread while the guest runs, real guests working inside it, and the
//! refusals. The user is nobody (65534), which Debian has; nothing is created for it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const NOBODY: &str = "65534";

/// The three jail options, with `root` as the chroot.
fn jail(root: &Path) -> Vec<String> {
    vec![format!("--user={NOBODY}:{NOBODY}"), format!("--chroot={}", root.display()), "--unshare".into()]
}

/// An empty chroot directory: owned by root, mode 0755.
fn chroot_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag);
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Waits (at most 20 s) until the filter is on, i.e. the guest runs; false if it never was.
fn wait_until_guest_runs(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status.contains("Seccomp:\t2") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// One thread of tender as /proc shows it.
struct Task {
    name: String,
    status: String,
    root: std::path::PathBuf,
}

fn tasks(pid: u32) -> Vec<Task> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            Task {
                name: std::fs::read_to_string(path.join("comm")).unwrap().trim().to_string(),
                status: std::fs::read_to_string(path.join("status")).unwrap(),
                root: std::fs::read_link(path.join("root")).unwrap(),
            }
        })
        .collect()
}

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("")
}

/// With every option on, every thread of tender (the vCPU's and the ring's) runs as nobody with
/// no supplementary groups, in the chroot, under the filter; tender is not dumpable and has no
/// core limit, and its heap is bounded. The block file, opened before the chroot, still works.
#[test]
fn every_thread_is_jailed_while_the_guest_runs() {
    require_kvm();
    require_root();
    let blk = guest("blk");
    let root = chroot_dir("jail-root");
    let data = TempDir::new("jail-data");
    let disk = data.file("disk.img", &vec![0u8; 1 << 20]);
    let attach = format!("--block:storage={}", disk.display());
    let mut write = tender();
    write.args(jail(&root.0)).args([&attach]).arg(&blk).args(["write", "7"]);
    let (code, out, err) = decode(write.output().unwrap());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("blk: wrote pattern 7"), "{out}");

    let mut cmd = tender();
    cmd.args(jail(&root.0)).args(["--timeout=60", &attach]).arg(&blk).args(["reverify", "7"]);
    let guest = Running::spawn(cmd);
    let pid = guest.pid();
    assert!(wait_until_guest_runs(pid), "the guest never ran");
    let tasks = tasks(pid);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let status_owner = std::fs::metadata(format!("/proc/{pid}/status")).unwrap().uid();
    let (code, out, err) = guest.stop();

    // The vCPU's thread, the ring's, and (on recent kernels) KVM's own worker, which the kernel
    // starts inside the process at the first KVM_RUN and which is checked like the others.
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"tender") && names.contains(&"tender-ring"), "{names:?}");
    assert!(names.iter().all(|n| ["tender", "tender-ring"].contains(n) || n.starts_with("kvm-")), "{names:?}");
    for t in &tasks {
        let who = &t.name;
        assert_eq!(field(&t.status, "Uid:"), "65534\t65534\t65534\t65534", "{who}");
        assert_eq!(field(&t.status, "Gid:"), "65534\t65534\t65534\t65534", "{who}");
        assert_eq!(field(&t.status, "Groups:"), "", "{who}");
        assert_eq!(field(&t.status, "Seccomp:"), "2", "{who}");
        assert_eq!(field(&t.status, "NoNewPrivs:"), "1", "{who}");
        assert_eq!(t.root, root.0, "{who}");
    }
    let limit = |name: &str| limits.lines().find(|l| l.starts_with(name)).unwrap_or("").to_string();
    assert!(limit("Max core file size").split_whitespace().skip(4).take(2).all(|v| v == "0"), "{limits}");
    assert!(!limit("Max data size").contains("unlimited"), "{limits}");
    // A non-dumpable process's /proc files belong to root, whatever its uid.
    assert_eq!(status_owner, 0, "tender is dumpable");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ring on"), "the guest used the ring: {out}");
    assert!(err.contains("exiting on signal 15") && !out.contains("mismatch"), "{out}{err}");
}

fn namespaces(pid: u32) -> Vec<std::path::PathBuf> {
    ["mnt", "ipc", "uts"].iter().map(|ns| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap()).collect()
}

/// `--unshare` gives tender mount, IPC and UTS namespaces of its own: different from those of the
/// same launch without it. The network namespace stays.
#[test]
fn unshare_gives_new_mount_ipc_and_uts_namespaces() {
    require_kvm();
    require_root();
    let hello = guest("hello");
    let mut seen = Vec::new();
    for unshare in [false, true] {
        let mut cmd = tender();
        cmd.args(unshare.then_some("--unshare")).arg(&hello).args(["time", "5000"]);
        let guest = Running::spawn(cmd);
        assert!(wait_until_guest_runs(guest.pid()), "the guest never ran");
        let ns = namespaces(guest.pid());
        let net = std::fs::read_link(format!("/proc/{}/ns/net", guest.pid())).unwrap();
        let (code, _, err) = guest.stop();
        assert_eq!(code, 1, "{err}");
        seen.push((ns, net));
    }
    let ((plain, plain_net), (unshared, unshared_net)) = (&seen[0], &seen[1]);
    for (a, b) in plain.iter().zip(unshared) {
        assert_ne!(a, b, "--unshare must give a new namespace");
    }
    assert_eq!(plain_net, unshared_net, "the network namespace stays the caller's");
}

/// ping and http answer from inside the jail: their taps were opened before it.
#[test]
fn network_guests_work_in_the_jail() {
    require_kvm();
    require_root();
    let root = chroot_dir("jail-net");
    let ns = NetNs::new("jail");
    ns.tap("tap0", "10.0.0.1/24", 1500);

    let ping = guest("ping");
    let mut cmd = ns.tender();
    cmd.args(jail(&root.0)).args(["--net:service=tap0"]).arg(&ping).args(["--ipv4=10.0.0.2/24", "--count=3"]);
    let running = Running::spawn(cmd);
    assert!(wait_for_port_unreachable(&ns, "10.0.0.2", 30), "ping guest never answered");
    let out = ns.command("ping").args(["-c", "3", "-i", "0.2", "10.0.0.2"]).output().unwrap();
    let (code, gout, err) = running.wait();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(code, 0, "{gout}{err}");
    assert!(gout.contains("ping: answered 3 echo requests"), "{gout}");

    let http = guest("http");
    let mut cmd = ns.tender();
    cmd.args(jail(&root.0)).args(["--net:service=tap0"]).arg(&http).args(["--ipv4=10.0.0.2/24"]);
    let running = Running::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut page = String::new();
    while Instant::now() < deadline && !page.contains("Hello from a unikernel") {
        let out = ns.command("curl").args(["-s", "-m", "2", "http://10.0.0.2/"]).output().unwrap();
        page = String::from_utf8_lossy(&out.stdout).into_owned();
    }
    let (code, gout, err) = running.stop();
    assert!(page.contains("Hello from a unikernel"), "{page}\n{gout}{err}");
    assert_eq!(code, 1, "{gout}{err}");
}

/// `--user` with `--dumpcore`: the core is still named after a guest fault (by the helper, which
/// kept root), and nothing is left after a clean run.
#[test]
fn dumpcore_works_with_user_and_chroot() {
    require_kvm();
    require_root();
    let hello = guest("hello");
    let root = chroot_dir("jail-core-root");
    let cores = TempDir::new("jail-cores");
    let dump = format!("--dumpcore={}", cores.0.display());
    let mut cmd = tender();
    cmd.args(jail(&root.0)).arg(&dump).arg(&hello).arg("fault");
    let child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (code, _, err) = decode(child.wait_with_output().unwrap());
    assert_eq!(code, 255, "{err}");
    assert!(err.contains(&format!("dumpcore: guest core written: core.tender.{pid}")), "{err}");
    let names: Vec<_> = std::fs::read_dir(&cores.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [std::ffi::OsString::from(format!("core.tender.{pid}"))]);
    std::fs::remove_file(cores.0.join(&names[0])).unwrap();

    let mut cmd = tender();
    cmd.args(jail(&root.0)).arg(&dump).arg(&hello);
    let (code, _, err) = decode(cmd.output().unwrap());
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_dir(&cores.0).unwrap().count(), 0, "a clean run leaves no core");
    assert_eq!(std::fs::read_dir(&root.0).unwrap().count(), 0, "nothing is written into the chroot");
}

/// Each refusal is one line and exit 1 before the guest runs; nothing is written (the core
/// directory stays empty, the chroot untouched).
#[test]
fn bad_users_and_chroot_dirs_are_refused() {
    require_kvm();
    require_root();
    let hello = guest("hello");
    let h = hello.to_str().unwrap();
    let cores = TempDir::new("jail-refusals");
    let dump = format!("--dumpcore={}", cores.0.display());
    let writable = chroot_dir("jail-writable");
    std::fs::set_permissions(&writable.0, std::fs::Permissions::from_mode(0o775)).unwrap();
    let not_roots = chroot_dir("jail-not-roots");
    std::os::unix::fs::chown(&not_roots.0, Some(65534), None).unwrap();
    let chroot = |d: &TempDir| format!("--chroot={}", d.0.display());
    for (args, want) in [
        (vec!["--user=tnd-no-such-user".to_string()], "--user=tnd-no-such-user: unknown user".to_string()),
        (vec!["--user=nobody:tnd-no-such-group".into()], "unknown group".into()),
        (vec!["--chroot=/nonexistent/tnd".into()], "--chroot=/nonexistent/tnd: No such file or directory".into()),
        (vec![chroot(&writable)], "writable by its group or others (mode 775)".into()),
        (vec![chroot(&not_roots)], "owned by uid 65534, not root".into()),
    ] {
        let mut cmd = tender();
        cmd.args(&args).arg(&dump).arg(h);
        let (code, out, err) = decode(cmd.output().unwrap());
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}: {err}");
        assert_one_error_line(&err, &want);
    }
    // Without root: run tender itself as nobody.
    for option in ["--user=nobody", "--unshare"] {
        let mut cmd = tender();
        std::os::unix::process::CommandExt::uid(&mut cmd, 65534);
        std::os::unix::process::CommandExt::gid(&mut cmd, 65534);
        let (code, out, err) = decode(cmd.args([option, h]).output().unwrap());
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        let name = option.split('=').next().unwrap();
        assert_one_error_line(&err, &format!("{name} needs root (tender runs as uid 65534)"));
    }
    assert_eq!(std::fs::read_dir(&cores.0).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&writable.0).unwrap().count(), 0);
}
