//! From an OCI spec to a tender run: memory, block devices, the net device, guest arguments, and
//! the exact tender command line. Pure: no system calls, so every rule is unit-tested.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::urunc::Urunc;

/// Memory the container's limit keeps for tender itself (its code, page tables, the ring's 2 MiB
/// and the I/O thread), in MiB: the guest gets the limit less this.
pub const MEM_MARGIN_MIB: u64 = 32;

/// Pass tender the jail options (`--user` from `process.user`, `--chroot` to an empty root-owned
/// 0555 directory under the container's state, `--unshare`).
pub const JAIL: bool = true;

/// Annotations a pod spec may set, under `com.tender.`; any other `com.tender.` key is refused.
/// `block-sector-size.NAME` is a family: one per block device.
pub const ANNOTATIONS: [&str; 3] = ["com.tender.mem", "com.tender.timeout", "com.tender.block-sector-size."];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the spec has no process.args")]
    NoArgs,
    #[error(
        "annotation {0} is not allowed (allowed: com.tender.mem, com.tender.timeout, com.tender.block-sector-size.NAME)"
    )]
    Forbidden(String),
    #[error("annotation {key}={value}: {reason}")]
    BadAnnotation { key: String, value: String, reason: &'static str },
    #[error("memory limit {0} bytes leaves less than 2 MiB for the guest after tender's {MEM_MARGIN_MIB} MiB")]
    LimitTooSmall(i64),
    #[error("com.tender.mem={mem} MiB does not fit in the memory limit ({avail} MiB after tender's margin)")]
    MemOverLimit { mem: u64, avail: u64 },
    #[error("mount {0}: a block device mount needs a source file and a device name of 1-67 letters and digits")]
    BadBlockMount(String),
    #[error("the unikernel declares {0} net devices; tender-oci attaches one")]
    TooManyNets(usize),
    #[error("the spec asks for a user namespace, which a unikernel container does not support")]
    UserNamespace,
}

/// A block device from a bind mount onto `/block/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub name: String,
    pub path: PathBuf,
    pub sector_size: Option<u16>,
}

/// What the spec asks of tender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `process.args[0]`: the unikernel, inside the rootfs.
    pub kernel: String,
    pub guest_args: Vec<String>,
    pub mem_mib: u64,
    pub timeout: Option<u64>,
    pub blocks: Vec<Block>,
    /// The net device the container's network reaches, when the unikernel declares one.
    pub net: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

/// How the guest reaches the container's network: its tap, MAC, and the interface's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetLaunch {
    pub tap_fd: i32,
    pub mac: Option<[u8; 6]>,
    /// `ADDR/PREFIX` and gateway, when the namespace had a configured interface.
    pub ipv4: Option<(String, String)>,
}

/// Reads the parts of `spec` tender needs. `net_devices`: the manifest's net devices. urunc's
/// packaging, when there is one, names the kernel and the guest's command line instead of
/// `process.args` (which may then be empty).
pub fn plan(spec: &Spec, net_devices: &[String], urunc: Option<&Urunc>) -> Result<Plan, PlanError> {
    let process = spec.process().as_ref();
    let args = process.and_then(|p| p.args().clone()).unwrap_or_default();
    let (kernel, guest_args) = match urunc {
        Some(u) => (&u.binary, u.cmdline.as_slice()),
        None => args.split_first().ok_or(PlanError::NoArgs)?,
    };
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    check_annotations(annotations)?;
    let annotation = |key: &str| annotations.get(key).map(String::as_str);

    let limit = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    let mem_mib = mem_mib(limit, annotation("com.tender.mem"))?;
    let timeout = match annotation("com.tender.timeout") {
        None => None,
        Some(v) => Some(v.parse::<u64>().ok().filter(|t| *t > 0).ok_or_else(|| PlanError::BadAnnotation {
            key: "com.tender.timeout".into(),
            value: v.into(),
            reason: "not a whole number of seconds above 0",
        })?),
    };

    let mut blocks = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let Ok(rest) = m.destination().strip_prefix("/block") else { continue };
        let dest = m.destination().display().to_string();
        let name = rest.to_str().unwrap_or_default();
        let valid = !name.is_empty()
            && name.len() <= guest_abi::MFT_NAME_MAX
            && name.bytes().all(|b| b.is_ascii_alphanumeric());
        let source = m.source().clone().filter(|s| s.is_absolute());
        let (true, Some(path)) = (valid, source) else { return Err(PlanError::BadBlockMount(dest)) };
        let key = format!("com.tender.block-sector-size.{name}");
        let sector_size = match annotation(&key) {
            None => None,
            Some(v) => Some(v.parse::<u16>().ok().filter(|s| *s >= 512 && s.is_power_of_two()).ok_or(
                PlanError::BadAnnotation { key, value: v.into(), reason: "not a power of two of at least 512" },
            )?),
        };
        blocks.push(Block { name: name.into(), path, sector_size });
    }

    let net = match net_devices {
        [] => None,
        [one] => Some(one.clone()),
        more => return Err(PlanError::TooManyNets(more.len())),
    };
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
    if namespaces.iter().any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User) {
        return Err(PlanError::UserNamespace);
    }
    let (uid, gid) = process.map(|p| (p.user().uid(), p.user().gid())).unwrap_or((0, 0));
    Ok(Plan { kernel: kernel.clone(), guest_args: guest_args.to_vec(), mem_mib, timeout, blocks, net, uid, gid })
}

