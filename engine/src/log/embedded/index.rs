//! Where a segment's records sit in its file.
//!
//! The segment being written indexes every record, so a read at the head of
//! the log, where consumers are, is one `pread` of exactly its records. A
//! sealed segment keeps only one entry per [`SPARSE_BYTES`] of file and its
//! last record: a read finds the nearest entry at or before its offset and
//! walks the frames from there. The index's memory therefore follows the
//! segments being written, not the retention: a 64 MiB segment of 1 KiB
//! events indexes ~64,000 records (1.5 MiB) while it is written and ~1,000
//! entries (32 KiB) once sealed.

use super::HEADER;

/// File bytes between two entries a sealed segment keeps.
pub(super) const SPARSE_BYTES: u64 = 64 * 1024;

/// Where one record sits in its segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IndexEntry {
    pub pos: u64,
    pub len: u32,
    pub ts_ms: i64,
}

impl IndexEntry {
    /// The file position after its frame.
    pub fn end(&self) -> u64 {
        self.pos + HEADER as u64 + u64::from(self.len)
    }
}

/// An entry a sealed segment keeps: the record `rel` records into the segment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub rel: u64,
    pub entry: IndexEntry,
}

/// A segment's index: every record while the segment is written, marks once
/// it is sealed.
#[derive(Debug)]
pub(super) enum SegmentIndex {
    Dense(Vec<IndexEntry>),
    Sparse {
        records: u64,
        /// The first record's, then one at least every `SPARSE_BYTES`.
        marks: Vec<Mark>,
        last: IndexEntry,
    },
}

/// What a read of a segment must fetch from its file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Span {
    /// Exactly these records (consecutive, from the offset asked for).
    Records(Vec<IndexEntry>),
    /// Frames to walk; the records asked for are among them.
    Walk(Walk),
}

/// The frames in file bytes `from..to`, the first of them `first_rel`
/// records into the segment.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Walk {
    pub first_rel: u64,
    pub from: u64,
    pub to: u64,
}

impl SegmentIndex {
    /// Records in the segment.
    pub fn len(&self) -> u64 {
        match self {
            Self::Dense(entries) => entries.len() as u64,
            Self::Sparse { records, .. } => *records,
        }
    }

    /// Its last record.
    pub fn last(&self) -> Option<IndexEntry> {
        match self {
            Self::Dense(entries) => entries.last().copied(),
            Self::Sparse { last, .. } => Some(*last),
        }
    }

    /// Entries held in memory.
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        match self {
            Self::Dense(entries) => entries.len(),
            Self::Sparse { marks, .. } => marks.len() + 1,
        }
    }

    /// Adds records appended to the segment being written.
    pub fn extend(&mut self, new: impl IntoIterator<Item = IndexEntry>) {
        match self {
            Self::Dense(entries) => entries.extend(new),
            Self::Sparse { .. } => unreachable!("a sealed segment is never appended to"),
        }
    }

    /// Keeps one entry per `every` bytes of file (and the last): the segment
    /// is written no more.
    pub fn seal(&mut self, every: u64) {
        let Self::Dense(entries) = self else { return };
        let Some(&last) = entries.last() else { return };
        let mut marks: Vec<Mark> = Vec::new();
        for (rel, entry) in entries.iter().enumerate() {
            if marks
                .last()
                .is_none_or(|m| entry.pos >= m.entry.pos + every)
            {
                marks.push(Mark {
                    rel: rel as u64,
                    entry: *entry,
                });
            }
        }
        marks.shrink_to_fit();
        *self = Self::Sparse {
            records: entries.len() as u64,
            marks,
            last,
        };
    }

    /// What to fetch to read up to `max` records from `rel` (records into the
    /// segment); `None` if there are none.
    pub fn span(&self, rel: u64, max: usize) -> Option<Span> {
        let len = self.len();
        if rel >= len || max == 0 {
            return None;
        }
        match self {
            Self::Dense(entries) => {
                let end = rel.saturating_add(max as u64).min(len);
                Some(Span::Records(entries[rel as usize..end as usize].to_vec()))
            }
            Self::Sparse { marks, last, .. } => {
                let from = marks[marks.partition_point(|m| m.rel <= rel) - 1];
                let past = rel.saturating_add(max as u64);
                let to = marks
                    .iter()
                    .skip(marks.partition_point(|m| m.rel < past))
                    .map(|m| m.entry.pos)
                    .next()
                    .unwrap_or_else(|| last.end());
                Some(Span::Walk(Walk {
                    first_rel: from.rel,
                    from: from.entry.pos,
                    to,
                }))
            }
        }
    }

    /// Where the first record appended at or after `at_ms` is, given that the
    /// segment's last record is: its offset in the segment, or the frames to
    /// walk to find it.
    pub fn first_at(&self, at_ms: i64) -> Result<u64, Walk> {
        match self {
            Self::Dense(entries) => Ok(entries.partition_point(|e| e.ts_ms < at_ms) as u64),
            Self::Sparse { marks, last, .. } => {
                let m = marks.partition_point(|m| m.entry.ts_ms < at_ms);
                if m == 0 {
                    return Ok(0);
                }
                let before = marks[m - 1];
                Err(Walk {
                    first_rel: before.rel,
                    from: before.entry.pos,
                    to: marks
                        .get(m)
                        .map_or_else(|| last.end(), |next| next.entry.pos),
                })
            }
        }
    }
}

