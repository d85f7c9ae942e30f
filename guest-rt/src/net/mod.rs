//! The network core: smoltcp over a [`NetDevice`], configured from the command line,
//! driven by one event loop that sleeps in the POLL hypercall.
//!
//! An application owns a [`Stack`] per NIC, adds listeners and smoltcp sockets to it (TCP
//! listeners with a backlog, TCP connect, UDP bind), and loops: [`Stack::poll`] moves frames and
//! timers, the application accepts connections and reads and writes its sockets with smoltcp's
//! own socket API, [`Stack::wait`] sleeps until a frame arrives or smoltcp's next deadline. ARP
//! and ICMP echo are answered by the stack itself.
//!
//! ```ignore
//! let (mut net, args) = Stack::from_cmdline("service")?;
//! let config = ListenConfig::new(1).with_buffers(8 << 10, 8 << 10);
//! let limit = net::connection_limit(&args, config.bytes_per_connection())?; // --connections=N
//! let server = net.tcp_listener(80, ListenConfig { max_connections: limit, ..config })?;
//! let mut conns = Vec::new();
//! loop {
//!     net.poll();
//!     while let Some(h) = net.accept(server) { conns.push(h); }
//!     conns.retain(|&h| {
//!         let sock = net.tcp(h);
//!         if sock.can_recv() { /* read a request, sock.send_slice(response) */ }
//!         let done = !sock.may_recv(); // the client closed (or reset)
//!         if done { net.tcp_close(h); } // frees the socket once the connection has ended
//!         !done
//!     });
//!     net.wait();
//! }
//! ```
//!
//! Why a poll loop and not async: a unikernel has one thread and one event source (POLL); the
//! loop above is the whole scheduler, and applications stay ordinary straight-line code. Memory
//! is allocated per connection (its socket buffers, when a listening socket is opened for it) and
//! freed when it ends, never per packet: see `listener.rs`.
mod config;
mod listener;
mod phy;
mod spin;

pub use config::{IpConfig, parse_args};
pub use listener::{
    CONNECTIONS_OPTION, DEFAULT_BACKLOG, DEFAULT_READY, ListenConfig, ListenError, TcpListener, connection_limit,
};
pub use smoltcp;

use crate::NetDevice;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::{dhcpv4, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, IpListenEndpoint};

use listener::{Closing, Listener, ORPHAN_TIMEOUT_NS, PortGate};
use phy::Phy;

/// Default TCP socket buffer, each direction.
pub const TCP_BUFFER: usize = 64 << 10;
/// Default UDP buffer: packets and payload bytes (room for a whole batch of full-size datagrams).
pub const UDP_PACKETS: usize = 64;
pub const UDP_BUFFER: usize = 128 << 10;
/// Longest sleep when smoltcp has no deadline (smoltcp reports its own timers, DHCP's included;
/// this bounds how late an application's own checks after [`Stack::wait`] may run). Each wake-up
/// of an idle service costs two exits: at 1 s, 1,000 idle services took 14% of a CPU here
/// (docs/PERFORMANCE.md, "Density"); at 10 s, a tenth of that.
const MAX_SLEEP_NS: u64 = 10_000_000_000;
/// The longest [`Stack::wait`] busy-polls for the next frame, after a wake-up that brought
/// request traffic (a unicast TCP or UDP frame) and a reply to it (`Phy::take_traffic`),
/// before it sleeps in POLL: `--poll-spin=US` on the command line, 0 (never) to
/// [`POLL_SPIN_MAX_US`]. A request-response exchange is otherwise bound by POLL's exit and its return (docs/PERFORMANCE.md, "Latency of one request at a
/// time"); a client's next request that arrives within the spin is read through the ring with no
/// exit. The window adapts below this ceiling (`spin.rs`): it grows only while frames come
/// soon enough for it to catch them. A spin costs its length in CPU on the vCPU. Under tender,
/// which offers waiting reads (`TENDER_FEATURE_WAIT_READ`), the spin is one read that tender's
/// ring thread holds, asleep in the kernel, until a frame arrives; under solo5-hvt the thread
/// answers read after read and costs as much again. ARP, pings and other broadcasts never start
/// one, so an idle service never spins.
pub const POLL_SPIN_DEFAULT_US: u64 = 100;
pub const POLL_SPIN_MAX_US: u64 = 1000;
pub(crate) const POLL_SPIN_OPTION: &str = "--poll-spin=";
static POLL_SPIN_NS: AtomicU64 = AtomicU64::new(POLL_SPIN_DEFAULT_US * 1000);

