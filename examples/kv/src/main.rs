//! A key-value store over TCP, with its data in a checksummed log on the block device `storage`
//! (see `store.rs`). One command per line; one reply line each:
//!
//! - `SET key value` → `OK` (once the record is on the device)
//! - `GET key` → `VALUE value` or `NOT_FOUND`
//! - `DEL key` → `OK` or `NOT_FOUND`
//! - `COUNT` → `COUNT n`
//! - anything else → `ERR message`
//!
//! Keys are one word; a value is the rest of the line. Options: `--ipv4=…` (see guest-rt's
//! `net`), `--port=N` (default 7000), `--connections=N`: clients served at once, each costing
//! about 82 KiB of heap; by default as many as half the free heap holds. Clients beyond it wait
//! (their SYNs are dropped and retried by their kernel), never reset.
#![no_std]
#![no_main]

extern crate alloc;

mod store;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use guest_rt::net::smoltcp::iface::SocketHandle;
use guest_rt::net::{ListenConfig, Progress, Stack, connection_limit};
use guest_rt::{BlockDevice, println};
use store::{Store, StoreError};

guest_rt::unikernel!(main, block: ["storage"], net: ["service"]);

const MAX_LINE: usize = store::MAX_VALUE + store::MAX_KEY + 16;
/// Socket buffers of a connection, each way: a command is gathered in the connection's own line
/// buffer, and the send buffer must hold the longest reply with room to spare (see `serve`).
const SOCKET_BUFFER: usize = 32 << 10;
const _: () = assert!(SOCKET_BUFFER > MAX_LINE);

struct Conn {
    socket: SocketHandle,
    line: Vec<u8>,
}

fn main() -> i32 {
    let (mut net, rest) = match Stack::from_cmdline("service") {
        Ok(v) => v,
        Err(e) => {
            println!("kv: {e}");
            return 2;
        }
    };
    let port = match rest.iter().rev().find_map(|w| w.strip_prefix("--port=")) {
        None => 7000,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                println!("kv: --port={p}: expected a port number, 1 to 65535");
                return 2;
            }
        },
    };
    let config = ListenConfig::new(1).with_buffers(SOCKET_BUFFER, SOCKET_BUFFER);
    let limit = match connection_limit(&rest, config.bytes_per_connection() + MAX_LINE) {
        Ok(n) => n,
        Err(e) => {
            println!("kv: {e}");
            return 2;
        }
    };
    let Ok(disk) = BlockDevice::open("storage") else {
        println!("kv: cannot open block device storage");
        return 2;
    };
    let mut store = match Store::open(disk) {
        Ok(s) => s,
        Err(e) => {
            println!("kv: cannot read the log: {e:?}");
            return 3;
        }
    };
    if let Some(at) = store.torn_at {
        println!("kv: discarded a torn record at byte {at}");
    }
    println!("kv: recovered {} records, {} keys", store.recovered, store.len());
    let listener = match net.tcp_listener(port, ListenConfig { max_connections: limit, ..config }) {
        Ok(l) => l,
        Err(e) => {
            println!("kv: cannot listen on port {port}: {e}");
            return 2;
        }
    };
    let mut conns: Vec<Conn> = Vec::new();
    println!("kv: listening on port {port}, up to {limit} connections");
    let mut reply = String::with_capacity(MAX_LINE);
    loop {
        net.poll();
        let mut worked = false;
        while let Some(socket) = net.accept(listener) {
            conns.push(Conn { socket, line: Vec::new() });
            worked = true;
        }
        worked |= net.serve_connections(&mut conns, |c| c.socket, |net, c| serve(net, c, &mut store, &mut reply));
        if worked || net.busy() {
            continue;
        }
        net.wait();
    }
}

/// Moves one connection forward.
fn serve(net: &mut Stack, c: &mut Conn, store: &mut Store, reply: &mut String) -> Progress {
    let s = net.tcp(c.socket);
    let mut worked = false;
    // Leave room in the send buffer for the longest reply before taking another command.
    while s.can_recv() && s.send_capacity() - s.send_queue() > MAX_LINE {
        let line = &mut c.line;
        let Ok(Some(_)) = s.recv(|data| match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&data[..i]);
                (i + 1, Some(i))
            }
            None => {
                line.extend_from_slice(data);
                (data.len(), None)
            }
        }) else {
            if c.line.len() > MAX_LINE {
                let _ = s.send_slice(b"ERR line too long\n");
                return Progress::Done;
            }
            break;
        };
        worked = true;
        execute(store, &c.line, reply);
        c.line.clear();
        let _ = s.send_slice(reply.as_bytes());
    }
    // The client closed its side and every command it sent has been answered, or it reset.
    if !s.may_recv() {
        return Progress::Done;
    }
    if worked { Progress::Worked } else { Progress::Idle }
}

fn execute(store: &mut Store, line: &[u8], reply: &mut String) {
    reply.clear();
    let line = core::str::from_utf8(line).unwrap_or("").trim_end_matches('\r');
    let (cmd, args) = line.split_once(' ').unwrap_or((line, ""));
    let result = match cmd.to_ascii_uppercase().as_str() {
        "SET" => match args.split_once(' ') {
            Some((key, value)) if !key.is_empty() => store.set(key, value).map(|()| reply.push_str("OK\n")),
            _ => {
                reply.push_str("ERR usage: SET key value\n");
                Ok(())
            }
        },
        "GET" if !args.is_empty() && !args.contains(' ') => {
            match store.get(args) {
                Some(v) => {
                    let _ = writeln!(reply, "VALUE {v}");
                }
                None => reply.push_str("NOT_FOUND\n"),
            }
            Ok(())
        }
        "DEL" if !args.is_empty() && !args.contains(' ') => {
            store.delete(args).map(|found| reply.push_str(if found { "OK\n" } else { "NOT_FOUND\n" }))
        }
        "COUNT" => {
            let _ = writeln!(reply, "COUNT {}", store.len());
            Ok(())
        }
        _ => {
            reply.push_str("ERR unknown command\n");
            Ok(())
        }
    };
    match result {
        Ok(()) => {}
        Err(StoreError::Full) => reply.push_str("ERR storage full\n"),
        Err(StoreError::TooLarge) => reply.push_str("ERR key or value too large\n"),
        Err(StoreError::Device(e)) => {
            // The device failed under us: never acknowledge, and stop rather than serve a store
            // whose log may not hold what the index says.
            println!("kv: storage error {e:?}");
            guest_rt::exit(3);
        }
    }
}
