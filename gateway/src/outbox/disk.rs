//! Disk space: the free-space floor below which the writer takes no appends, and the
//! reserve file that lets deletions commit on a file system something else has filled.
//!
//! SQLite needs free space to delete too: a deletion appends the pages it changes to the
//! write-ahead log, which grows unless a checkpoint has just let it start over. So the
//! outbox keeps `<database>-reserve`, [`RESERVE_BYTES`] allocated next to the database.
//! Before each transaction that stores readings the writer asks the file system how much
//! is free (one `statvfs`, no SQLite work; never at rest). Below [`FLOOR_BYTES`], or when
//! SQLite itself answers "database or disk is full", the disk-full episode starts: the
//! reserve is released, appends wait in memory unacknowledged (and, through the bounded
//! channels, the drivers wait), deliveries and the deletions of delivered rows go on. The
//! writer then looks again every [`RECHECK`]; once [`FLOOR_BYTES`] + [`RESERVE_BYTES`]
//! are free it allocates the reserve again and takes appends, the waiting ones first.
//! Each episode is logged once when it starts (with the cause) and once when it ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Free bytes below which the outbox stores no new readings.
pub const FLOOR_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes kept allocated next to the database and released when the disk fills, so the
/// deletions of delivered rows (a batch of `max_batch_rows` of them, with the WAL frames
/// they write) can still commit.
pub const RESERVE_BYTES: u64 = 2 * 1024 * 1024;

/// How often the writer looks at the free space again while the disk is full.
pub const RECHECK: Duration = Duration::from_secs(2);

/// The database file per byte of sealed payload (`max_size_mb` counts the payload):
/// measured 1.5 with the simulator's pulse oximeter (1.57 MB of database for a 1 MiB
/// cap), for the columns, the page slack and the indexes around each sealed Observation.
pub const DATABASE_PER_PAYLOAD: (u64, u64) = (3, 2);

/// Disk space a full outbox with `max_payload` bytes of payload needs: the database,
/// the write-ahead log (up to [`super::store::WAL_LIMIT_BYTES`] between checkpoints), the
/// reserve and the floor kept free. The Device resources and the dead letters come on top
/// (both small and bounded: one Device per device, `dead_letter_limit` refused messages).
pub fn needed_bytes(max_payload: u64) -> u64 {
    let (num, den) = DATABASE_PER_PAYLOAD;
    (max_payload / den)
        .saturating_mul(num)
        .saturating_add(fixed_bytes())
}

/// What an outbox needs besides its payload: the WAL, the reserve and the floor.
fn fixed_bytes() -> u64 {
    u64::try_from(super::store::WAL_LIMIT_BYTES)
        .unwrap_or(0)
        .saturating_add(RESERVE_BYTES)
        .saturating_add(FLOOR_BYTES)
}

/// At start: warns when the file system holding the database at `db` cannot hold a full
/// outbox of `max_payload` bytes (its free space plus what the outbox already occupies),
/// naming the largest `max_size_mb` that would fit. The disk-full guard still protects
/// the kit; the warning says that it, not the cap, would stop intake.
pub fn check_cap(db: &Path, max_payload: u64) {
    let dir = match db.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(free) = free_bytes(dir) else {
        return;
    };
    let available = free.saturating_add(super::store::disk_bytes(db));
    let needed = needed_bytes(max_payload);
    if needed <= available {
        return;
    }
    let (num, den) = DATABASE_PER_PAYLOAD;
    let fits_mb = available.saturating_sub(fixed_bytes()) / num * den / (1024 * 1024);
    tracing::warn!(
        dir = %dir.display(),
        needed_mb = needed / (1024 * 1024),
        available_mb = available / (1024 * 1024),
        "outbox.max_size_mb = {}: a full outbox needs about {} MiB on disk (database, write-ahead log, reserve and free-space floor), but only {} MiB are free there (counting what the outbox occupies); set max_size_mb to at most {fits_mb} or free space. Until then intake stops when the disk is full, before the cap is reached",
        max_payload / (1024 * 1024),
        needed / (1024 * 1024),
        available / (1024 * 1024),
    );
}

/// The free space of the database's file system and the reserve file next to it.
pub(super) struct Space {
    /// The directory holding the database.
    dir: PathBuf,
    /// The reserve file.
    reserve: PathBuf,
    /// Whether intake is stopped because the disk is full.
    full: bool,
    /// While full: when to look at the free space again (a deadline, not a delay, so
    /// other work of the writer never postpones it).
    next_check: Option<tokio::time::Instant>,
}

/// The reserve file of the database at `db`.
pub fn reserve_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-reserve");
    PathBuf::from(p)
}

