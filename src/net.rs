//! Layer 3: socket setup (socket2 → mio). No protocol logic and no mio registration here:
//! the engine registers what these functions return.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel queues for our listener.
const LISTEN_BACKLOG: i32 = 128;

/// A non-blocking listener on `addr` (IPv6 sockets accept only IPv6, so the engine can also
/// bind IPv4 on the same port).
pub fn listen(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(s.into()))
}

/// Starts a non-blocking connect to `to`, from `bind` when given (tests give every peer its
/// own 127.0.0.x). Completion is reported by a writable event.
pub fn connect(to: SocketAddr, bind: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if let Some(ip) = bind {
        if ip.is_ipv4() == to.is_ipv4() && !ip.is_unspecified() {
            s.bind(&SocketAddr::new(ip, 0).into())?;
        }
    }
    match s.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(s.into()))
}

/// A non-blocking UDP socket (DNS queries; the DHT and UDP trackers, one per address family).
pub fn udp(bind: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if bind.is_ipv6() {
        // IPv6 only, so an IPv4 socket can share the port (BEP 32 runs one DHT per family).
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    Ok(mio::net::UdpSocket::from_std(s.into()))
}

pub fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// Nameservers from /etc/resolv.conf, or 127.0.0.1:53 when there are none.
pub fn system_resolvers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let mut v = crate::dns::parse_resolv_conf(&text);
    if v.is_empty() {
        v.push(SocketAddr::from(([127, 0, 0, 1], 53)));
    }
    v
}

/// Addresses for `name` in /etc/hosts (or the file named by `ATORRENT_HOSTS_FILE`, which the
/// tests use to give a tracker name both an IPv4 and an IPv6 address).
pub fn hosts_lookup(name: &str) -> Vec<IpAddr> {
    let path = std::env::var_os("ATORRENT_HOSTS_FILE").unwrap_or_else(|| "/etc/hosts".into());
    let text = std::fs::read_to_string(path).unwrap_or_default();
    crate::dns::lookup_hosts(&text, name)
}
