//! The daemon half of the engine: the control socket, the torrent lifecycle (add, check,
//! queue, stop, resume, seed, remove), persistence of resume data and statistics, the watch
//! directory and configuration reload.
//!
//! Same rules as the rest of the engine: one thread, no blocking beyond local file I/O, every
//! table bounded. The control protocol itself (request and response bytes, text and JSON
//! formatting) is the pure `ctl` module; this file only moves its bytes and acts on requests.
//!
//! Persistence: resume data is written at most once a minute per torrent and at shutdown,
//! always after the data files were synced, with `state::atomic_write` (temp file, fsync,
//! rename, directory fsync). A torrent whose resume data is missing or damaged is re-checked;
//! unverified bytes are never trusted.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::{info, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Token};

use super::{Engine, Entry, Options, Outcome, KIND_CTL, KIND_CTL_LISTENER};
use crate::bitfield::Bitfield;
use crate::config::{self, Config, DirectIoMode};
use crate::ctl::{self, Envelope, Request, Response, StatsView, TorrentView, TrackerView};
use crate::metainfo;
use crate::pool::{Handle, Slots};
use crate::rng::Rng;
use crate::state::{self, Resume, StateDir, Stats};
use crate::storage::{DirectIo, Storage};
use crate::time::Instant;
use crate::torrent::{Settings, State, Torrent};

/// Control connections served at once; more wait in the kernel's accept queue.
const MAX_CTL_CONNS: usize = 8;
/// A control client that has not sent its request in this time is dropped.
const CTL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest .torrent accepted through `start` or the watch directory.
const MAX_TORRENT_FILE: u64 = 64 << 20;
/// Most torrents one daemon manages (IDs, resume files and tables are sized by it).
pub const MAX_TORRENTS: usize = 10_000;
/// Resume data is rewritten at most this often per torrent (flash wear).
const RESUME_INTERVAL: Duration = Duration::from_secs(60);
const STATS_INTERVAL: Duration = Duration::from_secs(60);
const WATCH_INTERVAL: Duration = Duration::from_secs(5);
const DIR_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Bytes verified per loop turn while checking, so the control socket stays responsive.
pub(super) const CHECK_BUDGET: u64 = 4 << 20;

/// Everything `run_daemon` needs besides the engine options.
pub struct DaemonSettings {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    /// Written with this process's id once the state lock is held (so a second daemon refused
    /// by the lock never touches the first one's pid file); removed at exit.
    pub pid_file: Option<PathBuf>,
    /// The `--detach` readiness pipe (`sys::daemonize_notify`): receives `0` once the control
    /// socket accepts connections, or `1` and the error if start-up fails.
    pub on_ready: Option<std::fs::File>,
}

pub(super) struct CtlConn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    deadline: Instant,
}

pub(super) struct DaemonState {
    listener: UnixListener,
    conns: Slots<CtlConn>,
    state: StateDir,
    _lock: std::fs::File,
    pub(super) config: Config,
    config_path: Option<PathBuf>,
    next_id: u32,
    stats: Stats,
    session_base: (u64, u64),
    started_at: Instant,
    last_stats: Instant,
    last_watch: Instant,
    last_dir_check: Instant,
    uid: u32,
}

/// A torrent found in the state directory at start-up.
enum Saved {
    Torrent(metainfo::Metainfo),
    Magnet(crate::magnet::Magnet),
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn direct_io(mode: DirectIoMode) -> DirectIo {
    match mode {
        DirectIoMode::Auto => DirectIo::Auto,
        DirectIoMode::On => DirectIo::On,
        DirectIoMode::Off => DirectIo::Off,
    }
}

/// Runs the daemon until `shutdown` or a signal. The caller has set up logging and, for
/// `--detach`, forked already (`settings.on_ready` is then told when the socket is up).
pub fn run_daemon(opts: Options, mut settings: DaemonSettings) -> Result<Outcome, String> {
    let on_ready = settings.on_ready.take();
    match start_daemon(opts, settings) {
        Ok((mut engine, socket_path, pid_file)) => {
            crate::sys::notify_ready(on_ready, Ok(()));
            let outcome = engine.run();
            engine.save_all(true);
            engine.save_dht();
            let _ = std::fs::remove_file(&socket_path);
            if let Some(p) = pid_file {
                let _ = std::fs::remove_file(p);
            }
            Ok(outcome)
        }
        Err(e) => {
            crate::sys::notify_ready(on_ready, Err(&e));
            Err(e)
        }
    }
}

/// Start-up up to a listening control socket: lock, socket, engine, saved torrents, pid file.
fn start_daemon(
    opts: Options,
    settings: DaemonSettings,
) -> Result<(Engine, PathBuf, Option<PathBuf>), String> {
    let config = settings.config;
    let state = StateDir::new(&config.state_dir)
        .map_err(|e| format!("state directory {}: {e}", config.state_dir.display()))?;
    let lock = state.lock().map_err(|e| e.to_string())?;
    let socket_path = config.control_socket.clone();
    // We hold the lock, so a socket file left behind is stale.
    let _ = std::fs::remove_file(&socket_path);
    if let Some(parent) = socket_path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let mut listener = UnixListener::bind(&socket_path)
        .map_err(|e| format!("control socket {}: {e}", socket_path.display()))?;
    std::fs::set_permissions(&socket_path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("control socket {}: {e}", socket_path.display()))?;
    let mut engine = Engine::new(opts).map_err(|e| e.to_string())?;
    engine
        .poll
        .registry()
        .register(
            &mut listener,
            Token(KIND_CTL_LISTENER << 28),
            Interest::READABLE,
        )
        .map_err(|e| e.to_string())?;
    let stats = state::load_stats(&config.stats_file);
    let now = engine.now();
    engine.daemon = Some(DaemonState {
        listener,
        conns: Slots::with_capacity(MAX_CTL_CONNS),
        state,
        _lock: lock,
        config,
        config_path: settings.config_path,
        next_id: 1,
        stats,
        session_base: (0, 0),
        started_at: now,
        last_stats: now,
        last_watch: now,
        last_dir_check: now,
        uid: crate::sys::getuid(),
    });
    engine.load_saved_torrents();
    if let Some(p) = &settings.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id())).map_err(|e| {
            let _ = std::fs::remove_file(&socket_path);
            format!("pid file {}: {e}", p.display())
        })?;
    }
    info!("daemon: control socket {}", socket_path.display());
    Ok((engine, socket_path, settings.pid_file))
}