/// Bytes free for an unprivileged user on the file system holding `dir`, if it can be
/// asked.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    // 32 bits on armv7, 64 on aarch64 and x86_64.
    #[allow(clippy::useless_conversion)]
    u64::from(s.blocks_available()).checked_mul(u64::from(s.fragment_size()))
}

impl Space {
    /// The space of the database at `db`, before it is opened: below the floor the
    /// episode starts at once and the reserve is released, so SQLite finds room for its
    /// write-ahead log and shared-memory index and the gateway starts on a full disk
    /// (then [`Space::ensure_reserve`], once the database is open).
    pub(super) fn open(db: &Path) -> Self {
        let dir = match db.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut space = Space {
            dir,
            reserve: reserve_path(db),
            full: false,
            next_check: None,
        };
        if let Some(free) = space.free().filter(|f| *f < FLOOR_BYTES) {
            space.start_episode(&format!(
                "{free} bytes free at start, below the floor of {FLOOR_BYTES}"
            ));
        }
        space
    }

    /// Once the database is open: allocates the reserve when it is missing and there is
    /// room for it; starts the episode when there is not.
    pub(super) fn ensure_reserve(&mut self) {
        if self.full || self.reserve_held() {
            return;
        }
        let free = self.free();
        if free.is_none_or(|f| f >= FLOOR_BYTES.saturating_add(RESERVE_BYTES)) {
            if let Err(e) = self.allocate_reserve() {
                tracing::warn!(path = %self.reserve.display(), error = %e, "outbox: cannot allocate the disk-space reserve");
            }
        } else {
            self.start_episode(&format!(
                "{} bytes free at start, less than the floor of {FLOOR_BYTES} plus the reserve of {RESERVE_BYTES}",
                free.unwrap_or(0)
            ));
        }
    }

    fn free(&self) -> Option<u64> {
        free_bytes(&self.dir)
    }

    fn reserve_held(&self) -> bool {
        std::fs::metadata(&self.reserve).is_ok_and(|m| m.len() >= RESERVE_BYTES)
    }

    fn allocate_reserve(&self) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.reserve)?;
        let len = libc_len(RESERVE_BYTES);
        nix::fcntl::posix_fallocate(&f, 0, len).map_err(std::io::Error::from)?;
        f.sync_all()
    }

    /// Whether intake is stopped because the disk is full.
    pub(super) fn is_full(&self) -> bool {
        self.full
    }

    /// While the disk is full: when the writer must look at the free space again.
    pub(super) fn next_check(&self) -> Option<tokio::time::Instant> {
        self.next_check.filter(|_| self.full)
    }

    /// Before a transaction that stores readings: whether there is room for them. Below
    /// the floor, the episode starts (logged, reserve released) and `false` is returned.
    pub(super) fn room_for_appends(&mut self) -> bool {
        if self.full {
            return false;
        }
        match self.free() {
            Some(free) if free < FLOOR_BYTES => {
                self.start_episode(&format!(
                    "{free} bytes free, below the floor of {FLOOR_BYTES}"
                ));
                false
            }
            _ => true,
        }
    }

    /// SQLite answered that the disk is full (`reason`, its own words).
    pub(super) fn sqlite_full(&mut self, reason: &str) {
        if !self.full {
            self.start_episode(reason);
        }
    }

    fn start_episode(&mut self, cause: &str) {
        self.full = true;
        self.next_check = Some(tokio::time::Instant::now() + RECHECK);
        let released = std::fs::remove_file(&self.reserve).is_ok();
        tracing::error!(
            dir = %self.dir.display(),
            cause,
            reserve_released = released,
            "outbox: the disk is full; no new readings are stored or acknowledged until space is freed (delivered rows are still sent and deleted). Free space on this file system"
        );
    }

    /// While the disk is full: looks at the free space again. Once there is room for the
    /// floor and the reserve, allocates the reserve, logs the end of the episode and
    /// returns `true`.
    pub(super) fn recheck(&mut self) -> bool {
        if !self.full {
            return true;
        }
        self.next_check = Some(tokio::time::Instant::now() + RECHECK);
        let free = self.free().unwrap_or(0);
        if free < FLOOR_BYTES.saturating_add(RESERVE_BYTES) {
            return false;
        }
        if let Err(e) = self.allocate_reserve() {
            tracing::debug!(error = %e, "outbox: the disk-space reserve cannot be allocated yet");
            return false;
        }
        self.full = false;
        tracing::info!(
            dir = %self.dir.display(),
            free,
            "outbox: disk space is back; storing and acknowledging readings again"
        );
        true
    }
}

/// `n` as the platform's file offset type (32 bits on armv7), saturating.
fn libc_len(n: u64) -> nix::libc::off_t {
    nix::libc::off_t::try_from(n).unwrap_or(nix::libc::off_t::MAX)
}
