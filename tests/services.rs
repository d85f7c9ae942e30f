//! The service unikernels (http, kv, dns) against real clients, each in its own network
//! namespace with a tap (no traffic leaves it).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const GUEST_IP: &str = "10.0.0.2";

fn service(name: &str, tag: &str) -> (String, NetNs) {
    require_kvm();
    require_root();
    let g = guest(name).to_str().unwrap().to_string();
    let ns = NetNs::new(tag);
    ns.tap("tap0", "10.0.0.1/24", 1500);
    (g, ns)
}

/// Waits until a TCP connection to the guest's `port` succeeds.
fn wait_for_tcp(ns: &NetNs, port: u16) {
    let ok = in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let addr = format!("{GUEST_IP}:{port}").parse().unwrap();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    assert!(ok, "the guest never accepted a connection on port {port}");
}

fn curl(ns: &NetNs, args: &[&str]) -> (bool, String) {
    let out = ns.command("curl").args(["-s", "-m", "20"]).args(args).output().expect("run curl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn http_pages_status_404_keepalive_and_concurrency() {
    let (g, ns) = service("http", "http");
    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24"]);
    let guest = Running::spawn(cmd);
    wait_for_tcp(&ns, 80);

    let (ok, page) = curl(&ns, &["http://10.0.0.2/"]);
    assert!(ok && page.contains("Hello from a unikernel"), "{page}");
    let (ok, code) = curl(&ns, &["-o", "/dev/null", "-w", "%{http_code}", "http://10.0.0.2/missing"]);
    assert!(ok && code == "404", "{code}");

    // 150 requests on one keep-alive connection: curl opens one connection and reuses it.
    let mut args = vec!["-w", "%{http_code} %{num_connects}\\n"];
    for _ in 0..150 {
        args.extend(["-o", "/dev/null", "http://10.0.0.2/status"]);
    }
    let (ok, out) = curl(&ns, &args);
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 150, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{out}");
    let connects: u32 = lines.iter().map(|l| l.split(' ').nth(1).unwrap().parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "all 150 requests went over one connection");

    // 24 clients at once.
    let clients: Vec<_> = (0..24)
        .map(|_| {
            ns.command("curl")
                .args(["-s", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}", "http://10.0.0.2/"])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn curl")
        })
        .collect();
    for c in clients {
        let out = c.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }

    let (ok, status) = curl(&ns, &["http://10.0.0.2/status"]);
    assert!(ok && status.starts_with("{\"uptime_ms\":"), "{status}");
    let requests: u64 = status.split("\"requests\":").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(requests >= 176, "{status}");
    let (code, out, err) = guest.stop();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("http: listening on 10.0.0.2:80"), "{out}");
}

/// One HTTP/1.1 connection of the overload test, with a parser just strict enough to check every
/// response whole.
struct HttpClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl HttpClient {
    /// Connects, waiting as long as a client's kernel keeps retrying a dropped SYN (bounded).
    fn connect() -> std::io::Result<Self> {
        let addr = format!("{GUEST_IP}:80").parse().unwrap();
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(90))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(HttpClient { stream, reader })
    }

    /// GET `path`; returns the body of a 200 response, or an error naming what was wrong.
    fn get(&mut self, path: &str, close: bool) -> std::io::Result<String> {
        let connection = if close { "close" } else { "keep-alive" };
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: guest\r\nConnection: {connection}\r\n\r\n").as_bytes())?;
        let bad = |what: String| std::io::Error::other(what);
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line != "HTTP/1.1 200 OK\r\n" {
            return Err(bad(format!("status line {line:?}")));
        }
        let mut length = None;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(bad("end of stream in the head".into()));
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length.ok_or_else(|| bad("no Content-Length".into()))?];
        std::io::Read::read_exact(&mut self.reader, &mut body)?;
        if close {
            // The server closes after the response: the next read is the end of the stream.
            let mut rest = Vec::new();
            std::io::Read::read_to_end(&mut self.reader, &mut rest)?;
            if !rest.is_empty() {
                return Err(bad(format!("{} bytes after the response", rest.len())));
            }
        }
        String::from_utf8(body).map_err(|_| bad("a body that is not UTF-8".into()))
    }

    /// The `/status` counter `key`.
    fn status(&mut self, key: &str) -> std::io::Result<u64> {
        let body = self.get("/status", false)?;
        let at = body.find(&format!("\"{key}\":")).ok_or_else(|| std::io::Error::other(body.clone()))?;
        Ok(body[at + key.len() + 3..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap())
    }
}