/// Sets [`Stack::wait`]'s busy-poll (see [`POLL_SPIN_DEFAULT_US`]); `--poll-spin=US` does.
pub fn set_poll_spin_us(us: u64) {
    POLL_SPIN_NS.store(us.min(POLL_SPIN_MAX_US) * 1000, Ordering::Relaxed);
}

fn poll_spin_ns() -> u64 {
    POLL_SPIN_NS.load(Ordering::Relaxed)
}

/// Passes of smoltcp one [`Stack::poll`] makes at most. A pass ends early when the SYN gate holds
/// a SYN until a listening socket is opened; frames per poll stay bounded by the receive budget.
const MAX_PASSES: usize = 2 * phy::RX_BATCH as usize;

/// What serving a connection once did ([`Stack::serve_connections`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Idle,
    Worked,
    /// The connection is over: close it and free it.
    Done,
}

/// The smoltcp clock: guest-rt's monotonic clock.
pub fn now() -> Instant {
    Instant::from_micros((crate::monotonic_ns() / 1000) as i64)
}

/// One NIC with its interface and sockets.
pub struct Stack {
    phy: Phy,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    nic: NetDevice,
    /// TCP listeners; `phy.gate.ports[i]` is the SYN gate of `listeners[i]`.
    listeners: Vec<Listener>,
    /// Sockets the application has closed, until their connection has ended.
    closing: Vec<Closing>,
    /// How long [`wait`](Self::wait) busy-polls now.
    spin: spin::Window,
}

impl Stack {
    /// A stack on `nic` with the given IP configuration.
    pub fn new(nic: NetDevice, ip: &IpConfig) -> Self {
        let mut phy = Phy::new(nic);
        let hw = HardwareAddress::Ethernet(EthernetAddress(nic.mac()));
        let mut iface = Interface::new(Config::new(hw), &mut phy, now());
        let mut sockets = SocketSet::new(vec![]);
        let mut dhcp = None;
        match ip {
            IpConfig::Static { address, prefix, gateway } => {
                iface.update_ip_addrs(|a| {
                    let _ = a.push(IpCidr::new((*address).into(), *prefix));
                });
                if let Some(gw) = gateway {
                    let _ = iface.routes_mut().add_default_ipv4_route(*gw);
                }
            }
            IpConfig::Dhcp => dhcp = Some(sockets.add(dhcpv4::Socket::new())),
        }
        Stack { phy, iface, sockets, dhcp, nic, listeners: Vec::new(), closing: Vec::new(), spin: Default::default() }
    }

    /// The usual start of a one-NIC service: opens the net device `name`, configures it from
    /// the command line (`--ipv4=…`, `--ipv4-gateway=…`, `--dhcp`), and returns the stack with
    /// the application's own arguments. The error is a message for the console.
    pub fn from_cmdline(name: &str) -> Result<(Stack, alloc::vec::Vec<&'static str>), alloc::string::String> {
        let (ips, rest) = parse_args(crate::cmdline(), 1)?;
        let nic = NetDevice::open(name).map_err(|e| alloc::format!("cannot open net device {name}: {e:?}"))?;
        Ok((Stack::new(nic, &ips[0]), rest))
    }

    pub fn nic(&self) -> NetDevice {
        self.nic
    }

    /// The interface's IPv4 address and prefix, once configured.
    pub fn ipv4(&self) -> Option<(smoltcp::wire::Ipv4Address, u8)> {
        self.iface.ipv4_addr().map(|a| (a, self.iface.ip_addrs().first().map_or(0, IpCidr::prefix_len)))
    }

    /// Moves pending frames in (at most a batch: [`busy`](Self::busy) stays true when more may
    /// wait) and out, and runs smoltcp's timers. Returns true when a socket may have changed
    /// state.
    pub fn poll(&mut self) -> bool {
        self.phy.refill_rx_budget();
        let mut changed = false;
        for _ in 0..MAX_PASSES {
            changed |= self.iface.poll(now(), &mut self.phy, &mut self.sockets) == PollResult::SocketStateChanged;
            self.tend_sockets();
            if !self.phy.holding() {
                break;
            }
        }
        if let Some(h) = self.dhcp {
            self.dhcp_event(h);
        }
        changed
    }

