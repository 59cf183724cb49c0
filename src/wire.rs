//! Layer 1: the peer wire protocol codec — BEP 3 handshake and messages, the BEP 6 Fast
//! extension messages and allowed-fast set, and BEP 10 extended-message framing.
//!
//! Bytes in, values out: `decode` parses one length-prefixed message from the front of a
//! receive buffer and borrows payloads from it (it never allocates), `Message::encode` writes
//! into a caller's buffer. This module holds no connection state and must not: which messages
//! are legal when (bitfield only first, fast messages only if both sides set the bit, a piece
//! only if requested) is the `peer` state machine's job. It touches no socket, file or clock.
//!
//! Every length read from the wire is checked against a cap before it is trusted: the caller's
//! `max_len` for the length prefix (checked before waiting for the body, so a hostile 4 GiB
//! prefix fails on the first 4 bytes) and the fixed payload size of each known message id.

use std::fmt;
use std::net::Ipv4Addr;

/// BEP 3: the handshake starts with byte 19 and then this string.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// BEP 3 handshake: pstrlen (1) + pstr (19) + reserved (8) + info_hash (20) + peer_id (20).
pub const HANDSHAKE_LEN: usize = 68;
/// The handshake up to and including the info-hash: enough to pick the torrent (BEP 3: a
/// client serving many torrents on one port "may wait for incoming connections to give a
/// download hash first").
pub const HANDSHAKE_PREFIX_LEN: usize = 48;
/// Block size we request. BEP 3: "All current implementations use 2^14 (16 kiB)".
pub const BLOCK_LEN: u32 = 16384;
/// Largest request we serve. BEP 3: implementations "close connections which request an
/// amount greater than" 16 KiB.
pub const MAX_REQUEST_LEN: u32 = 16384;
/// Bytes of a `piece` message before its data: length prefix (4), id (1), index (4), begin (4).
pub const PIECE_HEADER_LEN: usize = 13;
/// Default cap on a message's length prefix, the value to pass to `decode` as `max_len` when
/// the torrent is small. Why this size: the largest legitimate messages are a `piece` carrying
/// one 16 KiB block (16393), a BEP 9 `ut_metadata` data message (a 16 KiB metadata block plus
/// a short bencoded header) and a `bitfield`; doubling the block leaves room for the metadata
/// header and for bitfields of torrents up to 262,240 pieces. Larger torrents need
/// `max_message_len(num_pieces)`. Anything bigger is hostile or broken and would pin memory.
pub const MAX_MESSAGE_LEN: u32 = 2 * BLOCK_LEN + PIECE_HEADER_LEN as u32;

/// Cap on the length prefix for a torrent of `num_pieces` pieces: `MAX_MESSAGE_LEN`, raised
/// if needed so the `bitfield` message (1 id byte + ceil(num_pieces / 8)) fits.
pub fn max_message_len(num_pieces: u32) -> u32 {
    let bitfield_msg = num_pieces.div_ceil(8).saturating_add(1);
    MAX_MESSAGE_LEN.max(bitfield_msg)
}

/// Our handshake reserved bytes: BEP 10 extension protocol (byte 5, 0x10) and BEP 6 Fast
/// extension (byte 7, 0x04). The BEP 5 DHT bit (byte 7, 0x01) is not set until we run a DHT.
pub const RESERVED_OURS: [u8; 8] = [0, 0, 0, 0, 0, 0x10, 0, 0x04];

/// BEP 10: "(reserved_byte[5] & 0x10) is the expression to use".
pub fn supports_extended(reserved: &[u8; 8]) -> bool {
    reserved[5] & 0x10 != 0
}

/// BEP 6: "reserved[7] |= 0x04". Only enabled if both ends set it; the caller checks ours.
pub fn supports_fast(reserved: &[u8; 8]) -> bool {
    reserved[7] & 0x04 != 0
}

/// BEP 5: "Peers supporting the DHT set the last bit of the 8-byte reserved flags".
pub fn supports_dht(reserved: &[u8; 8]) -> bool {
    reserved[7] & 0x01 != 0
}

/// Message ids (BEP 3 §peer messages, BEP 5 port, BEP 6, BEP 10).
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 13;
    pub const HAVE_ALL: u8 = 14;
    pub const HAVE_NONE: u8 = 15;
    pub const REJECT: u8 = 16;
    pub const ALLOWED_FAST: u8 = 17;
    pub const EXTENDED: u8 = 20;
}