/// A whole client visit: connect, two requests kept alive, a third that closes. Any error (a
/// reset above all) is returned with its kind.
fn http_visit() -> Result<(), String> {
    let visit = || -> std::io::Result<()> {
        let mut c = HttpClient::connect()?;
        for close in [false, false, true] {
            let page = c.get("/", close)?;
            if !page.contains("Hello from a unikernel") {
                return Err(std::io::Error::other(format!("wrong page {page:?}")));
            }
        }
        Ok(())
    };
    visit().map_err(|e| format!("{:?}: {e}", e.kind()))
}

/// Runs `clients` visits at once (released together by a barrier), each on its own thread.
fn http_visits_at_once(clients: usize) -> Vec<std::thread::JoinHandle<Result<(), String>>> {
    let start = std::sync::Arc::new(std::sync::Barrier::new(clients));
    (0..clients)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                http_visit()
            })
        })
        .collect()
}

/// More clients than the guest's connection limit at once: every request is answered, some later
/// than others, and no client sees a reset (smoltcp alone would reset every SYN it has no
/// listening socket for). A client that keeps its connection busy all along starves no one.
#[test]
fn http_clients_beyond_the_connection_limit_wait_and_are_never_reset() {
    let (g, ns) = service("http", "overload");
    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24", "--connections=8"]);
    let guest = Running::spawn(cmd);
    wait_for_tcp(&ns, 80);

    let (burst, long_client_requests, waiting) = in_netns(&ns, || {
        // A burst under the limit but beyond the sockets kept listening: SYNs wait in guest-rt
        // while it opens more, none is dropped for good.
        let burst: Vec<_> = http_visits_at_once(7).into_iter().map(|t| t.join().unwrap()).collect();

        // Eight connections take every slot; a ninth client's SYN is then dropped, as the guest's
        // own counter shows through the first connection.
        let mut held: Vec<HttpClient> = (0..8).map(|_| HttpClient::connect().expect("connect a holder")).collect();
        for c in &mut held {
            c.get("/", false).expect("a holder's first request");
        }
        let dropped_before = held[0].status("syns_dropped").expect("status");
        let waiting = http_visits_at_once(16);
        let deadline = Instant::now() + Duration::from_secs(30);
        while held[0].status("syns_dropped").expect("status") == dropped_before {
            assert!(Instant::now() < deadline, "no SYN was ever dropped: the clients never waited");
            std::thread::sleep(Duration::from_millis(20));
        }
        // All but the first let go; the first keeps asking until every waiting client is done.
        let mut long_client = held.swap_remove(0);
        drop(held);
        let mut requests = 0u32;
        let deadline = Instant::now() + Duration::from_secs(240);
        while !waiting.iter().all(std::thread::JoinHandle::is_finished) && Instant::now() < deadline {
            let page = long_client.get("/", false).expect("the long client's request");
            assert!(page.contains("Hello from a unikernel"), "{page}");
            requests += 1;
        }
        long_client.get("/", true).expect("the long client's last request");
        let waiting: Vec<_> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
        (burst, requests, waiting)
    });
    let failed = |r: &Vec<Result<(), String>>| r.iter().filter_map(|r| r.clone().err()).collect::<Vec<_>>();
    assert!(failed(&burst).is_empty(), "burst under the limit: {:?}", failed(&burst));
    assert!(failed(&waiting).is_empty(), "clients beyond the limit: {:?}", failed(&waiting));
    assert!(long_client_requests > 0);
    // Every connection's socket has been freed: what is left is the sockets kept listening (4)
    // and the connection asking.
    let sockets = in_netns(&ns, || {
        let mut c = HttpClient::connect().expect("connect");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sockets = c.status("sockets").expect("status");
            if sockets == 5 || Instant::now() > deadline {
                return sockets;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert_eq!(sockets, 5, "sockets still held after every client left");

    let (code, out, err) = guest.stop();
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("http: listening on 10.0.0.2:80, up to 8 connections"), "{out}");
}

#[test]
fn http_rejects_bad_connection_and_port_options() {
    let (g, ns) = service("http", "httpopts");
    for (arg, want) in [
        ("--connections=0", "http: --connections=0: expected a number of connections, at least 1"),
        ("--connections=100000", "http: --connections=100000: "),
        ("--port=0", "http: --port=0: expected a port number"),
    ] {
        let mut cmd = ns.tender();
        cmd.args(["--mem=16", "--net:service=tap0", &g, "--ipv4=10.0.0.2/24", arg]);
        let (code, out, err) = Running::spawn(cmd).wait();
        assert_eq!(code, 2, "{arg}: {out}{err}");
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("http: ")).collect();
        assert_eq!(lines.len(), 1, "{arg}: {out}");
        assert!(lines[0].starts_with(want), "{arg}: {out}");
    }
}

/// A line-protocol client inside the namespace: sends `commands`, returns one reply per command.
fn kv_session(ns: &NetNs, commands: Vec<String>) -> Vec<String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect((GUEST_IP, 7000)).expect("connect to kv");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut replies = Vec::new();
        for c in commands {
            s.write_all(format!("{c}\n").as_bytes()).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).expect("reply");
            replies.push(line.trim_end().to_string());
        }
        replies
    })
}

