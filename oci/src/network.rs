//! The container's network for the guest, done inside the container's network namespace: a tap,
//! and when the namespace has a configured interface (CNI's `eth0`), the two tc redirects that
//! join them (Kata's "tcfilter" model). The guest then takes the interface's MAC, address,
//! prefix and gateway, and the kernel's own stack on that interface sees nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{IntoRawFd, RawFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The tap's name inside the container's namespace.
pub const TAP_NAME: &str = "tender0";
/// tc's "all protocols", which the kernel reads in network byte order.
const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
/// The ingress qdisc's handle, `ffff:`, parent of the redirect filters.
const INGRESS_PARENT: u32 = 0xffff_0000;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot create the tap {TAP_NAME}: {0}")]
    Tap(std::io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
}

/// The interface the container's network comes in on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// `ADDR/PREFIX`.
    pub addr: String,
    pub gateway: Ipv4Addr,
}

/// The guest's side: the tap's fd (without FD_CLOEXEC: tender inherits it) and the uplink.
pub struct Prepared {
    pub tap_fd: RawFd,
    pub uplink: Option<Uplink>,
}

/// Creates the tap in the current network namespace and connects it to the uplink, if any.
/// The tap is not persistent: it goes away with the last fd, that is with tender.
pub fn prepare() -> Result<Prepared, NetworkError> {
    let tap = tun_tap::Iface::without_packet_info(TAP_NAME, tun_tap::Mode::Tap).map_err(NetworkError::Tap)?;
    let tap_fd = tap.into_raw_fd();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let uplink = runtime.block_on(connect())?;
    Ok(Prepared { tap_fd, uplink })
}

async fn connect() -> Result<Option<Uplink>, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(connection);
    let tap_index = link_index(&handle, TAP_NAME).await?;
    let uplink = find_uplink(&handle).await?;
    let mut tap = LinkUnspec::new_with_index(tap_index).up();
    if let Some(u) = &uplink {
        tap = tap.mtu(u.mtu);
    }
    handle.link().set(tap.build()).execute().await?;
    let Some(u) = &uplink else { return Ok(None) };
    redirect(&handle, u.index, tap_index).await?;
    if let Err(e) = redirect(&handle, tap_index, u.index).await {
        unredirect(&handle, u.index).await;
        return Err(e);
    }
    Ok(uplink)
}

/// Removes the uplink's ingress qdisc, and with it the redirect filter under it, in the current
/// network namespace. Best effort: the interface may be gone with its namespace.
pub fn disconnect(uplink: u32) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_io().build() else { return };
    runtime.block_on(async {
        let Ok((connection, handle, _)) = rtnetlink::new_connection() else { return };
        tokio::spawn(connection);
        unredirect(&handle, uplink).await;
    });
}

/// [`disconnect`] inside the network namespace at `netns` (a pod's, which outlives the
/// container). This process moves into that namespace: call it last.
pub fn disconnect_in(netns: &std::path::Path, uplink: u32) {
    let Ok(ns) = std::fs::File::open(netns) else { return };
    if nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).is_ok() {
        disconnect(uplink);
    }
}

async fn unredirect(handle: &Handle, index: u32) {
    let mut del = handle.qdisc().del(index as i32);
    del.message_mut().header.parent = TcHandle::INGRESS;
    let _ = del.execute().await;
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await? {
        Some(link) => Ok(link.header.index),
        None => Err(NetworkError::Tap(std::io::Error::from_raw_os_error(libc::ENODEV))),
    }
}

/// The interface of the IPv4 default route, with its MAC, MTU and address.
async fn find_uplink(handle: &Handle) -> Result<Option<Uplink>, NetworkError> {
    let mut routes = handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
    let mut found = None;
    while let Some(route) = routes.try_next().await? {
        if route.header.destination_prefix_length != 0 {
            continue;
        }
        let mut gateway = None;
        let mut oif = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => gateway = Some(*gw),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let (Some(gw), Some(i)) = (gateway, oif) {
            found = Some((gw, i));
            break;
        }
    }
    let Some((gateway, index)) = found else { return Ok(None) };
    let mut addrs = handle.address().get().set_link_index_filter(index).execute();
    let mut addr = None;
    while let Some(msg) = addrs.try_next().await? {
        let ip = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = ip {
            addr = Some(format!("{ip}/{}", msg.header.prefix_len));
            break;
        }
    }
    let Some(addr) = addr else { return Ok(None) };
    let mut links = handle.link().get().match_index(index).execute();
    let Some(link) = links.try_next().await? else { return Ok(None) };
    let mut mac = None;
    let mut mtu = 1500;
    for a in &link.attributes {
        match a {
            LinkAttribute::Address(m) if m.len() == 6 => mac = <[u8; 6]>::try_from(m.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    Ok(mac.map(|mac| Uplink { index, mac, mtu, addr, gateway }))
}

/// Every frame arriving on `from` leaves on `to`: an ingress qdisc on `from` (a stale one from
/// an earlier run in the same pod's namespace is replaced) and a u32 match-all filter whose
/// action is a mirred egress redirect.
async fn redirect(handle: &Handle, from: u32, to: u32) -> Result<(), NetworkError> {
    let index = from as i32;
    unredirect(handle, from).await;
    handle.qdisc().add(index).ingress().execute().await?;
    handle
        .traffic_filter(index)
        .add()
        .parent(INGRESS_PARENT)
        .protocol(ETH_P_ALL.to_be())
        .redirect(to)?
        .execute()
        .await?;
    Ok(())
}
