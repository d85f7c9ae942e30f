//! TCP servers with a backlog, and connections that cost memory only while they exist.
//!
//! smoltcp has no listen backlog: a listening socket becomes the connection when a SYN arrives,
//! and a SYN that finds no socket in the Listen state on its port is answered with a reset
//! (`process_tcp` in smoltcp's interface, with no option to change it). A client then sees
//! "connection refused" or "reset by peer" instead of waiting. A [`Listener`] behaves like a Linux
//! server socket instead:
//!
//! - it keeps a few sockets listening ([`ListenConfig::ready`]) and refills them after every
//!   pass of the stack, so a connection is taken as soon as its SYN arrives;
//! - connections handshaken but not yet accepted by the application wait in the backlog (at most
//!   [`ListenConfig::backlog`], listening sockets included), and the application takes them one at
//!   a time with [`Stack::accept`](super::Stack::accept);
//! - a SYN that arrives when every listening socket of its port is taken is *held* in guest-rt's
//!   receive path (the rest of that pass's frames wait behind it) while the stack opens another
//!   listening socket, when the backlog and the connection limit have room;
//! - when they have none, the SYN is *dropped* before smoltcp sees it: the client's kernel
//!   retransmits it (after 1 s, 3 s, 7 s... on Linux) and gets in once a connection has closed
//!   or the application has accepted. Never a reset;
//! - a client that goes silent before its connection is accepted (in the middle of its
//!   handshake) loses it after 60 s, so that it does not hold a place in the backlog for ever.
//!
//! Only a SYN without ACK (a connection request) is ever held or dropped: every segment of an
//! existing connection, FIN and RST included, goes to smoltcp untouched. A repeated SYN from a
//! client whose connection is still in SYN-RECEIVED is dropped too, so that no second socket takes
//! it (smoltcp offers a SYN to sockets in slot order, and a listening socket in a lower slot would
//! otherwise open a second connection for the same client): the first socket retransmits its
//! SYN-ACK on its own timer.
//!
//! Memory: each socket's buffers ([`ListenConfig::rx_buffer`], [`ListenConfig::tx_buffer`]) are
//! allocated when the socket is created, that is when a listening socket is refilled, and freed
//! (the socket removed from smoltcp's set) once the connection has ended after
//! [`Stack::tcp_close`](super::Stack::tcp_close). smoltcp fixes a socket's buffers at creation and
//! a listening socket becomes the connection, so a listening socket has the connection's full
//! buffers: the idle cost of a listener is `ready` sockets. [`ListenConfig::max_connections`]
//! bounds every socket the listener holds (listening, waiting, accepted and closing), so
//! `max_connections × bytes_per_connection()` bounds its memory.
//!
//! TIME-WAIT: a connection the server closed first ends in TIME-WAIT, which smoltcp keeps for
//! 10 s with its buffers. guest-rt frees such a socket at once instead, so that a server that
//! closes connections (HTTP `Connection: close`) does not hold 10 s worth of them. A closed
//! socket ACKs at once (no delayed ACK), so the ACK of the client's FIN has left by the time the
//! socket reaches TIME-WAIT and is freed. The cost: if that ACK is lost and the client retransmits
//! its FIN, the FIN is answered with a reset, which the client's kernel takes as the end of a
//! connection its application has already closed.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpEndpoint, IpProtocol, Ipv4Packet, TcpPacket};

/// How a [`Listener`] sizes its sockets and how many it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenConfig {
    /// Connections not yet accepted by the application (listening sockets included); past it,
    /// SYNs are dropped, as Linux drops them when a listen queue is full.
    pub backlog: usize,
    /// Every socket the listener holds at once: listening, waiting, accepted and closing. Past
    /// it, SYNs are dropped.
    pub max_connections: usize,
    /// Sockets kept in the Listen state when the backlog and the limit have room: what a
    /// burst of SYNs takes without a hold (each further SYN costs one more pass of the stack).
    /// Each costs a connection's memory while idle.
    pub ready: usize,
    /// Receive buffer of each connection, bytes.
    pub rx_buffer: usize,
    /// Transmit buffer of each connection, bytes.
    pub tx_buffer: usize,
}