fn kv_start(ns: &NetNs, g: &str, img: &std::path::Path) -> Running {
    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &format!("--block:storage={}", img.display()), g, "--ipv4=10.0.0.2/24"]);
    let r = Running::spawn(cmd);
    wait_for_tcp(ns, 7000);
    r
}

#[test]
fn kv_commands_and_persistence_across_sigterm() {
    let (g, ns) = service("kv", "kv");
    let dir = TempDir::new("kv");
    let img = dir.file("kv.img", &vec![0u8; 4 << 20]);
    let guest = kv_start(&ns, &g, &img);
    let replies = kv_session(
        &ns,
        ["SET a hello world", "SET b 2", "GET a", "DEL b", "GET b", "DEL b", "COUNT", "BOGUS", "GET"]
            .map(String::from)
            .to_vec(),
    );
    assert_eq!(
        replies,
        [
            "OK",
            "OK",
            "VALUE hello world",
            "OK",
            "NOT_FOUND",
            "NOT_FOUND",
            "COUNT 1",
            "ERR unknown command",
            "ERR unknown command"
        ]
    );
    let (code, _, _) = guest.stop();
    assert_eq!(code, 1);

    let guest = kv_start(&ns, &g, &img);
    assert_eq!(kv_session(&ns, vec!["GET a".into(), "GET b".into()]), ["VALUE hello world", "NOT_FOUND"]);
    let (_, out, _) = guest.stop();
    assert!(out.contains("kv: recovered 3 records, 1 keys"), "{out}");
}

