#!/usr/bin/python3
"""A libtorrent (python3-libtorrent 2.0) peer for atorrent's interop tests and benchmarks.

Modes:
  lt_peer.py seed     --torrent T --dir D --listen 127.0.0.2:6881 [--peer IP:PORT]... [--no-tracker]
  lt_peer.py download --torrent T --dir D --listen 127.0.0.3:6881 [--peer IP:PORT]... [--no-tracker]
  lt_peer.py check    --torrent T --dir D        (hash-check D against T, print `infohash`/`have`)
  lt_peer.py infohash --torrent T                (print the v1 info-hash of T)
  lt_peer.py --create SRC -o OUT [--tracker URL]... [--piece-length N]   (v1-only torrent)
  seed/download also take --encryption {disabled,enabled,forced} (MSE/PE policy, both ways).
  lt_peer.py dht-node --listen 127.0.0.5:7000 [--dht-bootstrap IP:PORT,...]   (a bare DHT node)
  seed/download take --dht-bootstrap IP:PORT,... to use the DHT (loopback nodes only); download
  takes --magnet URI instead of --torrent. With the DHT, the torrent is added only after the
  DHT has bootstrapped (see the interop notes), and seeders re-announce every few seconds.

Lines on stdout (the tests wait for them): `infohash <hex>`, `ready` once listening (seeders: after
the data has been checked and found complete), `complete` once a download is done and flushed.
Progress and diagnostics go to stderr. Exit codes: 0 done (or SIGTERM/SIGINT), 1 error,
3 `--timeout` reached.

Every setting goes to the session() constructor: libtorrent's defaults start the DHT, LSD, UPnP
and NAT-PMP the moment a session exists. uTP is off because it crawls on loopback; several
peers share 127.0.0.0/8, so multiple connections per IP are allowed; failed dials are retried
quickly (a peer may still be hash-checking when first dialled).
"""

import argparse
import os
import signal
import sys
import time

import libtorrent as lt

STOP = False


def on_signal(_signum, _frame):
    global STOP
    STOP = True


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def log(msg):
    sys.stderr.write("[lt_peer %.1f] %s\n" % (time.monotonic() - START, msg))
    sys.stderr.flush()


START = time.monotonic()

# --encryption: (out_enc_policy, in_enc_policy). Without the flag (None): outgoing plaintext,
# incoming either, as these tests have always run.
ENC_POLICY = {
    None: (lt.enc_policy.disabled, lt.enc_policy.enabled),
    "disabled": (lt.enc_policy.disabled, lt.enc_policy.disabled),
    "enabled": (lt.enc_policy.enabled, lt.enc_policy.enabled),
    "forced": (lt.enc_policy.forced, lt.enc_policy.forced),
}


def parse_endpoint(text):
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit("lt_peer: bad endpoint %r (want IP:PORT)" % text)
    return host.strip("[]"), int(port)


def create(args):
    src = os.path.abspath(args.create)
    fs = lt.file_storage()
    lt.add_files(fs, src)
    if fs.num_files() == 0:
        raise SystemExit("lt_peer: no files under %s" % src)
    t = lt.create_torrent(fs, args.piece_length or 0, flags=lt.create_torrent.v1_only)
    for tier, url in enumerate(args.tracker):
        t.add_tracker(url, tier)
    t.set_creator("lt_peer.py (libtorrent %s)" % lt.__version__)
    lt.set_piece_hashes(t, os.path.dirname(src))
    data = lt.bencode(t.generate())
    with open(args.output, "wb") as f:
        f.write(data)
    info = lt.torrent_info(args.output)
    say("infohash %s" % str(info.info_hashes().v1))
    return 0


def make_session(args):
    listen = args.listen or "127.0.0.1:0"
    ip, _port = parse_endpoint(listen)
    alerts = (
        lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.storage_notification
    )
    if args.verbose:
        alerts |= lt.alert.category_t.peer_notification | lt.alert.category_t.connect_notification
        alerts |= lt.alert.category_t.tracker_notification
    dht = bool(getattr(args, "dht_bootstrap", None)) or args.mode == "dht-node"
    settings = {
        "listen_interfaces": listen,
        "outgoing_interfaces": ip,
        "enable_dht": dht,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "enable_outgoing_tcp": True,
        "enable_incoming_tcp": True,
        "allow_multiple_connections_per_ip": True,
        "min_reconnect_time": 1,
        "max_failcount": 100,
        "peer_connect_timeout": 5,
        "stop_tracker_timeout": 1,
        "alert_mask": alerts,
        # Default: plaintext outgoing, either incoming (see --encryption).
        "out_enc_policy": int(ENC_POLICY[args.encryption][0]),
        "in_enc_policy": int(ENC_POLICY[args.encryption][1]),
        "user_agent": "lt_peer/%s" % lt.__version__,
        "announce_to_all_trackers": True,
        "auto_manage_startup": 0,
    }
    if args.encryption == "forced":
        # Forced alone still lets a peer pick plaintext inside MSE; insist on RC4.
        settings["allowed_enc_level"] = int(lt.enc_level.rc4)
        settings["prefer_rc4"] = True
    if dht:
        alerts |= lt.alert.category_t.dht_notification
        settings["alert_mask"] = alerts
        settings["dht_bootstrap_nodes"] = args.dht_bootstrap or ""
        # Loopback test networks: every node shares 127.0.0.0/8.
        settings["dht_restrict_routing_ips"] = False
        settings["dht_restrict_search_ips"] = False
        settings["dht_prefer_verified_node_ids"] = False
        settings["dht_ignore_dark_internet"] = False
        settings["dht_enforce_node_id"] = False
        settings["dht_announce_interval"] = 5
    if args.no_outgoing:
        # Accept connections but never dial (tests that must see who dials whom).
        settings["enable_outgoing_tcp"] = False
    if args.download_limit:
        settings["download_rate_limit"] = args.download_limit
        settings["ignore_limits_on_local_network"] = False
    if args.upload_limit:
        settings["upload_rate_limit"] = args.upload_limit
        # Loopback counts as the local network, which libtorrent exempts from limits.
        settings["ignore_limits_on_local_network"] = False
    return lt.session(settings)


