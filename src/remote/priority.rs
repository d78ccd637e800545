//! Uploads yield to the application: the threads that compress, encrypt, hash, send and read
//! back a copy run at a lower CPU priority (nice) and in the lowest best-effort I/O class than
//! the process, whoever started it (the daemon, `backups push`, a timer's `run`).
//!
//! Linux keeps both per thread: `setpriority(PRIO_PROCESS, tid)` and `ioprio_set(
//! IOPRIO_WHO_PROCESS, tid)` change only the thread named. An unprivileged thread cannot take
//! a priority back, so only threads that end with the upload are lowered (the upload's own
//! thread, the store's runtime threads), never a job's pooled thread. A priority already lower
//! (a unit's `Nice=19` or `IOSchedulingClass=idle`) is kept: this only ever lowers. Where the
//! calls are refused (a seccomp filter without them) the upload runs as it is, and says so at
//! debug level: the unit's own priority or cgroup weights then decide.

use std::io;

/// The nice value upload threads run at, at least (the timer units' `Nice=`).
pub(super) const UPLOAD_NICE: i32 = 10;

/// `ioprio_set`/`ioprio_get` (linux/ioprio.h).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const IOPRIO_CLASS_BE: libc::c_int = 2;
const IOPRIO_CLASS_IDLE: libc::c_int = 3;
/// The lowest level of the best-effort class.
const BE_LOWEST: libc::c_int = 7;

/// A thread's priorities: its nice value and its I/O class and level (class 0: none set,
/// the kernel derives best-effort `(nice + 20) / 5` from the nice value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Priority {
    pub nice: i32,
    pub io_class: i32,
    pub io_level: i32,
}

fn tid() -> libc::id_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as libc::id_t }
}

/// The calling thread's priorities.
pub(crate) fn this_thread() -> io::Result<Priority> {
    let tid = tid();
    // getpriority returns -1 for nice -1 too: errno tells them apart.
    // SAFETY: plain syscalls on our own thread id; errno is thread-local.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    };
    if nice == -1 && io::Error::last_os_error().raw_os_error() != Some(0) {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let io = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if io < 0 {
        return Err(io::Error::last_os_error());
    }
    let io = io as libc::c_int;
    Ok(Priority {
        nice,
        io_class: io >> IOPRIO_CLASS_SHIFT,
        io_level: io & ((1 << IOPRIO_CLASS_SHIFT) - 1),
    })
}

/// Lower the calling thread to at least `nice` and to the lowest best-effort I/O level (the
/// idle class stays idle); never raises either. Returns the thread's priorities after.
pub(crate) fn lower_this_thread(nice: i32) -> io::Result<Priority> {
    let now = this_thread()?;
    let tid = tid();
    if now.nice < nice {
        // SAFETY: a syscall on our own thread id.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SCHED_IDLE: the app's threads preempt it at once on wakeup, where nice 10 alone still
    // lets it finish a slice first (measured: the app writer's p99 commit doubled during a
    // push at nice 10). Allowed without privilege; a refusal leaves the nice value.
    // SAFETY: a syscall on our own thread id with a valid, zeroed parameter.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_IDLE, &param);
    }
    if now.io_class != IOPRIO_CLASS_IDLE {
        set_io_this_thread(IOPRIO_CLASS_BE, BE_LOWEST)?;
    }
    this_thread()
}

/// Put the calling thread's I/O in the idle class: the block layer's schedulers that know
/// classes (mq-deadline, BFQ) then serve it only while no best-effort I/O waits, so the
/// app's commit fsync goes first. For a thread that only does such I/O and then ends.
pub(crate) fn idle_io_this_thread() -> io::Result<()> {
    set_io_this_thread(IOPRIO_CLASS_IDLE, 0)
}

/// `ioprio_set` of the calling thread to `class` at `level`.
fn set_io_this_thread(class: libc::c_int, level: libc::c_int) -> io::Result<()> {
    let prio = (class << IOPRIO_CLASS_SHIFT) | level;
    // SAFETY: a syscall on our own thread id; no memory is passed.
    if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid(), prio) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`lower_this_thread`] to [`UPLOAD_NICE`] for a thread that does upload work; a refusal is
/// logged (debug) and the work goes on.
pub(super) fn background() {
    if let Err(e) = lower_this_thread(UPLOAD_NICE) {
        tracing::debug!("cannot lower the upload thread's priority ({e}); it runs as the process");
    }
}

/// Run `f` on a new thread lowered by [`background`], and wait for it: the caller's thread
/// (a job's pooled thread, the command's main thread) keeps its priority.
pub(super) fn in_background<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("litekeeper-upload".into())
            .spawn_scoped(s, || {
                background();
                f()
            })
            .expect("spawning the upload thread")
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread_and_never_raises() {
        let before = this_thread().unwrap();
        let (inside, again) = std::thread::scope(|s| {
            s.spawn(|| {
                let inside = lower_this_thread(UPLOAD_NICE).unwrap();
                // A second call with a smaller value changes nothing.
                let again = lower_this_thread(UPLOAD_NICE - 5).unwrap();
                (inside, again)
            })
            .join()
            .unwrap()
        });
        assert_eq!(inside.nice, before.nice.max(UPLOAD_NICE));
        if before.io_class != IOPRIO_CLASS_IDLE {
            assert_eq!(
                (inside.io_class, inside.io_level),
                (IOPRIO_CLASS_BE, BE_LOWEST)
            );
        }
        assert_eq!(again, inside);
        // The test's own thread is as it was.
        assert_eq!(this_thread().unwrap(), before);
    }

    #[test]
    fn in_background_runs_lowered_and_returns_the_value() {
        let before = this_thread().unwrap();
        let (seen, policy) = in_background(|| {
            // SAFETY: reads the calling thread's policy.
            (this_thread().unwrap(), unsafe {
                libc::sched_getscheduler(0)
            })
        });
        assert_eq!(policy, libc::SCHED_IDLE);
        assert_eq!(seen.nice, before.nice.max(UPLOAD_NICE));
        assert_eq!(this_thread().unwrap(), before);
    }
}