/// Writes while tender is killed (SIGKILL, no chance to clean up): after a restart every
/// acknowledged write is there; then a record torn on purpose is detected and never returned.
#[test]
fn kv_survives_a_kill_during_writes_and_detects_torn_records() {
    let (g, ns) = service("kv", "kvkill");
    let dir = TempDir::new("kvkill");
    let img = dir.file("kv.img", &vec![0u8; 8 << 20]);
    let guest = kv_start(&ns, &g, &img);
    let pid = guest.pid();
    // A writer that records each acknowledged SET, killed from outside part-way through.
    let acked = in_netns(&ns, move || {
        let mut s = TcpStream::connect((GUEST_IP, 7000)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut acked = Vec::new();
        for i in 0..100_000u32 {
            if i == 300 {
                // SAFETY: kill on the tender child's pid (SIGKILL: no cleanup at all).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            if s.write_all(format!("SET key{i} value-{i}-{}\n", "x".repeat((i % 700) as usize)).as_bytes()).is_err() {
                break;
            }
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(n) if n > 0 && line.trim_end() == "OK" => acked.push(i),
                _ => break,
            }
        }
        acked
    });
    drop(guest);
    assert!(acked.len() >= 300, "only {} writes were acknowledged", acked.len());

    let guest = kv_start(&ns, &g, &img);
    let gets: Vec<String> = acked.iter().map(|i| format!("GET key{i}")).collect();
    let replies = kv_session(&ns, gets);
    for (i, reply) in acked.iter().zip(&replies) {
        assert_eq!(*reply, format!("VALUE value-{i}-{}", "x".repeat((i % 700) as usize)));
    }
    // One more record, then tear it: flip a byte in its value on the host, as a write cut short
    // would leave it.
    assert_eq!(kv_session(&ns, vec!["SET torn first-version".into()]), ["OK"]);
    assert_eq!(kv_session(&ns, vec!["SET torn second-version".into()]), ["OK"]);
    let (_, out, _) = guest.stop();
    assert!(out.contains("kv: recovered"), "{out}");
    let mut bytes = std::fs::read(&img).unwrap();
    let at = bytes.windows(14).rposition(|w| w == b"second-version").expect("the last record is on disk");
    bytes[at] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();

    let guest = kv_start(&ns, &g, &img);
    assert_eq!(kv_session(&ns, vec!["GET torn".into()]), ["VALUE first-version"]);
    let (_, out, _) = guest.stop();
    assert!(out.contains("kv: discarded a torn record at byte"), "{out}");
}

fn dig(ns: &NetNs, args: &[&str]) -> String {
    let out = ns
        .command("dig")
        .args(["+norec", "+time=2", "+tries=3", "@10.0.0.2"])
        .args(args)
        .output()
        .expect("dig (dnsutils) is needed; scripts/test.sh installs it");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dns_answers_its_zone() {
    let (g, ns) = service("dns", "dns");
    let mut cmd = ns.tender();
    cmd.args([
        "--net:service=tap0",
        &g,
        "--ipv4=10.0.0.2/24",
        "zone=example.org",
        "ns=ns1.example.org",
        "a=ns1=10.0.0.2",
        "a=www=10.0.0.5",
        "aaaa=www=2001:db8::5",
        "serial=42",
    ]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_ping(&ns, GUEST_IP, 30));
    let a = dig(&ns, &["www.example.org", "A"]);
    assert!(a.contains("status: NOERROR") && a.contains("flags: qr aa") && a.contains("10.0.0.5"), "{a}");
    let aaaa = dig(&ns, &["www.example.org", "AAAA"]);
    assert!(aaaa.contains("2001:db8::5"), "{aaaa}");
    let ns_rr = dig(&ns, &["example.org", "NS"]);
    assert!(ns_rr.contains("IN\tNS\tns1.example.org."), "{ns_rr}");
    let soa = dig(&ns, &["example.org", "SOA"]);
    assert!(soa.contains("SOA\tns1.example.org. hostmaster.example.org. 42 "), "{soa}");
    let nx = dig(&ns, &["nope.example.org", "A"]);
    assert!(nx.contains("status: NXDOMAIN") && nx.contains("SOA"), "{nx}");
    let other = dig(&ns, &["example.com", "A"]);
    assert!(other.contains("status: REFUSED"), "{other}");
    // Many queries in a row, all answered.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sh", "-c"])
        .arg("for i in $(seq 100); do dig +short +time=2 +tries=2 @10.0.0.2 www.example.org A; done")
        .output()
        .unwrap();
    let answers = String::from_utf8_lossy(&out.stdout);
    assert_eq!(answers.lines().filter(|l| *l == "10.0.0.5").count(), 100, "{answers}");
    drop(guest);
}

/// The guest connects out (TCP client: connect, write, close) to a listener in the namespace.
#[test]
fn tcp_connect_send_and_close() {
    let (g, ns) = service("netperf", "tcpsend");
    let listener = in_netns(&ns, || std::net::TcpListener::bind("10.0.0.1:5001").expect("listen in the namespace"));
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("the guest connects");
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut data).expect("read until the guest closes");
        data
    });
    let mut cmd = ns.tender();
    let total = 5_000_000u64;
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24", "tcp-send", "10.0.0.1", "5001", &total.to_string()]);
    let (code, out, err) = Running::spawn(cmd).wait();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("netperf: connected to 10.0.0.1:5001") && out.contains("netperf: sent 5000000 bytes"),
        "{out}"
    );
    let data = receiver.join().unwrap();
    assert_eq!(data.len() as u64, total);
    assert!(data.iter().enumerate().all(|(i, &b)| b == ((i % 16384) % 251) as u8), "the stream arrived intact");
}