/// The frames of `bytes`, read from file position `pos`: each record's entry,
/// in order. A frame cut short is an error (a sealed segment's bytes were
/// checked when the log was opened).
pub(super) fn frames(bytes: &[u8], pos: u64) -> Result<Vec<IndexEntry>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at + HEADER)
            .ok_or_else(|| format!("a frame header cut short at byte {}", pos + at as u64))?;
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let ts_ms = i64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let next = at + HEADER + len as usize;
        if next > bytes.len() {
            return Err(format!("a record cut short at byte {}", pos + at as u64));
        }
        out.push(IndexEntry {
            pos: pos + at as u64,
            len,
            ts_ms,
        });
        at = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment of `n` records of `len` bytes each, appended at 1000 + rel ms.
    fn dense(n: u64, len: u32) -> (SegmentIndex, Vec<u8>) {
        let mut bytes = Vec::new();
        let mut entries = Vec::new();
        for rel in 0..n {
            let ts_ms = 1000 + rel as i64;
            entries.push(IndexEntry {
                pos: bytes.len() as u64,
                len,
                ts_ms,
            });
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(&ts_ms.to_le_bytes());
            bytes.extend(std::iter::repeat_n(rel as u8, len as usize));
        }
        (SegmentIndex::Dense(entries), bytes)
    }

    /// The records a read of `max` from `rel` returns, through its span.
    fn read(index: &SegmentIndex, bytes: &[u8], rel: u64, max: usize) -> Vec<IndexEntry> {
        match index.span(rel, max) {
            None => Vec::new(),
            Some(Span::Records(entries)) => entries,
            Some(Span::Walk(Walk {
                first_rel,
                from,
                to,
            })) => {
                let walked = frames(&bytes[from as usize..to as usize], from).unwrap();
                walked
                    .into_iter()
                    .skip((rel - first_rel) as usize)
                    .take(max)
                    .collect()
            }
        }
    }

    #[test]
    fn a_sealed_segment_reads_every_range_as_it_did_dense() {
        // 100 records of 84 + 16 bytes: a mark every 5 records at 500 bytes.
        let (dense_index, bytes) = dense(100, 84);
        let mut sealed = dense(100, 84).0;
        sealed.seal(500);
        let SegmentIndex::Sparse { marks, .. } = &sealed else {
            panic!("sealed")
        };
        assert_eq!(marks.len(), 20, "one mark per 500 bytes");
        assert_eq!(sealed.len(), 100);
        assert_eq!(sealed.last(), dense_index.last());
        for rel in 0..101 {
            for max in [1, 3, 5, 7, 50, 200] {
                assert_eq!(
                    read(&sealed, &bytes, rel, max),
                    read(&dense_index, &bytes, rel, max),
                    "rel {rel}, max {max}"
                );
            }
        }
    }

    #[test]
    fn a_sealed_segment_walks_at_most_one_gap_more_than_it_returns() {
        let (mut index, _) = dense(1000, 84);
        index.seal(SPARSE_BYTES);
        let Some(Span::Walk(Walk { from, to, .. })) = index.span(700, 10) else {
            panic!("a sealed segment walks")
        };
        // 10 records are 1,000 bytes; the walk may start up to a gap before
        // them and end up to a gap after.
        assert!(
            to - from <= 1_000 + 2 * (SPARSE_BYTES + 100),
            "{from}..{to}"
        );
        assert!(from <= 700 * 100 && to >= 710 * 100);
    }

    #[test]
    fn the_first_record_at_a_time_is_found_in_a_sealed_segment_too() {
        let (dense_index, bytes) = dense(100, 84);
        let mut sealed = dense(100, 84).0;
        sealed.seal(700);
        for at_ms in [0, 1000, 1001, 1006, 1007, 1050, 1099] {
            let want = dense_index.first_at(at_ms).unwrap();
            let got = match sealed.first_at(at_ms) {
                Ok(rel) => rel,
                Err(Walk {
                    first_rel,
                    from,
                    to,
                }) => {
                    let walked = frames(&bytes[from as usize..to as usize], from).unwrap();
                    let found = walked.iter().position(|e| e.ts_ms >= at_ms);
                    first_rel + found.unwrap_or(walked.len()) as u64
                }
            };
            assert_eq!(got, want, "at {at_ms}");
        }
    }

    #[test]
    fn a_frame_cut_short_is_an_error() {
        let (_, bytes) = dense(3, 10);
        assert_eq!(frames(&bytes, 0).unwrap().len(), 3);
        assert!(frames(&bytes[..bytes.len() - 1], 0).is_err());
        assert!(frames(&bytes[..5], 0).is_err());
    }
}