def wait_dht_bootstrap(ses, seconds):
    """Waits for libtorrent's dht_bootstrap_alert (announcing earlier goes nowhere)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not STOP:
        ses.wait_for_alert(200)
        for a in ses.pop_alerts():
            if isinstance(a, lt.dht_bootstrap_alert):
                log("dht bootstrapped")
                return True
    log("no dht_bootstrap_alert; going on")
    return False


def run_dht_node(args):
    ses = make_session(args)
    if args.dht_bootstrap:
        wait_dht_bootstrap(ses, 10)
    say("ready")
    deadline = START + args.timeout
    while not STOP and time.monotonic() < deadline:
        ses.wait_for_alert(500)
        for a in ses.pop_alerts():
            if args.verbose:
                log("alert %s: %s" % (type(a).__name__, a.message()))
    return 0


def run_magnet(args):
    ses = make_session(args)
    wait_dht_bootstrap(ses, 15)
    atp = lt.parse_magnet_uri(args.magnet)
    atp.save_path = os.path.abspath(args.dir)
    flags = atp.flags
    flags &= ~lt.torrent_flags.auto_managed
    flags &= ~lt.torrent_flags.paused
    atp.flags = flags
    h = ses.add_torrent(atp)
    say("infohash %s" % str(h.info_hashes().v1))
    say("ready")
    peers = [parse_endpoint(p) for p in args.peer]
    deadline = START + args.timeout
    last_dial = 0.0
    last_log = 0.0
    while not STOP:
        now = time.monotonic()
        if now > deadline:
            log("timeout after %ds" % args.timeout)
            return 3
        for a in ses.pop_alerts():
            if args.verbose or a.category() & lt.alert.category_t.error_notification:
                log("alert %s: %s" % (type(a).__name__, a.message()))
        st = h.status()
        if st.has_metadata and st.is_seeding:
            h.flush_cache()
            time.sleep(0.5)
            say("complete")
            return 0
        if peers and now - last_dial >= 2.0:
            last_dial = now
            for ep in peers:
                h.connect_peer(ep)
        if now - last_log >= args.log_interval:
            last_log = now
            log("magnet: metadata=%s state=%s peers=%d progress=%.1f%%"
                % (st.has_metadata, st.state, st.num_peers, st.progress * 100))
        ses.wait_for_alert(100)
    return 0


def run_peer(args):
    if args.mode == "dht-node":
        return run_dht_node(args)
    if args.mode == "download" and args.magnet:
        if not args.dir:
            raise SystemExit("lt_peer: --dir is required")
        return run_magnet(args)
    if not args.torrent or not args.dir:
        raise SystemExit("lt_peer: --torrent and --dir are required")
    if args.no_tracker or args.mode in ("check", "infohash"):
        # Strip announce/announce-list; the info dict (and so the info-hash) is untouched.
        with open(args.torrent, "rb") as f:
            meta = lt.bdecode(f.read())
        if meta is None:
            raise SystemExit("lt_peer: %s is not bencoded" % args.torrent)
        meta.pop(b"announce", None)
        meta.pop(b"announce-list", None)
        info = lt.torrent_info(meta)
    else:
        info = lt.torrent_info(args.torrent)
    say("infohash %s" % str(info.info_hashes().v1))
    if args.mode == "infohash":
        return 0

    ses = make_session(args)
    if args.dht_bootstrap:
        wait_dht_bootstrap(ses, 15)
    atp = lt.add_torrent_params()
    atp.ti = info
    atp.save_path = os.path.abspath(args.dir)
    flags = atp.flags
    flags &= ~lt.torrent_flags.auto_managed
    flags &= ~lt.torrent_flags.paused
    if args.seed_mode and args.mode == "seed":
        flags |= lt.torrent_flags.seed_mode
    atp.flags = flags
    h = ses.add_torrent(atp)

    peers = [parse_endpoint(p) for p in args.peer]
    deadline = START + args.timeout
    ready = False
    done = False
    last_dial = 0.0
    last_file = 0.0
    last_log = 0.0
    last_announce = 0.0
    exit_code = 0

    while True:
        if STOP:
            log("signal: stopping")
            break
        now = time.monotonic()
        if now > deadline:
            log("timeout after %ds" % args.timeout)
            exit_code = 3
            break
        for a in ses.pop_alerts():
            if args.verbose or a.category() & lt.alert.category_t.error_notification:
                log("alert %s: %s" % (type(a).__name__, a.message()))
        st = h.status()
        checking = st.state in (
            lt.torrent_status.checking_files,
            lt.torrent_status.checking_resume_data,
        )
        if args.mode == "check":
            if not checking and st.state != lt.torrent_status.allocating and st.has_metadata:
                say("have %d/%d" % (st.num_pieces, info.num_pieces()))
                break
        elif not ready and not checking:
            if args.mode == "seed" and not st.is_seeding:
                log("seed data incomplete: %d/%d pieces" % (st.num_pieces, info.num_pieces()))
                exit_code = 1
                break
            ready = True
            say("ready")
        if ready and not done and args.mode == "download" and st.is_seeding:
            h.flush_cache()
            flush_deadline = time.monotonic() + 5
            flushed = False
            while not flushed and time.monotonic() < flush_deadline:
                ses.wait_for_alert(200)
                for a in ses.pop_alerts():
                    if isinstance(a, lt.cache_flushed_alert):
                        flushed = True
            done = True
            say("complete")
            if not args.keep_seeding:
                break
        if ready and args.dht_bootstrap and now - last_announce >= 3.0:
            last_announce = now
            h.force_dht_announce()
        if ready and peers and now - last_dial >= 2.0:
            last_dial = now
            for ep in peers:
                h.connect_peer(ep)
        if ready and args.peers_file and now - last_file >= 1.0:
            last_file = now
            try:
                with open(args.peers_file) as f:
                    for line in f:
                        if line.strip():
                            h.connect_peer(parse_endpoint(line.strip()))
            except OSError:
                pass
        if now - last_log >= args.log_interval:
            last_log = now
            log(
                "state=%s pieces=%d/%d peers=%d down=%.1fMB/s up=%.1fMB/s"
                % (
                    st.state,
                    st.num_pieces,
                    info.num_pieces(),
                    st.num_peers,
                    st.download_payload_rate / 1e6,
                    st.upload_payload_rate / 1e6,
                )
            )
        ses.wait_for_alert(100)

    ses.pause()
    del ses
    return exit_code


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=["seed", "download", "check", "infohash", "dht-node"])
    p.add_argument("--dht-bootstrap", help="IP:PORT,... loopback DHT nodes; turns the DHT on")
    p.add_argument("--magnet", help="download: a magnet URI instead of --torrent")
    p.add_argument("--torrent")
    p.add_argument("--dir", help="save path (the torrent's name is created inside)")
    p.add_argument("--listen", help="listen IP:PORT; outgoing connections use the same IP")
    p.add_argument("--peer", action="append", default=[], help="IP:PORT to dial (repeated every 2 s)")
    p.add_argument("--peers-file", help="file of IP:PORT lines, re-read and dialled every second")
    p.add_argument("--no-tracker", action="store_true", help="ignore the torrent's trackers")
    p.add_argument("--seed-mode", action="store_true", help="seed without checking the data first")
    p.add_argument("--keep-seeding", action="store_true", help="download: keep running after complete")
    p.add_argument("--upload-limit", type=int, default=0, help="bytes/s")
    p.add_argument("--download-limit", type=int, default=0, help="bytes/s")
    p.add_argument("--no-outgoing", action="store_true", help="never dial peers")
    p.add_argument("--timeout", type=float, default=120.0, help="give up (exit 3) after this many seconds")
    p.add_argument("--log-interval", type=float, default=5.0)
    p.add_argument("--verbose", action="store_true")
    p.add_argument(
        "--encryption",
        choices=["disabled", "enabled", "forced"],
        help="MSE/PE policy for both directions (forced: RC4 only); default: outgoing plaintext,"
        " incoming either",
    )
    p.add_argument("--create", metavar="SRC", help="create a v1-only torrent of SRC")
    p.add_argument("-o", "--output", help="output .torrent for --create")
    p.add_argument("--tracker", action="append", default=[], help="announce URL for --create")
    p.add_argument("--piece-length", type=int, default=0)
    args = p.parse_args()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if args.create:
        if not args.output:
            p.error("--create needs -o OUT")
        return create(args)
    if not args.mode:
        p.error("give a mode (seed, download, check, infohash) or --create")
    return run_peer(args)


if __name__ == "__main__":
    sys.exit(main())
