#!/usr/bin/env python3
"""Host-side probes for scripts/wake_cost.sh and scripts/density.sh; runs inside the throw-away
namespace those scripts create (it talks only to addresses inside it).

  netprobe.py wake IFACE GUEST_MAC GUEST_IP PID [COUNT] [GAP_MS]
      CPU cost of waking one idle guest, per frame, for four kinds of frame sent on IFACE (the
      host side of the guest's tap): an ARP request for the guest's address (answered), an ICMP
      echo (answered), an ARP request for another address and a unicast frame for another MAC
      (both dropped by the guest). CPU time per thread from /proc/PID/task/*/schedstat
      (nanoseconds on a CPU, guest time included), minus the same idle time measured first.
  netprobe.py probe ADDR_FILE PORT TIMEOUT_S
      One in-process client: connects to every address in ADDR_FILE (one a line) again and again
      until each has answered `GET /status` once; prints how many did and when the last did.
  netprobe.py procstats PID_FILE GUEST_KB
      Per service (one pid a line): CPU time so far (all threads, schedstat) and memory from
      /proc/PID/smaps, split into the guest's memory (the run of adjacent anonymous mappings
      that adds up to GUEST_KB: tender maps it once and splits it with mprotect) and tender's
      own; prints the median and max of each.
  netprobe.py latency ROUNDS COUNT NAME=udp:ADDR:PORT:PID|NAME=icmp:ADDR ...
      Round trips one at a time (64-byte UDP datagrams to an echo server, or ICMP echo requests,
      which the kernel answers itself), COUNT to each target in turn, ROUNDS times, so that
      every target sees the same conditions; prints the median, 99th percentile and, for a
      target with a PID, the CPU time of that process per round trip (all threads, schedstat).
"""
import os
import select
import socket
import struct
import sys
import time