/// The guest as a TCP server taking a bulk stream, as a UDP echo server, and as a UDP sink.
#[test]
fn tcp_sink_udp_echo_and_udp_sink() {
    let (g, ns) = service("netperf", "sink");
    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24", "tcp-sink", "5002"]);
    let guest = Running::spawn(cmd);
    wait_for_tcp(&ns, 5002);
    let sent = in_netns(&ns, || {
        // The probe connection of wait_for_tcp may still hold the one listening socket.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect((GUEST_IP, 5002)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let block = vec![7u8; 1 << 20];
        for _ in 0..32 {
            s.write_all(&block).unwrap();
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        32u64 << 20
    });
    std::thread::sleep(Duration::from_millis(200));
    let (_, out, _) = guest.stop();
    assert!(out.contains(&format!("netperf: received {sent} bytes")), "{out}");

    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24", "udp-echo", "5003"]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_ping(&ns, GUEST_IP, 30));
    let echoed = in_netns(&ns, || {
        let s = std::net::UdpSocket::bind("10.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = 0;
        for i in 0..500u32 {
            let msg = format!("datagram {i}");
            s.send_to(msg.as_bytes(), (GUEST_IP, 5003)).unwrap();
            let mut buf = [0u8; 64];
            if let Ok((n, _)) = s.recv_from(&mut buf)
                && buf[..n] == *msg.as_bytes()
            {
                got += 1;
            }
        }
        got
    });
    assert_eq!(echoed, 500);
    drop(guest);

    // A burst of 300 datagrams without a pause: fewer than the tap's queue holds, so none is lost
    // however late the guest runs, and more than a UDP socket's queue (64), so the guest must
    // empty the socket between batches of frames (Stack::poll takes at most 64) to count them all.
    let mut cmd = ns.tender();
    cmd.args(["--net:service=tap0", &g, "--ipv4=10.0.0.2/24", "udp-sink", "5004"]);
    let guest = Running::spawn(cmd);
    assert!(wait_for_ping(&ns, GUEST_IP, 30));
    in_netns(&ns, || {
        let s = std::net::UdpSocket::bind("10.0.0.1:0").unwrap();
        for _ in 0..300 {
            s.send_to(&[0x55; 64], (GUEST_IP, 5004)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(500));
        s.send_to(b"end", (GUEST_IP, 5004)).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    });
    let (_, out, _) = guest.stop();
    assert!(out.contains("netperf: 300 datagrams in "), "{out}");
}
