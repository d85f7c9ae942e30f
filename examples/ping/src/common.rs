//! What both ping bins share: counting echo requests and the serve loop.

use core::sync::atomic::{AtomicU64, Ordering};

use guest_rt::net::smoltcp::wire::{
    EthernetFrame, EthernetProtocol, Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet,
};
use guest_rt::net::{IpConfig, Stack};
use guest_rt::{NetDevice, println};

/// Echo requests seen (the stack answers them itself).
static ECHO_REQUESTS: AtomicU64 = AtomicU64::new(0);

fn count_echo(frame: &[u8]) {
    let Ok(eth) = EthernetFrame::new_checked(frame) else { return };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else { return };
    if ip.next_header() != IpProtocol::Icmp {
        return;
    }
    if let Ok(icmp) = Icmpv4Packet::new_checked(ip.payload())
        && icmp.msg_type() == Icmpv4Message::EchoRequest
    {
        ECHO_REQUESTS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens the NICs named in `names`, configures them from the command line, prints one line per
/// NIC, and answers until `--count=N` echo requests were seen (forever without it).
pub fn serve(names: &[&str]) -> i32 {
    let cmdline = guest_rt::cmdline();
    let (ips, rest) = match guest_rt::net::parse_args(cmdline, names.len()) {
        Ok(v) => v,
        Err(e) => {
            println!("ping: {e}");
            return 2;
        }
    };
    let count: Option<u64> = rest.iter().find_map(|w| w.strip_prefix("--count=")).and_then(|n| n.parse().ok());
    println!("ping: net ring {}", if guest_rt::ring::active() { "on" } else { "off" });
    let mut stacks = alloc::vec::Vec::new();
    for (name, ip) in names.iter().zip(&ips) {
        let nic = match NetDevice::open(name) {
            Ok(n) => n,
            Err(e) => {
                println!("ping: cannot open {name}: {e:?}");
                return 2;
            }
        };
        let mut stack = Stack::new(nic, ip);
        stack.set_rx_hook(count_echo);
        let m = nic.mac();
        let addr = match ip {
            IpConfig::Static { address, prefix, .. } => alloc::format!("{address}/{prefix}"),
            IpConfig::Dhcp => "dhcp".into(),
        };
        println!(
            "ping: {name} mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} mtu {} ip {addr}",
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            nic.mtu()
        );
        stacks.push(stack);
    }
    let mut announced = alloc::vec![false; stacks.len()];
    loop {
        for s in stacks.iter_mut() {
            s.poll();
        }
        for ((s, ip), done) in stacks.iter().zip(&ips).zip(announced.iter_mut()) {
            if *ip == IpConfig::Dhcp
                && !*done
                && let Some((addr, prefix)) = s.ipv4()
            {
                println!("ping: got {addr}/{prefix} by DHCP");
                *done = true;
            }
        }
        if let Some(n) = count
            && ECHO_REQUESTS.load(Ordering::Relaxed) >= n
        {
            // Let the last reply go out, then stop.
            for s in stacks.iter_mut() {
                s.poll();
            }
            println!("ping: answered {n} echo requests");
            return 0;
        }
        if stacks.iter().any(Stack::busy) {
            continue;
        }
        let deadline = guest_rt::monotonic_ns() + stacks.iter_mut().map(Stack::next_deadline_ns).min().unwrap_or(0);
        let ready = guest_rt::device::wait(deadline);
        for s in stacks.iter_mut() {
            s.note_ready(ready);
        }
    }
}
