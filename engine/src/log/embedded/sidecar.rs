//! A sealed segment's index, kept on disk next to it.
//!
//! Without it, opening the log reads and checksums every segment to rebuild
//! the index, so a restart takes as long as reading the whole retention
//! (minutes for a few hundred GiB). A sealed segment is never written
//! again, so its sparse index is written once, when it is sealed, to
//! `<segment>.idx`; at start-up a segment with a valid sidecar is not read
//! at all, and only the segment being written is scanned.
//!
//! The file is a cache: it is written without `fsync`, and one that is
//! missing, torn, left from another file or otherwise wrong is ignored (the
//! segment is scanned as before, and the sidecar written again). What makes
//! it valid: its magic and checksum, its last record ending where the
//! segment file ends, and that record's frame read back from the segment
//! (length, time and checksum) agreeing with it.
//!
//! Layout, little-endian: `HRLDIX01`, records `u64`, the last record
//! (`pos u64, len u32, ts_ms i64`), marks `u64`, then per mark
//! `rel u64, pos u64, len u32, ts_ms i64`, and a CRC-32 of all before it.

use std::{
    fs::{self, File},
    io::Write,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::{
    frame_crc,
    index::{IndexEntry, Mark, SegmentIndex},
    HEADER, MAX_RECORD,
};

const MAGIC: &[u8; 8] = b"HRLDIX01";
const ENTRY: usize = 8 + 4 + 8;
const MARK: usize = 8 + ENTRY;

/// The sidecar of the segment file `segment`.
pub(super) fn path(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// A sealed index as the bytes of its sidecar; `None` for an index that is
/// not sealed.
pub(super) fn encode(index: &SegmentIndex) -> Option<Vec<u8>> {
    let SegmentIndex::Sparse {
        records,
        marks,
        last,
    } = index
    else {
        return None;
    };
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + ENTRY + 8 + marks.len() * MARK + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&records.to_le_bytes());
    put_entry(&mut out, last);
    out.extend_from_slice(&(marks.len() as u64).to_le_bytes());
    for mark in marks {
        out.extend_from_slice(&mark.rel.to_le_bytes());
        put_entry(&mut out, &mark.entry);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Some(out)
}

/// The index a sidecar holds, if it is well formed and its last record ends
/// at `file_len` (its frame is checked by [`load`]).
pub(super) fn decode(bytes: &[u8], file_len: u64) -> Option<SegmentIndex> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    let body = body.strip_prefix(MAGIC)?;
    let records = u64_at(body, 0)?;
    let last = entry_at(body, 8)?;
    let count = usize::try_from(u64_at(body, 8 + ENTRY)?).ok()?;
    let marks_at = 16 + ENTRY;
    if body.len() != marks_at.checked_add(count.checked_mul(MARK)?)? || count == 0 {
        return None;
    }
    let marks: Vec<Mark> = (0..count)
        .map(|i| {
            let at = marks_at + i * MARK;
            Some(Mark {
                rel: u64_at(body, at)?,
                entry: entry_at(body, at + 8)?,
            })
        })
        .collect::<Option<_>>()?;
    let first = marks[0];
    let ordered = marks
        .windows(2)
        .all(|w| w[0].rel < w[1].rel && w[0].entry.end() <= w[1].entry.pos);
    let tail = marks[count - 1];
    if first.rel != 0
        || first.entry.pos != 0
        || !ordered
        || tail.rel >= records
        || tail.entry.pos > last.pos
        || last.end() != file_len
    {
        return None;
    }
    Some(SegmentIndex::Sparse {
        records,
        marks,
        last,
    })
}

/// The index in `segment`'s sidecar if there is a valid one for `file`
/// (see the module docs); `None` otherwise, including on any read error.
pub(super) fn load(segment: &Path, file: &File) -> Option<SegmentIndex> {
    let bytes = fs::read(path(segment)).ok()?;
    let index = decode(&bytes, file.metadata().ok()?.len())?;
    let last = index.last()?;
    let len = last.len as usize;
    if len > MAX_RECORD {
        return None;
    }
    let mut frame = vec![0u8; HEADER + len];
    file.read_exact_at(&mut frame, last.pos).ok()?;
    let agrees = u32::from_le_bytes(frame[0..4].try_into().ok()?) == last.len
        && i64::from_le_bytes(frame[8..16].try_into().ok()?) == last.ts_ms
        && u32::from_le_bytes(frame[4..8].try_into().ok()?)
            == frame_crc(last.ts_ms, &frame[HEADER..]);
    agrees.then_some(index)
}

/// Writes `bytes` (from [`encode`]) as `segment`'s sidecar: to a temporary
/// file, renamed into place.
pub(super) fn store(segment: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = segment.with_extension("idx.tmp");
    File::create(&tmp)?.write_all(bytes)?;
    fs::rename(&tmp, path(segment))
}

/// Removes `segment`'s sidecar, if it has one.
pub(super) fn remove(segment: &Path) -> std::io::Result<()> {
    match fs::remove_file(path(segment)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn put_entry(out: &mut Vec<u8>, e: &IndexEntry) {
    out.extend_from_slice(&e.pos.to_le_bytes());
    out.extend_from_slice(&e.len.to_le_bytes());
    out.extend_from_slice(&e.ts_ms.to_le_bytes());
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn entry_at(bytes: &[u8], at: usize) -> Option<IndexEntry> {
    Some(IndexEntry {
        pos: u64_at(bytes, at)?,
        len: u32::from_le_bytes(bytes.get(at + 8..at + 12)?.try_into().ok()?),
        ts_ms: i64::from_le_bytes(bytes.get(at + 12..at + 20)?.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::embedded::index::SPARSE_BYTES;

    /// A sealed index of `n` records of 84 payload bytes.
    fn sealed(n: u64) -> SegmentIndex {
        let entries = (0..n)
            .map(|rel| IndexEntry {
                pos: rel * 100,
                len: 84,
                ts_ms: 1_000 + rel as i64,
            })
            .collect();
        let mut index = SegmentIndex::Dense(entries);
        index.seal(SPARSE_BYTES);
        index
    }

    #[test]
    fn a_sealed_index_reads_back_as_it_was_written() {
        let index = sealed(5_000);
        let bytes = encode(&index).unwrap();
        let back = decode(&bytes, 5_000 * 100).expect("decodes");
        assert_eq!(encode(&back).unwrap(), bytes);
        assert_eq!(back.len(), 5_000);
        assert_eq!(back.last(), index.last());
        assert_eq!(back.entries(), index.entries());
        assert!(encode(&SegmentIndex::Dense(Vec::new())).is_none());
    }

    #[test]
    fn a_sidecar_that_is_torn_altered_or_for_another_length_is_refused() {
        let bytes = encode(&sealed(5_000)).unwrap();
        assert!(decode(&bytes, 5_000 * 100 + 1).is_none(), "the file grew");
        assert!(decode(&bytes, 4_999 * 100).is_none(), "the file shrank");
        for cut in [0, 3, 8, 40, bytes.len() - 1] {
            assert!(decode(&bytes[..cut], 5_000 * 100).is_none(), "cut at {cut}");
        }
        for at in [0, 9, 30, bytes.len() / 2, bytes.len() - 2] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(decode(&flipped, 5_000 * 100).is_none(), "byte {at} flipped");
        }
    }
}
