//! Writes the committed seed corpus (`seeds/<target>/`) from the unit-test vectors, using the
//! crate's own encoders where the tests do. Run from tests/fuzz: `cargo run --example seeds`.
//! Crash reproducers (`seeds/<target>/crash-*`) are left alone.
use atorrent::dht::krpc;
use atorrent::mse::{CryptoSet, Handshake};
use atorrent::tracker::Event;
use atorrent::udp_tracker::{self as udp, AnnounceParams, AnnounceReply, ScrapeEntry};
use atorrent::wire::{self, BlockRequest, Message};
use atorrent::{bencode, config, ctl, ext, state};
use atorrent_fuzz::mse_consts::*;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

fn write(target: &str, seeds: Vec<Vec<u8>>) {
    let dir = Path::new("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
    }
}

fn b(s: &[u8]) -> Vec<u8> {
    s.to_vec()
}

fn bstr(out: &mut Vec<u8>, s: &[u8]) {
    bencode::put_bytes(out, s);
}

/// A single-file info dictionary as in metainfo's tests.
fn single_info(name: &[u8], len: i64, plen: i64, pieces: usize) -> Vec<u8> {
    let mut o = b"d6:length".to_vec();
    bencode::put_int(&mut o, len);
    bstr(&mut o, b"name");
    bstr(&mut o, name);
    bstr(&mut o, b"piece length");
    bencode::put_int(&mut o, plen);
    bstr(&mut o, b"pieces");
    bstr(&mut o, &vec![b'A'; 20 * pieces]);
    o.push(b'e');
    o
}

fn file(len: i64, path: &[&[u8]], extra: &[u8]) -> Vec<u8> {
    let mut o = b"d".to_vec();
    o.extend_from_slice(extra);
    o.extend_from_slice(b"6:length");
    bencode::put_int(&mut o, len);
    o.extend_from_slice(b"4:pathl");
    for p in path {
        bstr(&mut o, p);
    }
    o.extend_from_slice(b"ee");
    o
}

fn multi_info(name: &[u8], files: &[Vec<u8>], plen: i64, pieces: usize) -> Vec<u8> {
    let mut o = b"d5:filesl".to_vec();
    for f in files {
        o.extend_from_slice(f);
    }
    o.extend_from_slice(b"e4:name");
    bstr(&mut o, name);
    o.extend_from_slice(b"12:piece length");
    bencode::put_int(&mut o, plen);
    o.extend_from_slice(b"6:pieces");
    bstr(&mut o, &vec![b'A'; 20 * pieces]);
    o.push(b'e');
    o
}

fn torrent(before: &[u8], info: &[u8]) -> Vec<u8> {
    let mut o = b"d".to_vec();
    o.extend_from_slice(before);
    o.extend_from_slice(b"4:info");
    o.extend_from_slice(info);
    o.push(b'e');
    o
}

fn bencode_seeds() -> Vec<Vec<u8>> {
    [
        &b"i0e"[..],
        b"i-42e",
        b"4:spam",
        b"0:",
        b"le",
        b"de",
        b"l4:spami42ee",
        b"d3:cow3:moo4:spaml1:a1:bee",
        b"d4:infod6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee",
        b"i9223372036854775807e",
        b"i-9223372036854775808e",
    ]
    .iter()
    .map(|v| b(v))
    .collect()
}

fn metainfo_seeds() -> Vec<Vec<u8>> {
    let multi = multi_info(
        b"dir",
        &[
            file(3, &[b"a.txt"], b""),
            file(1, &[b".pad", b"1"], b"4:attr1:p"),
            file(7, &[b"sub", b"b.bin"], b""),
        ],
        4,
        3,
    );
    vec![
        torrent(
            b"8:announce9:http://t/13:announce-listll9:http://t/ee",
            &single_info(b"a.txt", 5, 16384, 1),
        ),
        torrent(b"", &multi),
        torrent(b"7:comment2:hi", &single_info(b"big", 40000, 16384, 3)),
    ]
}

