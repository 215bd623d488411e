//! One segment: a `{base_offset:020}.log` file of RecordBatch v2 bytes with its
//! `.index` and `.timeindex` beside it.
//!
//! Only the active segment is written. Its indexes live in memory and reach
//! disk when it is closed (roll or clean shutdown); a closed segment's files are
//! fsynced before the next segment is created, so after a crash only the last
//! segment can hold a torn tail.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::warn;

use crate::batch::{self, BatchHeader, HEADER_LEN, LOG_OVERHEAD};
use crate::index::{OffsetIndex, TimeIndex};
use crate::Result;

/// File name stem of a segment.
pub(crate) fn stem(base: i64) -> String {
    format!("{base:020}")
}

/// Removes files, those already gone included.
fn remove_files(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub(crate) fn log_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{}.log", stem(base)))
}
fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{}.index", stem(base)))
}
fn time_index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{}.timeindex", stem(base)))
}

/// A segment's `.log` file, opened when first needed. A closed segment's
/// file is closed again when a periodic pass finds it unused since the
/// previous pass, so a broker with thousands of partitions holds a
/// descriptor for each active segment and for the history being read, not
/// for all history.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    path: PathBuf,
    open: Mutex<Option<Arc<File>>>,
    used: AtomicBool,
}

impl SegmentFile {
    fn opened(path: PathBuf, file: File) -> Self {
        Self {
            path,
            open: Mutex::new(Some(Arc::new(file))),
            used: AtomicBool::new(true),
        }
    }

    /// The open file, opening it if need be.
    pub(crate) fn get(&self) -> io::Result<Arc<File>> {
        self.used.store(true, Ordering::Relaxed);
        let mut open = self.open.lock().expect("segment file lock");
        if let Some(f) = open.as_ref() {
            return Ok(f.clone());
        }
        let f = Arc::new(OpenOptions::new().read(true).write(true).open(&self.path)?);
        *open = Some(f.clone());
        Ok(f)
    }

    /// Closes the file if it was not used since the last call (readers
    /// holding it keep it open until they are done). Returns whether it did.
    pub(crate) fn close_if_unused(&self) -> bool {
        if self.used.swap(false, Ordering::Relaxed) {
            return false;
        }
        self.release()
    }

    /// Closes the file now. Returns whether it was open.
    pub(crate) fn release(&self) -> bool {
        self.open
            .lock()
            .expect("segment file lock")
            .take()
            .is_some()
    }

    /// Whether the file is open.
    pub(crate) fn is_open(&self) -> bool {
        self.open.lock().expect("segment file lock").is_some()
    }
}

/// What a scan of a segment file found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Bytes of whole, valid batches from the start.
    pub(crate) valid_len: u64,
    /// Offset after the last valid batch (the base when there is none).
    pub(crate) next_offset: i64,
    pub(crate) max_timestamp: i64,
    pub(crate) index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    /// Why the scan stopped early, if it did.
    pub(crate) stopped: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) dir: PathBuf,
    pub(crate) base: i64,
    pub(crate) file: SegmentFile,
    /// Bytes of whole batches written.
    pub(crate) size: u64,
    pub(crate) next_offset: i64,
    /// Largest batch max timestamp, -1 when empty.
    pub(crate) max_timestamp: i64,
    /// Wall-clock time of the first append (or of opening), for `segment.ms`.
    pub(crate) created_ms: i64,
    pub(crate) index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    bytes_since_index: u64,
    index_interval: u64,
}

