//! The runtime's record of one container: who owns it (tender or runc), and for tender's its
//! process and status. One JSON file per container under the root.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("invalid container id {0:?}: use letters, digits, '_', '-', '.', '+'")]
    BadId(String),
    #[error("state of {id}: {err}")]
    Io { id: String, err: std::io::Error },
    #[error("state of {id}: {err}")]
    Json { id: String, err: serde_json::Error },
}

/// Which runtime runs a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    Tender,
    Runc,
}

/// OCI status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Stopped,
}

impl Status {
    pub fn can_start(self) -> bool {
        self == Status::Created
    }
    pub fn can_kill(self) -> bool {
        self != Status::Stopped
    }
    pub fn can_delete(self, force: bool) -> bool {
        force || self == Status::Stopped
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub owner: Owner,
    pub bundle: PathBuf,
    #[serde(default)]
    pub pid: i32,
    /// The process's start time (field 22 of /proc/PID/stat), so a reused pid is not mistaken
    /// for the container's.
    #[serde(default)]
    pub start_time: u64,
    #[serde(default)]
    pub started: bool,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// The container's cgroup, relative to each hierarchy.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Whether tender-oci made that cgroup (then `delete` removes it) or found it there.
    #[serde(default)]
    pub cgroup_made: bool,
    /// The network namespace the container joined (a pod's), when its uplink got tc filters.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The uplink's interface index in `netns`: its ingress qdisc and redirect are tender-oci's.
    #[serde(default)]
    pub uplink: Option<u32>,
}

/// Where the records live: `ROOT/c/ID/`; runc's own root for passed-through containers is
/// `ROOT/runc`.
#[derive(Clone, Debug)]
pub struct Root(pub PathBuf);

impl Root {
    pub fn dir(&self, id: &str) -> Result<PathBuf, StateError> {
        let ok = !id.is_empty()
            && id.len() <= 1024
            && id != "."
            && id != ".."
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.+".contains(&b));
        if !ok {
            return Err(StateError::BadId(id.into()));
        }
        Ok(self.0.join("c").join(id))
    }

    pub fn runc_root(&self) -> PathBuf {
        self.0.join("runc")
    }

    /// Makes the container's directory; fails if the id is taken.
    pub fn create_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        let dir = self.dir(id)?;
        let io = |err| StateError::Io { id: id.into(), err };
        std::fs::create_dir_all(dir.parent().unwrap_or(&self.0)).map_err(io)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StateError::Exists(id.into())),
            Err(e) => Err(io(e)),
        }
    }

    pub fn load(&self, id: &str) -> Result<Record, StateError> {
        let path = self.dir(id)?.join("state.json");
        let text = std::fs::read(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound(id.into()),
            _ => StateError::Io { id: id.into(), err },
        })?;
        serde_json::from_slice(&text).map_err(|err| StateError::Json { id: id.into(), err })
    }

    /// Writes the record atomically (a reader never sees half a file).
    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        let dir = self.dir(&record.id)?;
        let io = |err| StateError::Io { id: record.id.clone(), err };
        let text = serde_json::to_vec(record).map_err(|err| StateError::Json { id: record.id.clone(), err })?;
        let tmp = dir.join("state.json.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(io)
    }

    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let dir = self.dir(id)?;
        // The chroot directory is 0555: make it removable first.
        let _ = std::fs::set_permissions(dir.join("root"), std::os::unix::fs::PermissionsExt::from_mode(0o755));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io { id: id.into(), err: e }),
            _ => Ok(()),
        }
    }
}

/// The start time of `pid`, when it is alive (a zombie is not: its guest has ended).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl Record {
    /// A container just being created: no process yet.
    pub fn new(id: &str, owner: Owner, bundle: &std::path::Path, annotations: HashMap<String, String>) -> Self {
        Record {
            id: id.into(),
            owner,
            bundle: bundle.into(),
            pid: 0,
            start_time: 0,
            started: false,
            annotations,
            cgroup: None,
            cgroup_made: false,
            netns: None,
            uplink: None,
        }
    }

    /// The cgroup to remove at delete: only one tender-oci made.
    pub fn made_cgroup(&self) -> Option<&str> {
        self.cgroup.as_deref().filter(|_| self.cgroup_made)
    }

    pub fn alive(&self) -> bool {
        self.pid > 0 && start_time(self.pid) == Some(self.start_time)
    }

    pub fn status(&self) -> Status {
        match (self.alive(), self.started) {
            (false, _) => Status::Stopped,
            (true, false) => Status::Created,
            (true, true) => Status::Running,
        }
    }

    /// The OCI state document (`state ID`).
    pub fn oci_state(&self) -> serde_json::Value {
        let status = self.status();
        serde_json::json!({
            "ociVersion": "1.0.2",
            "id": self.id,
            "status": status,
            "pid": if status == Status::Stopped { 0 } else { self.pid },
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: i32, start_time: u64, started: bool) -> Record {
        Record {
            id: "c1".into(),
            owner: Owner::Tender,
            bundle: "/b".into(),
            pid,
            start_time,
            started,
            annotations: HashMap::new(),
            cgroup: None,
            cgroup_made: false,
            netns: None,
            uplink: None,
        }
    }

    #[test]
    fn status_follows_the_process() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("our own start time");
        assert_eq!(record(me, t, false).status(), Status::Created);
        assert_eq!(record(me, t, true).status(), Status::Running);
        assert_eq!(record(me, t + 1, true).status(), Status::Stopped, "a reused pid is not the container");
        assert_eq!(record(0, 0, true).status(), Status::Stopped);
        let s = record(me, t + 1, true).oci_state();
        assert_eq!((s["status"].as_str(), s["pid"].as_i64()), (Some("stopped"), Some(0)));
        assert_eq!(record(me, t, true).oci_state()["pid"].as_i64(), Some(i64::from(me)));
    }

    #[test]
    fn transitions() {
        assert!(Status::Created.can_start() && !Status::Running.can_start() && !Status::Stopped.can_start());
        assert!(Status::Created.can_kill() && Status::Running.can_kill() && !Status::Stopped.can_kill());
        assert!(Status::Stopped.can_delete(false) && !Status::Running.can_delete(false));
        assert!(Status::Running.can_delete(true) && !Status::Created.can_delete(false));
    }

    #[test]
    fn records_round_trip_and_ids_are_checked() {
        let tmp = std::env::temp_dir().join(format!("tender-oci-state-{}", std::process::id()));
        let root = Root(tmp.clone());
        root.create_dir("c1").unwrap();
        assert!(matches!(root.create_dir("c1"), Err(StateError::Exists(_))));
        let r = record(1, 2, false);
        root.save(&r).unwrap();
        assert_eq!(root.load("c1").unwrap(), r);
        root.remove("c1").unwrap();
        assert!(matches!(root.load("c1"), Err(StateError::NotFound(_))));
        for bad in ["", "..", "a/b", "a b"] {
            assert!(matches!(root.dir(bad), Err(StateError::BadId(_))), "{bad:?}");
        }
        std::fs::remove_dir_all(tmp).unwrap();
    }
}
