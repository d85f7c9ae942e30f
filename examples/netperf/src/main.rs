//! Network exerciser and benchmark, one mode per run (after `--ipv4=…`):
//!
//! - `tcp-sink PORT`: accepts connections, discards what they send, prints bytes and MB/s per
//!   connection;
//! - `tcp-send IP PORT BYTES`: connects, sends BYTES (a pattern), closes, prints MB/s, exits 0;
//! - `udp-echo PORT`: sends every datagram back to where it came from;
//! - `udp-sink PORT`: counts datagrams; a datagram `end` prints how many came, over how long,
//!   and starts a new count;
//! - `frame-costs N`: times N receives with nothing waiting and N sends of a 60-byte frame, on
//!   the NIC itself (the net ring, or the hypercalls with `--no-ring`), and exits.
#![no_std]
#![no_main]

extern crate alloc;

use guest_rt::net::Stack;
use guest_rt::net::smoltcp::socket::tcp::State;
use guest_rt::net::smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};
use guest_rt::{monotonic_ns, println};

guest_rt::unikernel!(main, net: ["service"]);

fn main() -> i32 {
    let (mut net, rest) = match Stack::from_cmdline("service") {
        Ok(v) => v,
        Err(e) => {
            println!("netperf: {e}");
            return 2;
        }
    };
    let num = |i: usize| rest.get(i).and_then(|s| s.parse::<u64>().ok());
    match (rest.first().copied(), num(1), num(2), num(3)) {
        (Some("tcp-sink"), Some(port), _, _) => tcp_sink(&mut net, port as u16),
        (Some("tcp-send"), _, Some(port), Some(bytes)) => {
            let Some(ip) = rest.get(1).and_then(|s| s.parse::<Ipv4Address>().ok()) else {
                println!("netperf: tcp-send IP PORT BYTES");
                return 2;
            };
            tcp_send(&mut net, IpEndpoint::new(IpAddress::Ipv4(ip), port as u16), bytes)
        }
        (Some("udp-echo"), Some(port), _, _) => udp_echo(&mut net, port as u16),
        (Some("udp-sink"), Some(port), _, _) => udp_sink(&mut net, port as u16),
        (Some("frame-costs"), Some(n), _, _) => frame_costs(&net, n),
        _ => {
            println!(
                "netperf: modes: tcp-sink PORT | tcp-send IP PORT BYTES | udp-echo PORT | udp-sink PORT | frame-costs N"
            );
            2
        }
    }
}

fn mb_per_s(bytes: u64, ns: u64) -> u64 {
    bytes * 1000 / ns.max(1)
}

fn tcp_sink(net: &mut Stack, port: u16) -> i32 {
    let h = net.tcp_listen(port);
    println!("netperf: sink on port {port}");
    let (mut bytes, mut start) = (0u64, 0u64);
    loop {
        net.poll();
        let s = net.tcp(h);
        let mut worked = false;
        while s.can_recv() {
            if bytes == 0 {
                start = monotonic_ns();
            }
            match s.recv(|d| (d.len(), d.len())) {
                Ok(n) if n > 0 => {
                    bytes += n as u64;
                    worked = true;
                }
                _ => break,
            }
        }
        match s.state() {
            State::CloseWait if !s.can_recv() => {
                println!("netperf: received {bytes} bytes, {} MB/s", mb_per_s(bytes, monotonic_ns() - start));
                bytes = 0;
                s.close();
                worked = true;
            }
            State::Closed => {
                let _ = s.listen(port);
            }
            _ => {}
        }
        if !worked && !net.busy() {
            net.wait();
        }
    }
}

fn tcp_send(net: &mut Stack, remote: IpEndpoint, total: u64) -> i32 {
    let h = match net.tcp_connect(remote, 49152) {
        Ok(h) => h,
        Err(e) => {
            println!("netperf: connect: {e:?}");
            return 1;
        }
    };
    let chunk: alloc::vec::Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
    let (mut sent, mut start, mut closing) = (0u64, 0u64, false);
    let deadline = monotonic_ns() + 60_000_000_000;
    loop {
        net.poll();
        let s = net.tcp(h);
        let mut worked = false;
        if s.may_send() && start == 0 {
            start = monotonic_ns();
            println!("netperf: connected to {remote}");
        }
        while sent < total && s.can_send() {
            let want = (total - sent).min(chunk.len() as u64) as usize;
            let off = (sent % chunk.len() as u64) as usize;
            let want = want.min(chunk.len() - off);
            match s.send_slice(&chunk[off..off + want]) {
                Ok(n) if n > 0 => {
                    sent += n as u64;
                    worked = true;
                }
                _ => break,
            }
        }
        if sent == total && !closing {
            s.close();
            closing = true;
        }
        if closing && matches!(s.state(), State::Closed | State::TimeWait) {
            println!("netperf: sent {sent} bytes, {} MB/s", mb_per_s(sent, monotonic_ns() - start));
            return 0;
        }
        if monotonic_ns() > deadline || (s.state() == State::Closed && !closing && start != 0) {
            println!("netperf: connection failed after {sent} bytes");
            return 1;
        }
        if !worked && !net.busy() {
            net.wait();
        }
    }
}

fn udp_echo(net: &mut Stack, port: u16) -> i32 {
    let h = net.udp_bind(port);
    println!("netperf: udp echo on port {port}");
    let mut buf = alloc::vec![0u8; 9000];
    loop {
        net.poll();
        let s = net.udp(h);
        let mut worked = false;
        while s.can_send() {
            let Ok((n, meta)) = s.recv_slice(&mut buf) else { break };
            let _ = s.send_slice(&buf[..n], meta.endpoint);
            worked = true;
        }
        if !worked && !net.busy() {
            net.wait();
        }
    }
}

fn udp_sink(net: &mut Stack, port: u16) -> i32 {
    let h = net.udp_bind(port);
    println!("netperf: udp sink on port {port}");
    let mut buf = alloc::vec![0u8; 9000];
    let (mut count, mut first, mut last) = (0u64, 0u64, 0u64);
    loop {
        net.poll();
        let s = net.udp(h);
        let mut worked = false;
        while let Ok((n, _)) = s.recv_slice(&mut buf) {
            worked = true;
            if &buf[..n] == b"end" {
                let ns = last.saturating_sub(first).max(1);
                println!("netperf: {count} datagrams in {} us, {} per second", ns / 1000, count * 1_000_000_000 / ns);
                count = 0;
                continue;
            }
            last = monotonic_ns();
            if count == 0 {
                first = last;
            }
            count += 1;
        }
        if !worked && !net.busy() {
            net.wait();
        }
    }
}

fn frame_costs(net: &Stack, n: u64) -> i32 {
    let nic = net.nic();
    let per_call = |f: &mut dyn FnMut()| {
        f(); // warm up
        let start = monotonic_ns();
        for _ in 0..n {
            f();
        }
        (monotonic_ns() - start) / n.max(1)
    };
    let mut buf = alloc::vec![0u8; nic.max_frame()];
    let recv = per_call(&mut || {
        let _ = nic.recv(&mut buf);
    });
    // A broadcast of a local experimental EtherType: the host drops it.
    let mut frame = [0u8; 60];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&nic.mac());
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let send = per_call(&mut || {
        let _ = nic.send(&frame);
    });
    let path = if guest_rt::ring::active() { "net ring" } else { "hypercalls" };
    println!("netperf: {path}: receive with nothing waiting: {recv} ns per call; send of 60 bytes: {send} ns per call");
    0
}
