//! The application manifest (`.note.solo5.manifest`): validation, device lookup, and the copy
//! the guest sees.

use guest_abi::{
    MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, MFT_MAX_ENTRIES, MFT_NAME_SIZE, MFT_RESERVED_FIRST, MFT_VERSION, MftEntry,
    MftHeader, mft_size,
};

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("Solo5 manifest is invalid: {0}")]
    Invalid(&'static str),
}

/// Kind of a manifest entry, as far as the tender is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Net,
}

impl DeviceKind {
    pub fn abi_type(self) -> u32 {
        match self {
            DeviceKind::Block => MFT_DEV_BLOCK_BASIC,
            DeviceKind::Net => MFT_DEV_NET_BASIC,
        }
    }

    /// The kind of a manifest entry's type; `None` for a type the tender does not know (the ABI
    /// does not range-check types).
    pub fn from_abi_type(dev_type: u32) -> Option<Self> {
        [DeviceKind::Block, DeviceKind::Net].into_iter().find(|k| k.abi_type() == dev_type)
    }

    pub fn abi_name(self) -> &'static str {
        match self {
            DeviceKind::Block => "BLOCK_BASIC",
            DeviceKind::Net => "NET_BASIC",
        }
    }

    /// The command line's name for it: `--block:NAME=...`, `--net:NAME=...`.
    pub fn option_name(self) -> &'static str {
        match self {
            DeviceKind::Block => "block",
            DeviceKind::Net => "net",
        }
    }
}

/// A validated manifest. Entry indices are the guest's device handles.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub entries: Vec<MftEntry>,
}

impl Manifest {
    /// Validates a manifest payload exactly as the ABI requires (the guest is untrusted).
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let invalid = ManifestError::Invalid;
        let header_len = size_of::<MftHeader>();
        if bytes.len() < header_len {
            return Err(invalid("shorter than its header"));
        }
        let version = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(bytes[4..8].try_into().unwrap_or_default());
        if version != MFT_VERSION {
            return Err(invalid("unsupported version"));
        }
        if count == 0 || count > MFT_MAX_ENTRIES {
            return Err(invalid("entry count out of range"));
        }
        if bytes.len() != mft_size(count) {
            return Err(invalid("size does not match its entry count"));
        }
        let entry_len = size_of::<MftEntry>();
        let entries: Vec<MftEntry> = bytes[header_len..].chunks_exact(entry_len).map(entry_from_bytes).collect();
        let first = &entries[0];
        if first.dev_type != MFT_RESERVED_FIRST || first.name[0] != 0 {
            return Err(invalid("entry 0 is not the reserved entry"));
        }
        for e in &entries {
            if e.name[MFT_NAME_SIZE - 1] != 0 {
                return Err(invalid("device name not terminated"));
            }
            if e.attached != 0 {
                return Err(invalid("device marked attached in the executable"));
            }
        }
        Ok(Manifest { entries })
    }

    /// Index (handle) of the device named `name`, of any type.
    pub fn find(&self, name: &str) -> Option<(u64, &MftEntry)> {
        self.entries
            .iter()
            .enumerate()
            .skip(1)
            .find(|(_, e)| e.name_bytes() == name.as_bytes())
            .map(|(i, e)| (i as u64, e))
    }

    /// Devices of one kind, as (handle, name).
    pub fn devices(&self, kind: DeviceKind) -> impl Iterator<Item = (u64, String)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.dev_type == kind.abi_type())
            .map(|(i, e)| (i as u64, String::from_utf8_lossy(e.name_bytes()).into_owned()))
    }

    /// The bytes the guest gets at boot: header plus entries, with the tender's fields filled.
    pub fn to_guest_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(mft_size(self.entries.len() as u32));
        out.extend_from_slice(&MFT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.name);
            out.extend_from_slice(&e.dev_type.to_le_bytes());
            out.extend_from_slice(&e.device);
            // Never reveal host state (solo5-hvt leaks the host fd here).
            out.extend_from_slice(&0u64.to_le_bytes());
            out.push(e.attached);
            out.extend_from_slice(&[0; 7]);
        }
        out
    }
}

fn entry_from_bytes(b: &[u8]) -> MftEntry {
    let mut name = [0u8; MFT_NAME_SIZE];
    name.copy_from_slice(&b[..MFT_NAME_SIZE]);
    let mut e = MftEntry::new_raw(name, u32::from_le_bytes([b[68], b[69], b[70], b[71]]));
    e.device.copy_from_slice(&b[72..88]);
    e.attached = b[96];
    e
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serialises entries as an ELF's manifest payload would hold them.
    pub fn payload(entries: &[MftEntry]) -> Vec<u8> {
        Manifest { entries: entries.to_vec() }.to_guest_bytes()
    }

    #[test]
    fn valid_manifest_round_trips() {
        let p = payload(&[MftEntry::RESERVED, MftEntry::new("disk", MFT_DEV_BLOCK_BASIC)]);
        let m = Manifest::parse(&p).unwrap();
        assert_eq!(m.find("disk").unwrap().0, 1);
        assert!(m.find("").is_none(), "the reserved entry is never a device");
        assert_eq!(m.to_guest_bytes(), p);
    }

    #[test]
    fn guest_copy_never_shows_host_state() {
        let mut disk = MftEntry::new("disk", MFT_DEV_BLOCK_BASIC);
        disk.host_private = 5; // as if a host fd had been stored there
        disk.attached = 1;
        let bytes = Manifest { entries: vec![MftEntry::RESERVED, disk] }.to_guest_bytes();
        assert_eq!(&bytes[8 + 104 + 88..8 + 104 + 96], &[0; 8]);
        assert_eq!(bytes[8 + 104 + 96], 1);
    }

    #[test]
    fn invalid_manifests_are_rejected() {
        let good = payload(&[MftEntry::RESERVED]);
        assert!(Manifest::parse(&good[..7]).is_err());
        let mut v = good.clone();
        v[0] = 2;
        assert!(Manifest::parse(&v).is_err(), "version");
        let mut v = good.clone();
        v[4] = 2;
        assert!(Manifest::parse(&v).is_err(), "count vs size");
        let mut v = good.clone();
        v[4] = 0;
        assert!(Manifest::parse(&v[..8]).is_err(), "zero entries");
        let p = payload(&[MftEntry::new("x", 1)]);
        assert!(Manifest::parse(&p).is_err(), "entry 0 not reserved");
        let mut v = payload(&[MftEntry::RESERVED, MftEntry::new("disk", 1)]);
        v[8 + 104 + 96] = 1;
        assert!(Manifest::parse(&v).is_err(), "attached");
        let mut v = payload(&[MftEntry::RESERVED, MftEntry::new("disk", 1)]);
        v[8 + 104 + 67] = b'a';
        assert!(Manifest::parse(&v).is_err(), "unterminated name");
        let mut v = good;
        v.extend_from_slice(&[0; 104]);
        assert!(Manifest::parse(&v).is_err(), "trailing bytes");
    }
}
