//! An authoritative DNS server over UDP (port 53, or `--port=N`) for one small zone, given on the
//! command line: `zone=example.org ns=ns1.example.org a=ns1=10.0.0.2 a=www=10.0.0.2
//! aaaa=www=2001:db8::2 serial=7` plus `--ipv4=…` (see guest-net). Answers A, AAAA, NS and SOA,
//! NXDOMAIN for names not in the zone's records, and REFUSED for other zones: a service that
//! needs nothing more than a network.
#![no_std]
#![no_main]

extern crate alloc;

use dns_zone::{Zone, answer};
use guest_rt::net::Stack;
use guest_rt::println;

guest_rt::unikernel!(main, net: ["service"]);

fn main() -> i32 {
    let (mut net, rest) = match Stack::from_cmdline("service") {
        Ok(v) => v,
        Err(e) => {
            println!("dns: {e}");
            return 2;
        }
    };
    let port: u16 = rest.iter().find_map(|w| w.strip_prefix("--port=")).and_then(|p| p.parse().ok()).unwrap_or(53);
    let zone = match Zone::parse(rest.iter().copied().filter(|w| !w.starts_with("--port="))) {
        Ok((zone, unknown)) if unknown.is_empty() => zone,
        Ok((_, unknown)) => {
            println!("dns: unknown arguments: {}", unknown.join(" "));
            return 2;
        }
        Err(e) => {
            println!("dns: {e}");
            return 2;
        }
    };
    let udp = net.udp_bind(port);
    println!("dns: serving {} ({} records) on port {port}", zone.origin, zone.records.len());
    let mut query = alloc::vec![0u8; 1500];
    loop {
        net.poll();
        let mut worked = false;
        let sock = net.udp(udp);
        while let Ok((len, meta)) = sock.recv_slice(&mut query) {
            worked = true;
            if let Some(reply) = answer(&zone, &query[..len]) {
                let _ = sock.send_slice(&reply, meta.endpoint);
            }
        }
        if worked || net.busy() {
            continue;
        }
        net.wait();
    }
}