/// BEP 10: extended message id 0 is the extension handshake.
pub const EXTENDED_HANDSHAKE_ID: u8 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The length prefix exceeds the caller's cap.
    TooLong { len: u32, max: u32 },
    /// A known message id with a payload of the wrong size; `len` is the length prefix.
    BadLength { id: u8, len: u32 },
    /// The handshake's first byte is not 19.
    BadProtocolLength(u8),
    /// The handshake's protocol string is not "BitTorrent protocol".
    BadProtocol,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLong { len, max } => {
                write!(f, "wire: message length {len} exceeds cap {max}")
            }
            WireError::BadLength { id, len } => {
                write!(f, "wire: message id {id} has invalid length {len}")
            }
            WireError::BadProtocolLength(n) => {
                write!(f, "wire: handshake protocol length {n}, expected 19")
            }
            WireError::BadProtocol => {
                write!(
                    f,
                    "wire: handshake protocol string is not \"BitTorrent protocol\""
                )
            }
        }
    }
}

impl std::error::Error for WireError {}

// ---------------------------------------------------------------------------------------------
// Handshake

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
}

/// Checks the pstrlen byte and as much of the protocol string as `buf` holds, so a stranger
/// speaking another protocol (or MSE-encrypted bytes) is rejected on its first byte.
fn check_protocol(buf: &[u8]) -> Result<(), WireError> {
    let Some((&pstrlen, rest)) = buf.split_first() else {
        return Ok(());
    };
    if pstrlen != 19 {
        return Err(WireError::BadProtocolLength(pstrlen));
    }
    let n = rest.len().min(PROTOCOL.len());
    if rest.get(..n) != PROTOCOL.get(..n) {
        return Err(WireError::BadProtocol);
    }
    Ok(())
}

/// The first 48 handshake bytes that matter: (reserved, info_hash).
pub type HandshakePrefix = ([u8; 8], [u8; 20]);

fn array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    buf.get(at..end)?.try_into().ok()
}

impl Handshake {
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Parses a full handshake from the front of `buf`. `Ok(None)` means fewer than 68 bytes
    /// have arrived and nothing seen so far is wrong; the handshake consumes `HANDSHAKE_LEN`
    /// bytes. Bytes after it (the first messages) are left for `decode`.
    pub fn decode(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
        let Some((reserved, info_hash)) = Handshake::decode_prefix(buf)? else {
            return Ok(None);
        };
        let Some(peer_id) = array::<20>(buf, 48) else {
            return Ok(None);
        };
        Ok(Some(Handshake {
            reserved,
            info_hash,
            peer_id,
        }))
    }