fn check_annotations(annotations: &HashMap<String, String>) -> Result<(), PlanError> {
    for key in annotations.keys().filter(|k| k.starts_with("com.tender.")) {
        let allowed = ANNOTATIONS.iter().any(|a| if a.ends_with('.') { key.starts_with(a) } else { key == a });
        if !allowed {
            return Err(PlanError::Forbidden(key.clone()));
        }
    }
    Ok(())
}

/// The guest's memory in MiB: the annotation, else the limit less the margin (at most 4 GiB),
/// else tender's default; always a multiple of 2.
fn mem_mib(limit: Option<i64>, annotation: Option<&str>) -> Result<u64, PlanError> {
    let max = guest_abi::MEM_MAX >> 20;
    let avail = match limit {
        Some(l) => {
            let avail = ((l as u64) >> 20).saturating_sub(MEM_MARGIN_MIB).min(max) & !1;
            if avail < 2 {
                return Err(PlanError::LimitTooSmall(l));
            }
            Some(avail)
        }
        None => None,
    };
    let Some(value) = annotation else { return Ok(avail.unwrap_or(guest_abi::MEM_DEFAULT_MIB)) };
    let bad = || PlanError::BadAnnotation {
        key: "com.tender.mem".into(),
        value: value.into(),
        reason: "not an even number of MiB from 2 to 4096",
    };
    // tender's own `--mem` parser; a value it would round is refused rather than changed.
    let (bytes, rounded) = tender::config::parse_mem_mib(value).map_err(|_| bad())?;
    if rounded {
        return Err(bad());
    }
    let mem = bytes >> 20;
    match avail {
        Some(avail) if mem > avail => Err(PlanError::MemOverLimit { mem, avail }),
        _ => Ok(mem),
    }
}

