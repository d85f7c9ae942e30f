//! An HTTP/1.1 server: `/` serves a page, `/status` a JSON object (uptime, requests served,
//! connections accepted, connection requests dropped at the limit, sockets held, heap bytes
//! free), anything else 404. Keep-alive by default, `Connection: close` honoured.
//!
//! Options: `--ipv4=…` (see guest-rt's `net`), `--port=N` (80), `--connections=N`: clients
//! served at once, each costing about 25 KiB of heap; by default as many as half the free heap
//! holds (1,261 at `--mem=64`, about 10,000 at the default 512). Clients beyond it wait: their
//! SYNs are dropped and retried by their kernel, never reset.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt::Write as _;

use guest_rt::net::smoltcp::iface::SocketHandle;
use guest_rt::net::{ListenConfig, Progress, Stack, connection_limit};
use guest_rt::println;

guest_rt::unikernel!(main, net: ["service"]);

/// Socket buffers of a connection, each way. A request head is gathered in the connection's own
/// buffer (up to `MAX_HEAD`) and every response is under 1 KiB, so 8 KiB is plenty and lets a
/// guest hold many connections.
const SOCKET_BUFFER: usize = 8 << 10;
/// Longest request head accepted.
const MAX_HEAD: usize = 8 << 10;
/// A request head buffer's first size: a typical request fits, so it is allocated once per
/// connection.
const HEAD_START: usize = 512;

const PAGE: &str = "<!doctype html>\n<html><head><title>tender</title></head>\
<body><h1>Hello from a unikernel</h1><p>Served by guest-rt on tender.</p></body></html>\n";

struct Conn {
    socket: SocketHandle,
    head: Vec<u8>,
    /// Request body bytes still to skip.
    skip: usize,
}

struct Counters {
    started_ns: u64,
    requests: u64,
    connections: u64,
    syns_dropped: u64,
    /// Sockets the stack holds (listening, connected, closing).
    sockets: usize,
}

fn main() -> i32 {
    let (mut net, rest) = match Stack::from_cmdline("service") {
        Ok(v) => v,
        Err(e) => {
            println!("http: {e}");
            return 2;
        }
    };
    let port = match rest.iter().rev().find_map(|w| w.strip_prefix("--port=")) {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                println!("http: --port={p}: expected a port number, 1 to 65535");
                return 2;
            }
        },
    };
    let config = ListenConfig::new(1).with_buffers(SOCKET_BUFFER, SOCKET_BUFFER);
    let per_connection = config.bytes_per_connection() + MAX_HEAD + core::mem::size_of::<Conn>();
    let limit = match connection_limit(&rest, per_connection) {
        Ok(n) => n,
        Err(e) => {
            println!("http: {e}");
            return 2;
        }
    };
    let listener = match net.tcp_listener(port, ListenConfig { max_connections: limit, ..config }) {
        Ok(l) => l,
        Err(e) => {
            println!("http: cannot listen on port {port}: {e}");
            return 2;
        }
    };
    let mut conns: Vec<Conn> = Vec::new();
    let mut counters =
        Counters { started_ns: guest_rt::monotonic_ns(), requests: 0, connections: 0, syns_dropped: 0, sockets: 0 };
    let mut response = alloc::string::String::with_capacity(2048);
    let mut announced = false;
    loop {
        net.poll();
        if !announced && let Some((ip, _)) = net.ipv4() {
            println!("http: listening on {ip}:{port}, up to {limit} connections");
            announced = true;
        }
        counters.syns_dropped = net.syns_dropped();
        counters.sockets = net.sockets_held();
        let mut worked = false;
        while let Some(socket) = net.accept(listener) {
            conns.push(Conn { socket, head: Vec::with_capacity(HEAD_START), skip: 0 });
            counters.connections += 1;
            worked = true;
        }
        worked |= net.serve_connections(&mut conns, |c| c.socket, |net, c| serve(net, c, &mut counters, &mut response));
        if worked || net.busy() {
            continue;
        }
        net.wait();
    }
}

/// Moves one connection forward.
fn serve(net: &mut Stack, c: &mut Conn, counters: &mut Counters, response: &mut alloc::string::String) -> Progress {
    let s = net.tcp(c.socket);
    let mut progress = Progress::Idle;
    while s.can_recv() && s.send_queue() < s.send_capacity() / 2 {
        let room = MAX_HEAD - c.head.len();
        let skip = &mut c.skip;
        let head = &mut c.head;
        let got = s.recv(|data| {
            let mut used = (*skip).min(data.len());
            *skip -= used;
            let take = (data.len() - used).min(room);
            head.extend_from_slice(&data[used..used + take]);
            used += take;
            (used, used)
        });
        if !matches!(got, Ok(n) if n > 0) {
            break;
        }
        progress = Progress::Worked;
        while let Some(end) = find(&c.head, b"\r\n\r\n") {
            let close = respond(&c.head[..end], counters, response);
            c.skip = content_length(&c.head[..end]);
            c.head.drain(..end + 4);
            let _ = s.send_slice(response.as_bytes());
            if close {
                return Progress::Done; // the response is sent before the FIN
            }
        }
        if c.head.len() >= MAX_HEAD {
            let _ = s.send_slice(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return Progress::Done;
        }
    }
    // The client closed its side and everything it sent has been read, or it reset.
    if !s.may_recv() {
        return Progress::Done;
    }
    progress
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn content_length(head: &[u8]) -> usize {
    let head = core::str::from_utf8(head).unwrap_or("");
    header(head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Writes the response for one request head into `out`; true if the connection closes after.
fn respond(head: &[u8], counters: &mut Counters, out: &mut alloc::string::String) -> bool {
    counters.requests += 1;
    out.clear();
    let head = core::str::from_utf8(head).unwrap_or("");
    let mut request_line = head.lines().next().unwrap_or("").split(' ');
    let (method, path, version) = (request_line.next(), request_line.next(), request_line.next());
    let http10 = version == Some("HTTP/1.0");
    let connection = header(head, "connection");
    let close = match connection {
        Some(v) if v.eq_ignore_ascii_case("close") => true,
        Some(v) if v.eq_ignore_ascii_case("keep-alive") => false,
        _ => http10,
    };
    let mut status_body = alloc::string::String::new();
    let (status, ctype, body): (&str, &str, &str) = match (method, path) {
        (Some("GET" | "HEAD"), Some("/")) => ("200 OK", "text/html; charset=utf-8", PAGE),
        (Some("GET" | "HEAD"), Some("/status")) => {
            let uptime = (guest_rt::monotonic_ns() - counters.started_ns) / 1_000_000;
            let _ = writeln!(
                status_body,
                "{{\"uptime_ms\":{uptime},\"requests\":{},\"connections\":{},\"syns_dropped\":{},\"sockets\":{},\"heap_free\":{}}}",
                counters.requests,
                counters.connections,
                counters.syns_dropped,
                counters.sockets,
                guest_rt::heap_free()
            );
            ("200 OK", "application/json", status_body.as_str())
        }
        (Some("GET" | "HEAD"), _) => ("404 Not Found", "text/plain", "not found\n"),
        _ => ("405 Method Not Allowed", "text/plain", "method not allowed\n"),
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nServer: tender-http\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        body.len(),
        if close { "close" } else { "keep-alive" }
    );
    if method != Some("HEAD") {
        out.push_str(body);
    }
    close
}