    /// Parses the first 48 bytes (protocol, reserved, info-hash) so an incoming connection can
    /// choose its torrent and answer before the peer id arrives.
    pub fn decode_prefix(buf: &[u8]) -> Result<Option<HandshakePrefix>, WireError> {
        check_protocol(buf)?;
        match (array::<8>(buf, 20), array::<20>(buf, 28)) {
            (Some(r), Some(h)) => Ok(Some((r, h))),
            _ => Ok(None),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

/// The (index, begin, length) triple of `request`, `cancel` and BEP 6 `reject`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockRequest {
    pub index: u32,
    pub begin: u32,
    pub length: u32,
}

impl BlockRequest {
    /// True if a peer may legitimately ask for this: length in 1..=16 KiB (BEP 3 says larger
    /// requests get the connection closed) and begin + length does not overflow. Whether the
    /// block lies inside its piece is for the caller, which knows the piece sizes.
    pub fn is_sane(&self) -> bool {
        self.length != 0
            && self.length <= MAX_REQUEST_LEN
            && self.begin.checked_add(self.length).is_some()
    }

    fn from_payload(p: &[u8]) -> Option<BlockRequest> {
        Some(BlockRequest {
            index: be32(p, 0)?,
            begin: be32(p, 4)?,
            length: be32(p, 8)?,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Message<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    /// Raw payload; parse with `Bitfield::from_bytes` once the piece count is known.
    Bitfield(&'a [u8]),
    Request(BlockRequest),
    Piece {
        index: u32,
        begin: u32,
        data: &'a [u8],
    },
    Cancel(BlockRequest),
    /// BEP 5: the sender's DHT UDP port.
    Port(u16),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(BlockRequest),
    AllowedFast(u32),
    /// BEP 10: `id` is the extended message id (0 = extension handshake), `payload` follows.
    Extended {
        id: u8,
        payload: &'a [u8],
    },
    /// An id we do not know; its payload was skipped. Not an error so new extensions do not
    /// break old clients.
    Unknown {
        id: u8,
    },
}

fn be32(p: &[u8], at: usize) -> Option<u32> {
    array::<4>(p, at).map(u32::from_be_bytes)
}

/// Decodes one message from the front of `buf`. Returns the message and the bytes it used
/// (length prefix included), `Ok(None)` if the message is not complete yet, or an error if the
/// length prefix exceeds `max_len` (see `MAX_MESSAGE_LEN`) or a known id has a payload of the
/// wrong size. Never allocates; payloads borrow from `buf`.
pub fn decode(buf: &[u8], max_len: u32) -> Result<Option<(Message<'_>, usize)>, WireError> {
    let Some(len) = be32(buf, 0) else {
        return Ok(None);
    };
    // Check the cap before waiting for the body: a hostile prefix must not make us buffer.
    if len > max_len {
        return Err(WireError::TooLong { len, max: max_len });
    }
    // On 32-bit targets 4 + u32::MAX overflows usize; treat that as too long.
    let total = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(4))
        .ok_or(WireError::TooLong { len, max: max_len })?;
    let Some(body) = buf.get(4..total) else {
        return Ok(None);
    };
    let Some((&mid, p)) = body.split_first() else {
        return Ok(Some((Message::KeepAlive, total)));
    };
    let bad = WireError::BadLength { id: mid, len };
    let exact = |n: usize| if p.len() == n { Ok(()) } else { Err(bad) };
    let msg = match mid {
        id::CHOKE => exact(0).map(|_| Message::Choke)?,
        id::UNCHOKE => exact(0).map(|_| Message::Unchoke)?,
        id::INTERESTED => exact(0).map(|_| Message::Interested)?,
        id::NOT_INTERESTED => exact(0).map(|_| Message::NotInterested)?,
        id::HAVE_ALL => exact(0).map(|_| Message::HaveAll)?,
        id::HAVE_NONE => exact(0).map(|_| Message::HaveNone)?,
        id::HAVE | id::SUGGEST | id::ALLOWED_FAST => {
            exact(4)?;
            let v = be32(p, 0).ok_or(bad)?;
            match mid {
                id::HAVE => Message::Have(v),
                id::SUGGEST => Message::Suggest(v),
                _ => Message::AllowedFast(v),
            }
        }
        id::BITFIELD => Message::Bitfield(p),
        id::REQUEST | id::CANCEL | id::REJECT => {
            exact(12)?;
            let r = BlockRequest::from_payload(p).ok_or(bad)?;
            match mid {
                id::REQUEST => Message::Request(r),
                id::CANCEL => Message::Cancel(r),
                _ => Message::Reject(r),
            }
        }
        id::PIECE => {
            let index = be32(p, 0).ok_or(bad)?;
            let begin = be32(p, 4).ok_or(bad)?;
            let data = p.get(8..).ok_or(bad)?;
            Message::Piece { index, begin, data }
        }
        id::PORT => {
            exact(2)?;
            let port = array::<2>(p, 0).map(u16::from_be_bytes).ok_or(bad)?;
            Message::Port(port)
        }
        id::EXTENDED => {
            let (&ext, payload) = p.split_first().ok_or(bad)?;
            Message::Extended { id: ext, payload }
        }
        other => Message::Unknown { id: other },
    };
    Ok(Some((msg, total)))
}

/// Bounds-checked writer over a caller's buffer.
struct Out<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Out<'_> {
    fn put(&mut self, b: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(b.len())?;
        self.buf.get_mut(self.pos..end)?.copy_from_slice(b);
        self.pos = end;
        Some(())
    }
    fn u32(&mut self, v: u32) -> Option<()> {
        self.put(&v.to_be_bytes())
    }
    fn req(&mut self, r: &BlockRequest) -> Option<()> {
        self.u32(r.index)?;
        self.u32(r.begin)?;
        self.u32(r.length)
    }
}

/// The 13-byte header of a `piece` message carrying `len` data bytes; the caller writes the
/// data right after it (straight from the disk cache, without staging it in a `Message`).
pub fn piece_header(index: u32, begin: u32, len: u32) -> [u8; PIECE_HEADER_LEN] {
    let mut h = [0u8; PIECE_HEADER_LEN];
    // Callers send blocks of at most MAX_REQUEST_LEN, so this never saturates in practice.
    h[0..4].copy_from_slice(&len.saturating_add(9).to_be_bytes());
    h[4] = id::PIECE;
    h[5..9].copy_from_slice(&index.to_be_bytes());
    h[9..13].copy_from_slice(&begin.to_be_bytes());
    h
}

impl Message<'_> {
    /// The message id byte, or `None` for a keep-alive.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have(_) => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request(_) => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel(_) => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::Suggest(_) => id::SUGGEST,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::Reject(_) => id::REJECT,
            Message::AllowedFast(_) => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
            Message::Unknown { id } => *id,
        })
    }

