//! Pinning the calling thread to one CPU.

/// Pins the calling thread to `cpu` (best effort: a failure, or a CPU number past what
/// `cpu_set_t` holds, is warned about and only costs the pinning).
pub fn pin_to(cpu: usize) {
    if cpu >= libc::CPU_SETSIZE as usize {
        log::warn!(
            "pinning to CPU {cpu}: past the {} CPUs a CPU set holds",
            libc::CPU_SETSIZE
        );
        return;
    }
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, CPU_SET writes inside it
    // (cpu < CPU_SETSIZE, checked above), and sched_setaffinity only reads the set of the
    // given size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            log::warn!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
}
