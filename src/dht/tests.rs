//! Unit tests of the `Dht` state machine: server answers, tokens, store, rate limit,
//! client lookups and bootstrap, driven by hand-built datagrams.

use super::krpc::{self, Body, Msg, Query, Response, Want};
use super::*;

fn a4(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], port))
}

fn a6(last: u16, port: u16) -> SocketAddr {
    SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, last], port))
}

fn t(s: u64) -> Instant {
    Instant::from_secs(s)
}

fn node(own: u8) -> Dht {
    Dht::new(
        [own; 20],
        t(0),
        Config::default(),
        Rng::new(u64::from(own) + 7),
    )
}

fn enc(tid: &[u8], body: Body) -> Vec<u8> {
    let mut out = Vec::new();
    krpc::encode(
        &Msg {
            tid: tid.to_vec(),
            body,
        },
        &mut out,
    );
    out
}

/// Sends `q` from `from` and returns the answer addressed to `from` with our tid.
fn ask(d: &mut Dht, now: Instant, from: SocketAddr, q: Query) -> Option<Msg> {
    d.handle_datagram(now, from, &enc(b"qq", Body::Query(q)))
        .unwrap();
    let mut answer = None;
    while let Some((to, bytes)) = d.poll_transmit() {
        let m = krpc::parse(&bytes).unwrap();
        if to == from && m.tid == b"qq" {
            answer = Some(m);
        }
    }
    answer
}