    /// Bytes after the length prefix (id + payload); saturates for absurd slice lengths.
    fn body_len(&self) -> usize {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone
            | Message::Unknown { .. } => 1,
            Message::Have(_) | Message::Suggest(_) | Message::AllowedFast(_) => 5,
            Message::Port(_) => 3,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 13,
            Message::Bitfield(b) => b.len().saturating_add(1),
            Message::Piece { data, .. } => data.len().saturating_add(9),
            Message::Extended { payload, .. } => payload.len().saturating_add(2),
        }
    }

    /// Total encoded size, length prefix included.
    pub fn encoded_len(&self) -> usize {
        self.body_len().saturating_add(4)
    }

    /// Writes the message to the front of `out` and returns the bytes written, or `None` if
    /// `out` is too small or the payload cannot be described by a 32-bit length prefix.
    /// `Unknown` encodes as its id with an empty payload.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let body = u32::try_from(self.body_len()).ok()?;
        if body == u32::MAX {
            return None; // saturated: the real length does not fit
        }
        let mut w = Out { buf: out, pos: 0 };
        if w.buf.len() < self.encoded_len() {
            return None;
        }
        w.u32(body)?;
        if let Some(mid) = self.id() {
            w.put(&[mid])?;
        }
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone
            | Message::Unknown { .. } => {}
            Message::Have(v) | Message::Suggest(v) | Message::AllowedFast(v) => w.u32(*v)?,
            Message::Port(p) => w.put(&p.to_be_bytes())?,
            Message::Request(r) | Message::Cancel(r) | Message::Reject(r) => w.req(r)?,
            Message::Bitfield(b) => w.put(b)?,
            Message::Piece { index, begin, data } => {
                w.u32(*index)?;
                w.u32(*begin)?;
                w.put(data)?;
            }
            Message::Extended { id, payload } => {
                w.put(&[*id])?;
                w.put(payload)?;
            }
        }
        Some(w.pos)
    }
}

// ---------------------------------------------------------------------------------------------
// BEP 6 allowed-fast set

