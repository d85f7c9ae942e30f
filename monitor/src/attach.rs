//! From the command line's devices to the guest's: each `--block`/`--net` matched to a manifest
//! entry and opened, and where the shared ring goes in guest memory.

use guest_abi::MFT_RESERVED_FIRST;

use crate::config::Config;
use crate::devices::Device;
use crate::devices::block::{BlockDevice, DEFAULT_BLOCK_SIZE};
use crate::devices::net::{NetDevice, TapSource};
use crate::error::Error;
use crate::manifest::{DeviceKind, Manifest};

/// Matches the command line's devices to the manifest, opens them, and fills the manifest
/// fields the guest reads (`attached`, capacity, block size, MAC, MTU).
pub fn attach_devices(config: &Config, manifest: &Manifest) -> Result<(Vec<Device>, Manifest), Error> {
    let mut manifest = manifest.clone();
    let mut devices: Vec<Device> = manifest.entries.iter().map(|_| Device::None).collect();

    for spec in &config.blocks {
        let handle = resolve(&manifest, spec.name.as_deref(), DeviceKind::Block, &spec.path.display().to_string())?;
        let entry = &mut manifest.entries[handle];
        let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
        if entry.attached != 0 {
            return Err(Error::Device(format!("device '{name}' is attached more than once")));
        }
        let dev = BlockDevice::open(&name, &spec.path, spec.block_size.unwrap_or(DEFAULT_BLOCK_SIZE))?;
        entry.set_block(guest_abi::MftBlockBasic {
            capacity: dev.capacity(),
            block_size: dev.block_size(),
            _pad: [0; 6],
        });
        entry.attached = 1;
        devices[handle] = Device::Block(dev);
    }
    for spec in &config.nets {
        let what = match &spec.source {
            TapSource::Interface(i) => i.clone(),
            TapSource::Fd(fd) => format!("@{fd}"),
        };
        let handle = resolve(&manifest, spec.name.as_deref(), DeviceKind::Net, &what)?;
        let entry = &mut manifest.entries[handle];
        let name = String::from_utf8_lossy(entry.name_bytes()).into_owned();
        if entry.attached != 0 {
            return Err(Error::Device(format!("device '{name}' is attached more than once")));
        }
        let dev = NetDevice::open(&name, &spec.source, spec.mac)?;
        entry.set_net(guest_abi::MftNetBasic { mac: dev.mac, mtu: dev.mtu, _pad: [0; 8] });
        entry.attached = 1;
        devices[handle] = Device::Net(dev);
    }
    if let Some(e) = manifest.entries.iter().find(|e| e.dev_type < MFT_RESERVED_FIRST && e.attached == 0) {
        let kind = DeviceKind::from_abi_type(e.dev_type).map_or("unknown", DeviceKind::abi_name);
        return Err(Error::Device(format!(
            "Device '{}' of type {kind} declared but not attached. All declared devices must be attached. See --help for syntax.",
            String::from_utf8_lossy(e.name_bytes())
        )));
    }
    Ok((devices, manifest))
}

/// The manifest index a `--block`/`--net` option refers to. Without a name, the guest must
/// declare exactly one device of that kind.
fn resolve(manifest: &Manifest, name: Option<&str>, kind: DeviceKind, value: &str) -> Result<usize, Error> {
    let handle = match name {
        Some(name) => match manifest.find(name) {
            Some((h, e)) if e.dev_type == kind.abi_type() => h,
            _ => {
                return Err(Error::Device(format!("Resource not declared in manifest: '{name}'")));
            }
        },
        None => {
            let all: Vec<_> = manifest.devices(kind).collect();
            match all.as_slice() {
                [(h, _)] => *h,
                [] => {
                    return Err(Error::Device(format!(
                        "{value}: the unikernel declares no {} device",
                        kind.abi_name()
                    )));
                }
                _ => {
                    let names: Vec<_> = all.iter().map(|(_, n)| n.as_str()).collect();
                    return Err(Error::Device(format!(
                        "{value}: the unikernel declares several {} devices ({}); name one, as in --{}:NAME={value}",
                        kind.abi_name(),
                        names.join(", "),
                        kind.option_name()
                    )));
                }
            }
        }
    };
    Ok(handle as usize)
}

/// Guest memory and where the ring goes (ABI section 3): with a net device, 2 MiB more is mapped
/// (within the 4 GiB cap) and the guest's `mem_size` stops where the ring starts, whether or not
/// the ring then comes up. With only block devices the ring (tender's block extension) gets the
/// 2 MiB above `mem_size` when they fit under the cap, and there is none otherwise: `mem_size`
/// is always `--mem`. Returns (mapping size, guest-visible size); a ring when they differ.
pub fn memory_layout(mem: u64, has_net: bool, has_block: bool) -> (u64, u64) {
    let area = guest_abi::NET_RING_AREA_SIZE;
    if has_net {
        let total = (mem + area).min(guest_abi::MEM_MAX);
        (total, total - area)
    } else if has_block && mem + area <= guest_abi::MEM_MAX {
        (mem + area, mem)
    } else {
        (mem, mem)
    }
}

/// `host_features` for a running ring: Solo5's bit (and tender's waiting reads and receive
/// hint) with a net device, tender's block bit with a block one.
pub fn ring_features(has_net: bool, has_block: bool) -> u32 {
    use guest_abi::{HVT_FEATURE_RING_IO, TENDER_FEATURE_RX_HINT, TENDER_FEATURE_WAIT_READ};
    let net = if has_net { HVT_FEATURE_RING_IO | TENDER_FEATURE_WAIT_READ | TENDER_FEATURE_RX_HINT } else { 0 };
    let block = if has_block { guest_abi::TENDER_FEATURE_BLOCK_RING } else { 0 };
    net | block
}
