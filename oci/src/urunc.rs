//! urunc's packaging, so that images built for urunc's hvt target run unchanged: annotations
//! `com.urunc.unikernel.binary`, `.cmdline`, `.block`, `.hypervisor` with base64 values, or the
//! same keys in `/urunc.json` in the rootfs.

use std::collections::HashMap;

use base64::Engine as _;

const PREFIX: &str = "com.urunc.unikernel.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UruncError {
    #[error("urunc annotation {0}: not base64 of UTF-8 text")]
    Encoding(String),
    #[error("urunc hypervisor {0:?}: tender runs only hvt unikernels")]
    Hypervisor(String),
    #[error("urunc.json: {0}")]
    Json(String),
}

/// A unikernel packaged for urunc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Urunc {
    /// The unikernel, inside the rootfs.
    pub binary: String,
    /// The guest's command line, split at spaces (MirageOS-style `--ipv4=…` options).
    pub cmdline: Vec<String>,
    /// A block image inside the rootfs, for the unikernel's block device.
    pub block: Option<String>,
}

/// urunc's keys from annotations (preferred) or from the text of `urunc.json`. None when the
/// container is not packaged for urunc.
pub fn parse(annotations: &HashMap<String, String>, json: Option<&str>) -> Result<Option<Urunc>, UruncError> {
    let mut keys: HashMap<String, String> =
        annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
    if keys.is_empty()
        && let Some(text) = json
    {
        let map: HashMap<String, String> = serde_json::from_str(text).map_err(|e| UruncError::Json(e.to_string()))?;
        keys = map.into_iter().filter(|(k, _)| k.starts_with(PREFIX)).collect();
    }
    let get = |name: &str| -> Result<Option<String>, UruncError> {
        let key = format!("{PREFIX}{name}");
        let Some(v) = keys.get(&key) else { return Ok(None) };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|_| UruncError::Encoding(key.clone()))?;
        String::from_utf8(bytes).map(Some).map_err(|_| UruncError::Encoding(key))
    };
    let Some(binary) = get("binary")? else { return Ok(None) };
    if let Some(h) = get("hypervisor")?
        && h != "hvt"
    {
        return Err(UruncError::Hypervisor(h));
    }
    let cmdline = get("cmdline")?.unwrap_or_default().split_whitespace().map(String::from).collect();
    let block = get("block")?.filter(|b| !b.is_empty());
    Ok(Some(Urunc { binary, cmdline, block }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn annotations_and_json() {
        let mut a = HashMap::new();
        assert_eq!(parse(&a, None), Ok(None));
        a.insert("com.urunc.unikernel.binary".into(), b64("/unikernel/http.hvt"));
        a.insert("com.urunc.unikernel.cmdline".into(), b64("http --ipv4-only=true  -l debug"));
        a.insert("com.urunc.unikernel.hypervisor".into(), b64("hvt"));
        let u = parse(&a, None).unwrap().unwrap();
        assert_eq!(u.binary, "/unikernel/http.hvt");
        assert_eq!(u.cmdline, ["http", "--ipv4-only=true", "-l", "debug"]);
        assert_eq!(u.block, None);
        let json = format!(
            r#"{{"com.urunc.unikernel.binary":"{}","com.urunc.unikernel.block":"{}"}}"#,
            b64("/k"),
            b64("/disk.img")
        );
        let u = parse(&HashMap::new(), Some(&json)).unwrap().unwrap();
        assert_eq!((u.binary.as_str(), u.block.as_deref()), ("/k", Some("/disk.img")));
    }

    #[test]
    fn refusals() {
        let mut a = HashMap::new();
        a.insert("com.urunc.unikernel.binary".into(), "!!".into());
        assert!(matches!(parse(&a, None), Err(UruncError::Encoding(_))));
        a.insert("com.urunc.unikernel.binary".into(), b64("/k"));
        a.insert("com.urunc.unikernel.hypervisor".into(), b64("qemu"));
        assert_eq!(parse(&a, None), Err(UruncError::Hypervisor("qemu".into())));
        assert!(matches!(parse(&HashMap::new(), Some("[")), Err(UruncError::Json(_))));
    }
}