/// Default backlog: Linux's `SOMAXCONN` (since 5.4). It costs nothing while unused (only `ready`
/// sockets wait in advance) and [`ListenConfig::max_connections`] bounds it anyway; a small one
/// drops SYNs of a burst that the application would accept a moment later (with 128, a 5-s wrk
/// run over 1,024 connections had 2,526 SYNs dropped and only 677 connections open in time).
pub const DEFAULT_BACKLOG: usize = 4096;
/// Default listening sockets kept ready: small, because each holds a connection's buffers.
pub const DEFAULT_READY: usize = 4;
/// Bytes the heap allocator adds to each block (its bookkeeping and alignment), counted per
/// buffer in [`ListenConfig::bytes_per_connection`].
const ALLOC_OVERHEAD: usize = 16;
/// How long a connection may stay silent before the application has accepted it (a client gone
/// in the middle of its handshake): past it smoltcp aborts the socket, which then leaves the
/// backlog. About Linux's: its five SYN-ACK retransmissions take 63 s.
const UNACCEPTED_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(60);
/// How long a closed connection may take to end (the peer to acknowledge and close its side)
/// before it is aborted and its memory freed: Linux's `tcp_fin_timeout`.
pub(crate) const ORPHAN_TIMEOUT_NS: u64 = 60_000_000_000;

impl ListenConfig {
    /// Up to `max_connections` connections of [`TCP_BUFFER`](super::TCP_BUFFER) bytes each way,
    /// with the default backlog and ready sockets.
    pub const fn new(max_connections: usize) -> Self {
        ListenConfig {
            backlog: DEFAULT_BACKLOG,
            max_connections,
            ready: DEFAULT_READY,
            rx_buffer: super::TCP_BUFFER,
            tx_buffer: super::TCP_BUFFER,
        }
    }

    /// The same with other buffer sizes.
    pub const fn with_buffers(self, rx_buffer: usize, tx_buffer: usize) -> Self {
        ListenConfig { rx_buffer, tx_buffer, ..self }
    }

    /// Heap bytes one connection costs in guest-rt: its two buffers, smoltcp's socket and its
    /// slot in the socket set.
    pub const fn bytes_per_connection(&self) -> usize {
        self.rx_buffer
            + self.tx_buffer
            + 2 * ALLOC_OVERHEAD
            + core::mem::size_of::<tcp::Socket<'static>>()
            + core::mem::size_of::<SocketStorage<'static>>()
    }
}

/// The command-line option that sets a service's connection limit.
pub const CONNECTIONS_OPTION: &str = "--connections=";

/// A service's connection limit: `--connections=N` from `args` if given, else as many
/// connections of `bytes_each` heap bytes as fit in half the heap that is free now (the other
/// half is left to everything else the service allocates). The error is a message for the
/// console: a limit of 0, not a number, or more than the free heap holds.
pub fn connection_limit(args: &[&str], bytes_each: usize) -> Result<usize, alloc::string::String> {
    let free = crate::heap_free();
    limit_from(args, bytes_each, free)
}

fn limit_from(args: &[&str], bytes_each: usize, free: usize) -> Result<usize, alloc::string::String> {
    let bytes_each = bytes_each.max(1);
    let Some(value) = args.iter().rev().find_map(|w| w.strip_prefix(CONNECTIONS_OPTION)) else {
        return Ok((free / 2 / bytes_each).max(1));
    };
    let n: usize =
        value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            alloc::format!("{CONNECTIONS_OPTION}{value}: expected a number of connections, at least 1")
        })?;
    let fits = free / bytes_each;
    if n > fits {
        return Err(alloc::format!(
            "{CONNECTIONS_OPTION}{n}: {} KiB each, {} KiB of heap free: at most {fits} (give the guest more --mem)",
            bytes_each.div_ceil(1024),
            free / 1024
        ));
    }
    Ok(n)
}