impl Engine {
    fn daemon_config(&self) -> Option<&Config> {
        self.daemon.as_ref().map(|d| &d.config)
    }

    /// Re-adds the torrents saved in the state directory, trusting resume data only when it
    /// is intact and matches the torrent, and the magnets still waiting for their metadata.
    fn load_saved_torrents(&mut self) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        let saved = d.state.load_all();
        let magnets = d.state.load_magnets();
        let mut entries = Vec::new();
        for (bytes, resume, path) in saved {
            match parse_torrent_bytes(&bytes) {
                Ok(m) => entries.push((Saved::Torrent(m), resume.ok(), path)),
                Err(e) => warn!("daemon: {}: {e}; ignored", path.display()),
            }
        }
        for (uri, resume, path) in magnets {
            match crate::magnet::parse(&uri) {
                Ok(m) => entries.push((Saved::Magnet(m), resume.ok(), path)),
                Err(e) => warn!("daemon: {}: {e}; ignored", path.display()),
            }
        }
        // Oldest IDs first, so each gets its saved ID back before new ones are handed out.
        entries.sort_by_key(|(_, r, _)| r.as_ref().map_or(u32::MAX, |r| r.id));
        for (saved, resume, path) in entries {
            let r = match saved {
                Saved::Torrent(meta) => {
                    let resume = resume.filter(|r| {
                        r.info_hash == meta.info_hash && r.pieces == meta.piece_count()
                    });
                    self.add_meta(meta, None, false, resume)
                }
                Saved::Magnet(m) => {
                    let resume = resume.filter(|r| r.info_hash == m.info_hash);
                    self.add_pending_magnet(&m, None, false, resume.as_ref())
                }
            };
            if let Err(e) = r {
                warn!("daemon: {}: {e}", path.display());
            }
        }
    }

    /// Adds a torrent (from `start`, the watch directory or the state directory).
    fn add_meta(
        &mut self,
        meta: metainfo::Metainfo,
        dir: Option<PathBuf>,
        paused: bool,
        resume: Option<Resume>,
    ) -> Result<u32, String> {
        let d = self.daemon.as_ref().ok_or("not a daemon")?;
        if let Some(e) = self
            .torrents
            .iter()
            .find(|e| e.t.meta.info_hash == meta.info_hash)
        {
            return Err(format!("torrent already added as ID {}", e.id));
        }
        if self.torrents.len() >= MAX_TORRENTS {
            return Err(format!("too many torrents (limit {MAX_TORRENTS})"));
        }
        let dir = resume
            .as_ref()
            .map(|r| r.dir.clone())
            .or(dir)
            .unwrap_or_else(|| d.config.download_dir.clone());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let storage = Storage::open(
            &dir,
            &meta,
            direct_io(d.config.direct_io),
            d.config.max_open_files as usize,
        )
        .map_err(|e| e.to_string())?;
        let n = meta.piece_count();
        let have = resume
            .as_ref()
            .and_then(|r| Bitfield::from_bytes(&r.have, n).ok())
            .unwrap_or_else(|| Bitfield::new(n));
        let trusted = resume.is_some();
        let id = match &resume {
            Some(r) if !self.torrents.iter().any(|e| e.id == r.id) && r.id > 0 => r.id,
            _ => d.next_id,
        };
        let settings = Settings {
            upload_slots: d.config.upload_slots as usize,
            max_candidates: d.config.max_known_peers as usize,
            listen_port: self.listen_port,
        };
        let seed = self.rng.next_u64();
        let t = Torrent::new(
            meta,
            have,
            Box::new(storage),
            self.bufs.pool.capacity(),
            self.peer_id,
            settings,
            Rng::new(seed),
        )?;
        let i = self.push_entry(t, id, dir);
        let e = &mut self.torrents[i];
        if let Some(r) = &resume {
            e.added_at = r.added_at;
            e.completed_at = r.completed_at;
            e.base_downloaded = r.downloaded;
            e.base_uploaded = r.uploaded;
            e.set_seed_ratio(r.seed_ratio);
            e.set_seed_time(r.seed_time);
            e.finished_reported = e.t.is_complete();
        }
        e.paused = paused || resume.as_ref().is_some_and(|r| r.stopped);
        // Pieces in trusted resume data are not hashed again; the others are checked when
        // they hold data on disk (pieces verified after the last save before a crash, or
        // partial ones), so a kill -9 does not cost a re-download. Without resume data,
        // everything present is checked.
        e.t.state = State::Checking;
        e.check_cursor = 0;
        if !trusted {
            e.dirty = true;
        }
        if let Some(d) = self.daemon.as_mut() {
            d.next_id = d.next_id.max(id + 1);
        }
        self.schedule();
        Ok(id)
    }

    /// `start` with a magnet link: the link is kept in the state directory with its resume
    /// data right away, so a restart before the metadata arrives does not forget it.
    fn start_magnet(
        &mut self,
        m: &crate::magnet::Magnet,
        dir: Option<PathBuf>,
        paused: bool,
    ) -> Result<u32, String> {
        let id = self.add_pending_magnet(m, dir, paused, None)?;
        if let Some(d) = self.daemon.as_mut() {
            d.stats.added += 1;
        }
        let now = self.now();
        let Some(d) = self.daemon.as_mut() else {
            return Ok(id);
        };
        let Some(e) = self.torrents.iter_mut().find(|e| e.id == id) else {
            return Ok(id);
        };
        let saved = d
            .state
            .save_magnet(&m.info_hash, &m.to_uri())
            .and_then(|()| d.state.save_resume(&Self::resume_of(e)));
        match saved {
            Ok(()) => {
                e.dirty = false;
                e.last_saved = now;
            }
            Err(err) => warn!("daemon: saving magnet {id}: {err}"),
        }
        Ok(id)
    }

    /// Adds a magnet that is still fetching its metadata: from `start`, or from the state
    /// directory with its saved ID, directory and stopped flag.
    fn add_pending_magnet(
        &mut self,
        m: &crate::magnet::Magnet,
        dir: Option<PathBuf>,
        paused: bool,
        resume: Option<&Resume>,
    ) -> Result<u32, String> {
        let d = self.daemon.as_ref().ok_or("not a daemon")?;
        if let Some(e) = self
            .torrents
            .iter()
            .find(|e| e.t.meta.info_hash == m.info_hash)
        {
            return Err(format!("torrent already added as ID {}", e.id));
        }
        if self.torrents.len() >= MAX_TORRENTS {
            return Err(format!("too many torrents (limit {MAX_TORRENTS})"));
        }
        let dir = resume
            .map(|r| r.dir.clone())
            .or(dir)
            .unwrap_or_else(|| d.config.download_dir.clone());
        let id = match resume {
            Some(r) if !self.torrents.iter().any(|e| e.id == r.id) && r.id > 0 => r.id,
            _ => d.next_id,
        };
        let i = self.add_magnet(m, dir, id)?;
        if let Some(d) = self.daemon.as_mut() {
            d.next_id = d.next_id.max(id + 1);
        }
        let e = &mut self.torrents[i];
        if let Some(r) = resume {
            e.added_at = r.added_at;
            e.base_downloaded = r.downloaded;
            e.base_uploaded = r.uploaded;
            e.set_seed_ratio(r.seed_ratio);
            e.set_seed_time(r.seed_time);
        }
        e.paused = paused || resume.is_some_and(|r| r.stopped);
        e.t.state = if e.paused {
            State::Stopped
        } else {
            State::Queued
        };
        self.schedule();
        Ok(id)
    }

    /// Keeps the fetched metainfo of a magnet so a restart does not fetch it again.
    pub(super) fn save_fetched_torrent(&mut self, i: usize) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        let e = &self.torrents[i];
        let Some(info) = e.t.meta.info_dict() else {
            return;
        };
        let bytes = torrent_file_bytes(info, &e.t.meta.trackers);
        if let Err(err) = d.state.save_torrent(&e.t.meta.info_hash, &bytes) {
            warn!("daemon: saving torrent {}: {err}", e.id);
            return;
        }
        // Resume data for the real torrent (nothing verified yet, so everything on disk is
        // checked after a crash) keeps its ID; then the magnet link is no longer needed.
        if let Err(err) = d.state.save_resume(&Self::resume_of(e)) {
            warn!("daemon: saving resume data of torrent {}: {err}", e.id);
        }
        if let Err(err) = d.state.remove_magnet(&e.t.meta.info_hash) {
            warn!("daemon: removing magnet link of torrent {}: {err}", e.id);
        }
    }

    // ----- lifecycle -----

    /// One turn of hash checking (bounded), for torrents in `Checking`.
    pub(super) fn check_torrents(&mut self) -> bool {
        let Some(i) = self
            .torrents
            .iter()
            .position(|e| e.t.state == State::Checking)
        else {
            return false;
        };
        let e = &mut self.torrents[i];
        let mut cursor = e.check_cursor;
        let r = e.t.check_step(&mut cursor, CHECK_BUDGET, &mut self.bufs);
        e.check_cursor = cursor;
        match r {
            Ok(true) => {
                info!(
                    "daemon: torrent {} checked: {} of {} pieces present",
                    e.id,
                    e.t.have.count(),
                    e.t.meta.piece_count()
                );
                e.t.state = if e.paused {
                    State::Stopped
                } else if self.daemon.is_some() {
                    State::Queued
                } else if e.t.is_complete() {
                    State::Seeding
                } else {
                    State::Downloading
                };
                e.finished_reported = e.t.is_complete() && self.daemon.is_some();
                e.dirty = true;
                self.schedule();
            }
            Ok(false) => {}
            Err(err) => {
                warn!("daemon: torrent {} check failed: {err}", e.id);
                e.t.state = State::Error(err);
            }
        }
        true
    }

    /// Moves queued torrents into free download and seeding slots (in ID order).
    pub(super) fn schedule(&mut self) {
        let Some(cfg) = self.daemon_config() else {
            return;
        };
        let max_dl = cfg.max_active_downloads as usize;
        let max_seed = cfg.max_active_seeds as usize;
        let mut dl = self
            .torrents
            .iter()
            .filter(|e| e.t.state == State::Downloading)
            .count();
        let mut seeding = self
            .torrents
            .iter()
            .filter(|e| e.t.state == State::Seeding)
            .count();
        let mut order: Vec<usize> = (0..self.torrents.len())
            .filter(|&i| self.torrents[i].t.state == State::Queued)
            .collect();
        order.sort_by_key(|&i| self.torrents[i].id);
        for i in order {
            let complete = self.torrents[i].t.is_complete();
            if complete && seeding < max_seed {
                seeding += 1;
                self.activate(i, State::Seeding);
            } else if !complete && dl < max_dl {
                dl += 1;
                self.activate(i, State::Downloading);
            }
        }
    }

    fn activate(&mut self, i: usize, state: State) {
        let e = &mut self.torrents[i];
        info!(
            "daemon: torrent {} {}=>{}",
            e.id,
            e.t.state.name(),
            state.name()
        );
        e.t.state = state;
        e.ann = crate::announce::Announcer::new(&e.t.meta.trackers, &mut self.rng);
        self.connect_soon = true;
    }

    /// Takes a torrent out of the swarm: closes its peers, drops its partial pieces and
    /// tracker exchanges, and announces `stopped`.
    pub(super) fn deactivate(&mut self, i: usize, state: State, now: Instant) {
        let handles: Vec<Handle> = self
            .peers
            .iter()
            .filter(|(_, p)| p.torrent == Some(i))
            .map(|(h, _)| h)
            .collect();
        for h in handles {
            if let Some(p) = self.peers.get_mut(h) {
                p.close(crate::peer::CloseReason::TorrentStopped);
            }
            self.close_peer(h, now);
        }
        let hs: Vec<Handle> = self
            .trackers
            .iter()
            .filter(|(_, c)| c.torrent == i)
            .map(|(h, _)| h)
            .collect();
        for h in hs {
            self.drop_tracker(h);
        }
        let was_active = matches!(
            self.torrents[i].t.state,
            State::Downloading | State::Seeding
        );
        let e = &mut self.torrents[i];
        e.t.release_partials(&mut self.bufs);
        e.t.state = state;
        e.dirty = true;
        if was_active {
            if let Some(job) = self.torrents[i].ann.stop_job() {
                self.start_tracker(i, job, now);
            }
        }
    }

    /// `resume` of a torrent stopped by an I/O error (disk full, directory vanished): its
    /// storage is replaced, because descriptors opened before the error may belong to files
    /// that were unlinked since (writes to them would go nowhere), and every piece is verified
    /// again, because pieces counted before the error may no longer be on disk. Without its
    /// directory the torrent stays in error (an unmounted disk must not fill the one below).
    fn restart_after_error(&mut self, i: usize) -> Result<(), String> {
        let d = self.daemon.as_ref().ok_or("not a daemon")?;
        let e = &self.torrents[i];
        if !e.dir.is_dir() {
            return Err(format!(
                "download directory {} does not exist",
                e.dir.display()
            ));
        }
        let storage = Storage::open(
            &e.dir,
            &e.t.meta,
            direct_io(d.config.direct_io),
            d.config.max_open_files as usize,
        )
        .map_err(|err| err.to_string())?;
        let settings = Settings {
            upload_slots: e.t.settings.upload_slots,
            max_candidates: e.t.settings.max_candidates,
            listen_port: e.t.settings.listen_port,
        };
        let n = e.t.meta.piece_count();
        let seed = self.rng.next_u64();
        let mut t = Torrent::new(
            e.t.meta.clone(),
            Bitfield::new(n),
            Box::new(storage),
            self.bufs.pool.capacity(),
            self.peer_id,
            settings,
            Rng::new(seed),
        )?;
        let now = self.now();
        let e = &mut self.torrents[i];
        t.candidates = std::mem::replace(&mut e.t.candidates, crate::peer::Candidates::new());
        t.candidates.reset_connections(now);
        if let Some(sel) = e.select() {
            t.select_files(sel);
        }
        e.base_downloaded += e.t.downloaded;
        e.base_uploaded += e.t.uploaded;
        info!(
            "daemon: torrent {}: reopening its files in {} and checking them again",
            e.id,
            e.dir.display()
        );
        // The old storage (and every descriptor it held) is dropped here.
        e.t = t;
        e.t.state = State::Checking;
        e.check_cursor = 0;
        e.dirty = true;
        e.finished_reported = false;
        Ok(())
    }

    fn find(&self, id: &str) -> Result<usize, String> {
        let list: Vec<(u32, [u8; 20])> = self
            .torrents
            .iter()
            .map(|e| (e.id, e.t.meta.info_hash))
            .collect();
        let id = ctl::resolve_id(id, &list)?;
        self.torrents
            .iter()
            .position(|e| e.id == id)
            .ok_or_else(|| format!("no torrent with ID {id}"))
    }

    fn remove_entry(&mut self, i: usize, delete_data: bool, now: Instant) -> Result<(), String> {
        self.deactivate(i, State::Stopped, now);
        // Trackers for the removed torrent were dropped, except its `stopped` announce, which
        // still refers to index i: forget it too, then shift the indices above i.
        let hs: Vec<Handle> = self
            .trackers
            .iter()
            .filter(|(_, c)| c.torrent == i)
            .map(|(h, _)| h)
            .collect();
        for h in hs {
            self.drop_tracker(h);
        }
        let e = self.torrents.remove(i);
        for (_, p) in self.peers.iter_mut() {
            if let Some(t) = p.torrent {
                if t > i {
                    p.torrent = Some(t - 1);
                }
            }
        }
        for (_, c) in self.trackers.iter_mut() {
            if c.torrent > i {
                c.torrent -= 1;
            }
        }
        if let Some(d) = self.daemon.as_mut() {
            if let Err(err) = d.state.remove(&e.t.meta.info_hash) {
                warn!("daemon: removing state of torrent {}: {err}", e.id);
            }
        }
        if delete_data {
            delete_torrent_data(&e.dir, &e.t.meta)?;
        }
        info!("daemon: torrent {} removed", e.id);
        Ok(())
    }

    // ----- persistence -----

    fn resume_of(e: &Entry) -> Resume {
        Resume {
            id: e.id,
            info_hash: e.t.meta.info_hash,
            dir: e.dir.clone(),
            stopped: e.t.state == State::Stopped || e.paused,
            have: e.t.have.as_bytes().to_vec(),
            pieces: e.t.meta.piece_count(),
            downloaded: e.base_downloaded + e.t.downloaded,
            uploaded: e.base_uploaded + e.t.uploaded,
            added_at: e.added_at,
            completed_at: e.completed_at,
            seed_ratio: e.seed_ratio(),
            seed_time: e.seed_time(),
        }
    }

    /// Writes resume data that is due (or all of it with `force`), data files synced first.
    pub(super) fn save_all(&mut self, force: bool) {
        let now = self.now();
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        for e in &mut self.torrents {
            if !e.dirty || e.t.state == State::Checking {
                continue;
            }
            if !force && now.since(e.last_saved) < RESUME_INTERVAL {
                continue;
            }
            if let Err(err) = e.t.sync_storage(&mut self.bufs) {
                warn!("daemon: torrent {}: sync failed: {err}", e.id);
                continue;
            }
            match d.state.save_resume(&Self::resume_of(e)) {
                Ok(()) => {
                    e.dirty = false;
                    e.last_saved = now;
                }
                Err(err) => warn!("daemon: torrent {}: saving resume data: {err}", e.id),
            }
        }
        if force || now.since(d.last_stats) >= STATS_INTERVAL {
            d.last_stats = now;
            let stats = Self::stats_snapshot(d, &self.torrents, now);
            if let Err(err) =
                state::atomic_write(&d.config.stats_file, state::encode_stats(&stats).as_bytes())
            {
                warn!(
                    "daemon: stats file {}: {err}",
                    d.config.stats_file.display()
                );
            }
        }
    }

    fn stats_snapshot(d: &DaemonState, torrents: &[Entry], now: Instant) -> Stats {
        let mut s = d.stats.clone();
        let (down, up) = torrents
            .iter()
            .fold((0, 0), |(a, b), e| (a + e.t.downloaded, b + e.t.uploaded));
        s.downloaded += down + d.session_base.0;
        s.uploaded += up + d.session_base.1;
        s.uptime_total += now.since(d.started_at).as_secs();
        s
    }

    /// Once a second in daemon mode: resume/stat saves, the watch directory, control timeouts.
    pub(super) fn daemon_tick(&mut self, now: Instant) {
        if self.daemon.is_none() {
            return;
        }
        self.save_all(false);
        self.schedule();
        self.check_dirs(now);
        let due = self.daemon.as_ref().is_some_and(|d| {
            d.config.watch_dir.is_some() && now.since(d.last_watch) >= WATCH_INTERVAL
        });
        if due {
            self.scan_watch_dir(now);
        }
        let late: Vec<Handle> = self
            .daemon
            .as_ref()
            .map(|d| {
                d.conns
                    .iter()
                    .filter(|(_, c)| now >= c.deadline)
                    .map(|(h, _)| h)
                    .collect()
            })
            .unwrap_or_default();
        for h in late {
            self.ctl_close(h);
        }
    }

    /// A download directory that disappears under an active torrent (unmounted USB disk,
    /// deleted by hand) stops it with an error at once; writes would otherwise go to unlinked
    /// files until the end. Looked at every few seconds (one stat per active torrent).
    fn check_dirs(&mut self, now: Instant) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        if now.since(d.last_dir_check) < DIR_CHECK_INTERVAL {
            return;
        }
        d.last_dir_check = now;
        let gone: Vec<usize> = (0..self.torrents.len())
            .filter(|&i| {
                let e = &self.torrents[i];
                matches!(e.t.state, State::Downloading | State::Seeding) && !e.dir.is_dir()
            })
            .collect();
        for i in gone {
            let msg = format!(
                "download directory {} vanished",
                self.torrents[i].dir.display()
            );
            warn!("daemon: torrent {}: {msg}", self.torrents[i].id);
            self.deactivate(i, State::Error(msg), now);
        }
    }

    fn scan_watch_dir(&mut self, now: Instant) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        d.last_watch = now;
        let Some(dir) = d.config.watch_dir.clone() else {
            return;
        };
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut found: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "torrent") && p.is_file())
            .take(64)
            .collect();
        found.sort();
        for path in found {
            let result = read_torrent(&path).and_then(|m| self.add_meta(m, None, false, None));
            let (suffix, what) = match &result {
                Ok(id) => ("added", format!("added as ID {id}")),
                Err(e) => ("invalid", e.clone()),
            };
            info!("daemon: watch dir: {}: {what}", path.display());
            let mut target = path.clone().into_os_string();
            target.push(".");
            target.push(suffix);
            if let Err(e) = std::fs::rename(&path, &target) {
                warn!("daemon: watch dir: cannot rename {}: {e}", path.display());
            }
            if let Ok(id) = result {
                self.save_new_torrent(id, &path);
            }
        }
    }

    /// Keeps a copy of a newly added torrent's file in the state directory.
    fn save_new_torrent(&mut self, id: u32, source: &Path) {
        let Some(e) = self.torrents.iter().find(|e| e.id == id) else {
            return;
        };
        let hash = e.t.meta.info_hash;
        let bytes = match read_limited(source) {
            Ok(b) => b,
            Err(err) => {
                warn!("daemon: cannot keep a copy of {}: {err}", source.display());
                return;
            }
        };
        if let Some(d) = self.daemon.as_mut() {
            if let Err(err) = d.state.save_torrent(&hash, &bytes) {
                warn!("daemon: saving torrent {id}: {err}");
            }
            d.stats.added += 1;
        }
    }

    /// SIGHUP: re-read the config file and apply what can change at run time.
    pub(super) fn reload_config(&mut self) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        let env = |k: &str| std::env::var(k).ok();
        match config::load(d.config_path.as_deref(), &env) {
            Ok(c) => {
                crate::logfile::set_level(c.log_level.to_filter());
                d.config.max_active_downloads = c.max_active_downloads;
                d.config.max_active_seeds = c.max_active_seeds;
                d.config.watch_dir = c.watch_dir.clone();
                d.config.download_dir = c.download_dir.clone();
                d.config.log_level = c.log_level;
                d.config.down_limit = c.down_limit;
                d.config.up_limit = c.up_limit;
                info!("daemon: configuration reloaded");
                self.schedule();
            }
            Err(e) => warn!("daemon: reload failed, keeping the old configuration: {e}"),
        }
    }

    // ----- control socket -----

    pub(super) fn ctl_accept(&mut self, now: Instant) {
        loop {
            let Some(d) = self.daemon.as_mut() else {
                return;
            };
            match d.listener.accept() {
                Ok((stream, _)) => {
                    // Only our own user (or root) may drive the daemon.
                    let uid = crate::sys::peer_uid(stream.as_raw_fd()).unwrap_or(u32::MAX);
                    if uid != d.uid && uid != 0 {
                        warn!("daemon: control connection from uid {uid} refused");
                        continue;
                    }
                    if d.conns.is_full() {
                        continue;
                    }
                    let conn = CtlConn {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        sent: 0,
                        deadline: now + CTL_TIMEOUT,
                    };
                    let Some(h) = d.conns.insert(conn) else {
                        continue;
                    };
                    let c = d.conns.get_mut(h).expect("just inserted");
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut c.stream,
                            super::token(KIND_CTL, h),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        d.conns.remove(h);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("daemon: control accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn ctl_close(&mut self, h: Handle) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        if let Some(mut c) = d.conns.remove(h) {
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    pub(super) fn ctl_io(&mut self, h: Handle, now: Instant) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        let Some(c) = d.conns.get_mut(h) else { return };
        if c.output.is_empty() {
            let mut buf = [0u8; 1024];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        c.input.extend_from_slice(&buf[..n]);
                        if c.input.len() > ctl::MAX_REQUEST_LINE || c.input.contains(&b'\n') {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.ctl_close(h);
                        return;
                    }
                }
            }
            let Some(end) = c.input.iter().position(|&b| b == b'\n') else {
                if c.input.len() > ctl::MAX_REQUEST_LINE {
                    c.output = ctl::encode_response(&Response {
                        code: 2,
                        body: "request too long\n".into(),
                    });
                } else {
                    return;
                }
                return self.ctl_flush(h);
            };
            let line = c.input[..end].to_vec();
            let response = match ctl::parse_request(&line) {
                Ok(env) => self.execute(env, now),
                Err(e) => Response {
                    code: 2,
                    body: format!("{e}\n"),
                },
            };
            let Some(d) = self.daemon.as_mut() else {
                return;
            };
            let Some(c) = d.conns.get_mut(h) else { return };
            c.output = ctl::encode_response(&response);
            c.sent = 0;
        }
        self.ctl_flush(h);
    }

    fn ctl_flush(&mut self, h: Handle) {
        let Some(d) = self.daemon.as_mut() else {
            return;
        };
        let Some(c) = d.conns.get_mut(h) else { return };
        while c.sent < c.output.len() {
            match c.stream.write(&c.output[c.sent..]) {
                Ok(0) => break,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.ctl_close(h);
    }

    fn execute(&mut self, env: Envelope, now: Instant) -> Response {
        let json = env.json;
        let ok = |body: String| Response { code: 0, body };
        let err = |code: u8, msg: String| Response {
            code,
            body: format!("{msg}\n"),
        };
        match env.req {
            Request::Start {
                source,
                dir,
                paused,
            } => {
                if source.starts_with("magnet:") {
                    return match crate::magnet::parse(&source) {
                        Ok(m) => match self.start_magnet(&m, dir.map(PathBuf::from), paused) {
                            Ok(id) => ok(if json {
                                format!("{{\"id\":{id}}}\n")
                            } else {
                                format!("{id}\n")
                            }),
                            Err(e) => err(1, e),
                        },
                        Err(e) => err(1, e.to_string()),
                    };
                }
                let path = PathBuf::from(&source);
                match read_torrent(&path)
                    .and_then(|m| self.add_meta(m, dir.map(PathBuf::from), paused, None))
                {
                    Ok(id) => {
                        self.save_new_torrent(id, &path);
                        self.save_all(false);
                        ok(if json {
                            format!("{{\"id\":{id}}}\n")
                        } else {
                            format!("{id}\n")
                        })
                    }
                    Err(e) => err(1, e),
                }
            }
            Request::Stop { id } => match self.find(&id) {
                Ok(i) => {
                    self.torrents[i].paused = true;
                    if self.torrents[i].t.state != State::Checking {
                        self.deactivate(i, State::Stopped, now);
                    }
                    self.schedule();
                    ok(format!("stopped {}\n", self.torrents[i].id))
                }
                Err(e) => err(1, e),
            },
            Request::Resume { id } => match self.find(&id) {
                Ok(i) => {
                    let failed = matches!(self.torrents[i].t.state, State::Error(_));
                    if failed && self.torrents[i].fetch.is_none() {
                        if let Err(e) = self.restart_after_error(i) {
                            return err(1, e);
                        }
                    }
                    let e = &mut self.torrents[i];
                    e.paused = false;
                    e.dirty = true;
                    if matches!(e.t.state, State::Stopped | State::Error(_)) {
                        e.t.state = State::Queued;
                    }
                    let id = e.id;
                    self.schedule();
                    ok(format!("resumed {id}\n"))
                }
                Err(e) => err(1, e),
            },
            Request::Seed { id } => match self.find(&id) {
                Ok(i) => {
                    if !self.torrents[i].t.is_complete() {
                        return err(
                            1,
                            format!(
                                "torrent {} is not complete; it cannot seed yet",
                                self.torrents[i].id
                            ),
                        );
                    }
                    let e = &mut self.torrents[i];
                    e.paused = false;
                    e.dirty = true;
                    if e.t.state != State::Seeding {
                        self.activate(i, State::Seeding);
                    }
                    ok(format!("seeding {}\n", self.torrents[i].id))
                }
                Err(e) => err(1, e),
            },
            Request::Remove { id, delete_data } => match self.find(&id) {
                Ok(i) => {
                    let id = self.torrents[i].id;
                    match self.remove_entry(i, delete_data, now) {
                        Ok(()) => {
                            self.schedule();
                            ok(format!("removed {id}\n"))
                        }
                        Err(e) => err(1, e),
                    }
                }
                Err(e) => err(1, e),
            },
            Request::List => {
                let views: Vec<TorrentView> = (0..self.torrents.len())
                    .map(|i| self.view(i, now))
                    .collect();
                ok(ctl::format_list(&views, json))
            }
            Request::Status { id } => match self.find(&id) {
                Ok(i) => ok(ctl::format_status(&self.view(i, now), json)),
                Err(e) => err(1, e),
            },
            Request::Stats => {
                let Some(d) = self.daemon.as_ref() else {
                    return err(1, "not a daemon".into());
                };
                let s = Self::stats_snapshot(d, &self.torrents, now);
                let (down_rate, up_rate) = self.rates(None);
                let v = StatsView {
                    uptime_secs: now.since(d.started_at).as_secs(),
                    downloaded: s.downloaded,
                    uploaded: s.uploaded,
                    torrents: self.torrents.len() as u32,
                    added: s.added,
                    completed: s.completed,
                    errors: s.errors,
                    down_rate,
                    up_rate,
                };
                ok(ctl::format_stats(&v, json))
            }
            Request::Shutdown => {
                self.begin_shutdown(now, Outcome::Interrupted);
                ok("shutting down\n".into())
            }
            Request::Limit {
                id: None,
                down,
                up,
                ratio,
                seed_time,
            } => {
                self.set_global_limits(now, down, up);
                if let Some(r) = ratio {
                    self.opts.seed_ratio = r;
                }
                if let Some(t) = seed_time {
                    self.opts.seed_time = t;
                }
                ok(format!(
                    "limits: down {} up {}\n",
                    crate::cli::format_rate(self.opts.down_limit),
                    crate::cli::format_rate(self.opts.up_limit)
                ))
            }
            Request::Limit {
                id: Some(id),
                down,
                up,
                ratio,
                seed_time,
            } => match self.find(&id) {
                Ok(i) => {
                    let e = &mut self.torrents[i];
                    if ratio.is_some() {
                        e.set_seed_ratio(ratio);
                        e.dirty = true;
                    }
                    if seed_time.is_some() {
                        e.set_seed_time(seed_time);
                        e.dirty = true;
                    }
                    if let Some(d) = down {
                        e.set_limit(now, false, d);
                    }
                    if let Some(u) = up {
                        e.set_limit(now, true, u);
                    }
                    ok(format!(
                        "torrent {} limits: down {} up {} seed_ratio {} seed_time {}\n",
                        e.id,
                        crate::cli::format_rate(e.limit_rate(false)),
                        crate::cli::format_rate(e.limit_rate(true)),
                        e.seed_ratio()
                            .map_or("global".to_string(), |r| format!("{r}")),
                        e.seed_time()
                            .map_or("global".to_string(), |t| format!("{t}s"))
                    ))
                }
                Err(e) => err(1, e),
            },
        }
    }

    fn rates(&self, torrent: Option<usize>) -> (u64, u64) {
        self.peers
            .iter()
            .filter(|(_, p)| p.torrent.is_some() && (torrent.is_none() || p.torrent == torrent))
            .fold((0, 0), |(d, u), (_, p)| (d + p.down.get(), u + p.up.get()))
    }

    fn view(&self, i: usize, _now: Instant) -> TorrentView {
        let e = &self.torrents[i];
        let t = &e.t;
        let total = t.wanted_total();
        let have = t.bytes_have();
        let (down_rate, up_rate) = self.rates(Some(i));
        let peers_connected = self
            .peers
            .iter()
            .filter(|(_, p)| p.torrent == Some(i) && p.is_established())
            .count() as u32;
        let trackers: Vec<TrackerView> = e
            .ann
            .trackers()
            .map(|s| TrackerView {
                url: s.url.clone(),
                status: if s.last_error.is_some() {
                    "error".into()
                } else if s.last_peers > 0 || s.seeders.is_some() {
                    "ok".into()
                } else {
                    "idle".into()
                },
                last_error: s.last_error.clone(),
                seeders: s.seeders,
                leechers: s.leechers,
            })
            .collect();
        let seeders = trackers.iter().find_map(|t| t.seeders);
        let leechers = trackers.iter().find_map(|t| t.leechers);
        let eta = if down_rate > 0 && have < total {
            Some((total - have) / down_rate)
        } else {
            None
        };
        TorrentView {
            id: e.id,
            name: t.meta.name.clone(),
            info_hash: crate::hash::hex(&t.meta.info_hash),
            state: t.state.name().to_string(),
            percent: if total == 0 {
                100.0
            } else {
                have as f64 * 100.0 / total as f64
            },
            have_bytes: have,
            total_bytes: total,
            downloaded: e.base_downloaded + t.downloaded,
            uploaded: e.base_uploaded + t.uploaded,
            down_rate,
            up_rate,
            peers_connected,
            peers_known: t.candidates.len() as u32,
            seeders,
            leechers,
            eta_secs: eta,
            dir: e.dir.display().to_string(),
            error: match &t.state {
                State::Error(s) => Some(s.clone()),
                _ => None,
            },
            note: match &e.fetch {
                Some(f) => {
                    let (have, total) = f.progress();
                    Some(format!("fetching metadata: {have} of {total} pieces"))
                }
                None => e.note().cloned(),
            },
            trackers,
        }
    }

    /// A torrent finished downloading (daemon bookkeeping).
    pub(super) fn on_completed(&mut self, i: usize) {
        let e = &mut self.torrents[i];
        e.completed_at = Some(unix_now());
        e.dirty = true;
        if let Some(d) = self.daemon.as_mut() {
            d.stats.completed += 1;
        }
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
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
    Ok(buf)
}

/// A torrent file's metainfo (which keeps the raw info dictionary, served to peers that fetch
/// metadata, BEP 9).
fn read_torrent(path: &Path) -> Result<metainfo::Metainfo, String> {
    let bytes = read_limited(path)?;
    parse_torrent_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_torrent_bytes(bytes: &[u8]) -> Result<metainfo::Metainfo, String> {
    let parsed = metainfo::parse(bytes).map_err(|e| e.to_string())?;
    for w in &parsed.warnings {
        warn!("torrent {}: {}", parsed.meta.name, w);
    }
    Ok(parsed.meta)
}

/// A .torrent for a magnet whose metadata was fetched: the info dictionary as received (so the
/// info-hash is unchanged) and the magnet's trackers, keys in sorted order.
pub(super) fn torrent_file_bytes(info: &[u8], trackers: &[Vec<String>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(info.len() + 256);
    out.push(b'd');
    if let Some(first) = trackers.iter().flatten().next() {
        crate::bencode::put_kv_bytes(&mut out, "announce", first.as_bytes());
        crate::bencode::put_bytes(&mut out, b"announce-list");
        out.push(b'l');
        for tier in trackers {
            out.push(b'l');
            for t in tier {
                crate::bencode::put_bytes(&mut out, t.as_bytes());
            }
            out.push(b'e');
        }
        out.push(b'e');
    }
    crate::bencode::put_bytes(&mut out, b"info");
    out.extend_from_slice(info);
    out.push(b'e');
    out
}

/// Deletes a torrent's files (never anything outside `dir`), then its empty directories.
fn delete_torrent_data(dir: &Path, meta: &metainfo::Metainfo) -> Result<(), String> {
    for f in meta.files.iter().filter(|f| !f.pad) {
        let mut p = dir.to_path_buf();
        for c in &f.path {
            p.push(c);
        }
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", p.display())),
        }
        // Remove now-empty parent directories up to (not including) `dir`.
        let mut parent = p.parent().map(Path::to_path_buf);
        while let Some(d) = parent {
            if d == dir || !d.starts_with(dir) || std::fs::remove_dir(&d).is_err() {
                break;
            }
            parent = d.parent().map(Path::to_path_buf);
        }
    }
    Ok(())
}
