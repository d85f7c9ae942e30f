//! An HTTP/1.1 server: `/` serves a page, `/status` a JSON object (uptime, requests served,
//! connections accepted), anything else 404. Keep-alive by default, `Connection: close` honoured,
//! up to `CONNECTIONS` clients at once. Options: `--ipv4=…` (see guest-net), `--port=N` (80).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt::Write as _;

use guest_rt::net::Stack;
use guest_rt::net::smoltcp::iface::SocketHandle;
use guest_rt::net::smoltcp::socket::tcp::State;
use guest_rt::println;

guest_rt::unikernel!(main, net: ["service"]);

/// Listening sockets: the number of clients served at once.
const CONNECTIONS: usize = 32;
/// Longest request head accepted.
const MAX_HEAD: usize = 8 << 10;

const PAGE: &str = "<!doctype html>\n<html><head><title>tender</title></head>\
<body><h1>Hello from a unikernel</h1><p>Served by guest-rt on tender.</p></body></html>\n";

struct Conn {
    socket: SocketHandle,
    head: Vec<u8>,
    /// Request body bytes still to skip.
    skip: usize,
    counted: bool,
}

struct Counters {
    started_ns: u64,
    requests: u64,
    connections: u64,
}

fn main() -> i32 {
    let (mut net, rest) = match Stack::from_cmdline("service") {
        Ok(v) => v,
        Err(e) => {
            println!("http: {e}");
            return 2;
        }
    };
    let port: u16 = rest.iter().find_map(|w| w.strip_prefix("--port=")).and_then(|p| p.parse().ok()).unwrap_or(80);
    let mut conns: Vec<Conn> = (0..CONNECTIONS)
        .map(|_| Conn { socket: net.tcp_listen(port), head: Vec::with_capacity(MAX_HEAD), skip: 0, counted: false })
        .collect();
    let mut counters = Counters { started_ns: guest_rt::monotonic_ns(), requests: 0, connections: 0 };
    let mut response = alloc::string::String::with_capacity(2048);
    let mut announced = false;
    loop {
        net.poll();
        if !announced && let Some((ip, _)) = net.ipv4() {
            println!("http: listening on {ip}:{port}");
            announced = true;
        }
        let mut worked = false;
        for c in conns.iter_mut() {
            worked |= serve(&mut net, c, port, &mut counters, &mut response);
        }
        if worked || net.busy() {
            continue;
        }
        net.wait();
    }
}

/// Moves one connection forward; true if it did anything.
fn serve(
    net: &mut Stack,
    c: &mut Conn,
    port: u16,
    counters: &mut Counters,
    response: &mut alloc::string::String,
) -> bool {
    let s = net.tcp(c.socket);
    match s.state() {
        State::Closed => {
            c.head.clear();
            c.skip = 0;
            c.counted = false;
            let _ = s.listen(port);
            return false;
        }
        State::CloseWait => {
            s.close();
            return true;
        }
        _ => {}
    }
    if s.is_active() && !c.counted {
        c.counted = true;
        counters.connections += 1;
    }
    let mut worked = false;
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
        worked = true;
        while let Some(end) = find(&c.head, b"\r\n\r\n") {
            let close = respond(&c.head[..end], counters, response);
            c.skip = content_length(&c.head[..end]);
            c.head.drain(..end + 4);
            let _ = s.send_slice(response.as_bytes());
            if close {
                s.close();
                return true;
            }
        }
        if c.head.len() >= MAX_HEAD {
            let _ = s.send_slice(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            s.close();
            return true;
        }
    }
    worked
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
                "{{\"uptime_ms\":{uptime},\"requests\":{},\"connections\":{}}}",
                counters.requests, counters.connections
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
