//! What this process holds right now, from `/proc/self`: open file descriptors, threads,
//! memory mappings and resident memory; for tests that check nothing leaks across
//! connections.

use std::time::{Duration, Instant};

/// Open file descriptors, threads, memory mappings and resident set size (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: usize,
    /// Lines of `/proc/self/maps`.
    pub maps: usize,
    /// Resident set size in bytes.
    pub rss: u64,
}

fn entries(dir: &str) -> usize {
    // The directory handle of read_dir("/proc/self/fd") is itself one entry: not counted.
    let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    if dir.ends_with("/fd") {
        n.saturating_sub(1)
    } else {
        n
    }
}

fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// The current usage.
pub fn usage() -> Usage {
    Usage {
        fds: entries("/proc/self/fd"),
        threads: entries("/proc/self/task"),
        maps: std::fs::read_to_string("/proc/self/maps")
            .map(|m| m.lines().count())
            .unwrap_or(0),
        rss: rss(),
    }
}

/// Open file descriptors with what they point to, for failure messages.
pub fn fd_list() -> String {
    let mut out = String::new();
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        for e in d.flatten() {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push_str(&format!("{}->{target} ", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// The usage once it has stopped changing (fds, threads and mappings the same for 100 ms;
/// at most 10 s). An idle port prepares the device for its next frontend (worker threads,
/// eventfds) right after a disconnect: a measurement taken in the middle of that would be
/// neither the busy nor the idle figure.
pub fn quiet() -> Usage {
    let t0 = Instant::now();
    let key = |u: &Usage| (u.fds, u.threads, u.maps);
    let mut last = usage();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let u = usage();
        if key(&u) != key(&last) {
            since = Instant::now();
        }
        last = u;
        if since.elapsed() >= Duration::from_millis(100) || t0.elapsed() >= Duration::from_secs(10)
        {
            return last;
        }
    }
}
