//! The embedded event log: one append-only file per partition on local disk.
//!
//! # Guarantees
//! - **Durable before acknowledged.** Appends go to a single writer thread
//!   that group-commits: it takes every request waiting in its queue, writes
//!   them partition by partition, `fdatasync`s each touched file once, and
//!   only then answers the callers. Many concurrent emits share one fsync.
//! - **Torn writes are harmless.** Each record is framed
//!   `[len u32][crc32 u32][appended_at ms i64][payload]`; at start-up a short
//!   or corrupt tail (a write the crash interrupted, never acknowledged) is
//!   truncated away.
//! - **Ordered per partition.** Offsets are dense and assigned in append
//!   order; `appended_at` never goes backwards within a partition, so reading
//!   by time is a binary search.
//! - **Consumer positions survive restarts.** Commits are written to
//!   `consumers/<group>.json` by write-to-temp, fsync, rename, fsync-dir.
//!
//! - **Bounded on disk.** A partition is a run of segment files (see
//!   [`segment`]); the writer starts a new one past
//!   [`LogFiles::segment_bytes`], and [`EmbeddedLog::drop_before`] deletes
//!   whole segments once they are past the retention and every consumer
//!   group has committed past them. A read below the oldest segment starts
//!   at its first record.
//!
//! The in-memory index holds an entry per record (position, length, time)
//! for the segment being written, and one per 64 KiB of file for a sealed
//! one (see [`index`]), so its size follows the partitions, not the
//! retention. A sealed segment's index is also written to a file beside it
//! (see [`sidecar`]); at start-up only each partition's last segment (and a
//! sealed one whose index file is missing or wrong) is scanned, so a
//! restart's time follows the partitions, not the retention either.

mod index;
mod segment;
mod sidecar;

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use self::{
    index::{frames, IndexEntry, SegmentIndex, Span, Walk, SPARSE_BYTES},
    segment::{open_partition, segment_path, sync_dir, Segment},
};
use super::{EventLog, LogConsumer, LogError, LogPosition, LogRecord};
use crate::model::DomainEvent;

const HEADER: usize = 16;
/// Largest record accepted (a guard against reading garbage lengths).
const MAX_RECORD: usize = 16 * 1024 * 1024;
/// Bytes one group commit gathers at most before writing.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// How the embedded log lays out its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFiles {
    /// Size past which a partition's writer starts a new segment file (the
    /// unit retention deletes).
    pub segment_bytes: u64,
}

impl Default for LogFiles {
    /// 64 MiB segments.
    fn default() -> Self {
        Self {
            segment_bytes: crate::config::DEFAULT_LOG_SEGMENT_BYTES,
        }
    }
}

/// A partition's segments, oldest first; never empty.
struct Partition {
    segments: RwLock<Vec<Segment>>,
}

impl Partition {
    fn end(&self) -> u64 {
        self.segments.read().last().map_or(0, Segment::end)
    }
}

/// What [`EmbeddedLog::drop_before`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Segment files deleted.
    pub segments: u64,
    /// Records they held.
    pub records: u64,
    /// Bytes they held.
    pub bytes: u64,
}

struct Shared {
    dir: PathBuf,
    files: LogFiles,
    partitions: Vec<Partition>,
    /// Bumped after every group commit; consumers wait on it.
    appended: watch::Sender<u64>,
    commit_lock: Mutex<()>,
}

struct AppendRequest {
    frames: Vec<(u32, Vec<u8>)>,
    reply: oneshot::Sender<Result<Vec<LogPosition>, LogError>>,
}

/// The embedded, file-backed [`EventLog`].
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    writer: mpsc::Sender<AppendRequest>,
    opened: Opened,
}

/// What [`EmbeddedLog::open_with`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opened {
    /// Segment files, all partitions.
    pub segments: u64,
    /// Of those, the files read through to rebuild their index: each
    /// partition's last, and sealed ones without a valid index file.
    pub scanned: u64,
    /// Bytes the segments hold.
    pub bytes: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    version: u32,
    partitions: u32,
}

