//! Error lines for the caller: `tender-oci: MSG` on stderr, and in `--log` as text or as the JSON
//! lines (`{"level":"error","msg":...}`) that containerd and conmon read back.

use std::io::Write as _;
use std::path::PathBuf;

#[derive(Clone, Debug, Default)]
pub struct Log {
    pub path: Option<PathBuf>,
    pub json: bool,
}

impl Log {
    pub fn error(&self, msg: &str) {
        let _ = writeln!(std::io::stderr(), "tender-oci: {msg}");
        let Some(path) = &self.path else { return };
        let line = if self.json {
            serde_json::json!({ "level": "error", "msg": msg }).to_string()
        } else {
            format!("level=error msg={}", serde_json::Value::from(msg))
        };
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}