def cpu_ns(pid):
    """{thread name: ns on a CPU} for every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
        except OSError:
            continue
        name = "ring" if name == "tender-ring" else "vcpu" if name == "tender" else name
        out[name] = out.get(name, 0) + ns
    return out


def mac_bytes(mac):
    return bytes(int(b, 16) for b in mac.split(":"))


def arp_request(src_mac, src_ip, target_ip):
    eth = b"\xff" * 6 + src_mac + b"\x08\x06"
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + src_ip + b"\x00" * 6 + target_ip
    return eth + arp


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp_echo(dst_mac, src_mac, src_ip, dst_ip, seq):
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x7E57, seq) + b"x" * 32
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + icmp


def wake(iface, guest_mac, guest_ip, pid, count=300, gap_ms=10):
    count, gap = int(count), float(gap_ms) / 1000
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    src_mac = sock.getsockname()[4]
    src_ip = socket.inet_aton("10.0.0.1")
    gip = socket.inet_aton(guest_ip)
    gmac = mac_bytes(guest_mac)
    other_ip = socket.inet_aton("10.0.0.99")
    kinds = [
        ("settling", None),
        ("idle (nothing sent)", None),
        ("ARP request for the guest (answered)", lambda i: arp_request(src_mac, src_ip, gip)),
        ("ICMP echo to the guest (answered)", lambda i: icmp_echo(gmac, src_mac, src_ip, gip, i & 0xFFFF)),
        ("ARP request for another address (dropped)", lambda i: arp_request(src_mac, src_ip, other_ip)),
        ("unicast frame for another MAC (dropped)", lambda i: icmp_echo(b"\x02\0\0\0\0\x63", src_mac, src_ip, other_ip, i)),
    ]
    idle_rate = {}
    print(f"{count} frames of each kind, {gap_ms} ms apart (the guest idle in between); CPU per frame, idle cost taken out")
    for name, make in kinds:
        before, t0 = cpu_ns(pid), time.monotonic()
        for i in range(count):
            if make:
                sock.send(make(i))
            time.sleep(gap)
        time.sleep(0.05)
        after, dt = cpu_ns(pid), time.monotonic() - t0
        used = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        if make is None:
            idle_rate = {k: v / dt for k, v in used.items()}
            total = sum(used.values())
            if name != "settling":
                print(f"  {name}: {total / dt / 1e7:.3f}% of one CPU")
            continue
        per = {k: max(0.0, (v - idle_rate.get(k, 0) * dt) / count / 1000) for k, v in used.items()}
        detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items()))
        print(f"  {name}: {sum(per.values()):.1f} us ({detail})")


def probe(addr_file, port, timeout_s):
    port, deadline = int(port), time.monotonic() + float(timeout_s)
    with open(addr_file) as f:
        todo = [line.strip() for line in f if line.strip()]
    answered = {}
    pending = {}  # fd -> (sock, addr, buffer)
    poller = select.epoll()
    queue = list(todo)
    request = f"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    while len(answered) < len(todo) and time.monotonic() < deadline:
        while queue and len(pending) < 64:
            addr = queue.pop(0)
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((addr, port))
            pending[s.fileno()] = (s, addr, b"", time.monotonic())
            poller.register(s.fileno(), select.EPOLLOUT | select.EPOLLIN)
        for fd, ev in poller.poll(0.05):
            s, addr, buf, t = pending[fd]
            try:
                if ev & select.EPOLLOUT and not buf:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    s.send(request)
                    poller.modify(fd, select.EPOLLIN)
                    pending[fd] = (s, addr, b"sent", t)
                    continue
                data = s.recv(4096)
                if b" 200 " in buf + data:
                    answered[addr] = time.time()
                    raise OSError(0, "done")
                if not data:
                    raise OSError(0, "closed")
                pending[fd] = (s, addr, buf + data, t)
            except OSError:
                poller.unregister(fd)
                s.close()
                del pending[fd]
                if addr not in answered:
                    queue.append(addr)
        # Connections that hang (SYN lost while the guest was not yet up) are retried.
        now = time.monotonic()
        for fd, (s, addr, buf, t) in list(pending.items()):
            if now - t > 1.0:
                poller.unregister(fd)
                s.close()
                del pending[fd]
                queue.append(addr)
    times = sorted(answered.values())
    print(f"answered {len(answered)} of {len(todo)}")
    if times:
        print(f"last first answer at {times[-1]:.6f} (Unix time)")


def smaps(pid, guest_kb):
    maps = []  # [start, end, anonymous, {field: kB}]
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                maps.append([lo, hi, len(parts) == 5, {}])
            elif parts[0].endswith(":") and len(parts) >= 2 and parts[1].isdigit():
                maps[-1][3][parts[0][:-1]] = int(parts[1])
    guest = set()
    for i, m in enumerate(maps):
        total, j = 0, i
        while j < len(maps) and maps[j][2] and (j == i or maps[j][0] == maps[j - 1][1]):
            total += maps[j][3].get("Size", 0)
            if total == guest_kb:
                guest.update(range(i, j + 1))
                break
            j += 1
    out = {"guest_Pss": 0, "guest_Private": 0, "own_Pss": 0, "own_Private": 0, "RSS": 0}
    for i, (_, _, _, f) in enumerate(maps):
        side = "guest" if i in guest else "own"
        out[f"{side}_Pss"] += f.get("Pss", 0)
        out[f"{side}_Private"] += f.get("Private_Clean", 0) + f.get("Private_Dirty", 0)
        out["RSS"] += f.get("Rss", 0)
    return out


def procstats(pid_file, guest_kb):
    with open(pid_file) as f:
        pids = [int(line) for line in f if line.strip()]
    cpu, mem = [], []
    for pid in pids:
        try:
            cpu.append(sum(cpu_ns(pid).values()))
            mem.append(smaps(pid, int(guest_kb)))
        except OSError:
            continue
    med = lambda v: sorted(v)[(len(v) - 1) // 2]
    print(f"cpu_ms_median {med(cpu) / 1e6:.2f}")
    for key in mem[0]:
        values = [m[key] for m in mem]
        print(f"  {key:14} median {med(values):6} KiB, max {max(values):6} KiB")


class Target:
    """One echo target of `latency`: `udp:ADDR:PORT:PID` or `icmp:ADDR`."""

    def __init__(self, spec):
        self.name, spec = spec.rsplit("=", 1)
        kind, addr, *rest = spec.split(":")
        self.icmp = kind == "icmp"
        self.pid = int(rest[1]) if len(rest) > 1 else None
        if self.icmp:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.sock.connect((addr, 0))
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.connect((addr, int(rest[0])))
        self.sock.settimeout(1)
        self.seq, self.rtts, self.cpu, self.lost = 0, [], {}, 0

    def once(self):
        """One round trip, in ns (None if lost)."""
        self.seq = (self.seq + 1) & 0xFFFF
        if self.icmp:
            msg = struct.pack("!BBHHH", 8, 0, 0, 0x7E57, self.seq) + b"x" * 56
            msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
        else:
            msg = b"x" * 64
        t = time.perf_counter_ns()
        self.sock.send(msg)
        try:
            while True:
                reply = self.sock.recv(2048)
                # A raw socket gets the IP header; an echo reply (type 0) with our sequence.
                if not self.icmp or (reply[20] == 0 and struct.unpack("!H", reply[26:28])[0] == self.seq):
                    return time.perf_counter_ns() - t
        except socket.timeout:
            self.lost += 1
            return None

    def run(self, count):
        before = cpu_ns(self.pid) if self.pid else {}
        for _ in range(count):
            rtt = self.once()
            if rtt is not None:
                self.rtts.append(rtt)
        for k, v in (cpu_ns(self.pid) if self.pid else {}).items():
            self.cpu[k] = self.cpu.get(k, 0) + v - before.get(k, 0)


def latency(rounds, count, *specs):
    targets = [Target(s) for s in specs]
    for t in targets:  # warm-up: ARP, caches, the first spins
        for _ in range(200):
            t.once()
        t.lost = 0
    for _ in range(int(rounds)):
        for t in targets:
            t.run(int(count))
    print(f"{rounds} rounds of {count} round trips to each target in turn, one in flight")
    for t in targets:
        r = sorted(t.rtts)
        if not r:
            print(f"  {t.name}: no answer")
            continue
        line = f"  {t.name}: median {r[len(r) // 2] / 1000:.1f} us, p99 {r[len(r) * 99 // 100] / 1000:.1f} us"
        line += f" ({len(r)} round trips, {t.lost} lost)"
        if t.cpu:
            per = {k: v / len(r) / 1000 for k, v in t.cpu.items()}
            detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per.items()))
            line += f"; tender CPU {sum(per.values()):.1f} us per round trip ({detail})"
        print(line)


if __name__ == "__main__":
    {"wake": wake, "probe": probe, "procstats": procstats, "latency": latency}[sys.argv[1]](*sys.argv[2:])