impl EmbeddedLog {
    /// Opens (or creates) the log under `dir` with the default
    /// [`LogFiles`] (see [`open_with`](Self::open_with)).
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, LogError> {
        Self::open_with(dir, partitions, LogFiles::default())
    }

    /// Opens (or creates) the log under `dir`. `partitions` applies only to a
    /// new log; an existing log keeps the partition count it was created with.
    pub fn open_with(dir: &Path, partitions: u32, files: LogFiles) -> Result<Self, LogError> {
        fs::create_dir_all(dir.join("consumers"))?;
        let meta_path = dir.join("log.meta.json");
        let partitions = match fs::read(&meta_path) {
            Ok(raw) => {
                let meta: Meta = serde_json::from_slice(&raw).map_err(|e| LogError::Corrupt {
                    partition: 0,
                    offset: 0,
                    reason: format!("{}: {e}", meta_path.display()),
                })?;
                if meta.partitions != partitions {
                    tracing::warn!(
                        existing = meta.partitions,
                        asked = partitions,
                        "the embedded log keeps the partition count it was created with"
                    );
                }
                meta.partitions
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meta = Meta {
                    version: 1,
                    partitions: partitions.max(1),
                };
                write_atomically(
                    &meta_path,
                    &serde_json::to_vec(&meta).expect("meta serialises"),
                )?;
                meta.partitions
            }
            Err(e) => return Err(e.into()),
        };

        let started = std::time::Instant::now();
        let mut opened = Opened::default();
        let mut parts = Vec::new();
        let mut writers = Vec::new();
        for p in 0..partitions {
            let (segments, scanned) = open_partition(dir, p)?;
            opened.segments += segments.len() as u64;
            opened.scanned += scanned;
            opened.bytes += segments.iter().map(Segment::bytes).sum::<u64>();
            let last = segments.last().expect("a partition has a segment");
            writers.push(WriterPartition {
                file: last.file.clone(),
                end: last.bytes(),
                // Times never go back within a partition, even when the
                // last segment is new and empty.
                last_ts: segments
                    .iter()
                    .rev()
                    .find_map(|s| s.index.last())
                    .map_or(i64::MIN, |e| e.ts_ms),
                base: last.base,
                records: last.index.len(),
            });
            parts.push(Partition {
                segments: RwLock::new(segments),
            });
        }
        tracing::info!(
            partitions,
            segments = opened.segments,
            scanned = opened.scanned,
            bytes = opened.bytes,
            took_ms = started.elapsed().as_millis() as u64,
            "event log opened (sealed segments with an index file are not read)"
        );
        let (appended, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            files,
            partitions: parts,
            appended,
            commit_lock: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel(4096);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("herald-log-writer".into())
            .spawn(move || run_writer(writer_shared, writers, rx))?;
        Ok(Self {
            shared,
            writer: tx,
            opened,
        })
    }

    /// What opening the log found.
    pub fn opened(&self) -> Opened {
        self.opened
    }
}

/// The writer's view of a partition's last segment.
impl EmbeddedLog {
    /// Deletes each partition's oldest segments whose every record was
    /// appended before `before_ms` and which every consumer group has
    /// committed past; never the segment being written, never past a
    /// partition a group has not committed. No consumer group: nothing.
    pub fn drop_segments(&self, before_ms: i64) -> Result<Dropped, LogError> {
        self.shared.drop_segments(before_ms)
    }
}

impl Shared {
    fn drop_segments(&self, before_ms: i64) -> Result<Dropped, LogError> {
        let shared = self;
        let committed = shared.all_committed()?;
        let mut dropped = Dropped::default();
        if committed.is_empty() {
            return Ok(dropped);
        }
        for (p, part) in shared.partitions.iter().enumerate() {
            let floor = committed
                .iter()
                .map(|group| group.get(&(p as u32)).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            let gone: Vec<Segment> = {
                let mut segments = part.segments.write();
                let keep_from = segments[..segments.len() - 1]
                    .iter()
                    .position(|s| {
                        s.end() > floor || s.index.last().is_some_and(|e| e.ts_ms >= before_ms)
                    })
                    .unwrap_or(segments.len() - 1);
                segments.drain(..keep_from).collect()
            };
            if gone.is_empty() {
                continue;
            }
            for segment in &gone {
                // Readers holding the file read on until they drop it.
                fs::remove_file(&segment.path)?;
                sidecar::remove(&segment.path)?;
                dropped.segments += 1;
                dropped.records += segment.index.len();
                dropped.bytes += segment.bytes();
            }
            sync_dir(&shared.dir)?;
        }
        Ok(dropped)
    }
}

/// The writer's view of a partition's last segment.
struct WriterPartition {
    file: Arc<File>,
    /// Its length in bytes.
    end: u64,
    last_ts: i64,
    /// Offset of its first record.
    base: u64,
    /// Records in it.
    records: u64,
}

impl WriterPartition {
    /// Starts a new segment after this one's last record.
    fn roll(&mut self, shared: &Shared, p: usize) -> std::io::Result<()> {
        let base = self.base + self.records;
        let path = segment_path(&shared.dir, p as u32, base);
        let file = Arc::new(
            OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&path)?,
        );
        sync_dir(&shared.dir)?;
        let mut segments = shared.partitions[p].segments.write();
        let sealed = segments.last_mut().map(|done| {
            done.index.seal(SPARSE_BYTES);
            (done.path.clone(), sidecar::encode(&done.index))
        });
        segments.push(Segment {
            base,
            path,
            file: file.clone(),
            index: SegmentIndex::Dense(Vec::new()),
        });
        drop(segments);
        if let Some((done, Some(bytes))) = sealed {
            if let Err(e) = sidecar::store(&done, &bytes) {
                // The next start-up scans the segment instead.
                tracing::warn!(error = %e, file = %done.display(), "could not write a sealed segment's index");
            }
        }
        *self = WriterPartition {
            file,
            end: 0,
            last_ts: self.last_ts,
            base,
            records: 0,
        };
        Ok(())
    }
}

fn run_writer(
    shared: Arc<Shared>,
    mut parts: Vec<WriterPartition>,
    mut rx: mpsc::Receiver<AppendRequest>,
) {
    let n = parts.len();
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); n];
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        let mut bytes: usize = batch[0].frames.iter().map(|f| f.1.len()).sum();
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(req) => {
                    bytes += req.frames.iter().map(|f| f.1.len()).sum::<usize>();
                    batch.push(req);
                }
                Err(_) => break,
            }
        }
        let now_ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let mut new_entries: Vec<Vec<IndexEntry>> = vec![Vec::new(); n];
        let mut answers: Vec<Vec<LogPosition>> = Vec::with_capacity(batch.len());
        let base_len: Vec<u64> = (0..n).map(|p| shared.partitions[p].end()).collect();
        for req in &batch {
            let mut positions = Vec::with_capacity(req.frames.len());
            for (p, payload) in &req.frames {
                let p = *p as usize;
                let part = &mut parts[p];
                let ts_ms = now_ms.max(part.last_ts);
                part.last_ts = ts_ms;
                let pos = part.end + bufs[p].len() as u64;
                bufs[p].extend_from_slice(&(payload.len() as u32).to_le_bytes());
                bufs[p].extend_from_slice(&frame_crc(ts_ms, payload).to_le_bytes());
                bufs[p].extend_from_slice(&ts_ms.to_le_bytes());
                bufs[p].extend_from_slice(payload);
                positions.push(LogPosition {
                    partition: p as u32,
                    offset: base_len[p] + new_entries[p].len() as u64,
                });
                new_entries[p].push(IndexEntry {
                    pos,
                    len: payload.len() as u32,
                    ts_ms,
                });
            }
            answers.push(positions);
        }
        let result = write_and_sync(&mut parts, &mut bufs);
        match result {
            Ok(()) => {
                for (p, entries) in new_entries.into_iter().enumerate() {
                    if entries.is_empty() {
                        continue;
                    }
                    parts[p].records += entries.len() as u64;
                    let mut segments = shared.partitions[p].segments.write();
                    let last = segments.last_mut().expect("a partition has a segment");
                    last.index.extend(entries);
                    drop(segments);
                    if parts[p].end >= shared.files.segment_bytes {
                        if let Err(e) = parts[p].roll(&shared, p) {
                            // Appends go on into the current segment.
                            tracing::error!(error = %e, partition = p, "could not start a new log segment");
                        }
                    }
                }
                for (req, positions) in batch.into_iter().zip(answers) {
                    let _ = req.reply.send(Ok(positions));
                }
                shared.appended.send_modify(|v| *v += 1);
            }
            Err(e) => {
                tracing::error!(error = %e, "event log append failed; the batch is refused");
                for req in batch {
                    let _ = req.reply.send(Err(LogError::Io(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    ))));
                }
            }
        }
    }
}