/// Why [`Stack::tcp_listener`](super::Stack::tcp_listener) refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenError {
    /// Port 0 cannot be listened on.
    PortZero,
    /// Another listener of this stack has the port.
    PortInUse,
    /// A limit of 0 connections, a backlog or ready count of 0, or a buffer of 0 bytes.
    Empty,
}

impl core::fmt::Display for ListenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ListenError::PortZero => "port 0 cannot be listened on",
            ListenError::PortInUse => "the port already has a listener",
            ListenError::Empty => {
                "a listener needs at least one connection, backlog slot, ready socket and buffer byte"
            }
        })
    }
}

/// A listener of a [`Stack`](super::Stack), for [`accept`](super::Stack::accept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpListener(pub(crate) usize);

/// A listener's sockets, kept by the stack.
pub(crate) struct Listener {
    pub(crate) port: u16,
    pub(crate) config: ListenConfig,
    /// Sockets not yet accepted: listening, in the handshake, or waiting for `accept`.
    pub(crate) unaccepted: Vec<SocketHandle>,
    /// Sockets the application has accepted and not yet closed.
    pub(crate) accepted: Vec<SocketHandle>,
    /// Every socket of this listener, closing ones included.
    pub(crate) live: usize,
}

impl Listener {
    pub(crate) fn new(port: u16, config: ListenConfig) -> Self {
        Listener { port, config, unaccepted: Vec::new(), accepted: Vec::new(), live: 0 }
    }

    /// Whether another listening socket may be opened now.
    pub(crate) fn can_grow(&self) -> bool {
        self.unaccepted.len() < self.config.backlog && self.live < self.config.max_connections
    }

