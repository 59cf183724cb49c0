//! The `atorrent` binary: parse arguments, load the config, run one command.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error, 3 daemon not
//! running (client commands). Errors go to stderr as `atorrent: <what went wrong>`.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use atorrent::bitfield::Bitfield;
use atorrent::cli::{self, Command, CreateArgs, DaemonArgs, DownloadArgs, Source};
use atorrent::config::{self, Config, DirectIoMode, LogFormat};
use atorrent::ctl::{self, Envelope, Request};
use atorrent::engine::{run_daemon, DaemonSettings, Engine, Options, Outcome, Progress};
use atorrent::hash::hex;
use atorrent::metainfo::{self, Metainfo};
use atorrent::rng::Rng;
use atorrent::storage::{DirectIo, Storage};
use atorrent::torrent::{Settings, Torrent, CHUNK_LEN, SCRATCH_LEN};
use atorrent::{create, logfile, sys};

/// Largest .torrent file read (a 100k-file torrent is a few MiB).
const MAX_TORRENT_FILE: u64 = 64 << 20;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("atorrent: {e}");
            eprintln!("Try 'atorrent --help' for more information.");
            return ExitCode::from(2);
        }
    };
    match &cli.command {
        Command::Help(cmd) => {
            print!("{}", cli::help_text(cmd.as_deref()));
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("atorrent {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let env = |k: &str| std::env::var(k).ok();
    let config = match config::load_with_cli(&cli, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("atorrent: {e}");
            return ExitCode::from(2);
        }
    };
    let level = config.log_level.to_filter();
    if !matches!(cli.command, Command::Daemon(_)) || is_print_only(&cli.command) {
        let _ = simple_logger::SimpleLogger::new()
            .with_level(level)
            .env()
            .init();
    }

    let result = match &cli.command {
        Command::Info { torrent } => info(torrent, cli.json),
        Command::Create(a) => create_torrent(a),
        Command::Download(a) => download(a, &config, cli.quiet),
        Command::Daemon(d) if d.print_config || d.print_memory_budget => {
            if d.print_config {
                print!("{}", config.to_ini());
            }
            if d.print_memory_budget {
                for (what, bytes) in config.memory_budget() {
                    println!("{:>10}  {}", bytes, what);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(d) => daemon(d, config, cli.config.clone()),
        other => return client(other, &config, cli.json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atorrent: {e}");
            ExitCode::from(1)
        }
    }
}

fn is_print_only(c: &Command) -> bool {
    matches!(c, Command::Daemon(d) if d.print_config || d.print_memory_budget)
}

/// `atorrent daemon`: detach if asked, log to the configured file, run the engine.
fn daemon(
    d: &DaemonArgs,
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<ExitCode, String> {
    // Paths given relative to the caller's directory, before --detach moves to `/`.
    let pid_file = d.pid_file.as_ref().map(|p| absolute(p));
    let config_path = config_path.map(|p| absolute(&p));
    // --detach: the parent returns only once the daemon listens, or fails with its error.
    let on_ready = if d.detach {
        Some(sys::daemonize_notify().map_err(|e| format!("cannot detach: {e}"))?)
    } else {
        None
    };
    if let Err(e) = logfile::init(
        config.log_file.as_deref(),
        config.log_level.to_filter(),
        config.log_format == LogFormat::Json,
        config.log_max_size,
        !d.detach,
    ) {
        let msg = format!("log file: {e}");
        sys::notify_ready(on_ready, Err(&msg));
        return Err(msg);
    }
    let mut opts = engine_options(&config, true, Progress::Quiet);
    opts.dht_state = Some(config.state_dir.join("dht.dat"));
    let outcome = run_daemon(
        opts,
        DaemonSettings {
            config,
            config_path,
            pid_file,
            on_ready,
        },
    );
    match outcome? {
        Outcome::Failed(e) => Err(e),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Client commands: one request over the control socket, the daemon's answer printed as is.
fn client(cmd: &Command, config: &Config, json: bool) -> ExitCode {
    use std::io::{Read, Write};
    let req = match cmd {
        Command::Start(a) => Request::Start {
            source: match &a.source {
                Source::File(p) => absolute(p).display().to_string(),
                Source::Magnet(m) => m.clone(),
            },
            dir: a.dir.as_ref().map(|d| absolute(d).display().to_string()),
            paused: a.paused,
        },
        Command::Stop { id } => Request::Stop { id: id.clone() },
        Command::Resume { id } => Request::Resume { id: id.clone() },
        Command::Seed { id } => Request::Seed { id: id.clone() },
        Command::Remove { id, delete_data } => Request::Remove {
            id: id.clone(),
            delete_data: *delete_data,
        },
        Command::List => Request::List,
        Command::Status { id } => Request::Status { id: id.clone() },
        Command::Stats => Request::Stats,
        Command::Shutdown => Request::Shutdown,
        Command::Limit(l) => Request::Limit {
            id: l.id.clone(),
            down: l.down,
            up: l.up,
            ratio: l.ratio,
            seed_time: l.seed_time,
        },
        _ => return ExitCode::from(2),
    };
    let path = &config.control_socket;
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("atorrent: daemon not running ({}: {e})", path.display());
            eprintln!("atorrent: start it with 'atorrent daemon' (and the same --config)");
            return ExitCode::from(3);
        }
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(30)));
    let line = ctl::encode_request(&Envelope { json, req });
    let mut buf = Vec::new();
    let sent = stream.write_all(line.as_bytes());
    let got = sent.and_then(|_| {
        (&mut stream)
            .take(ctl::MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
    });
    if let Err(e) = got {
        eprintln!("atorrent: control socket {}: {e}", path.display());
        return ExitCode::from(1);
    }
    match ctl::parse_response(&buf) {
        Ok(r) => {
            if r.code == 0 {
                print!("{}", r.body);
            } else {
                eprint!("atorrent: {}", r.body);
            }
            ExitCode::from(r.code)
        }
        Err(e) => {
            eprintln!("atorrent: bad answer from the daemon: {e}");
            ExitCode::from(1)
        }
    }
}

/// The metainfo, which keeps the raw info dictionary (served to peers fetching metadata).
fn load_torrent(path: &Path) -> Result<Metainfo, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    f.take(MAX_TORRENT_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_TORRENT_FILE {
        return Err(format!(
            "{}: larger than {} MiB",
            path.display(),
            MAX_TORRENT_FILE >> 20
        ));
    }
    let parsed = metainfo::parse(&buf).map_err(|e| format!("{}: {e}", path.display()))?;
    for w in &parsed.warnings {
        log::warn!("torrent {}: {}", path.display(), w);
    }
    Ok(parsed.meta)
}

fn info(path: &Path, json: bool) -> Result<ExitCode, String> {
    let m = load_torrent(path)?;
    if json {
        let mut s = String::from("{");
        s += &format!("\"name\":{},", json_str(&m.name));
        s += &format!("\"info_hash\":\"{}\",", hex(&m.info_hash));
        s += &format!("\"size\":{},", m.total_length);
        s += &format!("\"piece_length\":{},", m.piece_length);
        s += &format!("\"pieces\":{},", m.piece_count());
        s += &format!("\"private\":{},", m.private);
        s += "\"files\":[";
        let files: Vec<String> = m
            .files
            .iter()
            .filter(|f| !f.pad)
            .map(|f| {
                format!(
                    "{{\"path\":{},\"length\":{}}}",
                    json_str(&f.path.join("/")),
                    f.length
                )
            })
            .collect();
        s += &files.join(",");
        s += "],\"trackers\":[";
        let tr: Vec<String> = m.trackers.iter().flatten().map(|t| json_str(t)).collect();
        s += &tr.join(",");
        s += "]}";
        println!("{s}");
    } else {
        println!("name: {}", m.name);
        println!("info_hash: {}", hex(&m.info_hash));
        println!(
            "size: {} ({})",
            m.total_length,
            atorrent::engine::human(m.total_length)
        );
        println!("piece_length: {}", m.piece_length);
        println!("pieces: {}", m.piece_count());
        println!("private: {}", if m.private { "yes" } else { "no" });
        for (i, tier) in m.trackers.iter().enumerate() {
            for t in tier {
                println!("tracker: {} (tier {})", t, i);
            }
        }
        let files: Vec<_> = m.files.iter().filter(|f| !f.pad).collect();
        println!("files: {}", files.len());
        for f in files {
            println!("file: {} {}", f.length, f.path.join("/"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn create_torrent(a: &CreateArgs) -> Result<ExitCode, String> {
    let opts = create::CreateOptions {
        trackers: a.trackers.clone(),
        piece_length: a.piece_length,
        private: a.private,
        comment: a.comment.clone(),
        created_by: format!("atorrent/{}", env!("CARGO_PKG_VERSION")),
    };
    let bytes = create::create(&a.path, &opts).map_err(|e| e.to_string())?;
    let parsed = metainfo::parse(&bytes).map_err(|e| e.to_string())?;
    std::fs::write(&a.output, &bytes).map_err(|e| format!("{}: {e}", a.output.display()))?;
    println!("{} {}", hex(&parsed.meta.info_hash), a.output.display());
    Ok(ExitCode::SUCCESS)
}

fn resolve_peer(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // A name: resolved once at start-up, before the event loop runs.
    s.to_socket_addrs()
        .map_err(|e| format!("--peer {s}: {e}"))?
        .next()
        .ok_or_else(|| format!("--peer {s}: no address"))
}

fn download(a: &DownloadArgs, config: &Config, quiet: bool) -> Result<ExitCode, String> {
    let meta = match &a.source {
        Source::File(p) => load_torrent(p)?,
        Source::Magnet(uri) => return download_magnet(a, config, quiet, uri),
    };
    let peers: Vec<SocketAddr> = a
        .peers
        .iter()
        .map(|p| resolve_peer(p))
        .collect::<Result<_, _>>()?;
    let dir = &config.download_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let direct = match config.direct_io {
        DirectIoMode::Auto => DirectIo::Auto,
        DirectIoMode::On => DirectIo::On,
        DirectIoMode::Off => DirectIo::Off,
    };
    let mut storage = Storage::open(dir, &meta, direct, config.max_open_files as usize)
        .map_err(|e| e.to_string())?;
    let mut have = Bitfield::new(meta.piece_count());
    let mut scratch = sys::AlignedBuf::new(SCRATCH_LEN);
    let ok = storage
        .check_existing(&meta, &mut scratch, |p, ok| {
            if ok {
                have.set(p)
            }
        })
        .map_err(|e| e.to_string())?;
    drop(scratch);
    if ok > 0 {
        log::info!(
            "storage: {} of {} pieces already on disk",
            ok,
            meta.piece_count()
        );
    }
    let progress = if quiet {
        Progress::Quiet
    } else if std::io::stdout().is_terminal() {
        Progress::Tty
    } else {
        Progress::Lines
    };
    let opts = engine_options(config, a.seed, progress);
    let mut engine = Engine::new(opts).map_err(|e| e.to_string())?;
    let mut seed = [0u8; 8];
    sys::getrandom(&mut seed).map_err(|e| e.to_string())?;
    let mut tiers = meta.trackers.clone();
    for t in &a.trackers {
        tiers.push(vec![t.clone()]);
    }
    let mut meta = meta;
    meta.trackers = tiers;
    let settings = Settings {
        upload_slots: config.upload_slots as usize,
        max_candidates: config.max_known_peers as usize,
        listen_port: engine.listen_port(),
    };

    let torrent = Torrent::new(
        meta,
        have,
        Box::new(storage),
        engine.chunks(),
        engine.peer_id(),
        settings,
        Rng::new(u64::from_le_bytes(seed)),
    )?;
    let ti = engine.add_torrent(torrent);
    for p in peers {
        engine.add_peer(ti, p);
    }
    match engine.run() {
        Outcome::Complete => Ok(ExitCode::SUCCESS),
        // A seeder is meant to be stopped by a signal; a download stopped early is not done.
        Outcome::Interrupted if a.seed || engine.all_complete() => Ok(ExitCode::SUCCESS),
        Outcome::Interrupted => Err("interrupted before the download completed".into()),
        Outcome::Failed(e) => Err(e),
    }
}

/// `download <magnet>`: fetch the metadata from peers (trackers, `x.pe`, `--peer`, DHT), then
/// download as for a .torrent file.
fn download_magnet(
    a: &DownloadArgs,
    config: &Config,
    quiet: bool,
    uri: &str,
) -> Result<ExitCode, String> {
    let mut m = atorrent::magnet::parse(uri).map_err(|e| e.to_string())?;
    m.trackers.extend(a.trackers.iter().cloned());
    let peers: Vec<SocketAddr> = a
        .peers
        .iter()
        .map(|p| resolve_peer(p))
        .collect::<Result<_, _>>()?;
    let dir = &config.download_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let progress = if quiet {
        Progress::Quiet
    } else if std::io::stdout().is_terminal() {
        Progress::Tty
    } else {
        Progress::Lines
    };
    let mut engine =
        Engine::new(engine_options(config, a.seed, progress)).map_err(|e| e.to_string())?;
    let ti = engine.add_magnet(&m, dir.clone(), 1)?;
    for p in peers {
        engine.add_peer(ti, p);
    }
    match engine.run() {
        Outcome::Complete => Ok(ExitCode::SUCCESS),
        Outcome::Interrupted if a.seed || engine.all_complete() => Ok(ExitCode::SUCCESS),
        Outcome::Interrupted => Err("interrupted before the download completed".into()),
        Outcome::Failed(e) => Err(e),
    }
}

/// The engine's settings from the configuration (shared by `download` and `daemon`).
fn engine_options(config: &Config, seed: bool, progress: Progress) -> Options {
    let (boot_addrs, boot_names) = if config.enable_dht {
        config::split_bootstrap(&config.dht_bootstrap)
    } else {
        (Vec::new(), Vec::new())
    };
    Options {
        listen_port: config.listen_port,
        bind: config.bind_address,
        enable_ipv6: config.enable_ipv6,
        max_connections: config.max_connections as usize,
        max_half_open: config.max_half_open as usize,
        peer_buffer_size: config.peer_buffer_size as usize,
        chunks: chunk_count(config),
        async_io: config.async_io,
        seed,
        progress,
        encryption: config.enable_encryption,
        down_limit: config.down_limit,
        up_limit: config.up_limit,
        alt_limits: config
            .alt_schedule
            .map(|s| (config.alt_down_limit, config.alt_up_limit, s)),
        seed_ratio: config.seed_ratio,
        seed_time: config.seed_time,
        dht_port: config.dht_port,
        enable_dht: config.enable_dht,
        dht_bootstrap: boot_addrs,
        dht_bootstrap_names: boot_names,
        dht_max_nodes: config.dht_max_nodes as usize,
        dht_state: None,
        direct_io: match config.direct_io {
            DirectIoMode::Auto => DirectIo::Auto,
            DirectIoMode::On => DirectIo::On,
            DirectIoMode::Off => DirectIo::Off,
        },
        max_open_files: config.max_open_files as usize,
        upload_slots: config.upload_slots as usize,
        max_known_peers: config.max_known_peers as usize,
    }
}

/// `block_buffers` (16 KiB each) rounded up to whole 256 KiB assembly chunks.
fn chunk_count(config: &Config) -> usize {
    (config.block_buffers as usize * 16384)
        .div_ceil(CHUNK_LEN)
        .max(1)
}
