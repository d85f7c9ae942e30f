//! The container's cgroup (cgroupfs; v1 as on this host, v2 when the unified hierarchy is mounted
//! at /sys/fs/cgroup, untested here) with `linux.resources` applied: memory, cpu, pids, and a
//! devices controller that always lets tender open /dev/kvm and /dev/net/tun.
//!
//! Written here rather than with cgroups-rs, whose current release always builds a D-Bus stack
//! for systemd, which tender-oci refuses: these are a handful of file writes.

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

const MOUNT: &str = "/sys/fs/cgroup";
/// v1 hierarchies tender-oci puts the container in.
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "devices"];
/// /dev/kvm and /dev/net/tun, which tender opens whatever the spec's device rules say.
/// Where a container without `cgroupsPath` goes.
const DEFAULT_PARENT: &str = "/tender-oci";
const TENDER_DEVICES: [&str; 2] = ["c 10:232 rwm", "c 10:200 rwm"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath {0:?}: a systemd slice path, but tender-oci manages cgroupfs only (no --systemd-cgroup)")]
    Systemd(String),
    #[error("cgroupsPath {0:?} must be an absolute path without '..'")]
    BadPath(String),
    #[error("cgroupsPath {0:?} names the hierarchy's root: give the container a cgroup of its own")]
    Root(String),
    #[error("cgroup {path}: {err}")]
    Io { path: String, err: std::io::Error },
}

fn v2() -> bool {
    Path::new(MOUNT).join("cgroup.controllers").exists()
}

/// The directories of `rel` in each hierarchy used.
fn dirs(rel: &str) -> Vec<PathBuf> {
    let rel = rel.trim_start_matches('/');
    if v2() {
        return vec![Path::new(MOUNT).join(rel)];
    }
    V1_CONTROLLERS.iter().map(|c| Path::new(MOUNT).join(c).join(rel)).filter(|d| d.parent().is_some()).collect()
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|err| CgroupError::Io { path: path.display().to_string(), err })
}

/// The container's cgroup.
pub struct Cgroup {
    /// Relative to each hierarchy.
    pub path: String,
    /// Whether it was made here: one that was there before (an engine's) is not removed.
    pub made: bool,
}

/// Makes the cgroup (or takes the one that is there) and applies `resources`.
pub fn create(
    id: &str,
    path: Option<&Path>,
    resources: Option<&LinuxResources>,
) -> Result<Option<Cgroup>, CgroupError> {
    let rel = match path {
        Some(p) => {
            let s = p.display().to_string();
            if !s.starts_with('/') && s.contains(':') {
                return Err(CgroupError::Systemd(s));
            }
            if s.trim_start_matches('/').is_empty() {
                return Err(CgroupError::Root(s));
            }
            if !p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(CgroupError::BadPath(s));
            }
            s
        }
        None => format!("{DEFAULT_PARENT}/{id}"),
    };
    let v1_hier: Vec<PathBuf> = V1_CONTROLLERS.iter().map(|c| Path::new(MOUNT).join(c)).collect();
    if !v2() && !v1_hier.iter().all(|h| h.is_dir()) {
        // No cgroupfs to manage (a bare container host): nothing to make or to remove.
        return Ok(None);
    }
    let made = !dirs(&rel).iter().any(|d| d.exists());
    for d in dirs(&rel) {
        if let Err(err) = std::fs::create_dir_all(&d) {
            if made {
                remove(&rel);
            }
            return Err(CgroupError::Io { path: d.display().to_string(), err });
        }
    }
    if let Err(e) = apply(&rel, resources) {
        if made {
            remove(&rel);
        }
        return Err(e);
    }
    Ok(Some(Cgroup { path: rel, made }))
}

fn apply(rel: &str, resources: Option<&LinuxResources>) -> Result<(), CgroupError> {
    let root = Path::new(MOUNT);
    let rel = rel.trim_start_matches('/');
    let memory = resources.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()).filter(|l| *l > 0);
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let pids = resources.and_then(|r| r.pids().as_ref()).map(|p| p.limit()).filter(|l| *l > 0);
    if v2() {
        let d = root.join(rel);
        if let Some(l) = memory {
            write(&d, "memory.max", &l.to_string())?;
        }
        if let Some(q) = cpu.and_then(|c| c.quota()).filter(|q| *q > 0) {
            let period = cpu.and_then(|c| c.period()).unwrap_or(100_000);
            write(&d, "cpu.max", &format!("{q} {period}"))?;
        }
        if let Some(p) = pids {
            write(&d, "pids.max", &p.to_string())?;
        }
        // v2 controls devices with an eBPF program, not files; tender-oci attaches none, so
        // /dev/kvm and /dev/net/tun stay open to tender.
        return Ok(());
    }
    if let Some(l) = memory {
        write(&root.join("memory").join(rel), "memory.limit_in_bytes", &l.to_string())?;
    }
    let cpu_dir = root.join("cpu").join(rel);
    if let Some(s) = cpu.and_then(|c| c.shares()).filter(|s| *s > 0) {
        write(&cpu_dir, "cpu.shares", &s.to_string())?;
    }
    if let Some(p) = cpu.and_then(|c| c.period()).filter(|p| *p > 0) {
        write(&cpu_dir, "cpu.cfs_period_us", &p.to_string())?;
    }
    if let Some(q) = cpu.and_then(|c| c.quota()).filter(|q| *q > 0) {
        write(&cpu_dir, "cpu.cfs_quota_us", &q.to_string())?;
    }
    if let Some(p) = pids {
        write(&root.join("pids").join(rel), "pids.max", &p.to_string())?;
    }
    let dev_dir = root.join("devices").join(rel);
    for rule in resources.and_then(|r| r.devices().clone()).unwrap_or_default() {
        let typ = rule.typ().map(|t| t.as_str().to_string()).unwrap_or_else(|| "a".into());
        let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
        let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
        let line = if typ == "a" {
            "a".to_string()
        } else {
            format!("{typ} {}:{} {access}", num(rule.major()), num(rule.minor()))
        };
        write(&dev_dir, if rule.allow() { "devices.allow" } else { "devices.deny" }, &line)?;
    }
    for rule in TENDER_DEVICES {
        write(&dev_dir, "devices.allow", rule)?;
    }
    Ok(())
}

/// Moves the calling process into the cgroup.
pub fn join(rel: &str) -> Result<(), CgroupError> {
    for d in dirs(rel) {
        write(&d, "cgroup.procs", "0")?;
    }
    Ok(())
}

/// The processes in the cgroup (of its first hierarchy; every hierarchy holds the same ones).
pub fn procs(rel: &str) -> Vec<i32> {
    let Some(dir) = dirs(rel).into_iter().next() else { return Vec::new() };
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Removes the cgroup (its processes have ended). Best effort: a missing one is fine.
pub fn remove(rel: &str) {
    for d in dirs(rel) {
        // EBUSY while the last task is still leaving (an ended process's exit is not yet
        // complete): retry for a bounded while.
        for _ in 0..200 {
            match std::fs::remove_dir(&d) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => break,
            }
        }
        // The default parent, once its last container is gone.
        if rel.starts_with(DEFAULT_PARENT) {
            let _ = d.parent().map(std::fs::remove_dir);
        }
    }
}