    /// Frees closed connections and refills the listeners (see `listener.rs`).
    fn tend_sockets(&mut self) {
        if !self.closing.is_empty() {
            let now_ns = crate::monotonic_ns();
            let mut i = 0;
            while i < self.closing.len() {
                let c = &self.closing[i];
                let s = self.sockets.get_mut::<tcp::Socket>(c.handle);
                match s.state() {
                    tcp::State::Closed | tcp::State::TimeWait => {
                        if let Some(l) = c.listener {
                            self.listeners[l].live -= 1;
                        }
                        self.sockets.remove(self.closing.swap_remove(i).handle);
                        continue;
                    }
                    // Sends a reset; the socket is Closed now and freed on the next pass.
                    _ if now_ns >= c.abort_at_ns => s.abort(),
                    _ => {}
                }
                i += 1;
            }
        }
        for (listener, gate) in self.listeners.iter_mut().zip(self.phy.gate.ports.iter_mut()) {
            listener.tend(&mut self.sockets, gate);
        }
    }

    /// Listens on `port` for up to `config.max_connections` connections at once (see
    /// `listener.rs`): take them with [`accept`](Self::accept), end them with
    /// [`tcp_close`](Self::tcp_close).
    pub fn tcp_listener(&mut self, port: u16, config: ListenConfig) -> Result<TcpListener, ListenError> {
        if port == 0 {
            return Err(ListenError::PortZero);
        }
        if self.listeners.iter().any(|l| l.port == port) {
            return Err(ListenError::PortInUse);
        }
        let c = &config;
        if c.max_connections == 0 || c.backlog == 0 || c.ready == 0 || c.rx_buffer == 0 || c.tx_buffer == 0 {
            return Err(ListenError::Empty);
        }
        let mut listener = Listener::new(port, config);
        let mut gate = PortGate { port, ..PortGate::default() };
        listener.tend(&mut self.sockets, &mut gate);
        self.listeners.push(listener);
        self.phy.gate.ports.push(gate);
        Ok(TcpListener(self.listeners.len() - 1))
    }

    /// The oldest connection on `listener` that has finished its handshake and not been taken
    /// yet. The socket may already be past Established (the client sent its request and closed):
    /// read what it holds as usual.
    pub fn accept(&mut self, listener: TcpListener) -> Option<SocketHandle> {
        self.listeners[listener.0].accept(&mut self.sockets)
    }

    /// Moves every accepted connection in `conns` forward with `serve`, closing (and dropping)
    /// those it reports [`Progress::Done`]; `socket` names a connection's socket. True if any
    /// connection did something, so the caller polls again before it waits.
    pub fn serve_connections<C>(
        &mut self,
        conns: &mut Vec<C>,
        socket: impl Fn(&C) -> SocketHandle,
        mut serve: impl FnMut(&mut Stack, &mut C) -> Progress,
    ) -> bool {
        let mut worked = false;
        let mut i = 0;
        while i < conns.len() {
            match serve(self, &mut conns[i]) {
                Progress::Idle => i += 1,
                Progress::Worked => (worked, i) = (true, i + 1),
                Progress::Done => {
                    let done = conns.swap_remove(i);
                    self.tcp_close(socket(&done));
                    worked = true;
                }
            }
        }
        worked
    }

    /// Closes a TCP connection (queued data is sent first, then FIN) and gives its socket back:
    /// the stack frees it, buffers and all, once the connection has ended, or aborts it if the
    /// peer has not let it end within a minute (Linux's `tcp_fin_timeout`). The handle must not
    /// be used afterwards: its slot goes to a later socket.
    pub fn tcp_close(&mut self, h: SocketHandle) {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.close();
        // ACK the peer's FIN at once rather than after smoltcp's 10 ms delay: the socket is freed
        // on reaching TIME-WAIT, which must not happen with that ACK still unsent.
        s.set_ack_delay(None);
        let listener = self.listeners.iter_mut().position(|l| {
            let at = l.accepted.iter().position(|a| *a == h);
            at.map(|at| l.accepted.swap_remove(at)).is_some()
        });
        self.closing.push(Closing { handle: h, listener, abort_at_ns: crate::monotonic_ns() + ORPHAN_TIMEOUT_NS });
    }

    /// Connection requests (SYNs) dropped so far because a listener was at its backlog or its
    /// connection limit.
    pub fn syns_dropped(&self) -> u64 {
        self.phy.gate.dropped
    }

    /// Sockets this stack holds now (listening, connected and closing, UDP and DHCP included).
    pub fn sockets_held(&self) -> usize {
        self.sockets.iter().count()
    }

