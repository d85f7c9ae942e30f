//! `tender inspect`: what a unikernel ELF declares, without creating a VM. The JSON is shaped as
//! `solo5-elftool query-manifest` / `query-abi` print it, so scripts written for those work.
//!
//! The ELF goes through the loader's own validation ([`Kernel::parse`]), so `inspect` accepts
//! exactly the files a run accepts (for some `--mem`: the segments are checked against the
//! 4 GiB maximum), and refuses the others with the same one-line error.

use std::fmt::Write as _;
use std::path::Path;

use guest_abi::{ABI_VERSION, MEM_MAX, MFT_VERSION};

use crate::elf::{self, Kernel};
use crate::error::Error;
use crate::manifest::DeviceKind;
use crate::report::json_string;

/// What to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// The devices the manifest declares (`query-manifest`).
    Manifest,
    /// The ABI target and version (`query-abi`).
    Abi,
}

/// How to print it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// solo5-elftool's JSON.
    #[default]
    Json,
    /// One line per fact, for people.
    Text,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "text" => Ok(Format::Text),
            _ => Err(format!("invalid --format value '{s}' (expected json or text)")),
        }
    }
}

/// Validates the ELF at `path` and returns what `query` asks for, ready for stdout.
pub fn inspect(path: &Path, query: Query, format: Format) -> Result<String, Error> {
    let elf_err = |source| Error::Elf { path: path.display().to_string(), source };
    let image = elf::read_image(path).map_err(elf_err)?;
    let kernel = Kernel::parse(&image, MEM_MAX).map_err(elf_err)?;
    Ok(match (query, format) {
        (Query::Abi, Format::Json) => {
            format!("{{\n  \"type\": \"solo5.abi\",\n  \"target\": \"hvt\",\n  \"version\": {ABI_VERSION}\n}}\n")
        }
        (Query::Abi, Format::Text) => format!("target hvt, ABI version {ABI_VERSION}\n"),
        (Query::Manifest, format) => manifest(&kernel, format),
    })
}

/// The declared devices as (name, type name), without the reserved entry 0.
fn devices(kernel: &Kernel) -> Vec<(String, &'static str)> {
    kernel.manifest.entries[1..]
        .iter()
        .map(|e| {
            // The ABI does not range-check types; a run refuses such a device as unattached.
            let kind = DeviceKind::from_abi_type(e.dev_type).map_or("UNKNOWN", DeviceKind::abi_name);
            (String::from_utf8_lossy(e.name_bytes()).into_owned(), kind)
        })
        .collect()
}

fn manifest(kernel: &Kernel, format: Format) -> String {
    let devices = devices(kernel);
    let mut out = String::new();
    match format {
        Format::Json => {
            // As solo5-elftool prints it: one device a line, the bracket on lines of its own.
            let _ =
                writeln!(out, "{{\n  \"type\": \"solo5.manifest\",\n  \"version\": {MFT_VERSION},\n  \"devices\": [");
            for (i, (name, kind)) in devices.iter().enumerate() {
                out.push_str("    { \"name\": ");
                json_string(&mut out, name);
                let comma = if i + 1 < devices.len() { "," } else { "" };
                let _ = writeln!(out, ", \"type\": \"{kind}\" }}{comma}");
            }
            out.push_str("  ]\n}\n");
        }
        Format::Text => {
            let _ = writeln!(out, "manifest version {MFT_VERSION}, {} device(s)", devices.len());
            // Names come from the file: control characters must not break the lines.
            let names: Vec<String> =
                devices.iter().map(|(n, _)| n.chars().flat_map(char::escape_default).collect()).collect();
            let width = names.iter().map(String::len).max().unwrap_or(0);
            for (name, (_, kind)) in names.iter().zip(&devices) {
                let _ = writeln!(out, "  {name:<width$}  {kind}");
            }
        }
    }
    out
}
