//! Write-behind of a file being written: the kernel is asked to start writing each finished
//! window to disk, with at most two windows in the disk's queue, so an app's commit fsync
//! never queues behind a gigabyte of backup. Used by the file copy (`filecopy.rs`) and by the
//! compressor's output (`compress.rs`).

use std::fs::File;
use std::os::fd::AsRawFd;

/// Write-behind window: each is handed to the kernel for writing when full, by the
/// [`Flusher`], with at most two in flight. Measured under an app committing 200 times a
/// second (benches/run.sh --only load): 32 MiB windows unbounded made its slowest commit
/// 100-134 ms, 8 MiB two in flight 44 ms, 4 MiB two in flight 15 ms (alone: 1.5 ms).
pub(super) const WINDOW: u64 = 4 << 20;

/// Write-behind on a thread of its own: each window is handed to the kernel for
/// writing when full, and the thread waits for the window before the last to be written
/// first, so at most two windows are in the disk's queue. An app's commit fsync (and the
/// device cache flush it asks for) then never queues behind a gigabyte of copy; the copy
/// itself never waits (it runs ahead in the page cache) and the final fsync finds little
/// left. The thread's I/O is in the idle class where the scheduler knows classes; the
/// copy's reads keep the job's priority (the snapshot is held while they run). Advisory:
/// errors show at the fsync.
pub(super) struct Flusher {
    ranges: Option<std::sync::mpsc::Sender<(u64, u64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    pub(super) fn start(out: &File) -> Flusher {
        let Ok(file) = out.try_clone() else {
            return Flusher {
                ranges: None,
                thread: None,
            };
        };
        let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
        let thread = std::thread::Builder::new()
            .name("litekeeper-flush".into())
            .spawn(move || {
                if let Err(e) = crate::remote::idle_io_this_thread() {
                    tracing::debug!("write-behind stays in the job's I/O class ({e})");
                }
                // At most two windows in flight: each waits for the one before the last.
                let mut behind: Option<(u64, u64)> = None;
                let mut last: Option<(u64, u64)> = None;
                for (start, len) in rx {
                    if let Some((s, l)) = behind {
                        sync_file_range(&file, s, l, libc::SYNC_FILE_RANGE_WAIT_AFTER);
                    }
                    sync_file_range(&file, start, len, libc::SYNC_FILE_RANGE_WRITE);
                    behind = last;
                    last = Some((start, len));
                }
            })
            .ok();
        Flusher {
            ranges: thread.as_ref().map(|_| tx),
            thread,
        }
    }

    /// Start writing `[start, start+len)` to disk (without waiting for it).
    pub(super) fn write_behind(&self, start: u64, len: u64) {
        if let Some(tx) = &self.ranges {
            let _ = tx.send((start, len));
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.ranges = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `sync_file_range(2)` of `[start, start+len)` with `flags`: a hint (start the write-back,
/// or wait for it), so its failure only loses the hint; errors show at the fsync. Used by
/// the [`Flusher`].
fn sync_file_range(f: &File, start: u64, len: u64, flags: libc::c_uint) {
    let (Ok(start), Ok(len)) = (libc::off64_t::try_from(start), libc::off64_t::try_from(len))
    else {
        return;
    };
    // SAFETY: sync_file_range(2) only reads its integer arguments; the descriptor is open
    // for `f`'s lifetime.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), start, len, flags);
    }
}