fn response(m: Option<Msg>) -> Response {
    match m.map(|m| m.body) {
        Some(Body::Response(r)) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Fills `d`'s IPv4 table by answering its pings from nodes 1..=n.
fn populate(d: &mut Dht, now: Instant, n: u8) {
    for i in 1..=n {
        let mut id = [0u8; 20];
        id[0] = i;
        d.handle_datagram(
            now,
            a4(i, 6881),
            &enc(b"zz", Body::Query(Query::Ping { id })),
        )
        .unwrap();
        while let Some((to, bytes)) = d.poll_transmit() {
            let m = krpc::parse(&bytes).unwrap();
            if matches!(m.body, Body::Query(_)) {
                let r = Response {
                    id,
                    ..Response::default()
                };
                d.handle_datagram(now, to, &enc(&m.tid, Body::Response(r)))
                    .unwrap();
            }
        }
    }
}

#[test]
fn ping_answered_with_own_id_and_sender_pinged_back() {
    let mut d = node(0xAA);
    let from = a4(1, 6881);
    d.handle_datagram(
        t(1),
        from,
        &enc(b"qq", Body::Query(Query::Ping { id: [1; 20] })),
    )
    .unwrap();
    let mut got_reply = false;
    let mut got_ping = false;
    while let Some((to, bytes)) = d.poll_transmit() {
        assert_eq!(to, from);
        match krpc::parse(&bytes).unwrap().body {
            Body::Response(r) => {
                assert_eq!(r.id, [0xAA; 20]);
                got_reply = true;
            }
            Body::Query(Query::Ping { .. }) => got_ping = true,
            other => panic!("{other:?}"),
        }
    }
    assert!(got_reply && got_ping);
    assert!(d.table(false).is_empty(), "not added before it answers");
}

#[test]
fn table_filled_by_answered_pings() {
    let mut d = node(0xFF);
    populate(&mut d, t(1), 20);
    assert!(d.table(false).len() >= 8);
    assert_eq!(d.stats(t(1)).good, d.table(false).len());
}

#[test]
fn find_node_answer_holds_k_closest() {
    let mut d = node(0xFF);
    populate(&mut d, t(1), 30);
    let q = Query::FindNode {
        id: [0xEE; 20],
        target: [0; 20],
        want: None,
    };
    let r = response(ask(&mut d, t(2), a4(200, 1), q));
    assert_eq!(r.nodes.len(), 8);
    assert!(r.nodes6.is_empty());
    let firsts: Vec<u8> = r.nodes.iter().map(|n| n.id[0]).collect();
    assert_eq!(firsts, (1..=8).collect::<Vec<u8>>());
}

#[test]
fn want_n6_from_ipv4_gets_nodes6() {
    let mut d = node(0xFF);
    let id6 = [3; 20];
    d.handle_datagram(
        t(1),
        a6(3, 7),
        &enc(b"zz", Body::Query(Query::Ping { id: id6 })),
    )
    .unwrap();
    while let Some((to, bytes)) = d.poll_transmit() {
        let m = krpc::parse(&bytes).unwrap();
        if matches!(m.body, Body::Query(_)) {
            let r = Response {
                id: id6,
                ..Response::default()
            };
            d.handle_datagram(t(1), to, &enc(&m.tid, Body::Response(r)))
                .unwrap();
        }
    }
    assert_eq!(d.table(true).len(), 1);
    let q = Query::FindNode {
        id: [0xEE; 20],
        target: [0; 20],
        want: Some(Want { n4: true, n6: true }),
    };
    let r = response(ask(&mut d, t(2), a4(200, 1), q));
    assert_eq!(r.nodes6.len(), 1);
    assert_eq!(r.nodes6[0].addr, a6(3, 7));
}

#[test]
fn announce_with_token_is_stored_and_returned() {
    let mut d = node(0xAA);
    let peer = a4(9, 7000);
    let gp = Query::GetPeers {
        id: [9; 20],
        info_hash: [0x11; 20],
        want: None,
    };
    let r = response(ask(&mut d, t(1), peer, gp.clone()));
    let token = r.token.expect("token");
    assert!(r.values.is_empty());
    let ann = Query::AnnouncePeer {
        id: [9; 20],
        info_hash: [0x11; 20],
        port: 51413,
        implied_port: false,
        token,
    };
    response(ask(&mut d, t(2), peer, ann));
    let r = response(ask(&mut d, t(3), a4(50, 1), gp));
    assert_eq!(r.values, vec![a4(9, 51413)]);
}

#[test]
fn announce_implied_port_uses_source_port() {
    let mut d = node(0xAA);
    let peer = a4(9, 7000);
    let gp = Query::GetPeers {
        id: [9; 20],
        info_hash: [0x11; 20],
        want: None,
    };
    let token = response(ask(&mut d, t(1), peer, gp.clone())).token.unwrap();
    let ann = Query::AnnouncePeer {
        id: [9; 20],
        info_hash: [0x11; 20],
        port: 1,
        implied_port: true,
        token,
    };
    response(ask(&mut d, t(2), peer, ann));
    assert_eq!(response(ask(&mut d, t(3), peer, gp)).values, vec![peer]);
}

#[test]
fn announce_with_foreign_token_gets_error_203() {
    let mut d = node(0xAA);
    let gp = Query::GetPeers {
        id: [9; 20],
        info_hash: [0x11; 20],
        want: None,
    };
    let token = response(ask(&mut d, t(1), a4(9, 1), gp)).token.unwrap();
    let ann = Query::AnnouncePeer {
        id: [8; 20],
        info_hash: [0x11; 20],
        port: 5,
        implied_port: false,
        token,
    };
    // Same token, another IP: refused (BEP 5: token checked against the querying IP).
    match ask(&mut d, t(2), a4(8, 1), ann).map(|m| m.body) {
        Some(Body::Error { code, .. }) => assert_eq!(code, krpc::ERR_PROTOCOL),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.stats(t(2)).stored_peers, 0);
}

#[test]
fn token_valid_across_one_rotation_not_two() {
    let mut d = node(0xAA);
    let peer = a4(9, 7000);
    let gp = Query::GetPeers {
        id: [9; 20],
        info_hash: [0x11; 20],
        want: None,
    };
    let token = response(ask(&mut d, t(1), peer, gp)).token.unwrap();
    d.handle_timeout(t(1) + SECRET_ROTATION);
    let ann = |token: Vec<u8>| Query::AnnouncePeer {
        id: [9; 20],
        info_hash: [0x11; 20],
        port: 5,
        implied_port: false,
        token,
    };
    response(ask(&mut d, t(302), peer, ann(token.clone())));
    d.handle_timeout(t(302) + SECRET_ROTATION);
    let m = ask(&mut d, t(603), peer, ann(token)).unwrap();
    assert!(matches!(m.body, Body::Error { code: 203, .. }));
}

#[test]
fn stored_peers_expire_after_ttl() {
    let mut d = node(0xAA);
    let peer = a4(9, 7000);
    let gp = Query::GetPeers {
        id: [9; 20],
        info_hash: [0x11; 20],
        want: None,
    };
    let token = response(ask(&mut d, t(1), peer, gp)).token.unwrap();
    let ann = Query::AnnouncePeer {
        id: [9; 20],
        info_hash: [0x11; 20],
        port: 5,
        implied_port: false,
        token,
    };
    response(ask(&mut d, t(2), peer, ann));
    assert_eq!(d.stats(t(2)).stored_peers, 1);
    let mut now = t(2);
    while now < t(2) + PEER_TTL + PURGE_INTERVAL + MAINTENANCE_INTERVAL {
        now = now + MAINTENANCE_INTERVAL;
        d.handle_timeout(now);
        while d.poll_transmit().is_some() {}
    }
    assert_eq!(d.stats(now).stored_peers, 0);
}

#[test]
fn store_caps_hashes_and_peers() {
    let cfg = Config {
        max_info_hashes: 2,
        max_peers_per_hash: 3,
        replies_per_sec: 100_000,
        ..Config::default()
    };
    let mut d = Dht::new([0xAA; 20], t(0), cfg, Rng::new(1));
    for h in 0..4u8 {
        for p in 0..6u8 {
            let peer = a4(p + 1, 1000);
            let gp = Query::GetPeers {
                id: [p + 1; 20],
                info_hash: [h; 20],
                want: None,
            };
            let token = response(ask(&mut d, t(1), peer, gp)).token.unwrap();
            let ann = Query::AnnouncePeer {
                id: [p + 1; 20],
                info_hash: [h; 20],
                port: 5,
                implied_port: false,
                token,
            };
            response(ask(&mut d, t(1), peer, ann));
        }
    }
    let s = d.stats(t(1));
    assert_eq!((s.stored_hashes, s.stored_peers), (2, 6));
}

#[test]
fn many_stored_peers_reply_fits_1024_bytes() {
    let cfg = Config {
        max_peers_per_hash: 300,
        replies_per_sec: 100_000,
        ..Config::default()
    };
    let mut d = Dht::new([0xAA; 20], t(0), cfg, Rng::new(1));
    populate(&mut d, t(1), 40);
    for p in 0..250u8 {
        let peer = SocketAddr::from(([10, 1, p, 1], 1000));
        let mut id = [1u8; 20];
        id[0] = p;
        let gp = Query::GetPeers {
            id,
            info_hash: [7; 20],
            want: None,
        };
        let token = response(ask(&mut d, t(1), peer, gp)).token.unwrap();
        let ann = Query::AnnouncePeer {
            id,
            info_hash: [7; 20],
            port: 5,
            implied_port: false,
            token,
        };
        response(ask(&mut d, t(1), peer, ann));
    }
    let gp = Query::GetPeers {
        id: [0xEE; 20],
        info_hash: [7; 20],
        want: Some(Want { n4: true, n6: true }),
    };
    d.handle_datagram(t(2), a4(200, 1), &enc(b"qq", Body::Query(gp)))
        .unwrap();
    let bytes = std::iter::from_fn(|| d.poll_transmit())
        .map(|(_, b)| b)
        .find(|b| matches!(krpc::parse(b).map(|m| m.body), Ok(Body::Response(_))))
        .unwrap();
    assert!(bytes.len() <= MAX_REPLY_LEN, "{}", bytes.len());
    let r = response(krpc::parse(&bytes).ok());
    assert!(r.values.len() > 50, "{}", r.values.len());
    assert_eq!(r.nodes.len(), 8);
}

#[test]
fn ipv6_get_peers_gets_only_ipv6_values() {
    let mut d = node(0xAA);
    for (i, peer) in [a4(9, 7000), a6(9, 7000)].into_iter().enumerate() {
        let gp = Query::GetPeers {
            id: [i as u8; 20],
            info_hash: [0x11; 20],
            want: None,
        };
        let token = response(ask(&mut d, t(1), peer, gp)).token.unwrap();
        let ann = Query::AnnouncePeer {
            id: [i as u8; 20],
            info_hash: [0x11; 20],
            port: 5,
            implied_port: false,
            token,
        };
        response(ask(&mut d, t(2), peer, ann));
    }
    let gp = Query::GetPeers {
        id: [0xEE; 20],
        info_hash: [0x11; 20],
        want: None,
    };
    let r = response(ask(&mut d, t(3), a6(77, 1), gp));
    assert_eq!(r.values, vec![a6(9, 5)]);
}

#[test]
fn unknown_method_gets_error_204() {
    let mut d = node(0xAA);
    let m = ask(&mut d, t(1), a4(1, 1), Query::Unknown { id: [1; 20] }).unwrap();
    assert!(matches!(m.body, Body::Error { code: 204, .. }));
}

#[test]
fn answers_beyond_rate_are_dropped_then_refill() {
    let cfg = Config {
        replies_per_sec: 10,
        ..Config::default()
    };
    let mut d = Dht::new([0xAA; 20], t(0), cfg, Rng::new(1));
    let ping = Query::Ping { id: [1; 20] };
    let answered = (0..30)
        .filter(|_| ask(&mut d, t(0), a4(1, 1), ping.clone()).is_some())
        .count();
    assert_eq!(answered, 10);
    assert!(ask(&mut d, Instant::from_millis(100), a4(1, 1), ping.clone()).is_some());
    assert!(ask(&mut d, Instant::from_millis(100), a4(1, 1), ping).is_none());
    assert_eq!(d.stats(t(0)).replies_dropped, 21);
}

#[test]
fn bootstrap_queries_routers_then_their_nodes() {
    let boot = a4(100, 6881);
    let cfg = Config {
        bootstrap: vec![boot],
        ..Config::default()
    };
    let own = [0x80; 20];
    let mut d = Dht::new(own, t(0), cfg, Rng::new(2));
    assert_eq!(d.poll_at(), t(0));
    d.handle_timeout(t(0));
    let (to, bytes) = d.poll_transmit().expect("bootstrap query");
    assert_eq!(to, boot);
    let m = krpc::parse(&bytes).unwrap();
    assert!(matches!(m.body, Body::Query(Query::FindNode { target, .. }) if target == own));
    let nodes: Vec<NodeInfo> = (1..=5u8)
        .map(|i| NodeInfo {
            id: [0x80 ^ i; 20],
            addr: a4(i, 6881),
        })
        .collect();
    let r = Response {
        id: [1; 20],
        nodes: nodes.clone(),
        ..Response::default()
    };
    d.handle_datagram(t(1), boot, &enc(&m.tid, Body::Response(r)))
        .unwrap();
    assert_eq!(d.table(false).len(), 1, "the router answered");
    let sent: Vec<SocketAddr> = std::iter::from_fn(|| d.poll_transmit())
        .map(|(a, _)| a)
        .collect();
    assert_eq!(sent.len(), lookup::ALPHA);
    assert!(sent.iter().all(|a| nodes.iter().any(|n| n.addr == *a)));
    // Nobody answers: the queries time out, the rest are asked, then the lookup ends.
    let mut now = t(1);
    for _ in 0..10 {
        now = now + REQUEST_TIMEOUT;
        d.handle_timeout(now);
        while d.poll_transmit().is_some() {}
    }
    assert_eq!(d.stats(now).lookups, 0);
    assert_eq!(d.stats(now).pending, 0);
}

/// Bootstrap names are resolved after start: a router added then is asked at once, not after
/// the 30 s bootstrap retry, and adding it twice sends one query.
#[test]
fn empty_bootstrap_router_added_later_is_asked_at_once() {
    let own = [0x80; 20];
    let mut d = Dht::new(own, t(0), Config::default(), Rng::new(3));
    d.handle_timeout(t(0));
    assert!(d.poll_transmit().is_none(), "no router known yet");
    d.handle_timeout(t(1));
    while d.poll_transmit().is_some() {}
    let boot = a4(100, 6881);
    d.add_bootstrap(t(2), boot);
    d.add_bootstrap(t(2), boot);
    assert_eq!(d.poll_at(), t(2));
    d.handle_timeout(t(2));
    let sent: Vec<(SocketAddr, Vec<u8>)> = std::iter::from_fn(|| d.poll_transmit()).collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, boot);
    let m = krpc::parse(&sent[0].1).unwrap();
    assert!(matches!(m.body, Body::Query(Query::FindNode { target, .. }) if target == own));
    for i in 0..MAX_BOOTSTRAP as u16 + 5 {
        d.add_bootstrap(t(3), a6(i, 6881));
    }
    assert_eq!(d.cfg.bootstrap.len(), MAX_BOOTSTRAP);
}

#[test]
fn answer_from_wrong_address_ignored() {
    let boot = a4(100, 6881);
    let cfg = Config {
        bootstrap: vec![boot],
        ..Config::default()
    };
    let mut d = Dht::new([0x80; 20], t(0), cfg, Rng::new(2));
    d.handle_timeout(t(0));
    let (_, bytes) = d.poll_transmit().unwrap();
    let m = krpc::parse(&bytes).unwrap();
    let r = Response {
        id: [1; 20],
        ..Response::default()
    };
    d.handle_datagram(t(1), a4(101, 6881), &enc(&m.tid, Body::Response(r)))
        .unwrap();
    assert!(d.table(false).is_empty());
    assert_eq!(d.stats(t(1)).pending, 1);
}

#[test]
fn get_peers_lookup_reports_peers_and_done() {
    let mut d = node(0x01);
    populate(&mut d, t(1), 10);
    let ih = [0x02; 20];
    let lid = d.get_peers(t(2), ih).unwrap();
    let mut done = None;
    let mut peers = Vec::new();
    for _ in 0..50 {
        while let Some((to, bytes)) = d.poll_transmit() {
            let m = krpc::parse(&bytes).unwrap();
            let Body::Query(Query::GetPeers { .. }) = m.body else {
                continue;
            };
            let Some(i) = (1..=10u8).find(|i| a4(*i, 6881) == to) else {
                continue;
            };
            let mut id = [0u8; 20];
            id[0] = i;
            let r = Response {
                id,
                token: Some(vec![i]),
                values: vec![a4(i, 9000)],
                ..Response::default()
            };
            d.handle_datagram(t(2), to, &enc(&m.tid, Body::Response(r)))
                .unwrap();
        }
        while let Some(e) = d.poll_event() {
            match e {
                DhtEvent::Peers {
                    lookup, peers: p, ..
                } => {
                    assert_eq!(lookup, lid);
                    peers.extend(p);
                }
                DhtEvent::LookupDone { .. } => done = Some(e),
            }
        }
        if done.is_some() {
            break;
        }
    }
    let Some(DhtEvent::LookupDone {
        closest, messages, ..
    }) = done
    else {
        panic!("lookup never finished")
    };
    assert_eq!(closest.len(), 8);
    assert_eq!(messages, 8, "only the 8 closest of 10 are asked");
    assert_eq!(peers.len(), 8);
}

#[test]
fn lookups_bounded() {
    let mut d = node(0x01);
    populate(&mut d, t(1), 10);
    let max = Config::default().max_lookups;
    for i in 0..max {
        d.get_peers(t(2), [i as u8; 20]).unwrap();
    }
    assert_eq!(
        d.get_peers(t(2), [0xEE; 20]),
        Err(DhtError::TooManyLookups(max))
    );
}

#[test]
fn export_import_seeds_next_start() {
    let mut d = node(0x01);
    populate(&mut d, t(1), 10);
    let saved = d.export_nodes();
    assert_eq!(saved.len(), 10);
    let mut e = node(0x01);
    e.import_nodes(t(0), &saved);
    e.handle_timeout(t(0));
    let sent: Vec<SocketAddr> = std::iter::from_fn(|| e.poll_transmit())
        .map(|(a, _)| a)
        .collect();
    assert_eq!(sent.len(), lookup::ALPHA);
    assert!(sent.iter().all(|a| saved.iter().any(|n| n.addr == *a)));
}

#[test]
fn v4_mapped_sender_treated_as_ipv4() {
    let mut d = node(0xAA);
    let mapped: SocketAddr = "[::ffff:10.0.0.9]:7000".parse().unwrap();
    let q = Query::FindNode {
        id: [9; 20],
        target: [0; 20],
        want: None,
    };
    d.handle_datagram(t(1), mapped, &enc(b"qq", Body::Query(q)))
        .unwrap();
    let (to, _) = d.poll_transmit().unwrap();
    assert_eq!(to, a4(9, 7000));
}

#[test]
fn garbage_datagrams_never_panic() {
    let mut d = node(0xAA);
    populate(&mut d, t(1), 20);
    let mut rng = Rng::new(99);
    let seeds = [
        enc(b"qq", Body::Query(Query::Ping { id: [1; 20] })),
        enc(
            b"qq",
            Body::Query(Query::GetPeers {
                id: [1; 20],
                info_hash: [2; 20],
                want: Some(Want { n4: true, n6: true }),
            }),
        ),
        enc(
            b"\x00\x01",
            Body::Response(Response {
                id: [3; 20],
                nodes: vec![NodeInfo {
                    id: [4; 20],
                    addr: a4(4, 4),
                }],
                values: vec![a4(5, 5)],
                token: Some(vec![1, 2]),
                ..Response::default()
            }),
        ),
    ];
    for round in 0..5000u64 {
        let mut v = seeds[round as usize % seeds.len()].clone();
        for _ in 0..1 + rng.below(3) {
            let i = rng.below(v.len());
            v[i] = rng.next_u32() as u8;
        }
        let from = a4(1 + rng.below(30) as u8, 6881);
        let _ = d.handle_datagram(t(2) + Duration::from_millis(round), from, &v);
        for cut in [0, v.len() / 2, v.len().saturating_sub(1)] {
            let _ = d.handle_datagram(t(2), from, &v[..cut]);
        }
        while d.poll_transmit().is_some() {}
    }
    d.handle_timeout(t(100));
}

#[test]
fn saved_nodes_roundtrip_and_garbage_is_empty() {
    let nodes: Vec<NodeInfo> = (1..=40u8)
        .map(|i| NodeInfo {
            id: [i; 20],
            addr: if i % 2 == 0 {
                a4(i, 1)
            } else {
                a6(u16::from(i), 1)
            },
        })
        .collect();
    let bytes = save_nodes(&nodes);
    let mut back = load_nodes(&bytes);
    back.sort_by_key(|n| n.id);
    assert_eq!(back, nodes);
    for i in 0..bytes.len() {
        let _ = load_nodes(&bytes[..i]);
    }
    assert!(load_nodes(b"garbage").is_empty());
}