/// The tender command line for `plan`: the kernel is the fd tender-oci opened and checked, the
/// tap is passed open, and nothing in a spec can add another tender option.
pub fn tender_command(
    tender: &Path,
    plan: &Plan,
    kernel_fd: i32,
    net: Option<&NetLaunch>,
    chroot: &Path,
) -> Vec<String> {
    let mut cmd = vec![tender.display().to_string()];
    if JAIL {
        cmd.push(format!("--user={}:{}", plan.uid, plan.gid));
        cmd.push(format!("--chroot={}", chroot.display()));
        cmd.push("--unshare".into());
    }
    cmd.push(format!("--mem={}", plan.mem_mib));
    if let Some(t) = plan.timeout {
        cmd.push(format!("--timeout={t}"));
    }
    for b in &plan.blocks {
        cmd.push(format!("--block:{}={}", b.name, b.path.display()));
        if let Some(s) = b.sector_size {
            cmd.push(format!("--block-sector-size:{}={s}", b.name));
        }
    }
    if let (Some(name), Some(net)) = (&plan.net, net) {
        cmd.push(format!("--net:{name}=@{}", net.tap_fd));
        if let Some(m) = net.mac {
            cmd.push(format!("--net-mac:{name}={}", tender::devices::net::format_mac(&m)));
        }
    }
    cmd.push(format!("@{kernel_fd}"));
    cmd.extend(plan.guest_args.iter().cloned());
    if let Some((addr, gw)) = net.and_then(|n| n.ipv4.as_ref()) {
        cmd.push(format!("--ipv4={addr}"));
        cmd.push(format!("--ipv4-gateway={gw}"));
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn base(extra: &str) -> Spec {
        spec(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"cwd":"/","user":{{"uid":1000,"gid":100}},"args":["/http","--x"]}}{extra}}}"#
        ))
    }

    #[test]
    fn defaults_and_the_command_line() {
        let p = plan(&base(""), &["service".into()], None).unwrap();
        assert_eq!((p.kernel.as_str(), p.guest_args.as_slice(), p.mem_mib), ("/http", &["--x".to_string()][..], 512));
        assert_eq!((p.uid, p.gid, p.net.as_deref()), (1000, 100, Some("service")));
        let net = NetLaunch {
            tap_fd: 5,
            mac: Some([2, 0, 0, 0, 0, 0xab]),
            ipv4: Some(("10.88.0.5/16".into(), "10.88.0.1".into())),
        };
        let cmd = tender_command(Path::new("/bin/tender"), &p, 4, Some(&net), Path::new("/run/x/root"));
        let mut want = vec!["/bin/tender"];
        if JAIL {
            want.extend(["--user=1000:100", "--chroot=/run/x/root", "--unshare"]);
        }
        want.extend([
            "--mem=512",
            "--net:service=@5",
            "--net-mac:service=02:00:00:00:00:ab",
            "@4",
            "--x",
            "--ipv4=10.88.0.5/16",
            "--ipv4-gateway=10.88.0.1",
        ]);
        assert_eq!(cmd, want);
    }

    #[test]
    fn memory_from_the_limit_and_annotation() {
        let limit = |l: i64| format!(r#","linux":{{"resources":{{"memory":{{"limit":{l}}}}}}}"#);
        assert_eq!(plan(&base(&limit(256 << 20)), &[], None).unwrap().mem_mib, 224);
        assert_eq!(plan(&base(&limit(65 << 20)), &[], None).unwrap().mem_mib, 32, "rounded down to 2 MiB");
        assert_eq!(plan(&base(&limit(16 << 40)), &[], None).unwrap().mem_mib, 4096, "at most 4 GiB");
        assert_eq!(plan(&base(&limit(-1)), &[], None).unwrap().mem_mib, 512, "-1 is no limit");
        assert_eq!(plan(&base(&limit(33 << 20)), &[], None), Err(PlanError::LimitTooSmall(33 << 20)));
        let with = |l: &str, mem: &str| base(&format!(r#"{l},"annotations":{{"com.tender.mem":"{mem}"}}"#));
        assert_eq!(plan(&with("", "64"), &[], None).unwrap().mem_mib, 64);
        assert_eq!(plan(&with(&limit(256 << 20), "224"), &[], None).unwrap().mem_mib, 224);
        assert_eq!(
            plan(&with(&limit(256 << 20), "226"), &[], None),
            Err(PlanError::MemOverLimit { mem: 226, avail: 224 })
        );
        for bad in ["0", "3", "x", "5000"] {
            assert!(matches!(plan(&with("", bad), &[], None), Err(PlanError::BadAnnotation { .. })), "{bad}");
        }
    }

    #[test]
    fn blocks_from_mounts_and_sector_sizes() {
        let s = base(
            r#","mounts":[{"destination":"/proc","type":"proc","source":"proc"},
            {"destination":"/block/storage","type":"bind","source":"/srv/kv.img","options":["rbind"]}],
            "annotations":{"com.tender.block-sector-size.storage":"4096","com.tender.timeout":"9"}"#,
        );
        let p = plan(&s, &[], None).unwrap();
        assert_eq!(p.blocks, [Block { name: "storage".into(), path: "/srv/kv.img".into(), sector_size: Some(4096) }]);
        let cmd = tender_command(Path::new("t"), &p, 3, None, Path::new("/r"));
        assert!(cmd.ends_with(&[
            "--timeout=9".into(),
            "--block:storage=/srv/kv.img".into(),
            "--block-sector-size:storage=4096".into(),
            "@3".into(),
            "--x".into()
        ]));
        for bad in [r#""/block/a-b""#, r#""/block/""#] {
            let s = base(&format!(r#","mounts":[{{"destination":{bad},"type":"bind","source":"/x"}}]"#));
            assert!(matches!(plan(&s, &[], None), Err(PlanError::BadBlockMount(_))), "{bad}");
        }
    }

    #[test]
    fn refusals() {
        for key in ["com.tender.seccomp", "com.tender.report", "com.tender.dumpcore", "com.tender.net"] {
            let s = base(&format!(r#","annotations":{{"{key}":"off"}}"#));
            assert_eq!(plan(&s, &[], None), Err(PlanError::Forbidden(key.into())));
        }
        let s = base(r#","annotations":{"io.kubernetes.cri.sandbox-id":"x"}"#);
        assert!(plan(&s, &[], None).is_ok(), "other annotations are not ours");
        assert_eq!(plan(&base(""), &["a".into(), "b".into()], None), Err(PlanError::TooManyNets(2)));
        let s = base(r#","linux":{"namespaces":[{"type":"user"}]}"#);
        assert_eq!(plan(&s, &[], None), Err(PlanError::UserNamespace));
        let s = spec(r#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}}"#);
        assert_eq!(plan(&s, &[], None), Err(PlanError::NoArgs));
        let urunc = Urunc { binary: "/k".into(), cmdline: vec!["a".into()], block: None };
        let p = plan(&s, &[], Some(&urunc)).unwrap();
        assert_eq!(
            (p.kernel.as_str(), p.guest_args.as_slice()),
            ("/k", &["a".to_string()][..]),
            "urunc's packaging first"
        );
    }
}
