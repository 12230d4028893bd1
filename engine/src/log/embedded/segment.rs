//! A partition's segments: the files that hold its records, oldest first.
//!
//! A partition is a run of segment files with dense offsets across them:
//! segment `i + 1` starts at the offset after segment `i`'s last record.
//! The writer appends to the last one and starts a new one when it passes
//! the configured size; retention deletes whole segments from the front.
//! The first segment of a partition is `partition-NNN.log` (the name a log
//! had before it had segments), each later one `partition-NNN-<base>.log`,
//! `<base>` being the offset of its first record.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufReader, Read},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    frame_crc,
    index::{IndexEntry, SegmentIndex, SPARSE_BYTES},
    sidecar, LogError, HEADER, MAX_RECORD,
};

/// One segment file and the index of its records.
pub(super) struct Segment {
    /// Offset of its first record.
    pub base: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub index: SegmentIndex,
}

impl Segment {
    /// The offset after its last record.
    pub fn end(&self) -> u64 {
        self.base + self.index.len()
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.index.last().map_or(0, |e| e.end())
    }
}

/// The file of partition `p`'s segment starting at `base`.
pub(super) fn segment_path(dir: &Path, p: u32, base: u64) -> PathBuf {
    if base == 0 {
        dir.join(format!("partition-{p:03}.log"))
    } else {
        dir.join(format!("partition-{p:03}-{base:020}.log"))
    }
}

/// Opens partition `p`'s segments (creating the first if there is none),
/// oldest first, truncating a torn tail; every segment but the last is
/// sealed, its index read from its sidecar when it has a valid one (see
/// [`sidecar`]) and scanned otherwise. Also returns how many segment files
/// it scanned. Segments whose offsets do not follow each other are
/// `Corrupt`.
pub(super) fn open_partition(dir: &Path, p: u32) -> Result<(Vec<Segment>, u64), LogError> {
    let first = format!("partition-{p:03}.log");
    let prefix = format!("partition-{p:03}-");
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == first {
            bases.push(0);
        } else if let Some(base) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|digits| digits.parse::<u64>().ok())
        {
            bases.push(base);
        }
    }
    if bases.is_empty() {
        bases.push(0);
    }
    bases.sort_unstable();
    let mut segments: Vec<Segment> = Vec::with_capacity(bases.len());
    let writing = bases.len() - 1;
    let mut scanned = 0;
    for (i, base) in bases.into_iter().enumerate() {
        let path = segment_path(dir, p, base);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let index = match (i < writing).then(|| sidecar::load(&path, &file)) {
            Some(Some(sealed)) => sealed,
            Some(None) => {
                scanned += 1;
                seal(recover(&mut file, &path)?, &path)
            }
            None => {
                scanned += 1;
                SegmentIndex::Dense(recover(&mut file, &path)?)
            }
        };
        if let Some(prev) = segments.last_mut() {
            if prev.end() != base {
                return Err(LogError::Corrupt {
                    partition: p,
                    offset: prev.end(),
                    reason: format!(
                        "{} ends at offset {} but the next segment, {}, starts at {base}",
                        prev.path.display(),
                        prev.end(),
                        path.display()
                    ),
                });
            }
        }
        segments.push(Segment {
            base,
            path,
            file: Arc::new(file),
            index,
        });
    }
    Ok((segments, scanned))
}

/// The sealed index of a segment scanned at start-up, its sidecar written
/// for the next.
fn seal(entries: Vec<IndexEntry>, path: &Path) -> SegmentIndex {
    let mut index = SegmentIndex::Dense(entries);
    index.seal(SPARSE_BYTES);
    if let Some(bytes) = sidecar::encode(&index) {
        if let Err(e) = sidecar::store(path, &bytes) {
            tracing::warn!(error = %e, file = %path.display(), "could not write a sealed segment's index");
        }
    }
    index
}

/// Scans a segment file, returning its index and truncating a torn tail.
fn recover(file: &mut File, path: &Path) -> Result<Vec<IndexEntry>, LogError> {
    let total = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &*file);
    let mut index = Vec::new();
    let mut pos = 0u64;
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    while pos + HEADER as u64 <= total {
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let ts_ms = i64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if len > MAX_RECORD || pos + (HEADER + len) as u64 > total {
            break;
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload)?;
        if frame_crc(ts_ms, &payload) != crc {
            break;
        }
        index.push(IndexEntry {
            pos,
            len: len as u32,
            ts_ms,
        });
        pos += (HEADER + len) as u64;
    }
    if pos < total {
        tracing::warn!(
            file = %path.display(),
            kept = pos,
            dropped = total - pos,
            "truncating a torn tail left by an interrupted (never acknowledged) write"
        );
        file.set_len(pos)?;
        file.sync_all()?;
    }
    Ok(index)
}

/// Makes a directory entry's creation or removal durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