/// Writes every partition buffer and fsyncs the touched files. On failure the
/// files are cut back to their last durable length so no half batch remains.
fn write_and_sync(parts: &mut [WriterPartition], bufs: &mut [Vec<u8>]) -> std::io::Result<()> {
    let mut outcome = Ok(());
    for (part, buf) in parts.iter_mut().zip(bufs.iter()) {
        if buf.is_empty() || outcome.is_err() {
            continue;
        }
        let mut file = &*part.file;
        outcome = file.write_all(buf).and_then(|()| file.sync_data());
    }
    for (part, buf) in parts.iter_mut().zip(bufs.iter_mut()) {
        if buf.is_empty() {
            continue;
        }
        if outcome.is_ok() {
            part.end += buf.len() as u64;
        } else if let Err(e) = part.file.set_len(part.end) {
            tracing::error!(error = %e, "could not cut a failed append back");
        }
        buf.clear();
    }
    outcome
}

/// File bytes `from..to`.
fn read_at(file: &File, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; (to - from) as usize];
    file.read_exact_at(&mut buf, from)?;
    Ok(buf)
}

/// The checksum of a record's frame.
fn frame_crc(ts_ms: i64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&ts_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

impl Shared {
    fn partition(&self, partition: u32) -> Result<&Partition, LogError> {
        self.partitions
            .get(partition as usize)
            .ok_or(LogError::OutOfRange {
                partition,
                offset: 0,
            })
    }

    /// Up to `max` records from `offset` (from the oldest kept record if
    /// `offset` is older), within one segment.
    fn read(&self, partition: u32, offset: u64, max: usize) -> Result<Vec<LogRecord>, LogError> {
        let part = self
            .partitions
            .get(partition as usize)
            .ok_or(LogError::OutOfRange { partition, offset })?;
        let (offset, base, file, span) = {
            let segments = part.segments.read();
            let offset = offset.max(segments[0].base);
            let at = segments.partition_point(|s| s.base <= offset) - 1;
            let segment = &segments[at];
            let span = segment.index.span(offset - segment.base, max);
            (offset, segment.base, segment.file.clone(), span)
        };
        let (buf, from, entries) = match span {
            None => return Ok(Vec::new()),
            Some(Span::Records(entries)) => {
                let (first, last) = (entries[0], entries[entries.len() - 1]);
                let buf = read_at(&file, first.pos, last.end())?;
                (buf, first.pos, entries)
            }
            Some(Span::Walk(Walk {
                first_rel,
                from,
                to,
            })) => {
                let buf = read_at(&file, from, to)?;
                let walked = frames(&buf, from).map_err(|reason| LogError::Corrupt {
                    partition,
                    offset,
                    reason,
                })?;
                let skip = (offset - base - first_rel) as usize;
                let entries = walked.into_iter().skip(skip).take(max).collect();
                (buf, from, entries)
            }
        };
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let at = (e.pos - from) as usize + HEADER;
                let payload = &buf[at..at + e.len as usize];
                let off = offset + i as u64;
                let crc = u32::from_le_bytes(buf[at - 12..at - 8].try_into().expect("4 bytes"));
                if frame_crc(e.ts_ms, payload) != crc {
                    return Err(LogError::Corrupt {
                        partition,
                        offset: off,
                        reason: format!(
                            "the record's checksum does not match its bytes (byte {} of {}): the file was damaged on disk",
                            e.pos,
                            segment_path(&self.dir, partition, base).display()
                        ),
                    });
                }
                let event: DomainEvent =
                    serde_json::from_slice(payload).map_err(|err| LogError::Corrupt {
                        partition,
                        offset: off,
                        reason: err.to_string(),
                    })?;
                Ok(LogRecord {
                    position: LogPosition {
                        partition,
                        offset: off,
                    },
                    appended_at: OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(e.ts_ms) * 1_000_000,
                    )
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    event,
                    indexed: false,
                })
            })
            .collect()
    }

    /// The offset of `partition`'s first record appended at or after
    /// `at_ms`, or its end if there is none.
    fn offset_for_time(&self, partition: u32, at_ms: i64) -> Result<u64, LogError> {
        let (base, file, found) = {
            let segments = self.partition(partition)?.segments.read();
            // The first segment whose last record is at or after `at`.
            let Some(s) = segments
                .iter()
                .find(|s| s.index.last().is_some_and(|e| e.ts_ms >= at_ms))
            else {
                return Ok(segments.last().map_or(0, Segment::end));
            };
            (s.base, s.file.clone(), s.index.first_at(at_ms))
        };
        match found {
            Ok(rel) => Ok(base + rel),
            Err(Walk {
                first_rel,
                from,
                to,
            }) => {
                let walked = frames(&read_at(&file, from, to)?, from).map_err(|reason| {
                    LogError::Corrupt {
                        partition,
                        offset: base + first_rel,
                        reason,
                    }
                })?;
                let before = walked.iter().take_while(|e| e.ts_ms < at_ms).count();
                Ok(base + first_rel + before as u64)
            }
        }
    }

    fn offsets_path(&self, group: &str) -> PathBuf {
        let safe: String = group
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("consumers").join(format!("{safe}.json"))
    }

    /// The committed positions of every consumer group that committed any.
    fn all_committed(&self) -> Result<Vec<BTreeMap<u32, u64>>, LogError> {
        let _guard = self.commit_lock.lock();
        let mut groups = Vec::new();
        for entry in fs::read_dir(self.dir.join("consumers"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let raw = fs::read(&path)?;
                groups.push(serde_json::from_slice(&raw).map_err(|e| LogError::Corrupt {
                    partition: 0,
                    offset: 0,
                    reason: format!("{}: {e}", path.display()),
                })?);
            }
        }
        Ok(groups)
    }

    fn load_offsets(&self, group: &str) -> Result<BTreeMap<u32, u64>, LogError> {
        match fs::read(self.offsets_path(group)) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| LogError::Corrupt {
                partition: 0,
                offset: 0,
                reason: format!("consumer offsets of {group}: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn partitions(&self) -> u32 {
        self.shared.partitions.len() as u32
    }

    async fn append(&self, events: &[DomainEvent]) -> Result<Vec<LogPosition>, LogError> {
        let n = self.partitions();
        let frames = events
            .iter()
            .map(|e| {
                let payload = e.to_json().into_bytes();
                (super::partition_for(&e.tenant_id, n), payload)
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(AppendRequest { frames, reply })
            .await
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    async fn read(
        &self,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<Vec<LogRecord>, LogError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.read(partition, offset, max))
            .await
            .map_err(|_| LogError::Closed)?
    }

    async fn end_offset(&self, partition: u32) -> Result<u64, LogError> {
        Ok(self.shared.partition(partition)?.end())
    }

    async fn offset_for_time(&self, partition: u32, at: OffsetDateTime) -> Result<u64, LogError> {
        let at_ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.offset_for_time(partition, at_ms))
            .await
            .map_err(|_| LogError::Closed)?
    }

    async fn committed(&self, group: &str) -> Result<Option<BTreeMap<u32, u64>>, LogError> {
        self.shared.load_offsets(group).map(Some)
    }

    async fn drop_before(&self, before_ms: i64) -> Result<u64, LogError> {
        let shared = self.shared.clone();
        let dropped = tokio::task::spawn_blocking(move || shared.drop_segments(before_ms))
            .await
            .map_err(|_| LogError::Closed)??;
        if dropped.segments > 0 {
            tracing::info!(
                segments = dropped.segments,
                records = dropped.records,
                bytes = dropped.bytes,
                "event log segments past the retention deleted"
            );
        }
        Ok(dropped.records)
    }

    fn appends(&self) -> Option<watch::Receiver<u64>> {
        Some(self.shared.appended.subscribe())
    }

    async fn consumer(&self, group: &str) -> Result<Box<dyn LogConsumer>, LogError> {
        let committed = self.shared.load_offsets(group)?;
        let next = (0..self.partitions())
            .map(|p| committed.get(&p).copied().unwrap_or(0))
            .collect();
        Ok(Box::new(EmbeddedConsumer {
            shared: self.shared.clone(),
            group: group.to_string(),
            appended: self.shared.appended.subscribe(),
            committed,
            next,
            cursor: 0,
        }))
    }
}

struct EmbeddedConsumer {
    shared: Arc<Shared>,
    group: String,
    appended: watch::Receiver<u64>,
    committed: BTreeMap<u32, u64>,
    next: Vec<u64>,
    cursor: usize,
}

#[async_trait]
impl LogConsumer for EmbeddedConsumer {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<LogRecord>, LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.appended.borrow_and_update();
            let n = self.next.len();
            let (shared, next, cursor) = (self.shared.clone(), self.next.clone(), self.cursor);
            // All partitions in one blocking call; round-robin from a moving
            // start, so a busy partition can't starve the others.
            let (out, read_to) = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                let mut read_to = vec![None; n];
                for i in 0..n {
                    let p = (cursor + i) % n;
                    if out.len() >= max {
                        break;
                    }
                    let records = shared.read(p as u32, next[p], max - out.len())?;
                    read_to[p] = records.last().map(|r| r.position.offset + 1);
                    out.extend(records);
                }
                Ok::<_, LogError>((out, read_to))
            })
            .await
            .map_err(|_| LogError::Closed)??;
            for (next, read_to) in self.next.iter_mut().zip(read_to) {
                if let Some(to) = read_to {
                    *next = to;
                }
            }
            self.cursor = (self.cursor + 1) % n.max(1);
            if !out.is_empty() {
                return Ok(out);
            }
            match tokio::time::timeout_at(deadline, self.appended.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(LogError::Closed),
                Err(_) => return Ok(Vec::new()),
            }
        }
    }

    async fn commit(&mut self, positions: &[LogPosition]) -> Result<(), LogError> {
        let mut changed = false;
        for pos in positions {
            let entry = self.committed.entry(pos.partition).or_insert(0);
            if pos.offset > *entry {
                *entry = pos.offset;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let shared = self.shared.clone();
        let path = shared.offsets_path(&self.group);
        let bytes = serde_json::to_vec(&self.committed).expect("offsets serialise");
        tokio::task::spawn_blocking(move || {
            let _guard = shared.commit_lock.lock();
            write_atomically(&path, &bytes)
        })
        .await
        .map_err(|_| LogError::Closed)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