impl Segment {
    /// Creates an empty segment file.
    pub(crate) fn create(dir: &Path, base: i64, now_ms: i64, index_interval: u64) -> Result<Self> {
        let path = log_path(dir, base);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // Make the new file's name durable before anything is acknowledged in it.
        sync_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            base,
            file: SegmentFile::opened(path, file),
            size: 0,
            next_offset: base,
            max_timestamp: -1,
            created_ms: now_ms,
            index: OffsetIndex::new(base),
            time_index: TimeIndex::new(base),
            bytes_since_index: 0,
            index_interval,
        })
    }

    /// Opens an existing segment. With `trust_indexes` and valid index files
    /// beside it, nothing is scanned; otherwise the file is scanned, a torn or
    /// corrupt tail is cut off and the indexes are rebuilt.
    pub(crate) fn open(
        dir: &Path,
        base: i64,
        now_ms: i64,
        index_interval: u64,
        trust_indexes: bool,
    ) -> Result<Self> {
        let path = log_path(dir, base);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let file_size = file.metadata()?.len();
        if trust_indexes {
            if let Some(seg) = Self::open_from_indexes(dir, base, &file, file_size, index_interval)?
            {
                return Ok(Self {
                    file: SegmentFile::opened(path, file),
                    created_ms: now_ms,
                    ..seg
                });
            }
        }
        let scan = scan(&file, base, index_interval)?;
        if let Some(reason) = &scan.stopped {
            warn!(
                segment = %path.display(),
                valid_bytes = scan.valid_len,
                file_bytes = file_size,
                reason = %reason,
                "truncating segment at last valid batch"
            );
        }
        if scan.valid_len < file_size {
            file.set_len(scan.valid_len)?;
            file.sync_all()?;
        }
        let seg = Self {
            dir: dir.to_path_buf(),
            base,
            file: SegmentFile::opened(path, file),
            size: scan.valid_len,
            next_offset: scan.next_offset,
            max_timestamp: scan.max_timestamp,
            created_ms: now_ms,
            index: scan.index,
            time_index: scan.time_index,
            bytes_since_index: 0,
            index_interval,
        };
        Ok(seg)
    }

    /// Loads a closed segment from its index files, or `None` if they are
    /// missing or do not fit the log file.
    fn open_from_indexes(
        dir: &Path,
        base: i64,
        file: &File,
        file_size: u64,
        index_interval: u64,
    ) -> Result<Option<Self>> {
        let (Ok(idx), Ok(tidx)) = (
            std::fs::read(index_path(dir, base)),
            std::fs::read(time_index_path(dir, base)),
        ) else {
            return Ok(None);
        };
        let (Some(index), Some(time_index)) = (
            OffsetIndex::decode(base, &idx, file_size.max(1)),
            TimeIndex::decode(base, &tidx),
        ) else {
            return Ok(None);
        };
        if file_size == 0 {
            return Ok(None);
        }
        // The last batch is found from the last index entry; its end must be
        // the end of the file, or the index does not describe this file.
        let mut pos = index.lookup(i64::MAX).position;
        let mut last: Option<BatchHeader> = None;
        let mut header = [0u8; HEADER_LEN];
        while pos < file_size {
            if file.read_exact_at(&mut header, pos).is_err() {
                return Ok(None);
            }
            let Ok(h) = batch::parse_header(&header) else {
                return Ok(None);
            };
            pos += h.size as u64;
            last = Some(h);
        }
        let Some(last) = last else { return Ok(None) };
        if pos != file_size {
            return Ok(None);
        }
        let max_timestamp = time_index
            .max_timestamp()
            .unwrap_or(-1)
            .max(last.max_timestamp);
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            base,
            file: SegmentFile::opened(log_path(dir, base), file.try_clone()?),
            size: file_size,
            next_offset: last.next_offset(),
            max_timestamp,
            created_ms: 0,
            index,
            time_index,
            bytes_since_index: 0,
            index_interval,
        }))
    }

    /// Appends already validated and offset-assigned batches.
    pub(crate) fn append(&mut self, bytes: &[u8], headers: &[(usize, BatchHeader)]) -> Result<()> {
        let file = self.file.get()?;
        if let Err(e) = file.write_all_at(bytes, self.size) {
            // Leave no partial batch behind: the next append must start clean.
            let _ = file.set_len(self.size);
            return Err(e.into());
        }
        for &(at, h) in headers {
            let position = self.size + at as u64;
            self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
            if self.bytes_since_index >= self.index_interval {
                self.index.push(h.base_offset, position);
                self.time_index.push(self.max_timestamp, h.base_offset);
                self.bytes_since_index = 0;
            }
            self.bytes_since_index += h.size as u64;
            self.next_offset = h.next_offset();
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Writes the indexes beside the log and fsyncs everything: after this the
    /// segment is closed and opens without a scan.
    pub(crate) fn close(&mut self) -> Result<()> {
        // The final time index entry carries the segment's max timestamp so
        // retention and time lookups see it without a scan.
        if self.max_timestamp >= 0 {
            let last = self.index.lookup(i64::MAX).offset;
            self.time_index.push(self.max_timestamp, last);
        }
        self.file.get()?.sync_all()?;
        write_synced(&index_path(&self.dir, self.base), &self.index.encode())?;
        write_synced(
            &time_index_path(&self.dir, self.base),
            &self.time_index.encode(),
        )?;
        Ok(())
    }

    /// Deletes the index files (they no longer describe a truncated file).
    pub(crate) fn delete_indexes(&self) -> Result<()> {
        remove_files(&[
            index_path(&self.dir, self.base),
            time_index_path(&self.dir, self.base),
        ])
    }

    /// Deletes the segment's files.
    pub(crate) fn delete(&self) -> Result<()> {
        remove_files(&[
            log_path(&self.dir, self.base),
            index_path(&self.dir, self.base),
            time_index_path(&self.dir, self.base),
        ])
    }

    /// Position of the batch containing `offset`, scanning headers forward
    /// from the index entry below it. `None` if no batch holds it.
    pub(crate) fn find_position(
        file: &File,
        index_entry_pos: u64,
        size: u64,
        offset: i64,
    ) -> io::Result<Option<(u64, BatchHeader)>> {
        let mut pos = index_entry_pos;
        let mut header = [0u8; HEADER_LEN];
        while pos + HEADER_LEN as u64 <= size {
            file.read_exact_at(&mut header, pos)?;
            let h = batch::parse_header(&header)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.size as u64;
        }
        Ok(None)
    }
}

/// Scans a segment file from the start, validating every batch, and rebuilds
/// its indexes. Stops at the first torn, corrupt or out-of-order batch.
pub(crate) fn scan(file: &File, base: i64, index_interval: u64) -> Result<Scan> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut out = Scan {
        valid_len: 0,
        next_offset: base,
        max_timestamp: -1,
        index: OffsetIndex::new(base),
        time_index: TimeIndex::new(base),
        stopped: None,
    };
    let mut since_index = 0u64;
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; LOG_OVERHEAD];
        match read_full(&mut reader, &mut head)? {
            0 => break,
            n if n < LOG_OVERHEAD => {
                out.stopped = Some(format!("torn batch header ({n} bytes)"));
                break;
            }
            _ => {}
        }
        let Some(size) = batch::batch_size(&head) else {
            out.stopped = Some("invalid batch length".into());
            break;
        };
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(size, 0);
        let got = read_full(&mut reader, &mut buf[LOG_OVERHEAD..])?;
        if got < size - LOG_OVERHEAD {
            out.stopped = Some(format!(
                "torn batch ({} of {size} bytes)",
                got + LOG_OVERHEAD
            ));
            break;
        }
        let h = match batch::validate_stored(&buf) {
            Ok(h) => h,
            Err(e) => {
                out.stopped = Some(e.to_string());
                break;
            }
        };
        if h.base_offset < out.next_offset {
            out.stopped = Some(format!(
                "batch offset {} goes back from {}",
                h.base_offset, out.next_offset
            ));
            break;
        }
        out.max_timestamp = out.max_timestamp.max(h.max_timestamp);
        if since_index >= index_interval {
            out.index.push(h.base_offset, out.valid_len);
            out.time_index.push(out.max_timestamp, h.base_offset);
            since_index = 0;
        }
        since_index += size as u64;
        out.valid_len += size as u64;
        out.next_offset = h.next_offset();
    }
    Ok(out)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes a file by temp-then-rename with fsyncs, so it is either old or new.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Fsyncs a directory so entries created or renamed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