fn magnet_seeds() -> Vec<Vec<u8>> {
    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    const B32: &str = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";
    [
        format!("magnet:?xt=urn:btih:{HEX}"),
        format!("magnet:?xt=urn:btih:{B32}&dn=a+b%2Bc&tr=udp%3A%2F%2Ft%3A80"),
        format!("magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4:6881&so=0,2,4-6"),
        format!("magnet:?xt.1=urn:btih:{HEX}&amp;tr.1=udp://a:1&amp;dn=x"),
        format!("magnet:?xt=urn:btih:{HEX}&dn=Some+Name%2B%C3%A9&tr=udp%3A%2F%2Ftracker%3A1337"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

fn wire_seeds() -> Vec<Vec<u8>> {
    let req = BlockRequest {
        index: 1,
        begin: 16384,
        length: 16384,
    };
    let msgs = [
        Message::KeepAlive,
        Message::Choke,
        Message::Unchoke,
        Message::Interested,
        Message::NotInterested,
        Message::Have(7),
        Message::Bitfield(&[0xff, 0x80]),
        Message::Request(req),
        Message::Piece {
            index: 1,
            begin: 0,
            data: b"abc",
        },
        Message::Cancel(req),
        Message::Port(6881),
        Message::Suggest(3),
        Message::HaveAll,
        Message::HaveNone,
        Message::Reject(req),
        Message::AllowedFast(2),
        Message::Extended {
            id: 0,
            payload: b"de",
        },
    ];
    let mut all = vec![0x00, 0x10];
    let mut seeds = Vec::new();
    for m in &msgs {
        let mut buf = vec![0; m.encoded_len()];
        let n = m.encode(&mut buf).unwrap();
        let mut one = vec![0x00, 0x10];
        one.extend_from_slice(&buf[..n]);
        all.extend_from_slice(&buf[..n]);
        seeds.push(one);
    }
    seeds.push(all);
    let hs = wire::Handshake {
        reserved: [0, 0, 0, 0, 0, 0x10, 0, 0x05],
        info_hash: [0xab; 20],
        peer_id: *b"-AT0001-123456789012",
    };
    seeds.push(hs.encode().to_vec());
    seeds
}

fn ext_seeds() -> Vec<Vec<u8>> {
    let pex = ext::PexMessage {
        added: vec![
            ("1.2.3.4:6881".parse::<SocketAddr>().unwrap(), 0x12),
            ("[2001:db8::1]:51413".parse().unwrap(), 0x01),
        ],
        dropped: vec![
            "5.6.7.8:1".parse().unwrap(),
            "[2001:db8::2]:2".parse().unwrap(),
        ],
    };
    vec![
        b(b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e4:reqqi250e1:v13:atorrent 0.1.06:yourip4:\x7f\0\0\x01e"),
        b(b"d1:md11:LT_metadatai1e7:\xc2\xb5T_PEXi2ee1:pi6881e1:v13:\xc2\xb5Torrent 1.2e"),
        b(b"d1:md1:ai0e1:bi256e1:c1:xe1:pi0e4:reqqi999999e6:yourip3:abc1:v3:a\nbe"),
        ext::encode_metadata_request(0),
        ext::encode_metadata_reject(3),
        ext::encode_metadata_data(1, 34256, b"xyz"),
        pex.encode(),
    ]
}

fn tracker_http_seeds() -> Vec<Vec<u8>> {
    let compact = {
        let mut o =
            b"d8:completei5e10:incompletei3e8:intervali1800e12:min intervali60e5:peers12:".to_vec();
        o.extend_from_slice(&[1, 2, 3, 4, 0x1a, 0xe1, 5, 6, 7, 8, 0x1a, 0xe2]);
        o.extend_from_slice(b"6:peers618:");
        o.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1a, 0xe1,
        ]);
        o.push(b'e');
        o
    };
    let dict_peers =
        b(b"d8:intervali900e5:peersld2:ip7:1.2.3.47:peer id20:-AT0001-abcdefghijkl4:porti6881eed2:ip11:2001:db8::14:porti1eee10:tracker id4:id 1e");
    let mut scrape = b"d5:filesd20:".to_vec();
    scrape.extend_from_slice(b"\x12\x34\x56\x78\x9a\xbc\xde\xf0 -._/%&=+\x00\xff\x7f");
    scrape.extend_from_slice(b"d8:completei5e10:downloadedi50e10:incompletei10eeee");
    let with_head = |body: &[u8]| {
        let mut o =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        o.extend_from_slice(body);
        o
    };
    vec![
        b(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCONTENT-LENGTH: 5\r\n\r\nhelloEXTRA"),
        b(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\n5\r\nd8:in\r\n6;x=y\r\nterval\r\n0\r\n\r\n"),
        b(b"HTTP/1.0 200 OK\nServer: x\n\nd8:intervali5ee"),
        b(b"HTTP/1.1 200 OK\ntransfer-encoding: chunked\n\nA\n0123456789\n0\n\n"),
        b(b"HTTP/1.1 302 Found\r\nlocation:  /new?x=1 \r\nContent-Length: 100\r\n\r\n"),
        b(b"HTTP/1.1 301 Moved\r\nLocation: http://a:81/b?c\r\n\r\n"),
        b(b"HTTP/1.1 204 No Content\r\n\r\n"),
        b(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop"),
        with_head(&compact),
        with_head(&dict_peers),
        with_head(&scrape),
        with_head(b"d14:failure reason9:not found8:intervali60ee"),
        compact,
        scrape,
        b(b"http://tracker.example:6969/announce?passkey=1"),
    ]
}

fn udp_tracker_seeds() -> Vec<Vec<u8>> {
    let params = AnnounceParams {
        info_hash: [0xab; 20],
        peer_id: *b"-AT0001-abcdefghijkl",
        downloaded: 1,
        left: 2,
        uploaded: 3,
        event: Event::Started,
        key: 0x1234,
        num_want: Some(50),
        port: 6881,
        url_data: b"/announce?pk=1".to_vec(),
    };
    let reply = |peers: Vec<SocketAddr>| AnnounceReply {
        interval: 1800,
        leechers: 3,
        seeders: 5,
        peers,
    };
    let v4 = vec![
        "1.2.3.4:6881".parse().unwrap(),
        "5.6.7.8:1".parse().unwrap(),
    ];
    let v6 = vec!["[2001:db8::1]:6881".parse().unwrap()];
    let entries = [
        ScrapeEntry {
            seeders: 1,
            completed: 2,
            leechers: 3,
        },
        ScrapeEntry {
            seeders: 4,
            completed: 5,
            leechers: 6,
        },
    ];
    let mut s = Vec::new();
    s.push(udp::encode_connect_response(0xdead, 0x4172_7542_6574_6174).to_vec());
    let mut o = Vec::new();
    udp::encode_announce_response(0xbeef, &reply(v4), false, &mut o);
    s.push(o);
    let mut o = Vec::new();
    udp::encode_announce_response(0xbeef, &reply(v6), true, &mut o);
    s.push(o);
    let mut o = Vec::new();
    udp::encode_scrape_response(7, &entries, &mut o);
    s.push(o);
    let mut o = Vec::new();
    udp::encode_error_response(9, "torrent not registered", &mut o);
    s.push(o);
    s.push(udp::encode_connect_request(0x55).to_vec());
    let mut o = Vec::new();
    udp::encode_announce_request(0x4172_7542_6574_6174, 1, &params, &mut o).unwrap();
    s.push(o);
    let mut o = Vec::new();
    udp::encode_scrape_request(0x4172_7542_6574_6174, 2, &[[1; 20], [2; 20]], &mut o).unwrap();
    s.push(o);
    s
}

fn krpc_seeds() -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = [
        &b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"[..],
        b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
        b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
        b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
    ]
    .iter()
    .map(|v| b(v))
    .collect();
    let mut r = b"d1:rd2:id20:abcdefghij01234567895:nodes26:".to_vec();
    r.extend_from_slice(b"01234567890123456789\x01\x02\x03\x04\x1a\xe1");
    r.extend_from_slice(b"e1:t2:aa1:y1:re");
    s.push(r);
    // Round-trip one through the encoder so the seed matches what we send.
    if let Ok(m) = krpc::parse(&s[2]) {
        let mut o = Vec::new();
        krpc::encode(&m, &mut o);
        s.push(o);
    }
    s
}

fn dns_seeds() -> Vec<Vec<u8>> {
    fn name(out: &mut Vec<u8>, n: &str) {
        for l in n.split('.') {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
    }
    fn rr(p: &mut Vec<u8>, owner: &[u8], ty: u16, ttl: u32, data: &[u8]) {
        p.extend_from_slice(owner);
        p.extend_from_slice(&ty.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p.extend_from_slice(&ttl.to_be_bytes());
        p.extend_from_slice(&(data.len() as u16).to_be_bytes());
        p.extend_from_slice(data);
    }
    // Selector byte: index into the target's NAMES, high bit = AAAA.
    let reply = |sel: u8, qname: &str, qtype: u16, answers: &dyn Fn(&mut Vec<u8>), an: u16| {
        let mut p = vec![sel, 0xbe, 0xef, 0x81, 0x80, 0, 1];
        p.extend_from_slice(&an.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        name(&mut p, qname);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        answers(&mut p);
        p
    };
    vec![
        // www.example.com A: CNAME (compressed) then the A record, plus an unrelated one.
        reply(
            0,
            "www.example.com",
            1,
            &|p| {
                rr(p, &[0xC0, 12], 5, 300, b"\x04cdn1\xC0\x10");
                rr(p, &[0xC0, 33], 1, 60, &[93, 184, 216, 34]);
                rr(p, b"\x05other\x00", 1, 5, &[9, 9, 9, 9]);
            },
            3,
        ),
        reply(
            0x81,
            "tracker.io",
            28,
            &|p| {
                rr(
                    p,
                    &[0xC0, 12],
                    28,
                    60,
                    &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                )
            },
            1,
        ),
        reply(2, "a", 1, &|p| rr(p, &[0xC0, 12], 1, 5, &[1, 1, 1, 1]), 1),
        // NXDOMAIN
        {
            let mut p = reply(3, "tracker.example.com", 1, &|_| {}, 0);
            p[4] = 0x83;
            p
        },
        b(b"\x00nameserver 1.2.3.4\nnameserver fe80::1%3\n"),
        b(b"\x0210.0.0.5 tracker.lan a\n::1 localhost\n"),
    ]
}

fn mse_seeds() -> Vec<Vec<u8>> {
    let mut s = Vec::new();
    for crypto in [CryptoSet::BOTH, CryptoSet::RC4, CryptoSet::PLAIN] {
        let bits = crypto.bits() as u8;
        let mut a = Handshake::initiator(INFO_HASH, KEY_A, PAD_A, crypto, IA).unwrap();
        let mut bside =
            Handshake::responder(&[OTHER_HASH, INFO_HASH], KEY_B, PAD_B, crypto).unwrap();
        let (mut a_sent, mut b_sent) = (Vec::new(), Vec::new());
        for _ in 0..8 {
            let mut x = Vec::new();
            a.poll_transmit(&mut x);
            if !x.is_empty() {
                bside.handle_bytes(&x).unwrap();
                a_sent.extend_from_slice(&x);
            }
            let mut y = Vec::new();
            bside.poll_transmit(&mut y);
            if !y.is_empty() {
                a.handle_bytes(&y).unwrap();
                b_sent.extend_from_slice(&y);
            }
        }
        assert!(
            a.is_done() && bside.is_done(),
            "honest handshake did not finish"
        );
        // A little payload after the handshake lands in leftover.
        a_sent.extend_from_slice(b"\0\0\0\x01\x02");
        // Responder side (bit 0 = 0): whole stream, and in 7-byte chunks.
        for chunk in [0u8, 7] {
            let mut v = vec![(chunk << 3) | (bits << 1)];
            v.extend_from_slice(&a_sent);
            s.push(v);
            let mut v = vec![(chunk << 3) | (bits << 1) | 1];
            v.extend_from_slice(&b_sent);
            s.push(v);
        }
    }
    s
}

fn ctl_seeds() -> Vec<Vec<u8>> {
    let mut s: Vec<Vec<u8>> = [
        &b"list\n"[..],
        b"--json list\n",
        b"  status   1  \n",
        b"start magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=a%20b --dir /mnt/usb --paused\n",
        b"start /tmp/a%20b.torrent\n",
        b"stop 1\n",
        b"resume abcd\n",
        b"remove 3 --delete\n",
        b"limit --down 1M --up 500k\n",
        b"stats\n",
        b"stop %zz\n",
    ]
    .iter()
    .map(|v| b(v))
    .collect();
    s.push(ctl::encode_response(&ctl::Response::ok(
        "ID  NAME\n1   x\n".into(),
    )));
    s.push(ctl::encode_response(&ctl::Response::error(
        1,
        "no torrent 9".into(),
    )));
    s.push(b(b"error 1\ne"));
    s
}

fn config_seeds() -> Vec<Vec<u8>> {
    let d = config::Config::default_for_env(&|_| None);
    vec![
        d.to_ini().into_bytes(),
        b(b"[main]\nbandwidth_limits = down=1.5M\nalt_schedule = sat,sun,wed 22:00-06:30\nseed_time = 2d\nbind_address = ::1\nlog_file = -\nwatch_dir = /w\nseed_ratio = 2.25\n"),
        b(b"\xef\xbb\xbfdownload_dir = ~/dl ; comment\nlisten_port = 51413\nenable_dht = false\nenable_encryption = require\nlog_level = debug\nlog_format = json\n"),
    ]
}

fn resume_seeds() -> Vec<Vec<u8>> {
    let sample = state::Resume {
        id: 7,
        info_hash: [0xab; 20],
        dir: PathBuf::from("/mnt/usb/with space/ü"),
        stopped: true,
        have: vec![0xff, 0x80],
        pieces: 9,
        downloaded: 123_456_789_012,
        uploaded: 42,
        added_at: 1_764_000_000,
        completed_at: Some(1_764_000_100),
        seed_ratio: Some(1.5),
        seed_time: Some(86_400),
    };
    let minimal = state::Resume {
        id: 0,
        info_hash: [0; 20],
        dir: PathBuf::from("/"),
        stopped: false,
        have: vec![],
        pieces: 0,
        downloaded: 0,
        uploaded: 0,
        added_at: 0,
        completed_at: None,
        seed_ratio: None,
        seed_time: None,
    };
    vec![
        state::encode_resume(&sample),
        state::encode_resume(&minimal),
    ]
}

fn main() {
    write("bencode", bencode_seeds());
    write("metainfo", metainfo_seeds());
    write("magnet", magnet_seeds());
    write("wire", wire_seeds());
    write("ext", ext_seeds());
    write("tracker_http", tracker_http_seeds());
    write("udp_tracker", udp_tracker_seeds());
    write("krpc", krpc_seeds());
    write("dns", dns_seeds());
    write("mse", mse_seeds());
    write("ctl", ctl_seeds());
    write("config", config_seeds());
    write("resume", resume_seeds());
}