    fn dhcp_event(&mut self, h: SocketHandle) {
        match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            Some(dhcpv4::Event::Configured(c)) => {
                self.iface.update_ip_addrs(|a| {
                    a.clear();
                    let _ = a.push(IpCidr::Ipv4(c.address));
                });
                if let Some(router) = c.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                }
            }
            Some(dhcpv4::Event::Deconfigured) => self.iface.update_ip_addrs(|a| a.clear()),
            None => {}
        }
    }

    /// Nanoseconds until smoltcp next needs [`poll`](Self::poll), at most ten seconds.
    pub fn next_deadline_ns(&mut self) -> u64 {
        match self.iface.poll_delay(now(), &self.sockets) {
            Some(d) => d.total_micros().saturating_mul(1000).min(MAX_SLEEP_NS),
            None => MAX_SLEEP_NS,
        }
    }

    /// Sleeps until a frame arrives or smoltcp's next deadline, whichever is first. If the
    /// tender's ring thread is still sending the last frames (an ACK, a reply), it first waits
    /// for that, since the peer's answer may come while it does, and then returns without
    /// sleeping (see `ring::settle`). After request traffic it may busy-poll, for a window that
    /// adapts to how soon the next frame comes, at most `--poll-spin` (see
    /// [`POLL_SPIN_DEFAULT_US`] and `spin.rs`).
    pub fn wait(&mut self) {
        if self.phy.rx_pending() {
            return; // frames may still be queued: poll again before sleeping
        }
        if crate::ring::settle() {
            self.phy.set_rx_pending();
            return;
        }
        let start = crate::monotonic_ns();
        let deadline = start + self.next_deadline_ns();
        let max = poll_spin_ns();
        if !self.phy.take_traffic() || max == 0 {
            let ready = crate::device::wait(deadline);
            self.note_ready(ready);
            return;
        }
        let spin = self.spin.current(max);
        if spin > 0 && self.phy.spin_for_frame(deadline.min(start + spin)) {
            return;
        }
        let asleep = crate::monotonic_ns();
        let ready = crate::device::wait(deadline);
        let frame = ready & self.nic.ready_bit() != 0;
        self.spin.after_sleep(max, asleep - start, crate::monotonic_ns() - asleep, frame);
        self.note_ready(ready);
    }

    /// Tells the stack which NICs a wait (possibly shared by several stacks) found readable.
    pub fn note_ready(&mut self, ready_set: u64) {
        if ready_set & self.nic.ready_bit() != 0 {
            self.phy.set_rx_pending();
        }
    }

    /// Whether frames may be waiting (the caller must not sleep).
    pub fn busy(&self) -> bool {
        self.phy.rx_pending()
    }

    /// Called with every received frame before the stack sees it (for statistics or tests); a
    /// SYN the listeners' gate drops is never seen.
    pub fn set_rx_hook(&mut self, hook: fn(&[u8])) {
        self.phy.hook = Some(hook);
    }

    /// A TCP socket listening on `port`, with [`TCP_BUFFER`] bytes each way. A listening socket
    /// serves one connection at a time, and a client that finds it busy is refused with a reset:
    /// servers for more than one client use [`tcp_listener`](Self::tcp_listener).
    pub fn tcp_listen(&mut self, port: u16) -> SocketHandle {
        let mut s =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0; TCP_BUFFER]));
        let _ = s.listen(port);
        self.sockets.add(s)
    }

    /// A TCP socket connecting to `remote` from local port `local_port`.
    pub fn tcp_connect(
        &mut self,
        remote: smoltcp::wire::IpEndpoint,
        local_port: u16,
    ) -> Result<SocketHandle, tcp::ConnectError> {
        let mut s =
            tcp::Socket::new(tcp::SocketBuffer::new(vec![0; TCP_BUFFER]), tcp::SocketBuffer::new(vec![0; TCP_BUFFER]));
        s.connect(self.iface.context(), remote, local_port)?;
        Ok(self.sockets.add(s))
    }

    /// A UDP socket bound to `port`.
    pub fn udp_bind(&mut self, port: u16) -> SocketHandle {
        let meta = || vec![udp::PacketMetadata::EMPTY; UDP_PACKETS];
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(meta(), vec![0; UDP_BUFFER]),
            udp::PacketBuffer::new(meta(), vec![0; UDP_BUFFER]),
        );
        let _ = s.bind(IpListenEndpoint { addr: None, port });
        self.sockets.add(s)
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut(h)
    }

    pub fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut(h)
    }
}
