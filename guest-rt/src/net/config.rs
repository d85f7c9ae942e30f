//! IP configuration from the command line, in MirageOS's spelling: `--ipv4=10.0.0.2/24`,
//! `--ipv4-gateway=10.0.0.1`, or `--dhcp`. With several NICs, `--ipv4=` is given once per NIC,
//! in manifest order. `--no-ring` makes the NICs use the NET_READ/NET_WRITE hypercalls even when
//! the tender offers the shared net ring (see [`crate::ring`]). `--poll-spin=US` sets how long
//! [`Stack::wait`](super::Stack::wait) busy-polls after request traffic before it sleeps in POLL
//! (0 to [`POLL_SPIN_MAX_US`](super::POLL_SPIN_MAX_US); default
//! [`POLL_SPIN_DEFAULT_US`](super::POLL_SPIN_DEFAULT_US)).

use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::wire::Ipv4Address;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpConfig {
    Static { address: Ipv4Address, prefix: u8, gateway: Option<Ipv4Address> },
    Dhcp,
}

/// Splits the command line into the IP configuration of each NIC (`nics` of them) and the
/// application's own arguments.
pub fn parse_args(cmdline: &str, nics: usize) -> Result<(Vec<IpConfig>, Vec<&str>), String> {
    let mut statics: Vec<(Ipv4Address, u8)> = Vec::new();
    let mut gateway = None;
    let mut dhcp = false;
    let mut rest = Vec::new();
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("--ipv4=") {
            let (addr, prefix) =
                v.split_once('/').ok_or_else(|| alloc::format!("--ipv4={v}: expected ADDRESS/PREFIX"))?;
            let address: Ipv4Address = addr.parse().map_err(|_| alloc::format!("--ipv4={v}: bad address"))?;
            let prefix: u8 =
                prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| alloc::format!("--ipv4={v}: bad prefix"))?;
            statics.push((address, prefix));
        } else if let Some(v) = word.strip_prefix("--ipv4-gateway=") {
            gateway = Some(v.parse().map_err(|_| alloc::format!("--ipv4-gateway={v}: bad address"))?);
        } else if word == "--dhcp" {
            dhcp = true;
        } else if word == crate::ring::NO_RING_OPTION {
            crate::ring::disable();
        } else if let Some(v) = word.strip_prefix(super::POLL_SPIN_OPTION) {
            let us = v
                .parse()
                .ok()
                .filter(|us| *us <= super::POLL_SPIN_MAX_US)
                .ok_or_else(|| alloc::format!("{word}: expected microseconds, 0 to {}", super::POLL_SPIN_MAX_US))?;
            super::set_poll_spin_us(us);
        } else {
            rest.push(word);
        }
    }
    let configs = if dhcp && statics.is_empty() {
        (0..nics).map(|_| IpConfig::Dhcp).collect()
    } else {
        if statics.len() != nics {
            return Err(alloc::format!("expected {nics} --ipv4=ADDRESS/PREFIX (one per NIC) or --dhcp"));
        }
        // The gateway applies to the first NIC (the one with the default route).
        statics
            .into_iter()
            .enumerate()
            .map(|(i, (address, prefix))| IpConfig::Static {
                address,
                prefix,
                gateway: if i == 0 { gateway } else { None },
            })
            .collect()
    };
    Ok((configs, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_dhcp_and_errors() {
        let (c, rest) = parse_args("--ipv4=10.0.0.2/24 --ipv4-gateway=10.0.0.1 --count=3 x", 1).unwrap();
        let gw = Some(Ipv4Address::new(10, 0, 0, 1));
        assert_eq!(c, [IpConfig::Static { address: Ipv4Address::new(10, 0, 0, 2), prefix: 24, gateway: gw }]);
        assert_eq!(rest, ["--count=3", "x"]);
        let (c, _) = parse_args("--ipv4=10.0.0.2/24 --ipv4=10.0.1.2/24", 2).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(parse_args("--dhcp", 2).unwrap().0, [IpConfig::Dhcp, IpConfig::Dhcp]);
        assert!(parse_args("--dhcp --no-ring", 1).unwrap().1.is_empty(), "a network option");
        assert!(parse_args("--dhcp --poll-spin=0", 1).unwrap().1.is_empty(), "a network option");
        assert_eq!(super::super::poll_spin_ns(), 0);
        assert!(parse_args("--dhcp --poll-spin=1000", 1).is_ok());
        assert_eq!(super::super::poll_spin_ns(), 1_000_000);
        for bad in [
            "--dhcp --poll-spin=1001",
            "--dhcp --poll-spin=-1",
            "--dhcp --poll-spin=",
            "--dhcp --poll-spin=5us",
            "",
            "--ipv4=10.0.0.2",
            "--ipv4=10.0.0.300/24",
            "--ipv4=10.0.0.2/33",
            "--ipv4-gateway=x --dhcp",
        ] {
            assert!(parse_args(bad, 1).is_err(), "{bad}");
        }
    }
}
