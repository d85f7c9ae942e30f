//! Wiping tender's command line and environment before a process-mode guest runs: the guest
//! shares tender's address space and can read any of its memory, so the strings the kernel put
//! on the initial stack at `execve` (paths, tap names, whatever the caller's environment holds)
//! are overwritten once the command line is parsed, and libc's environment is emptied.
//!
//! What is not wiped: the parsed configuration tender keeps on its heap (the paths and names it
//! runs with) and the program's own path at the top of the stack (`AT_EXECFN`).

/// What `ps` shows for a scrubbed tender (as much of it as fits).
const SHOWN: &[u8] = b"tender";

#[derive(Debug, thiserror::Error)]
pub enum ScrubError {
    #[error("cannot read /proc/self/stat to wipe the command line and environment: {0}")]
    Stat(std::io::Error),
    #[error("cannot find the command line and environment in /proc/self/stat")]
    Fields,
}

/// Overwrites the argv and envp strings with zeros (the argv area starts with "tender") and
/// empties libc's environment. Call once the command line is parsed and before the jail (which
/// may hide /proc).
pub fn scrub_args_and_env() -> Result<(), ScrubError> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(ScrubError::Stat)?;
    let [arg_start, arg_end, env_start, env_end] = areas(&stat).ok_or(ScrubError::Fields)?;
    // SAFETY: clearenv only resets libc's `environ`; tender reads no variable after this, and
    // has one thread.
    unsafe { libc::clearenv() };
    for (start, end) in [(arg_start, arg_end), (env_start, env_end)] {
        let len = end.saturating_sub(start);
        if start == 0 || len == 0 {
            continue;
        }
        // SAFETY: the kernel reports `start..end` as the argv (or envp) strings it copied onto
        // this process's initial stack at execve: mapped and writable for the life of the
        // process. Rust's std and libc only keep pointers into it, read by `std::env::args` and
        // `getenv`, which see empty strings from now on.
        let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len as usize) };
        area.fill(0);
        if start == arg_start {
            let shown = SHOWN.len().min(area.len() - 1);
            area[..shown].copy_from_slice(&SHOWN[..shown]);
        }
    }
    Ok(())
}

/// `arg_start`, `arg_end`, `env_start`, `env_end` of `/proc/self/stat` (fields 48 to 51, proc(5)).
/// The second field, the command name in parentheses, may itself hold spaces and parentheses:
/// fields are counted after its last ')'.
fn areas(stat: &str) -> Option<[u64; 4]> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts with field 3.
    let mut fields = rest.split_ascii_whitespace().skip(48 - 3);
    let mut next = || fields.next()?.parse::<u64>().ok();
    Some([next()?, next()?, next()?, next()?])
}

#[cfg(test)]
mod tests {
    use super::areas;

    #[test]
    fn finds_the_areas_after_a_command_name_with_spaces_and_parentheses() {
        let mut stat = String::from("42 (a) b (c)) S");
        for field in 4..=52 {
            stat.push_str(&format!(" {field}"));
        }
        assert_eq!(areas(&stat), Some([48, 49, 50, 51]));
        assert_eq!(areas("42 (a) S 1 2"), None);
        assert_eq!(areas("no parenthesis"), None);
    }
}