/// The canonical allowed-fast set for a peer at `ip` (BEP 6 §Allowed Fast Set Generation):
/// SHA-1 of (ip & 0xffffff00) ++ info_hash, then of each previous digest, cut into five
/// big-endian u32s taken modulo `num_pieces`, skipping repeats, until `k` indices are found.
/// `k` is clamped to `num_pieces` (otherwise the spec's loop never ends); an empty torrent
/// gives an empty set.
pub fn allowed_fast_set(ip: Ipv4Addr, info_hash: &[u8; 20], num_pieces: u32, k: usize) -> Vec<u32> {
    let k = k.min(num_pieces as usize);
    let mut set: Vec<u32> = Vec::with_capacity(k);
    if k == 0 {
        return set;
    }
    // Step (1): keep the top three octets so one /24 gets one set.
    let masked = u32::from(ip) & 0xffff_ff00;
    let mut seed = [0u8; 24];
    seed[..4].copy_from_slice(&masked.to_be_bytes());
    seed[4..].copy_from_slice(info_hash);
    let mut x = crate::hash::sha1(&seed);
    // Bound on hash rounds: each yields 5 draws, and even k == num_pieces needs only about
    // k ln k draws, so this guard only matters if SHA-1 somehow cycled.
    let max_rounds = k.saturating_mul(64).saturating_add(64);
    for _ in 0..max_rounds {
        for chunk in x.chunks_exact(4) {
            if set.len() >= k {
                return set;
            }
            let mut y = [0u8; 4];
            y.copy_from_slice(chunk);
            let index = u32::from_be_bytes(y) % num_pieces;
            if !set.contains(&index) {
                set.push(index);
            }
        }
        if set.len() >= k {
            return set;
        }
        x = crate::hash::sha1(&x);
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn enc(m: &Message<'_>) -> Vec<u8> {
        let mut v = vec![0u8; m.encoded_len()];
        let n = m.encode(&mut v).expect("buffer sized by encoded_len");
        assert_eq!(n, v.len());
        v
    }

    const REQ: BlockRequest = BlockRequest {
        index: 1,
        begin: 0x4000,
        length: 0x4000,
    };

    /// (message, exact wire bytes) for every message kind.
    fn vectors() -> Vec<(Message<'static>, Vec<u8>)> {
        vec![
            (Message::KeepAlive, vec![0, 0, 0, 0]),
            (Message::Choke, vec![0, 0, 0, 1, 0]),
            (Message::Unchoke, vec![0, 0, 0, 1, 1]),
            (Message::Interested, vec![0, 0, 0, 1, 2]),
            (Message::NotInterested, vec![0, 0, 0, 1, 3]),
            (Message::Have(0x0102_0304), vec![0, 0, 0, 5, 4, 1, 2, 3, 4]),
            (
                Message::Bitfield(&[0xff, 0x80]),
                vec![0, 0, 0, 3, 5, 0xff, 0x80],
            ),
            (Message::Bitfield(&[]), vec![0, 0, 0, 1, 5]),
            (
                Message::Request(REQ),
                vec![0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
            ),
            (
                Message::Piece {
                    index: 2,
                    begin: 0x10,
                    data: b"abc",
                },
                vec![0, 0, 0, 12, 7, 0, 0, 0, 2, 0, 0, 0, 0x10, b'a', b'b', b'c'],
            ),
            (
                Message::Piece {
                    index: 0,
                    begin: 0,
                    data: &[],
                },
                vec![0, 0, 0, 9, 7, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                Message::Cancel(REQ),
                vec![0, 0, 0, 13, 8, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
            ),
            (Message::Port(6881), vec![0, 0, 0, 3, 9, 0x1a, 0xe1]),
            (Message::Suggest(7), vec![0, 0, 0, 5, 13, 0, 0, 0, 7]),
            (Message::HaveAll, vec![0, 0, 0, 1, 14]),
            (Message::HaveNone, vec![0, 0, 0, 1, 15]),
            (
                Message::Reject(REQ),
                vec![0, 0, 0, 13, 16, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
            ),
            (Message::AllowedFast(9), vec![0, 0, 0, 5, 17, 0, 0, 0, 9]),
            (
                Message::Extended {
                    id: 0,
                    payload: b"de",
                },
                vec![0, 0, 0, 4, 20, 0, b'd', b'e'],
            ),
            (
                Message::Extended {
                    id: 3,
                    payload: &[],
                },
                vec![0, 0, 0, 2, 20, 3],
            ),
            (Message::Unknown { id: 99 }, vec![0, 0, 0, 1, 99]),
        ]
    }

    #[test]
    fn message_encode_matches_vectors() {
        for (m, bytes) in vectors() {
            assert_eq!(enc(&m), bytes, "{m:?}");
            assert_eq!(m.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn message_decode_matches_vectors() {
        for (m, bytes) in vectors() {
            let got = decode(&bytes, MAX_MESSAGE_LEN).expect("valid");
            assert_eq!(got, Some((m, bytes.len())), "{bytes:?}");
        }
    }

    #[test]
    fn stream_decodes_back_to_back_messages() {
        let mut stream = Vec::new();
        for (_, bytes) in vectors() {
            stream.extend_from_slice(&bytes);
        }
        stream.extend_from_slice(&[0, 0, 0]); // start of a next prefix
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((m, n)) = decode(&stream[at..], MAX_MESSAGE_LEN).expect("valid") {
            got.push(m);
            at += n;
        }
        assert_eq!(at, stream.len() - 3);
        let want: Vec<Message<'_>> = vectors().into_iter().map(|(m, _)| m).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn unknown_id_skips_payload() {
        let bytes = [0, 0, 0, 4, 200, 1, 2, 3, 0, 0, 0, 1, 1];
        let (m, n) = decode(&bytes, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!((m, n), (Message::Unknown { id: 200 }, 8));
        let (m, _) = decode(&bytes[n..], MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(m, Message::Unchoke);
    }

    #[test]
    fn truncation_sweep_waits_for_more() {
        for (_, bytes) in vectors() {
            for n in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..n], MAX_MESSAGE_LEN),
                    Ok(None),
                    "{bytes:?}[..{n}]"
                );
            }
        }
    }

    #[test]
    fn prefix_near_4gib_errs_with_four_bytes() {
        for len in [u32::MAX, u32::MAX - 1, 0x8000_0000, MAX_MESSAGE_LEN + 1] {
            let e = decode(&len.to_be_bytes(), MAX_MESSAGE_LEN).unwrap_err();
            assert_eq!(
                e,
                WireError::TooLong {
                    len,
                    max: MAX_MESSAGE_LEN
                }
            );
        }
        assert_eq!(
            WireError::TooLong {
                len: u32::MAX,
                max: 32781
            }
            .to_string(),
            "wire: message length 4294967295 exceeds cap 32781"
        );
        assert_eq!(MAX_MESSAGE_LEN, 32781);
    }

    #[test]
    fn prefix_at_cap_waits_for_body() {
        let bytes = MAX_MESSAGE_LEN.to_be_bytes();
        assert_eq!(decode(&bytes, MAX_MESSAGE_LEN), Ok(None));
        // u32::MAX as cap: must not overflow computing the total on any target. On 64-bit
        // the 4 + u32::MAX byte frame fits in usize, so it waits for the body; on 32-bit
        // targets (armv7, mipsel) it cannot be addressed, so decode refuses it as too long.
        let expected = if usize::BITS > 32 {
            Ok(None)
        } else {
            Err(WireError::TooLong {
                len: u32::MAX,
                max: u32::MAX,
            })
        };
        assert_eq!(decode(&u32::MAX.to_be_bytes(), u32::MAX), expected);
    }

    #[test]
    fn fixed_size_id_wrong_length_errs() {
        let cases: &[(&[u8], u8, u32)] = &[
            (&[0, 0, 0, 2, 0, 0], 0, 2),
            (&[0, 0, 0, 2, 1, 0], 1, 2),
            (&[0, 0, 0, 2, 2, 0], 2, 2),
            (&[0, 0, 0, 2, 3, 0], 3, 2),
            (&[0, 0, 0, 4, 4, 0, 0, 1], 4, 4),
            (&[0, 0, 0, 6, 4, 0, 0, 0, 1, 0], 4, 6),
            (&[0, 0, 0, 12, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 6, 12),
            (&[0, 0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0], 7, 8),
            (
                &[0, 0, 0, 14, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                8,
                14,
            ),
            (&[0, 0, 0, 2, 9, 0], 9, 2),
            (&[0, 0, 0, 1, 13], 13, 1),
            (&[0, 0, 0, 2, 14, 0], 14, 2),
            (&[0, 0, 0, 2, 15, 0], 15, 2),
            (&[0, 0, 0, 1, 16], 16, 1),
            (&[0, 0, 0, 3, 17, 0, 0], 17, 3),
            (&[0, 0, 0, 1, 20], 20, 1),
        ];
        for (bytes, mid, len) in cases {
            assert_eq!(
                decode(bytes, MAX_MESSAGE_LEN),
                Err(WireError::BadLength {
                    id: *mid,
                    len: *len
                }),
                "{bytes:?}"
            );
        }
        assert_eq!(
            WireError::BadLength { id: 4, len: 3 }.to_string(),
            "wire: message id 4 has invalid length 3"
        );
    }

    #[test]
    fn block_request_is_sane_checks_length_and_overflow() {
        assert!(REQ.is_sane());
        let r = |begin, length| BlockRequest {
            index: 0,
            begin,
            length,
        };
        assert!(r(0, 1).is_sane());
        assert!(r(0, MAX_REQUEST_LEN).is_sane());
        assert!(!r(0, 0).is_sane());
        assert!(!r(0, MAX_REQUEST_LEN + 1).is_sane());
        assert!(!r(u32::MAX - 10, 100).is_sane());
        // Decoding does not judge: an oversized request still parses.
        let bytes = enc(&Message::Request(r(0, 1 << 20)));
        let (m, _) = decode(&bytes, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(m, Message::Request(r(0, 1 << 20)));
    }

    #[test]
    fn encode_small_buffer_returns_none() {
        for (m, bytes) in vectors() {
            for n in 0..bytes.len() {
                let mut buf = vec![0u8; n];
                assert_eq!(m.encode(&mut buf), None, "{m:?} into {n}");
            }
            let mut big = vec![0xeeu8; bytes.len() + 5];
            assert_eq!(m.encode(&mut big), Some(bytes.len()));
            assert_eq!(&big[..bytes.len()], &bytes[..]);
            assert!(big[bytes.len()..].iter().all(|b| *b == 0xee));
        }
    }

    #[test]
    fn piece_header_matches_encoded_piece() {
        let data = [7u8; 100];
        let m = Message::Piece {
            index: 5,
            begin: 0x8000,
            data: &data,
        };
        let full = enc(&m);
        assert_eq!(piece_header(5, 0x8000, 100), full[..PIECE_HEADER_LEN]);
        assert_eq!(
            piece_header(1, 2, BLOCK_LEN),
            [0, 0, 0x40, 9, 7, 0, 0, 0, 1, 0, 0, 0, 2]
        );
    }

    #[test]
    fn max_message_len_grows_for_big_bitfields() {
        assert_eq!(max_message_len(1000), MAX_MESSAGE_LEN);
        assert_eq!(max_message_len(1_000_000), 125_001);
        assert_eq!(max_message_len(u32::MAX), 536_870_913);
        // A bitfield that just fits the default cap.
        let n = (MAX_MESSAGE_LEN - 1) * 8;
        assert_eq!(max_message_len(n), MAX_MESSAGE_LEN);
    }

    #[test]
    fn mutation_sweep_never_panics_and_round_trips() {
        let mut stream = Vec::new();
        for (_, bytes) in vectors() {
            stream.extend_from_slice(&bytes);
        }
        let mut rng = Rng::new(0x5eed);
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut buf = stream.clone();
            for _ in 0..=rng.below(4) {
                let i = rng.below(buf.len());
                buf[i] = match rng.below(3) {
                    0 => rng.next_u32() as u8,
                    1 => buf[i] ^ (1 << rng.below(8)),
                    _ => [0, 1, 0xff, 13, 20][rng.below(5)],
                };
            }
            if rng.below(4) == 0 {
                buf.truncate(rng.below(buf.len() + 1));
            }
            let mut at = 0;
            while let Ok(Some((m, n))) = decode(&buf[at..], 64) {
                assert!(n >= 4 && at + n <= buf.len());
                // Every decoded message re-encodes to the bytes it came from, except Unknown,
                // whose payload is dropped.
                if !matches!(m, Message::Unknown { .. }) {
                    assert_eq!(enc(&m), &buf[at..at + n]);
                }
                at += n;
                decoded += 1;
            }
        }
        assert!(decoded > 100_000);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(99);
        for _ in 0..20_000 {
            let mut buf = vec![0u8; rng.below(40)];
            rng.fill(&mut buf);
            if let Some(b) = buf.get_mut(..3) {
                b.fill(0); // keep prefixes small enough to reach the id parser
            }
            let _ = decode(&buf, MAX_MESSAGE_LEN);
            let _ = Handshake::decode(&buf);
        }
    }

    fn handshake_vector() -> (Handshake, Vec<u8>) {
        let h = Handshake {
            reserved: RESERVED_OURS,
            info_hash: [0xaa; 20],
            peer_id: *b"-AT0001-123456789012",
        };
        let mut bytes = vec![19];
        bytes.extend_from_slice(b"BitTorrent protocol");
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
        bytes.extend_from_slice(&[0xaa; 20]);
        bytes.extend_from_slice(b"-AT0001-123456789012");
        (h, bytes)
    }

    #[test]
    fn handshake_encode_matches_vector() {
        let (h, bytes) = handshake_vector();
        assert_eq!(h.encode().to_vec(), bytes);
        assert_eq!(bytes.len(), HANDSHAKE_LEN);
    }

    #[test]
    fn handshake_decode_matches_vector() {
        let (h, mut bytes) = handshake_vector();
        assert_eq!(Handshake::decode(&bytes), Ok(Some(h)));
        // Trailing messages after the handshake are ignored by it.
        bytes.extend_from_slice(&[0, 0, 0, 1, 1]);
        assert_eq!(Handshake::decode(&bytes), Ok(Some(h)));
        assert_eq!(
            Handshake::decode_prefix(&bytes[..HANDSHAKE_PREFIX_LEN]),
            Ok(Some((RESERVED_OURS, [0xaa; 20])))
        );
    }

    #[test]
    fn handshake_truncation_sweep_waits() {
        let (_, bytes) = handshake_vector();
        for n in 0..HANDSHAKE_LEN {
            assert_eq!(Handshake::decode(&bytes[..n]), Ok(None), "prefix {n}");
            if n < HANDSHAKE_PREFIX_LEN {
                assert_eq!(Handshake::decode_prefix(&bytes[..n]), Ok(None));
            }
        }
    }

    #[test]
    fn handshake_wrong_protocol_errs_early() {
        assert_eq!(
            Handshake::decode(&[18]),
            Err(WireError::BadProtocolLength(18))
        );
        assert_eq!(
            Handshake::decode(&[19, b'B', b'X']),
            Err(WireError::BadProtocol)
        );
        let (_, mut bytes) = handshake_vector();
        bytes[19] = b'L';
        assert_eq!(Handshake::decode(&bytes), Err(WireError::BadProtocol));
        assert_eq!(
            Handshake::decode_prefix(&bytes),
            Err(WireError::BadProtocol)
        );
        assert_eq!(
            WireError::BadProtocolLength(0x13 ^ 0xff).to_string(),
            "wire: handshake protocol length 236, expected 19"
        );
    }

    #[test]
    fn handshake_mutation_sweep_never_panics() {
        let (h, bytes) = handshake_vector();
        let mut rng = Rng::new(3);
        for _ in 0..5000 {
            let mut buf = bytes.clone();
            let i = rng.below(buf.len());
            buf[i] ^= 1 << rng.below(8);
            let r = Handshake::decode(&buf);
            if i < 20 {
                assert!(r.is_err(), "byte {i} mutated");
            } else {
                let got = r.expect("fields are opaque").expect("complete");
                assert_ne!(got, h);
                assert_eq!(got.encode().to_vec(), buf);
            }
        }
    }

    #[test]
    fn reserved_bits_report_extensions() {
        assert!(supports_extended(&RESERVED_OURS));
        assert!(supports_fast(&RESERVED_OURS));
        assert!(!supports_dht(&RESERVED_OURS));
        let dht = [0, 0, 0, 0, 0, 0, 0, 1];
        assert!(supports_dht(&dht) && !supports_fast(&dht) && !supports_extended(&dht));
        assert!(!supports_extended(&[0; 8]));
    }

    #[test]
    fn allowed_fast_set_matches_bep6_vector() {
        let ip = Ipv4Addr::new(80, 4, 4, 200);
        let ih = [0xaa; 20];
        assert_eq!(
            allowed_fast_set(ip, &ih, 1313, 7),
            vec![1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(ip, &ih, 1313, 9),
            vec![1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
        // Same /24 gives the same set (step 1 masks the last octet).
        assert_eq!(
            allowed_fast_set(Ipv4Addr::new(80, 4, 4, 1), &ih, 1313, 9),
            allowed_fast_set(ip, &ih, 1313, 9)
        );
    }

    #[test]
    fn allowed_fast_set_small_torrent_terminates() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let ih = [1; 20];
        assert!(allowed_fast_set(ip, &ih, 0, 10).is_empty());
        assert_eq!(allowed_fast_set(ip, &ih, 1, 10), vec![0]);
        let mut all = allowed_fast_set(ip, &ih, 5, 10);
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(allowed_fast_set(ip, &ih, 1313, 0).is_empty());
    }
}
