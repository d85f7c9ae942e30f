//! Network devices: the real `ping` unikernels on real taps, each test in its own network
//! namespace (created and removed by the test; no traffic leaves it).

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use common::*;

fn ping_guest(name: &str) -> String {
    require_kvm();
    require_root();
    guest(name).to_str().unwrap().to_string()
}

/// Runs `ping ARGS` in the namespace; returns its output.
fn ping(ns: &NetNs, args: &[&str]) -> String {
    let out = ns.command("ping").args(args).output().expect("run ping");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn no_loss(out: &str, count: u32) -> bool {
    out.contains(&format!("{count} packets transmitted, {count} received")) && out.contains(" 0% packet loss")
}

#[test]
fn guest_answers_ping_and_stops_after_count() {
    let g = ping_guest("ping");
    let ns = NetNs::new("ping");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24", "--count=5"]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_port_unreachable(&ns, "10.0.0.2", 30), "guest never answered");
    let out = ping(&ns, &["-c", "5", "-i", "0.2", "10.0.0.2"]);
    if !no_loss(&out, 5) {
        let (code, guest_out, err) = guest.stop();
        panic!("{out}\ntender (status {code}):\n{guest_out}{err}");
    }
    let (code, out, err) = guest.wait();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ping: answered 5 echo requests"), "{out}");
}

#[test]
fn flood_ping_of_10000_packets_loses_nothing() {
    let g = ping_guest("ping");
    let ns = NetNs::new("flood");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let mut cmd = ns.tender();
    cmd.args(["--net", "tap0", &g, "--ipv4=10.0.0.2/24"]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_ping(&ns, "10.0.0.2", 30), "guest never answered");
    let out = ping(&ns, &["-f", "-c", "10000", "-W", "2", "10.0.0.2"]);
    assert!(no_loss(&out, 10000), "{out}");
    let (code, _, err) = guest.stop();
    assert_eq!(code, 1, "SIGTERM ends the run with status 1: {err}");
    assert!(err.contains("exiting on signal 15"), "{err}");
}

/// The JSON number after `"key":` in a report.
fn report_number(report: &str, key: &str) -> u64 {
    let at = report.find(&format!("\"{key}\":")).unwrap_or_else(|| panic!("no {key} in {report}")) + key.len() + 3;
    report[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

/// A flood ping with the shared net ring offered (the default), then through the hypercalls
/// (`--no-ring`): no loss either way, and the report shows which path the frames took. With the
/// ring, a frame that finds the ring's thread asleep goes by hypercall (guest-rt's `ring.rs`:
/// cheaper than waking the thread), and a flood ping, one echo in flight, mostly finds it asleep;
/// bursts go through the ring (the netperf tests).
#[test]
fn flood_ping_through_the_net_ring_and_through_hypercalls() {
    let g = ping_guest("ping");
    let ns = NetNs::new("ring");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let dir = TempDir::new("ring");
    for (ring, line) in [(None, "ping: net ring on"), (Some("--no-ring"), "ping: net ring off")] {
        let report = dir.0.join("report.json");
        let mut cmd = ns.tender();
        cmd.arg(format!("--report={}", report.display()));
        cmd.args(["--net", "tap0", &g, "--ipv4=10.0.0.2/24", "--count=5001"]).args(ring);
        let guest = Running::spawn(cmd);
        assert!(wait_for_port_unreachable(&ns, "10.0.0.2", 30), "guest never answered");
        let out = ping(&ns, &["-f", "-c", "5001", "-W", "2", "10.0.0.2"]);
        assert!(no_loss(&out, 5001), "{ring:?}: {out}");
        let (code, out, err) = guest.wait();
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(line), "{out}");
        let report = std::fs::read_to_string(&report).unwrap();
        assert!(report.contains("\"net_ring\":true"), "the tender offers the ring either way: {report}");
        let (read_exits, write_exits) = (report_number(&report, "net_read"), report_number(&report, "net_write"));
        assert!(report_number(&report, "read_ops") >= 5001 && report_number(&report, "write_ops") >= 5001, "{report}");
        if ring.is_some() {
            assert!(read_exits > 5000 && write_exits > 5000, "every frame was a hypercall: {report}");
        } else {
            // The receive hint (TENDER_FEATURE_RX_HINT): after a frame read by hypercall, the
            // guest skips the read that would find nothing. One echo in flight: one read per
            // request, not two.
            let frames = report_number(&report, "read_ops");
            assert!(read_exits * 4 < frames * 5, "no reads that find nothing: {report}");
        }
    }
}

#[test]
fn two_nics_at_once() {
    let g = ping_guest("ping2");
    let ns = NetNs::new("two");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    ns.tap("tap1", "10.0.1.1/24", 1500);
    let mut cmd = ns.tender();
    cmd.args(["--net:service0=tap0", "--net:service1=tap1", &g, "--ipv4=10.0.0.2/24", "--ipv4=10.0.1.2/24"]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_ping(&ns, "10.0.0.2", 30), "first NIC never answered");
    assert!(wait_for_ping(&ns, "10.0.1.2", 30), "second NIC never answered");
    let out = ping(&ns, &["-c", "20", "-i", "0.01", "10.0.1.2"]);
    assert!(no_loss(&out, 20), "{out}");
    drop(guest);
}

#[test]
fn jumbo_mtu_9000() {
    let g = ping_guest("ping");
    let ns = NetNs::new("jumbo");
    ns.tap("tap0", "10.0.0.1/24", 9000);
    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24"]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_ping(&ns, "10.0.0.2", 30), "guest never answered");
    // 8000 bytes of ICMP payload: one 8028-byte IP packet, no fragmentation at MTU 9000.
    let out = ping(&ns, &["-c", "3", "-s", "8000", "-M", "do", "10.0.0.2"]);
    assert!(no_loss(&out, 3), "{out}");
    let (_, out, _) = guest.stop();
    assert!(out.contains("mtu 9000"), "the guest sees the tap's MTU: {out}");
}

/// The `@FD` form: an orchestrator opens the tap and passes the fd; tender needs no privilege
/// to attach it.
#[test]
fn tap_passed_as_an_open_fd() {
    let g = ping_guest("ping");
    let ns = NetNs::new("fd");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let tap = open_tap_in(&ns, "tap0");
    let fd = tap.as_raw_fd();
    let mut cmd = Command::new(tender_path());
    cmd.args([format!("--net:service=@{fd}"), g, "--ipv4=10.0.0.2/24".into(), "--count=3".into()]);
    // SAFETY: between fork and exec the child only clears FD_CLOEXEC on an fd it inherited.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let guest = Running::spawn(cmd);
    drop(tap);
    assert!(wait_for_port_unreachable(&ns, "10.0.0.2", 30), "guest never answered");
    let out = ping(&ns, &["-c", "3", "-i", "0.2", "10.0.0.2"]);
    assert!(no_loss(&out, 3), "{out}");
    let (code, out, err) = guest.wait();
    assert_eq!(code, 0, "{out}{err}");
}

/// Opens `/dev/net/tun` attached to `iface` inside the namespace, from a thread that joins it.
fn open_tap_in(ns: &NetNs, iface: &str) -> OwnedFd {
    let path = format!("/run/netns/{}", ns.name);
    let iface = iface.to_string();
    std::thread::spawn(move || {
        let nsfd = std::fs::File::open(&path).expect("open netns");
        // SAFETY: setns moves only this short-lived thread into the namespace.
        assert_eq!(unsafe { libc::setns(nsfd.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        let tap = tun_tap::Iface::without_packet_info(&iface, tun_tap::Mode::Tap).expect("attach tap");
        // SAFETY: into_raw_fd hands over the tap's fd.
        unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(tap)) }
    })
    .join()
    .expect("tap thread")
}

#[test]
fn bad_net_options_are_rejected() {
    let g = ping_guest("ping");
    let ns = NetNs::new("bad");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    for (args, want) in [
        (vec!["--net:service=nosuchtap", &g], "Could not attach interface: nosuchtap"),
        (vec!["--net:service=averyveryverylongname", &g], "Could not attach interface"),
        (vec!["--net:other=tap0", &g], "Resource not declared in manifest: 'other'"),
        (vec![&g], "Device 'service' of type NET_BASIC declared but not attached"),
        (vec!["--net:service=@99", &g], "not an open tap device"),
        (vec!["--net:service=@0", &g], "not an open tap device"),
        (vec!["--net:service=tap0", "--net-mac:service=zz:00:00:00:00:00", &g], "malformed MAC"),
        // With the shorthand, `--net-mac:NAME` names the only net device: a wrong NAME is caught.
        (vec!["--net", "tap0", "--net-mac:other=02:00:00:00:00:01", &g], "Resource not declared in manifest: 'other'"),
    ] {
        let out = ns.tender().args(&args).output().expect("run tender");
        let (code, stdout, stderr) = decode(out);
        assert_eq!((code, stdout.as_str()), (1, ""), "{args:?}: {stderr}");
        assert_one_error_line(&stderr, want);
    }
}

/// `--dhcp`: the guest takes its address from a DHCP server (dnsmasq, inside the namespace,
/// with a fixed address for the guest's MAC, which `--net-mac` sets, here beside the `--net TAP`
/// shorthand, which it may name).
#[test]
fn dhcp_configures_the_guest() {
    let g = ping_guest("ping");
    let ns = NetNs::new("dhcp");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let dir = TempDir::new("dhcp");
    let mut server = ns.command("dnsmasq");
    server.args([
        "--no-daemon",
        "--conf-file=/dev/null",
        "--interface=tap0",
        "--bind-interfaces",
        "--port=0",
        "--dhcp-range=10.0.0.50,10.0.0.90,1h",
        "--dhcp-host=02:00:00:00:00:77,10.0.0.77",
        &format!("--dhcp-leasefile={}", dir.0.join("leases").display()),
    ]);
    let dhcp_server = Running::spawn(server);
    std::thread::sleep(std::time::Duration::from_millis(500)); // let it bind before the guest asks
    let mut cmd = ns.tender();
    cmd.args(["--net", "tap0", "--net-mac:service=02:00:00:00:00:77", &g, "--dhcp"]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_ping(&ns, "10.0.0.77", 30), "the guest never answered at its DHCP address");
    let out = ping(&ns, &["-c", "3", "-i", "0.2", "10.0.0.77"]);
    assert!(no_loss(&out, 3), "{out}");
    let (_, out, _) = guest.stop();
    assert!(out.contains("ping: got 10.0.0.77/24 by DHCP"), "{out}");
    drop(dhcp_server);
}

/// netperf's `frame-costs` (used by scripts/bench.sh) runs on both paths and says which it took.
#[test]
fn frame_costs_on_the_ring_and_on_hypercalls() {
    let g = ping_guest("netperf");
    let ns = NetNs::new("costs");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    for (ring, path) in [(None, "net ring"), (Some("--no-ring"), "hypercalls")] {
        let out = ns
            .tender()
            .args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24"])
            .args(ring)
            .args(["frame-costs", "100"])
            .output()
            .unwrap();
        let (code, out, err) = decode(out);
        assert_eq!(code, 0, "{out}{err}");
        let want = format!("netperf: {path}: receive with nothing waiting: ");
        assert!(out.contains(&want) && out.contains(" ns per call; send of 60 bytes: "), "{out}");
    }
}

/// One counter of the tap's host side (`/sys/class/net/TAP/statistics/NAME`), read inside `ns`.
fn tap_stat(ns: &NetNs, tap: &str, name: &str) -> u64 {
    let out = ns.command("cat").arg(format!("/sys/class/net/{tap}/statistics/{name}")).output().expect("run cat");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{tap} {name}: {out:?}"))
}

/// Sends `frames` as they are on `iface` (the host side of a tap) from a raw packet socket
/// inside `ns`: they go to the guest as if a bridge had forwarded them.
fn send_frames(ns: &NetNs, iface: &str, frames: Vec<Vec<u8>>) {
    let iface = std::ffi::CString::new(iface).unwrap();
    in_netns(ns, move || {
        // SAFETY: plain socket calls on a socket this closure owns; `addr` is a sockaddr_ll that
        // outlives the calls, and every buffer is a live Vec.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(iface.as_ptr()) as i32;
            let len = size_of::<libc::sockaddr_ll>() as u32;
            assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0, "{}", std::io::Error::last_os_error());
            for f in &frames {
                assert_eq!(libc::send(fd, f.as_ptr().cast(), f.len(), 0), f.len() as isize, "send a frame");
            }
            libc::close(fd);
        }
    });
}

const GUEST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];

