//! tender-oci under real engines: podman (in a network namespace the test makes, with its own
//! storage), and tender-oci's own command line as engines call it. Images are built locally
//! `FROM scratch` and every run passes `--pull=never`: nothing is fetched.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use common::*;

/// Engines share host state (CNI leases, iptables): their tests run one at a time.
static ENGINE: Mutex<()> = Mutex::new(());

/// Facts about running podman on this host, in one place:
/// - podman runs inside a network namespace the test made (`nsenter --net=`, not `ip netns exec`,
///   which remounts /sys and hides the cgroup mounts runc needs), so its bridge and NAT rules never
///   touch the host's namespace; a fixed port in that fresh namespace is free by construction;
/// - `--cgroup-manager=cgroupfs` (no systemd) and runc for ordinary containers (crun fails on this
///   cgroup v1 hybrid);
/// - `--ulimit nofile=1024:1024 --ulimit nproc=1024:1024` (the defaults exceed what is allowed);
/// - its own storage (vfs, no mounts) in a temporary directory, removed with the test.
struct Podman {
    ns: NetNs,
    dir: TempDir,
}

const PORT: &str = "18090";

impl Podman {
    fn new(tag: &str) -> Self {
        require_root();
        require_kvm();
        for tool in ["podman", "runc", "nsenter", "iptables"] {
            let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap();
            assert!(found.status.success(), "{tool} is missing: run scripts/test.sh, which installs it");
        }
        Podman { ns: NetNs::new(tag), dir: TempDir::new(&format!("podman-{tag}")) }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns.name)).arg("podman");
        c.arg(format!("--root={}", self.dir.0.join("root").display()));
        c.arg(format!("--runroot={}", self.dir.0.join("run").display()));
        c.args(["--storage-driver=vfs", "--cgroup-manager=cgroupfs"]);
        c.stdin(Stdio::null());
        c
    }

    fn run_args(runtime: &Path) -> Vec<String> {
        vec![
            format!("--runtime={}", runtime.display()),
            "--pull=never".into(),
            "--ulimit".into(),
            "nofile=1024:1024".into(),
            "--ulimit".into(),
            "nproc=1024:1024".into(),
        ]
    }

    /// `podman ARGS`, output decoded.
    fn podman(&self, args: &[&str]) -> (i32, String, String) {
        decode(self.cmd().args(args).output().expect("run podman"))
    }

    /// `podman run ARGS` through `runtime`.
    fn run(&self, runtime: &Path, args: &[&str]) -> (i32, String, String) {
        decode(self.cmd().arg("run").args(Self::run_args(runtime)).args(args).output().expect("podman run"))
    }

    /// Builds image `tag` FROM scratch with `files` (host path, path in the image) and `entry`.
    fn image(&self, tag: &str, files: &[(&Path, &str)], entry: &str) {
        let ctx = self.dir.0.join(format!("ctx-{tag}"));
        std::fs::create_dir_all(&ctx).unwrap();
        let mut file = String::from("FROM scratch\n");
        for (i, (src, dst)) in files.iter().enumerate() {
            std::fs::copy(src, ctx.join(format!("f{i}"))).unwrap();
            file += &format!("COPY f{i} {dst}\n");
        }
        file += &format!("ENTRYPOINT [\"{entry}\"]\n");
        std::fs::write(ctx.join("Containerfile"), file).unwrap();
        let (code, _, err) = self.podman(&["build", "-q", "-t", tag, ctx.to_str().unwrap()]);
        assert_eq!(code, 0, "podman build {tag}: {err}");
    }

    fn curl(&self, url: &str) -> Output {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns.name));
        c.args(["curl", "-s", "-m", "5", "-w", "\n%{http_code}", url]);
        c.output().expect("curl")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their conmon, netns and leases), then the storage with the TempDir.
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd().args(["rmi", "-af"]).output();
    }
}

fn runc() -> PathBuf {
    PathBuf::from("runc")
}

fn busybox() -> &'static Path {
    Path::new("/bin/busybox")
}

/// Nothing tender-oci made is left: no record, no cgroup of its own.
fn assert_nothing_left(root: &Path, id: &str) {
    assert!(!root.join("c").join(id).exists(), "state of {id} left behind");
    for ctl in ["memory", "cpu", "pids", "devices"] {
        let leftovers = Command::new("sh")
            .args(["-c", &format!("find /sys/fs/cgroup/{ctl} -maxdepth 3 -type d -name '*{id}*'")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&leftovers.stdout), "", "cgroup of {id} left in {ctl}");
    }
}