    pub(crate) fn new_socket(&self) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.config.rx_buffer]),
            tcp::SocketBuffer::new(vec![0; self.config.tx_buffer]),
        );
        // Cannot fail: the port is not 0 (checked when the listener was made) and the socket is new.
        let _ = s.listen(self.port);
        s.set_timeout(Some(UNACCEPTED_TIMEOUT));
        s
    }

    /// Frees sockets that died in the handshake, opens listening sockets up to `ready`, and tells
    /// the gate what this listener can take. Work proportional to the backlog, not to the number
    /// of connections.
    pub(crate) fn tend(&mut self, sockets: &mut SocketSet<'static>, gate: &mut PortGate) {
        gate.half_open.clear();
        let mut listening = 0;
        let mut i = 0;
        while i < self.unaccepted.len() {
            let s = sockets.get::<tcp::Socket>(self.unaccepted[i]);
            match s.state() {
                tcp::State::Listen => listening += 1,
                tcp::State::SynReceived => {
                    if let Some(remote) = s.remote_endpoint() {
                        gate.half_open.push(remote);
                    }
                }
                // Reset or timed out before the application saw it.
                tcp::State::Closed | tcp::State::TimeWait => {
                    sockets.remove(self.unaccepted.swap_remove(i));
                    self.live -= 1;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        while listening < self.config.ready && self.can_grow() {
            let s = self.new_socket();
            self.unaccepted.push(sockets.add(s));
            self.live += 1;
            listening += 1;
        }
        gate.listening = listening;
        gate.can_grow = self.can_grow();
    }

    /// The oldest connection that has finished its handshake, if any. From here on it lives until
    /// the application closes it, however long it idles (as on Linux without keep-alive): an
    /// application that wants idle or dead clients cut off sets smoltcp's keep-alive and timeout
    /// on the socket.
    pub(crate) fn accept(&mut self, sockets: &mut SocketSet<'static>) -> Option<SocketHandle> {
        let at = self.unaccepted.iter().position(|h| {
            !matches!(
                sockets.get::<tcp::Socket>(*h).state(),
                tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed | tcp::State::TimeWait
            )
        })?;
        let h = self.unaccepted.remove(at);
        // smoltcp's timeout also cuts a connection that is merely idle: not the application's.
        sockets.get_mut::<tcp::Socket>(h).set_timeout(None);
        self.accepted.push(h);
        Some(h)
    }
}

/// A socket the application has closed, freed once its connection has ended.
pub(crate) struct Closing {
    pub(crate) handle: SocketHandle,
    /// The listener it counts against, if it came from one.
    pub(crate) listener: Option<usize>,
    /// When it is aborted if still not ended (guest-rt's monotonic clock).
    pub(crate) abort_at_ns: u64,
}

/// What the receive path does with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Give it to smoltcp.
    Pass,
    /// Discard it (a SYN the listener cannot take: the client retransmits).
    Drop,
    /// Keep it until the stack has opened another listening socket.
    Hold,
}

/// What one listener can take, as the receive path sees it during a pass of the stack.
#[derive(Debug, Default)]
pub(crate) struct PortGate {
    pub(crate) port: u16,
    /// Listening sockets not yet claimed by a SYN in this pass.
    pub(crate) listening: usize,
    /// Whether the listener may open another listening socket.
    pub(crate) can_grow: bool,
    /// Clients whose connection is in SYN-RECEIVED (or whose SYN passed in this pass).
    pub(crate) half_open: Vec<IpEndpoint>,
}

/// The SYN filter in front of smoltcp, one [`PortGate`] per listener.
#[derive(Debug, Default)]
pub(crate) struct SynGate {
    pub(crate) ports: Vec<PortGate>,
    /// SYNs dropped since the start.
    pub(crate) dropped: u64,
}

impl SynGate {
    pub(crate) fn judge(&mut self, frame: &[u8]) -> Verdict {
        if self.ports.is_empty() {
            return Verdict::Pass;
        }
        let Some((client, port)) = connection_request(frame) else {
            return Verdict::Pass;
        };
        let Some(gate) = self.ports.iter_mut().find(|g| g.port == port) else {
            return Verdict::Pass; // not a listener's port: smoltcp answers as it always does
        };
        let verdict = if gate.half_open.contains(&client) {
            Verdict::Drop
        } else if gate.listening > 0 {
            gate.listening -= 1;
            gate.half_open.push(client);
            Verdict::Pass
        } else if gate.can_grow {
            Verdict::Hold
        } else {
            Verdict::Drop
        };
        if verdict == Verdict::Drop {
            self.dropped += 1;
        }
        verdict
    }
}

/// The client and our port, if `frame` is an Ethernet IPv4 TCP segment with SYN set and ACK and
/// RST clear: a request for a new connection. Checksums are smoltcp's business.
fn connection_request(frame: &[u8]) -> Option<(IpEndpoint, u16)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.frag_offset() != 0 {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    if !tcp.syn() || tcp.ack() || tcp.rst() {
        return None;
    }
    Some((IpEndpoint::new(ip.src_addr().into(), tcp.src_port()), tcp.dst_port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;

    /// An Ethernet + IPv4 + TCP frame from 10.0.0.1:`src_port` to 10.0.0.2:`dst_port`.
    fn segment(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let tcp = &mut f[34..];
        tcp[0..2].copy_from_slice(&src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&dst_port.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        f
    }

    fn gate(listening: usize, can_grow: bool) -> SynGate {
        SynGate { ports: vec![PortGate { port: 80, listening, can_grow, half_open: Vec::new() }], dropped: 0 }
    }

    #[test]
    fn syns_take_listening_sockets_then_wait_or_drop() {
        let mut g = gate(2, true);
        assert_eq!(g.judge(&segment(1000, 80, SYN)), Verdict::Pass);
        assert_eq!(g.judge(&segment(1001, 80, SYN)), Verdict::Pass);
        assert_eq!(g.judge(&segment(1002, 80, SYN)), Verdict::Hold, "room for another listening socket");
        g.ports[0].can_grow = false;
        assert_eq!(g.judge(&segment(1002, 80, SYN)), Verdict::Drop, "at the limit");
        assert_eq!(g.dropped, 1);
    }

    #[test]
    fn a_repeated_syn_of_a_half_open_connection_is_dropped() {
        let mut g = gate(3, true);
        assert_eq!(g.judge(&segment(1000, 80, SYN)), Verdict::Pass);
        assert_eq!(g.judge(&segment(1000, 80, SYN)), Verdict::Drop);
        assert_eq!(g.ports[0].listening, 2, "the repeat took no listening socket");
    }

    #[test]
    fn only_connection_requests_to_a_listener_are_ever_stopped() {
        let mut g = gate(0, false);
        for flags in [ACK, SYN | ACK, RST, RST | ACK, FIN | ACK, SYN | RST, 0] {
            assert_eq!(g.judge(&segment(1000, 80, flags)), Verdict::Pass, "flags {flags:#x}");
        }
        assert_eq!(g.judge(&segment(1000, 81, SYN)), Verdict::Pass, "another port");
        let mut arp = segment(1000, 80, SYN);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(g.judge(&arp), Verdict::Pass);
        let mut udp = segment(1000, 80, SYN);
        udp[14 + 9] = 17;
        assert_eq!(g.judge(&udp), Verdict::Pass);
        let mut fragment = segment(1000, 80, SYN);
        fragment[14 + 7] = 1; // offset 8 bytes: no TCP header here
        assert_eq!(g.judge(&fragment), Verdict::Pass);
        assert_eq!(g.judge(&segment(1000, 80, SYN)[..40]), Verdict::Pass, "truncated");
        assert_eq!(g.judge(&segment(1000, 80, SYN)), Verdict::Drop);
    }

    #[test]
    fn listening_sockets_are_opened_up_to_ready_and_the_limit() {
        let mut sockets = SocketSet::new(vec![]);
        let config = ListenConfig { ready: 4, ..ListenConfig::new(6).with_buffers(512, 512) };
        let mut listener = Listener::new(80, config);
        let mut gate = PortGate { port: 80, ..PortGate::default() };
        listener.tend(&mut sockets, &mut gate);
        assert_eq!((sockets.iter().count(), gate.listening, gate.can_grow), (4, 4, true));
        listener.tend(&mut sockets, &mut gate);
        assert_eq!(sockets.iter().count(), 4, "nothing changed, nothing opened");
        // Two sockets become connections the application has accepted: the limit (6 in all, 4
        // live) leaves room for 2 more listening ones.
        for _ in 0..2 {
            let h = listener.unaccepted.pop().unwrap();
            listener.accepted.push(h);
        }
        listener.tend(&mut sockets, &mut gate);
        assert_eq!((listener.live, gate.listening, gate.can_grow), (6, 4, false));
        assert_eq!(listener.accept(&mut sockets), None, "no connection has finished its handshake");
    }

    #[test]
    fn connection_limits_from_the_command_line_and_the_heap() {
        let mib = 1 << 20;
        assert_eq!(limit_from(&[], 32 << 10, 60 * mib), Ok(960));
        assert_eq!(limit_from(&["--connections=10"], 32 << 10, 60 * mib), Ok(10));
        assert_eq!(limit_from(&[], 32 << 10, 1000), Ok(1), "at least one");
        for bad in ["--connections=0", "--connections=x", "--connections=", "--connections=-1", "--connections=2000"] {
            let e = limit_from(&[bad], 32 << 10, 60 * mib).unwrap_err();
            assert!(e.starts_with("--connections="), "{e}");
        }
    }
}
