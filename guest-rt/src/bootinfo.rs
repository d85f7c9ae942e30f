//! What the tender tells the guest at boot: memory size, command line and the manifest (with the
//! devices filled in).

use guest_abi::{CMDLINE_SIZE, MftEntry, MftHeader};

use crate::boot::boot_info;

/// Guest-usable RAM in bytes; the stack starts at the top.
pub fn mem_size() -> u64 {
    boot_info().mem_size
}

/// The command line the tender passed, without Solo5's leading `--solo5:<level>` options.
/// Bytes that are not UTF-8 end it.
pub fn cmdline() -> &'static str {
    // SAFETY: the tender provides a CMDLINE_SIZE buffer at `cmdline`, in the low area that stays
    // mapped read-only and is never written again.
    let buf = unsafe { core::slice::from_raw_parts(boot_info().cmdline as *const u8, CMDLINE_SIZE) };
    strip_solo5_options(until_nul(buf))
}

/// The manifest entries, as the tender filled them in (index = device handle).
pub(crate) fn manifest() -> &'static [MftEntry] {
    let mft = boot_info().mft as *const MftHeader;
    // SAFETY: the tender copies the validated manifest (header, then `entries` entries) to `mft`,
    // in the read-only low area.
    unsafe {
        let entries = (*mft).entries as usize;
        core::slice::from_raw_parts(mft.add(1).cast::<MftEntry>(), entries)
    }
}

/// The handle and entry of the device called `name` of type `dev_type`.
#[allow(dead_code, reason = "used by the block and net devices, next")]
pub(crate) fn find_device(name: &str, dev_type: u32) -> Option<(u64, &'static MftEntry)> {
    let entries = manifest();
    find_entry(entries, name, dev_type).map(|i| (i as u64, &entries[i]))
}

fn find_entry(entries: &[MftEntry], name: &str, dev_type: u32) -> Option<usize> {
    // Entry 0 is the reserved one, never a device.
    (1..entries.len()).find(|&i| entries[i].dev_type == dev_type && entries[i].name_bytes() == name.as_bytes())
}

fn until_nul(buf: &[u8]) -> &str {
    let bytes = &buf[..buf.iter().position(|&b| b == 0).unwrap_or(buf.len())];
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        // The prefix up to the error is valid.
        Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// Drops leading whitespace and a leading run of `--solo5:quiet|error|warn|info|debug` words,
/// as Solo5's bindings do (a word counts only if whitespace or the end follows it).
fn strip_solo5_options(mut s: &str) -> &str {
    const OPTIONS: [&str; 5] = ["--solo5:quiet", "--solo5:error", "--solo5:warn", "--solo5:info", "--solo5:debug"];
    s = s.trim_start_matches(is_c_space);
    loop {
        let Some(rest) = OPTIONS.iter().find_map(|opt| {
            let rest = s.strip_prefix(opt)?;
            (rest.is_empty() || rest.starts_with(is_c_space)).then_some(rest)
        }) else {
            return s;
        };
        s = rest.trim_start_matches(is_c_space);
    }
}

/// C's `isspace`: ASCII whitespace plus the vertical tab.
fn is_c_space(c: char) -> bool {
    c.is_ascii_whitespace() || c == '\x0b'
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::{MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC};

    #[test]
    fn solo5_options_are_stripped() {
        assert_eq!(strip_solo5_options(""), "");
        assert_eq!(strip_solo5_options("hello world"), "hello world");
        assert_eq!(strip_solo5_options("  --solo5:debug  fail 7"), "fail 7");
        assert_eq!(strip_solo5_options("--solo5:quiet --solo5:info x --solo5:warn"), "x --solo5:warn");
        assert_eq!(strip_solo5_options("--solo5:quiet"), "");
        assert_eq!(strip_solo5_options("--solo5:quieter x"), "--solo5:quieter x");
        assert_eq!(strip_solo5_options("--solo5:error\tx"), "x");
    }

    #[test]
    fn cmdline_ends_at_nul_or_bad_utf8() {
        assert_eq!(until_nul(b"abc\0def"), "abc");
        assert_eq!(until_nul(b"abc"), "abc");
        assert_eq!(until_nul(b"ab\xffc\0"), "ab");
    }

    #[test]
    fn devices_are_found_by_name_and_type() {
        let entries = [
            MftEntry::RESERVED,
            MftEntry::new("storage", MFT_DEV_BLOCK_BASIC),
            MftEntry::new("service0", MFT_DEV_NET_BASIC),
        ];
        assert_eq!(find_entry(&entries, "storage", MFT_DEV_BLOCK_BASIC), Some(1));
        assert_eq!(find_entry(&entries, "service0", MFT_DEV_NET_BASIC), Some(2));
        assert_eq!(find_entry(&entries, "storage", MFT_DEV_NET_BASIC), None);
        assert_eq!(find_entry(&entries, "", 0x4000_0000), None);
        assert_eq!(find_entry(&entries, "stor", MFT_DEV_BLOCK_BASIC), None);
    }
}