/// The MAC address of `iface` inside `ns`.
fn mac_of(ns: &NetNs, iface: &str) -> [u8; 6] {
    let out = ns.command("cat").arg(format!("/sys/class/net/{iface}/address")).output().expect("run cat");
    let text = String::from_utf8_lossy(&out.stdout);
    let bytes: Vec<u8> = text.trim().split(':').map(|b| u8::from_str_radix(b, 16).expect("a MAC")).collect();
    bytes.try_into().expect("six bytes")
}

/// A broadcast ARP request from the host (`host_mac`) for `target`.
fn arp_request(host_mac: [u8; 6], target: [u8; 4]) -> Vec<u8> {
    let mut f = [[0xff; 6].as_slice(), &host_mac, &[0x08, 0x06]].concat();
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&host_mac);
    f.extend_from_slice(&HOST_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    f
}

/// A UDP datagram from the host's port 40000 to `dst_ip:port`, in a frame for `dst_mac`.
fn udp_frame(host_mac: [u8; 6], dst_mac: [u8; 6], dst_ip: [u8; 4], port: u16) -> Vec<u8> {
    let payload = b"filter test";
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend_from_slice(&HOST_IP);
    ip.extend_from_slice(&dst_ip);
    let sum = ip.chunks(2).fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = [dst_mac.as_slice(), &host_mac, &[0x08, 0x00], &ip].concat();
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(payload);
    f
}

