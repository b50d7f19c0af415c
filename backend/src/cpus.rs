//! CPU affinity of threads (`--pmd-cpus`): the CPUs this process may use
//! (sched_getaffinity, as taskset reads them), and pinning a thread to one of them
//! (pthread_setaffinity_np).

use std::io;

/// Largest CPU number a `cpu_set_t` holds, plus one.
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// The CPUs the calling thread may run on (at start-up: the process's, e.g. `taskset`'s).
pub fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`, which
    // we own; pid 0 is the calling thread.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set we own, for c < CPU_SETSIZE.
    Ok((0..MAX_CPUS)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins thread `t` to `cpu` (done by the caller, so that the thread runs pinned from the
/// moment this returns).
///
/// ```
/// use std::sync::mpsc;
/// let cpus = pvnet_backend::cpus::allowed().expect("affinity");
/// let (go, wait) = mpsc::channel::<()>();
/// let t = std::thread::spawn(move || {
///     wait.recv().expect("go");
///     pvnet_backend::cpus::allowed().expect("affinity")
/// });
/// pvnet_backend::cpus::pin(&t, cpus[0]).expect("pin");
/// go.send(()).expect("go");
/// assert_eq!(t.join().expect("thread"), [cpus[0]]);
/// ```
pub fn pin<T>(t: &std::thread::JoinHandle<T>, cpu: usize) -> io::Result<()> {
    use std::os::unix::thread::JoinHandleExt;
    if cpu >= MAX_CPUS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond {MAX_CPUS}"),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes bit `cpu` < CPU_SETSIZE (checked above) of the set we own.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the pthread_t of a thread not joined yet (we borrow its handle), and a set we
    // own of the size passed.
    let r = unsafe {
        libc::pthread_setaffinity_np(
            t.as_pthread_t(),
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        )
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}
