//! Network namespace setup over rtnetlink: bringing `lo` up inside a fresh network namespace.
//!
//! Runs in the sandbox's pid 1 (which holds CAP_NET_ADMIN over the namespace it created). The request is built
//! with `netlink-packet-route` and sent over a blocking `netlink-sys` socket: one RTM_NEWLINK and its ACK,
//! no async runtime on the sandbox start path.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink: kernel refused to bring lo up: {0}")]
    Refused(std::io::Error),
    #[error("netlink: unexpected reply")]
    Unexpected,
}

/// Index of the loopback device in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Sets IFF_UP on `lo` in the caller's network namespace.
pub fn loopback_up() -> Result<(), NetError> {
    let mut link = LinkMessage::default();
    link.header.index = LOOPBACK_INDEX;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::SetLink(link)),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);

    // No bind: the kernel binds a netlink socket on its first send.
    let sock = Socket::new(NETLINK_ROUTE).map_err(NetError::Socket)?;
    sock.send_to(&buf, &SocketAddr::new(0, 0), 0)
        .map_err(NetError::Socket)?;
    let mut reply = [0u8; 4096];
    let n = sock
        .recv(&mut &mut reply[..], 0)
        .map_err(NetError::Socket)?;
    let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|_| NetError::Unexpected)?;
    match parsed.payload {
        NetlinkPayload::Error(e) if e.code.is_none() => Ok(()),
        NetlinkPayload::Error(e) => Err(NetError::Refused(e.to_io())),
        _ => Err(NetError::Unexpected),
    }
}