/// tender's receive filter on the tap (monitor/src/devices/rx_filter), end to end: frames the
/// guest would drop (a broadcast ARP request for another address, a unicast frame for another
/// MAC) never reach the tap's queue, where the kernel counts them as dropped; the frames it
/// needs (an ARP request for its address, a frame to its MAC, a broadcast) all reach it, and the
/// guest reads exactly what reached the queue (the report's read_ops). No timing is asserted.
#[test]
fn the_receive_filter_drops_only_frames_the_guest_would_drop() {
    let g = ping_guest("ping");
    let ns = NetNs::new("rxflt");
    let out = ns.command("sysctl").args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    ns.tap("tap0", "10.0.0.1/24", 1500);
    let dir = TempDir::new("rxflt");
    let report = dir.0.join("report.json");
    let mut cmd = ns.tender();
    cmd.arg(format!("--report={}", report.display()));
    cmd.args(["--net:service=tap0", "--net-mac:service=02:00:00:00:00:02", &g, "--ipv4=10.0.0.2/24"]);
    let guest = Running::spawn(cmd);
    // The host's ARP request for 10.0.0.2 and the guest's reply teach the filter its address.
    assert!(wait_for_port_unreachable(&ns, "10.0.0.2", 30), "guest never answered");

    let host = mac_of(&ns, "tap0");
    let (dropped, queued) = (tap_stat(&ns, "tap0", "tx_dropped"), tap_stat(&ns, "tap0", "tx_packets"));
    let mut drop = Vec::new();
    let mut pass = Vec::new();
    for _ in 0..40 {
        drop.push(arp_request(host, [10, 0, 0, 99]));
        drop.push(udp_frame(host, [2, 0, 0, 0, 0, 0x63], GUEST_IP, 9));
    }
    for _ in 0..20 {
        pass.push(arp_request(host, GUEST_IP));
        pass.push(udp_frame(host, GUEST_MAC, GUEST_IP, 9));
        pass.push(udp_frame(host, [0xff; 6], [255; 4], 68));
    }
    let (n_drop, n_pass) = (drop.len() as u64, pass.len() as u64);
    send_frames(&ns, "tap0", drop);
    send_frames(&ns, "tap0", pass);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(wait_for_port_unreachable(&ns, "10.0.0.2", 30), "the guest stopped answering");

    let dropped = tap_stat(&ns, "tap0", "tx_dropped") - dropped;
    let queued = tap_stat(&ns, "tap0", "tx_packets") - queued;
    assert_eq!(dropped, n_drop, "the filter drops the frames for another address or MAC, and only those");
    assert!(queued >= n_pass, "{queued} frames reached the guest's queue, {n_pass} sent that must");
    let (code, out, err) = guest.stop();
    assert_eq!(code, 1, "{out}{err}");
    let report = std::fs::read_to_string(&report).unwrap();
    let total = tap_stat(&ns, "tap0", "tx_packets");
    assert_eq!(report_number(&report, "read_ops"), total, "the guest read every queued frame: {report}");
}