#[test]
fn podman_runs_hello_with_its_exit_statuses() {
    let _one = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let oci = tender_oci_path();
    let p = Podman::new("podhello");
    p.image("hello-image", &[(&guest("hello"), "/hello")], "/hello");
    let (code, out, err) = p.run(&oci, &["--rm", "hello-image", "one", "two"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hello, world!") && out.contains("cmdline: one two"), "{out}");
    // With a terminal (`-t`): conmon gets the terminal's master over its console socket.
    let (code, out, err) = p.run(&oci, &["--rm", "-t", "hello-image", "on", "a", "tty"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hello, world!\r\n") && out.contains("cmdline: on a tty"), "{out:?}");
    let (code, _, err) = p.run(&oci, &["--rm", "hello-image", "fail", "3"]);
    assert_eq!(code, 3, "{err}");
    let (code, out, _) = p.run(&oci, &["--rm", "hello-image", "panic"]);
    assert_eq!(code, 255, "{out}");
    // urunc's packaging: the unikernel and its command line from base64 annotations.
    let (code, out, err) = p.run(
        &oci,
        &[
            "--rm",
            "--annotation",
            &format!("com.urunc.unikernel.binary={}", b64("/hello")),
            "--annotation",
            &format!("com.urunc.unikernel.cmdline={}", b64("as packaged --for=urunc")),
            "--annotation",
            &format!("com.urunc.unikernel.hypervisor={}", b64("hvt")),
            "hello-image",
            "ignored",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cmdline: as packaged --for=urunc"), "{out}");
    // ...or from /urunc.json in the rootfs, with a block image in the rootfs for the
    // unikernel's block device (blk writes and verifies its pattern over it).
    let json = p.dir.0.join("urunc.json");
    let keys = format!(
        r#"{{"com.urunc.unikernel.binary":"{}","com.urunc.unikernel.cmdline":"{}","com.urunc.unikernel.block":"{}","com.urunc.unikernel.hypervisor":"{}"}}"#,
        b64("/unikernel/blk.hvt"),
        b64(""),
        b64("/disk.img"),
        b64("hvt")
    );
    std::fs::write(&json, keys).unwrap();
    let disk = p.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 256 << 10]).unwrap();
    let blk = guest("blk");
    p.image(
        "urunc-image",
        &[(&blk, "/unikernel/blk.hvt"), (&disk, "/disk.img"), (&json, "/urunc.json")],
        "/unikernel/blk.hvt",
    );
    let (code, out, err) = p.run(&oci, &["--rm", "urunc-image"]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Base64, as urunc's annotations are written (RFC 4648, padded).
fn b64(s: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ABC[(n >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

#[test]
fn podman_serves_http_through_the_container_network() {
    let _one = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let oci = tender_oci_path();
    let p = Podman::new("podhttp");
    p.image("http-image", &[(&guest("http"), "/http")], "/http");
    let (code, out, err) = p.run(&oci, &["-d", "--name", "web", "-p", &format!("{PORT}:80"), "http-image"]);
    assert_eq!(code, 0, "{err}");
    let id = out.trim().to_string();
    let url = format!("http://127.0.0.1:{PORT}/");
    let mut answer = String::new();
    for _ in 0..50 {
        answer = String::from_utf8_lossy(&p.curl(&url).stdout).into_owned();
        if answer.ends_with("200") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(answer.ends_with("\n200"), "curl {url}: {answer:?}");
    assert!(answer.len() > 4, "an empty page: {answer:?}");
    let (_, logs, _) = p.podman(&["logs", "web"]);
    assert!(logs.contains("http: listening on"), "{logs}");
    let (_, ps, _) = p.podman(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("web Up"), "{ps}");
    // The container's pid is tender's, run inside its jail under its own filter.
    let (_, pid, _) = p.podman(&["inspect", "web", "--format", "{{.State.Pid}}"]);
    let proc = format!("/proc/{}", pid.trim());
    let cmdline = std::fs::read(format!("{proc}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    for option in ["--user=", "--chroot=", "--unshare"] {
        assert!(cmdline.contains(option), "tender runs with {option}: {cmdline}");
    }
    let status = std::fs::read_to_string(format!("{proc}/status")).unwrap_or_default();
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let root = std::fs::read_link(format!("{proc}/root")).unwrap_or_default();
    assert!(root.ends_with(format!("c/{id}/root")), "tender's root is its empty chroot: {}", root.display());
    let (code, _, err) = p.podman(&["stop", "-t", "30", "web"]);
    assert_eq!(code, 0, "{err}");
    let (_, status, _) = p.podman(&["inspect", "web", "--format", "{{.State.ExitCode}}"]);
    assert_eq!(status.trim(), "1", "tender's status on SIGTERM, not 137");
    let (_, _, logs) = p.podman(&["logs", "web"]);
    assert!(logs.contains("tender: exiting on signal 15"), "tender's stderr is the container's: {logs}");
    let (code, _, err) = p.podman(&["rm", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(Path::new("/run/tender-oci"), &id);
}

#[test]
fn podman_keeps_a_kv_store_on_a_block_mount() {
    let _one = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let oci = tender_oci_path();
    let p = Podman::new("podkv");
    p.image("kv-image", &[(&guest("kv"), "/kv")], "/kv");
    let disk = p.dir.0.join("kv.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let volume = format!("{}:/block/storage", disk.display());
    for (round, want) in [("set", "OK"), ("get", "VALUE durable")] {
        let (code, _, err) =
            p.run(&oci, &["-d", "--name", round, "-v", &volume, "-p", &format!("{PORT}:7000"), "kv-image"]);
        assert_eq!(code, 0, "{err}");
        let request = if round == "set" { "SET k durable\n" } else { "GET k\n" };
        let mut got = String::new();
        for _ in 0..50 {
            let out = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", p.ns.name))
                .args(["sh", "-c", &format!("printf '{request}' | timeout 3 busybox nc 127.0.0.1 {PORT}")])
                .output()
                .unwrap();
            got = String::from_utf8_lossy(&out.stdout).into_owned();
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert!(got.contains(want), "{round}: {got:?}");
        let (code, _, err) = p.podman(&["rm", "-f", "-t", "5", round]);
        assert_eq!(code, 0, "{err}");
    }
}

#[test]
fn podman_passes_ordinary_containers_to_runc() {
    let _one = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let oci = tender_oci_path();
    let p = Podman::new("podpass");
    p.image("busybox-image", &[(busybox(), "/bin/busybox")], "/bin/busybox");
    for runtime in [runc(), oci.clone()] {
        let (code, out, err) = p.run(&runtime, &["--rm", "busybox-image", "echo", "through"]);
        assert_eq!((code, out.as_str()), (0, "through\n"), "{}: {err}", runtime.display());
        let (code, _, _) = p.run(&runtime, &["--rm", "busybox-image", "sh", "-c", "exit 7"]);
        assert_eq!(code, 7, "{}", runtime.display());
    }
}

/// A bundle for tender-oci's own command line: `rootfs/` with `files`, and a config.json from
/// `runc spec` with `args`, edited by `edit`.
fn bundle(dir: &Path, files: &[(&Path, &str)], args: &[&str], edit: impl FnOnce(&mut String)) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs")).unwrap();
    for (src, dst) in files {
        std::fs::copy(src, b.join("rootfs").join(dst.trim_start_matches('/'))).unwrap();
    }
    let out = Command::new("runc").args(["spec", "--bundle", b.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "runc spec: {}", String::from_utf8_lossy(&out.stderr));
    let path = b.join("config.json");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace("\"terminal\": true", "\"terminal\": false");
    let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    text = text.replace("\"sh\"", &quoted.join(","));
    edit(&mut text);
    std::fs::write(&path, text).unwrap();
    b
}

/// For tests of tender-oci's own command line: a temporary directory and a state root in it.
fn direct(tag: &str) -> (TempDir, PathBuf) {
    require_root();
    require_kvm();
    let dir = TempDir::new(tag);
    let root = dir.0.join("state");
    (dir, root)
}

fn oci(root: &Path, args: &[&str]) -> (i32, String, String) {
    decode(Command::new(tender_oci_path()).arg(format!("--root={}", root.display())).args(args).output().unwrap())
}

/// `create`, whose container process keeps the stdio it is given (the guest's console): files,
/// so that waiting for `create` does not wait for the container.
fn oci_create(root: &Path, bundle: &str, id: &str, console: &Path, pid_file: Option<&Path>) -> (i32, String) {
    match pid_file {
        Some(p) => oci_create_with(root, bundle, id, console, &["--pid-file", p.to_str().unwrap()]),
        None => oci_create_with(root, bundle, id, console, &[]),
    }
}

/// `create` with `options` before the id.
fn oci_create_with(root: &Path, bundle: &str, id: &str, console: &Path, options: &[&str]) -> (i32, String) {
    let out = std::fs::File::create(console).unwrap();
    let err_path = console.with_extension("err");
    let err = std::fs::File::create(&err_path).unwrap();
    let mut c = Command::new(tender_oci_path());
    c.arg(format!("--root={}", root.display())).args(["create", "--bundle", bundle]);
    let status = c.args(options).arg(id).stdin(Stdio::null()).stdout(out).stderr(err).status().unwrap();
    (status.code().unwrap_or(-1), std::fs::read_to_string(err_path).unwrap())
}

/// One line `tender-oci: MESSAGE` holding `want`.
fn assert_one_oci_error(stderr: &str, want: &str) {
    assert!(stderr.starts_with("tender-oci: ") && stderr.lines().count() == 1 && stderr.contains(want), "{stderr:?}");
}

fn status_of(root: &Path, id: &str) -> String {
    let (code, out, err) = oci(root, &["state", id]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["status"].as_str().unwrap().to_string()
}

/// Waits (boundedly) for container `id` to stop.
fn wait_stopped(root: &Path, id: &str) {
    for _ in 0..100 {
        if status_of(root, id) == "stopped" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("container {id} did not stop");
}

#[test]
fn lifecycle_state_kill_delete() {
    let (dir, root) = direct("oci-life");
    // runc's spec asks for a new, empty network namespace: the tap stays unconnected.
    let b = bundle(&dir.0, &[(&guest("http"), "/http")], &["/http", "--ipv4=10.0.0.2/24"], |_| {});
    let b = b.to_str().unwrap();
    let pid_file = dir.0.join("pid");
    let console = dir.0.join("console");
    let (code, err) = oci_create(&root, b, "web", &console, Some(&pid_file));
    assert_eq!(code, 0, "{err}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(status_of(&root, "web"), "created");
    let (code, _, err) = oci(&root, &["delete", "web"]);
    assert_eq!(code, 1, "a created container is not deleted without --force");
    assert!(err.starts_with("tender-oci: ") && err.lines().count() == 1, "{err}");
    let (code, _, err) = oci(&root, &["start", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_of(&root, "web"), "running");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "tender", "the container's pid is tender's");
    let (code, _, _) = oci(&root, &["start", "web"]);
    assert_eq!(code, 1, "started twice");
    let (code, _, err) = oci(&root, &["exec", "web", "sh"]);
    assert_eq!(code, 1);
    assert!(err.contains("exec"), "{err}");
    // The guest's console is the container's stdout.
    for _ in 0..100 {
        if std::fs::read_to_string(&console).unwrap().contains("http: listening on 10.0.0.2") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, _, err) = oci(&root, &["kill", "web", "TERM"]);
    assert_eq!(code, 0, "{err}");
    wait_stopped(&root, "web");
    let output = std::fs::read_to_string(&console).unwrap();
    assert!(output.contains("http: listening on 10.0.0.2"), "{output}");
    let (code, _, _) = oci(&root, &["kill", "web", "KILL"]);
    assert_eq!(code, 1, "a stopped container cannot be signalled");
    let (code, _, err) = oci(&root, &["delete", "web"]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&root, "web");
    let (code, _, err) = oci(&root, &["state", "web"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    // A created container deleted with --force: its waiting process is killed.
    let (code, err) = oci_create(&root, b, "again", &console, None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = oci(&root, &["delete", "--force", "again"]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&root, "again");
}

#[test]
fn refusals_are_one_line_and_leave_nothing() {
    let (dir, root) = direct("oci-refuse");
    let hello = guest("hello");
    let forbidden = bundle(&dir.0.join("f"), &[(&hello, "/hello")], &["/hello"], |t| {
        *t = t.replacen("\"ociVersion\"", "\"annotations\": {\"com.tender.seccomp\": \"off\"}, \"ociVersion\"", 1)
    });
    // A link out of the rootfs resolves inside it (RESOLVE_IN_ROOT): nothing there, so the
    // container is not a unikernel and runc refuses it.
    let outside = bundle(&dir.0.join("o"), &[], &["/hello"], |_| {});
    std::os::unix::fs::symlink(&hello, outside.join("rootfs/hello")).unwrap();
    let qemu = bundle(&dir.0.join("q"), &[(&hello, "/hello")], &["/hello"], |t| {
        let a = format!(
            "\"annotations\": {{\"com.urunc.unikernel.binary\": \"{}\", \"com.urunc.unikernel.hypervisor\": \"{}\"}}, \"ociVersion\"",
            b64("/hello"),
            b64("qemu")
        );
        *t = t.replacen("\"ociVersion\"", &a, 1)
    });
    let missing = dir.0.join("nobundle");
    let json_log = dir.0.join("log.json");
    for (bundle, want) in [
        (forbidden.as_path(), "annotation com.tender.seccomp is not allowed"),
        (missing.as_path(), "bundle"),
        (qemu.as_path(), "tender runs only hvt unikernels"),
    ] {
        let (code, _, err) = decode(
            Command::new(tender_oci_path())
                .args(["--root", root.to_str().unwrap(), "--log", json_log.to_str().unwrap(), "--log-format", "json"])
                .args(["create", "--bundle", bundle.to_str().unwrap(), "bad"])
                .output()
                .unwrap(),
        );
        assert_eq!(code, 1);
        assert!(err.starts_with("tender-oci: ") && err.lines().count() == 1 && err.contains(want), "{err}");
        assert_nothing_left(&root, "bad");
    }
    let log = std::fs::read_to_string(&json_log).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(first["level"], "error");
    assert!(first["msg"].as_str().unwrap().contains("com.tender.seccomp"), "{log}");
    let (code, _) = oci_create(&root, outside.to_str().unwrap(), "out", &dir.0.join("console"), None);
    assert_ne!(code, 0, "the host's hello must not be run");
    assert_nothing_left(&root, "out");
}

/// containerd with its own temporary config, root, state and socket (no CRI plugin), driven
/// with `ctr`; the native snapshotter keeps it free of overlay mounts.
struct Containerd {
    dir: TempDir,
    daemon: Option<std::process::Child>,
}

impl Containerd {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(&format!("containerd-{tag}"));
        let d = dir.0.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n"
        );
        std::fs::write(dir.0.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.0.join("log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd is missing: run scripts/test.sh, which installs it");
        let c = Containerd { dir, daemon: Some(daemon) };
        for _ in 0..100 {
            if c.ctr(&["version"]).0 == 0 {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("containerd did not come up: {}", std::fs::read_to_string(c.dir.0.join("log")).unwrap_or_default());
    }

    fn ctr_cmd(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(self.dir.0.join("c.sock")).args(["-n", "tnd"]).stdin(Stdio::null());
        c
    }

    fn ctr(&self, args: &[&str]) -> (i32, String, String) {
        decode(self.ctr_cmd().args(args).output().expect("run ctr"))
    }

    /// `ctr run` through tender-oci (plus `extra` options), output decoded.
    fn run(&self, extra: &[&str], image: &str, id: &str, args: &[&str]) -> (i32, String, String) {
        let oci = tender_oci_path();
        let mut c = self.ctr_cmd();
        c.args(["run", "--snapshotter", "native", "--runc-binary", oci.to_str().unwrap()]);
        decode(c.args(extra).args([image, id]).args(args).output().expect("ctr run"))
    }

    /// Imports podman's `image` as `localhost/IMAGE:latest`.
    fn import(&self, podman: &Podman, image: &str) -> String {
        let tar = self.dir.0.join(format!("{image}.tar"));
        let (code, _, err) = podman.podman(&["save", "--format", "oci-archive", "-o", tar.to_str().unwrap(), image]);
        assert_eq!(code, 0, "podman save: {err}");
        let name = format!("localhost/{image}");
        let (code, _, err) =
            self.ctr(&["images", "import", "--snapshotter", "native", "--base-name", &name, tar.to_str().unwrap()]);
        assert_eq!(code, 0, "ctr import: {err}");
        format!("{name}:latest")
    }

    /// Kills and removes a container started with `-d`.
    fn remove(&self, id: &str) {
        let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        for _ in 0..100 {
            if self.ctr(&["task", "delete", id]).0 == 0 || self.ctr(&["task", "ls", "-q"]).1.lines().all(|l| l != id) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.ctr(&["containers", "delete", id]);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let (_, tasks, _) = self.ctr(&["task", "ls", "-q"]);
        for id in tasks.lines() {
            self.remove(id);
        }
        let (_, containers, _) = self.ctr(&["containers", "ls", "-q"]);
        for id in containers.lines() {
            let _ = self.ctr(&["containers", "delete", id]);
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // containerd puts containers under a cgroup named after its namespace, and leaves it.
        for ctl in ["blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified"] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{ctl}/tnd"));
        }
    }
}

#[test]
fn containerd_runs_hello_and_a_pod() {
    let _one = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    let podman = Podman::new("ctd");
    podman.image("hello-image", &[(&guest("hello"), "/hello")], "/hello");
    podman.image("http-image", &[(&guest("http"), "/http")], "/http");
    podman.image("busybox-image", &[(busybox(), "/bin/busybox")], "/bin/busybox");
    let ctd = Containerd::new("pod");
    let hello = ctd.import(&podman, "hello-image");
    let (code, out, err) = ctd.run(&["--rm"], &hello, "h1", &["/hello", "from", "ctr"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Hello, world!") && out.contains("cmdline: from ctr"), "{out}");
    let (code, _, _) = ctd.run(&["--rm"], &hello, "h2", &["/hello", "fail", "3"]);
    assert_eq!(code, 3);

    // A pod as Kubernetes makes one: a pause-like container (passed through to runc)...
    let busybox = ctd.import(&podman, "busybox-image");
    let http = ctd.import(&podman, "http-image");
    let (code, _, err) = ctd.run(&["-d"], &busybox, "pause", &["/bin/busybox", "sleep", "600"]);
    assert_eq!(code, 0, "{err}");
    let (_, tasks, _) = ctd.ctr(&["task", "ls"]);
    let pid =
        tasks.lines().find(|l| l.starts_with("pause ")).and_then(|l| l.split_whitespace().nth(1)).unwrap().to_string();
    // ...whose namespace gets a veth with an address and a default route, as CNI would...
    let peer = NetNs::new("pod");
    peer.ip(&["link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &pid]);
    peer.ip(&["addr", "add", "10.99.0.1/24", "dev", "vpod"]);
    peer.ip(&["link", "set", "vpod", "up"]);
    let in_pod = |args: &[&str]| {
        let ns = format!("--net=/proc/{pid}/ns/net");
        let out = Command::new("nsenter").arg(&ns).arg("ip").args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    in_pod(&["addr", "add", "10.99.0.2/24", "dev", "eth0"]);
    in_pod(&["link", "set", "eth0", "up"]);
    in_pod(&["route", "add", "default", "via", "10.99.0.1"]);
    let ingress = || {
        let ns = format!("--net=/proc/{pid}/ns/net");
        let out = Command::new("nsenter").arg(&ns).args(["tc", "filter", "show", "dev", "eth0", "ingress"]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    let netns = format!("network:/proc/{pid}/ns/net");
    // A create that fails after the redirects were made (http has no block device for this
    // mount: the device check in the container's process refuses it) leaves no filter on eth0.
    let disk = ctd.dir.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 << 10]).unwrap();
    let mount = format!("type=bind,src={},dst=/block/nosuch,options=rbind:rw", disk.display());
    let (code, _, err) = ctd.run(&["--rm", "--with-ns", &netns, "--mount", &mount], &http, "bad", &[]);
    assert!(code != 0 && err.contains("nosuch"), "http has no block device: {err}");
    assert_eq!(ingress(), "", "a failed create left eth0's ingress filter");
    // ...and the unikernel joins it, takes eth0's address and answers from the veth's other end.
    let (code, _, err) = ctd.run(&["-d", "--with-ns", &netns], &http, "web", &[]);
    assert_eq!(code, 0, "{err}");
    let mut answer = String::new();
    for _ in 0..50 {
        let out =
            peer.command("curl").args(["-s", "-m", "3", "-w", "\n%{http_code}", "http://10.99.0.2/"]).output().unwrap();
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if answer.ends_with("200") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(answer.ends_with("\n200"), "curl from the veth's other end: {answer:?}");
    // eth0's redirect to the tap is tender-oci's: `delete` removes it from the pod's namespace,
    // which outlives the unikernel.
    assert!(ingress().contains("mirred"), "the redirect while it runs: {}", ingress());
    ctd.remove("web");
    assert_eq!(ingress(), "", "eth0's ingress filter left behind");
    ctd.remove("pause");
}

/// Receives the terminal master `create` sends over the console socket: the fd and the message.
fn receive_terminal(listener: &std::os::unix::net::UnixListener) -> (std::fs::File, String) {
    use std::os::fd::{AsRawFd, FromRawFd};
    let (stream, _) = listener.accept().unwrap();
    let mut name = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("an fd in the message");
    let len = msg.bytes;
    // SAFETY: the fd just arrived with SCM_RIGHTS: it is open and nothing else owns it.
    let master = unsafe { std::fs::File::from_raw_fd(fd) };
    (master, String::from_utf8_lossy(&name[..len]).into_owned())
}

#[test]
fn a_terminal_goes_over_the_console_socket() {
    let (dir, root) = direct("oci-tty");
    let b = bundle(&dir.0, &[(&guest("hello"), "/hello")], &["/hello", "on", "a", "tty"], |t| {
        *t = t.replace("\"terminal\": false", "\"terminal\": true")
    });
    let b = b.to_str().unwrap();
    // Without a socket: one error line, nothing left.
    let (code, _, err) = oci(&root, &["create", "--bundle", b, "tty"]);
    assert_eq!(code, 1);
    assert_one_oci_error(&err, "--console-socket");
    assert_nothing_left(&root, "tty");
    let socket = dir.0.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let (code, err) =
        oci_create_with(&root, b, "tty", &dir.0.join("console"), &["--console-socket", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (master, name) = receive_terminal(&listener);
    assert!(name.starts_with("/dev/pts/"), "the terminal's name comes with it: {name:?}");
    let (code, _, err) = oci(&root, &["start", "tty"]);
    assert_eq!(code, 0, "{err}");
    // The guest's console comes out of the master; EIO once the last slave (tender) is gone.
    let mut output = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &master, &mut output);
    let output = String::from_utf8_lossy(&output);
    assert!(output.contains("Hello, world!") && output.contains("cmdline: on a tty"), "{output}");
    let console = std::fs::read_to_string(dir.0.join("console")).unwrap();
    assert_eq!(console, "", "nothing on the stdout create was given");
    wait_stopped(&root, "tty");
    let (code, _, err) = oci(&root, &["delete", "tty"]);
    assert_eq!(code, 0, "{err}");
    assert_nothing_left(&root, "tty");
}

/// A bundle's config.json edited as JSON.
fn edit_json(text: &mut String, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    edit(&mut v);
    *text = v.to_string();
}

/// The cgroup `rel` in each v1 hierarchy tender-oci uses.
fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    ["memory", "cpu", "pids", "devices"].iter().map(|c| Path::new("/sys/fs/cgroup").join(c).join(rel)).collect()
}

#[test]
fn resources_rlimits_and_kill_all() {
    let (dir, root) = direct("oci-limits");
    let parent = format!("tender-oci-test-{}", std::process::id());
    let rel = format!("{parent}/limits");
    let b = bundle(&dir.0, &[(&guest("http"), "/http")], &["/http"], |t| {
        edit_json(t, |v| {
            v["linux"]["cgroupsPath"] = format!("/{rel}").into();
            v["linux"]["resources"]["cpu"] = serde_json::json!({"shares": 512, "quota": 50000, "period": 100000});
            v["linux"]["resources"]["pids"] = serde_json::json!({"limit": 64});
            v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 256u64 << 20});
            v["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
        })
    });
    let pid_file = dir.0.join("pid");
    let (code, err) = oci_create(&root, b.to_str().unwrap(), "lim", &dir.0.join("console"), Some(&pid_file));
    assert_eq!(code, 0, "{err}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    // Read back from the created, not yet started, container.
    let read = |ctl: &str, file: &str| {
        let path = Path::new("/sys/fs/cgroup").join(ctl).join(&rel).join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    };
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read("pids", "pids.max"), "64");
    assert_eq!(read("memory", "memory.limit_in_bytes"), (256u64 << 20).to_string());
    assert!(read("pids", "cgroup.procs").lines().any(|l| l == pid.trim()), "the process is in the cgroup");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pid.trim())).unwrap();
    let nofile = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    assert_eq!(nofile.split_whitespace().collect::<Vec<_>>()[3..5], ["123", "456"], "{nofile}");
    // kill --all reaches it; on a stopped container it is no error.
    let (code, _, err) = oci(&root, &["kill", "--all", "lim", "KILL"]);
    assert_eq!(code, 0, "{err}");
    wait_stopped(&root, "lim");
    let (code, _, err) = oci(&root, &["kill", "--all", "lim", "KILL"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = oci(&root, &["delete", "lim"]);
    assert_eq!(code, 0, "{err}");
    assert!(cgroup_dirs(&rel).iter().all(|d| !d.exists()), "the cgroup tender-oci made is removed");

    // A cgroup that was there before create (an engine's) stays after delete.
    let pre = format!("{parent}/pre");
    for d in cgroup_dirs(&pre) {
        std::fs::create_dir_all(d).unwrap();
    }
    let b = bundle(&dir.0.join("pre"), &[(&guest("hello"), "/hello")], &["/hello"], |t| {
        edit_json(t, |v| v["linux"]["cgroupsPath"] = format!("/{pre}").into())
    });
    let (code, err) = oci_create(&root, b.to_str().unwrap(), "pre", &dir.0.join("console"), None);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = oci(&root, &["delete", "--force", "pre"]);
    assert_eq!(code, 0, "{err}");
    let kept = cgroup_dirs(&pre).iter().all(|d| d.exists());
    for d in cgroup_dirs(&pre).iter().chain(&cgroup_dirs(&parent)) {
        let _ = std::fs::remove_dir(d);
    }
    assert!(kept, "a cgroup tender-oci did not make is not removed");

    // The hierarchy's root as cgroupsPath: one line, nothing left.
    for path in ["/", ""] {
        let b = bundle(&dir.0.join(format!("cg{}", path.len())), &[(&guest("hello"), "/hello")], &["/hello"], |t| {
            edit_json(t, |v| v["linux"]["cgroupsPath"] = path.into())
        });
        let (code, _, err) = oci(&root, &["create", "--bundle", b.to_str().unwrap(), "cgroot"]);
        assert_eq!(code, 1, "{path:?}");
        assert_one_oci_error(&err, "cgroupsPath");
        assert_nothing_left(&root, "cgroot");
    }
}

#[test]
fn urunc_packaging_without_args_and_systemd_cgroup() {
    let (dir, root) = direct("oci-urunc");
    // urunc's packaging names the unikernel: process.args may be empty.
    let b = bundle(&dir.0.join("u"), &[(&guest("hello"), "/hello")], &[], |t| {
        edit_json(t, |v| {
            v["annotations"] = serde_json::json!({"com.urunc.unikernel.binary": b64("/hello")});
        })
    });
    let b = b.to_str().unwrap();
    let (code, err) = oci_create(&root, b, "u", &dir.0.join("console"), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(status_of(&root, "u"), "created");
    let (code, _, err) = oci(&root, &["delete", "--force", "u"]);
    assert_eq!(code, 0, "{err}");
    // --systemd-cgroup: refused for a unikernel...
    let (code, _, err) = oci(&root, &["--systemd-cgroup", "create", "--bundle", b, "sd"]);
    assert_eq!(code, 1);
    assert_one_oci_error(&err, "--systemd-cgroup");
    assert_nothing_left(&root, "sd");
    // ...and passed to runc with an ordinary container (runc then fails for want of systemd).
    let plain = bundle(&dir.0.join("p"), &[(busybox(), "/busybox")], &["/busybox", "true"], |_| {});
    let (_, _, err) = oci(&root, &["--systemd-cgroup", "create", "--bundle", plain.to_str().unwrap(), "sd"]);
    assert!(!err.contains("tender-oci: --systemd-cgroup"), "runc's answer, not tender-oci's: {err}");
    let _ = oci(&root, &["delete", "--force", "sd"]);
}
