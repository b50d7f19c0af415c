//! Guest memory that a frontend can pull away: vetting memory files, and containing the
//! `SIGBUS` of a late truncation to the port that caused it.
//!
//! A vhost-user frontend shares guest memory as file descriptors (memfd, hugetlbfs, tmpfs
//! files) that pvnet maps `MAP_SHARED`. Touching a mapped page that lies beyond the end of
//! its file raises `SIGBUS`, whose default action kills the process — every port with it. A
//! frontend can cause that in two ways, and pvnet answers both:
//!
//! * **A region larger than its file** (say a 4 KiB memfd declared as 1 MiB).
//!   [`check_region`] runs for every region of SET_MEM_TABLE / ADD_MEM_REG after it is mapped
//!   and before anything reads it (vhost-user-backend's `check_memory_region` hook, a pvnet
//!   patch): `fstat` must show a regular file covering `mmap_offset + size`, or the request
//!   fails and the frontend gets an error reply. It then adds `F_SEAL_SHRINK` where the
//!   file takes seals (a memfd created with `MFD_ALLOW_SEALING`; QEMU's memfd backend seals
//!   it itself), so that the file can no longer shrink at all, and logs when it cannot.
//! * **A truncation after the table was accepted** (the file was not sealable). Every
//!   accepted region is registered here with its owning port ([`MemGuard`]) before the
//!   vrings can see it. A process-wide `SIGBUS` handler (`signal::install`) looks the faulting
//!   address up; inside a registered range it maps an anonymous zero page over the faulting
//!   page (`MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS`), so the interrupted access completes
//!   harmlessly — reads see zeros, writes go nowhere — marks the owning port poisoned, wakes
//!   the reaper thread and returns. The reaper calls the port's fault callback (the
//!   connection loop's shutdown), so the frontend is disconnected, its grants revoked and
//!   the port's counters show why; other ports keep switching. A fault outside every
//!   registered range, or not caused by a missing page (`si_code != BUS_ADRERR`, e.g. a
//!   hardware memory error), restores the default action and returns, so the access faults
//!   again and the process dies as it would have without pvnet's handler.
//!
//! ## The registry and its protocol
//! A fixed table of slots in static memory (`registry.rs`): each holds a range, its page
//! granularity (4 KiB, or the huge page size on hugetlbfs) and its owner index, published
//! with a per-slot sequence counter (odd while a writer changes the slot). The signal handler
//! only reads slots and retries a slot whose counter moved; it takes no lock, allocates
//! nothing and calls only `mmap`, `write` and `sigaction`, which are system calls. Owners
//! live in a second static table, so the handler never follows a pointer that could dangle.
//!
//! Writers (the connection threads) are serialised by a mutex the handler never touches.
//! A slot is freed when its mapping is gone: each registration keeps a `Weak` to the
//! vm-memory mapping and every later registration sweeps the dead ones; a new mapping that
//! overlaps a registered range proves that range dead (the kernel reused the addresses); and
//! a port's connection loop releases everything its connection registered once the
//! connection's memory is dropped ([`MemGuard::release_all`]).
//!
//! A registered range whose mapping was unmapped but not yet swept is harmless: only a new
//! *file* mapping at the same addresses could fault there, and every file mapping pvnet
//! makes after start-up is guest memory, which is registered (replacing the stale entry)
//! before use.
//!
//! ## What the data path checks
//! Nothing is required for safety: a poisoned port's memory reads as zeros. To stop early,
//! the data path may test [`MemGuard::poisoned`] (one relaxed load) once per burst, for its
//! own port and for a destination port before delivering into it.

mod file;
mod registry;
mod signal;

pub use file::{check_region, RegionFile};

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryRegion, GuestRegionMmap};

/// Errors vetting or registering a guest memory region.
#[derive(Debug, thiserror::Error)]
pub enum MemGuardError {
    #[error("memory region backed by a non-regular file (mode {0:#o}); refused")]
    NotRegularFile(u32),
    #[error(
        "memory region needs bytes {offset:#x}..{end:#x} of its file, but the file has only \
         {size:#x} bytes; refused"
    )]
    FileTooSmall { offset: u64, end: u64, size: u64 },
    #[error("memory region without a backing file; refused")]
    NoFile,
    #[error("cannot inspect the memory region's file: {0}")]
    Io(#[from] std::io::Error),
    #[error("too many guest memory regions registered in this process ({0}); refused")]
    RegistryFull(usize),
    #[error("too many ports in this process ({0}); cannot guard their memory")]
    NoOwner(usize),
}

/// Most ports (owners) at once in one process.
pub const MAX_OWNERS: usize = 1024;

/// One owner's state, in static memory so the signal handler can reach it at any time.
struct OwnerSlot {
    used: AtomicBool,
    poisoned: AtomicBool,
    /// The reaper has called the fault callback for the current poisoning.
    reported: AtomicBool,
    faults: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_OWNER: OwnerSlot = OwnerSlot {
    used: AtomicBool::new(false),
    poisoned: AtomicBool::new(false),
    reported: AtomicBool::new(false),
    faults: AtomicU64::new(0),
};

static OWNERS: [OwnerSlot; MAX_OWNERS] = [FREE_OWNER; MAX_OWNERS];

type Callback = Box<dyn Fn() + Send + Sync>;

/// Fault callbacks by owner index (never touched by the signal handler).
static CALLBACKS: Mutex<Vec<Option<Arc<Callback>>>> = Mutex::new(Vec::new());

fn callbacks() -> std::sync::MutexGuard<'static, Vec<Option<Arc<Callback>>>> {
    CALLBACKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The memory guard of one port: registers the port's guest memory and tells whether a
/// fault poisoned it. Installs the process's `SIGBUS` handler on first use.
#[derive(Debug)]
pub struct MemGuard {
    id: Option<usize>,
    /// Connections ended because a fault poisoned the port.
    disconnects: AtomicU64,
}

impl MemGuard {
    /// A guard with a fresh owner slot. Without a free slot (more than [`MAX_OWNERS`]
    /// ports alive in the process), every region registration fails, so the port refuses
    /// memory tables instead of running unguarded.
    pub fn new() -> MemGuard {
        signal::install();
        let id = OWNERS.iter().position(|o| {
            o.used
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        });
        if let Some(i) = id {
            let o = &OWNERS[i];
            o.poisoned.store(false, Ordering::Release);
            o.reported.store(false, Ordering::Release);
            o.faults.store(0, Ordering::Release);
        } else {
            log::error!("memguard: more than {MAX_OWNERS} ports; guest memory cannot be guarded");
        }
        MemGuard {
            id,
            disconnects: AtomicU64::new(0),
        }
    }

    /// A fault hit this port's guest memory since the last [`Self::clear`]. One relaxed load:
    /// cheap enough for every burst.
    #[inline]
    pub fn poisoned(&self) -> bool {
        self.id
            .is_some_and(|i| OWNERS[i].poisoned.load(Ordering::Relaxed))
    }

    /// Faults contained in this port's memory since it was created.
    pub fn faults(&self) -> u64 {
        self.id
            .map_or(0, |i| OWNERS[i].faults.load(Ordering::Relaxed))
    }

    /// Counts one connection ended because of a fault (the connection loop calls this).
    pub fn note_disconnect(&self) {
        self.disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections ended because a fault poisoned the port.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }

    /// Forgets the poisoning (a new connection starts with fresh memory).
    pub fn clear(&self) {
        if let Some(i) = self.id {
            OWNERS[i].poisoned.store(false, Ordering::Release);
            OWNERS[i].reported.store(false, Ordering::Release);
        }
    }

    /// Sets what the reaper thread calls (outside the signal handler, once per poisoning)
    /// when a fault hits this port's memory: typically, disconnect the frontend.
    pub fn on_fault(&self, f: impl Fn() + Send + Sync + 'static) {
        let Some(i) = self.id else { return };
        let mut cb = callbacks();
        if cb.len() <= i {
            cb.resize_with(i + 1, || None);
        }
        cb[i] = Some(Arc::new(Box::new(f)));
    }

    /// Registers `[start, start + len)` (a mapping of this port's guest memory, alive as long
    /// as `life` can be upgraded) with page granularity `gran`.
    pub fn register(
        &self,
        start: usize,
        len: usize,
        gran: usize,
        life: Weak<dyn Any + Send + Sync>,
    ) -> Result<(), MemGuardError> {
        let id = self.id.ok_or(MemGuardError::NoOwner(MAX_OWNERS))?;
        registry::register(id, start, len, gran, life)
    }

    /// Vets one region of this port's guest memory ([`check_region`]: file size, seal) and
    /// registers its mapping; called by the device's `check_memory_region` hook before
    /// anything touches the region.
    pub fn guard_region<B>(&self, region: &GuestRegionMmap<B>) -> Result<RegionFile, MemGuardError>
    where
        B: Bitmap + Send + Sync + 'static,
    {
        let fo = region.file_offset().ok_or(MemGuardError::NoFile)?;
        let f = check_region(fo.file(), fo.start(), region.len())?;
        let map: Arc<dyn Any + Send + Sync> = region.get_mmap();
        self.register(
            region.as_ptr() as usize,
            region.size(),
            f.gran,
            Arc::downgrade(&map),
        )?;
        Ok(f)
    }

    /// Unregisters every range of this port (its connection's memory is gone).
    pub fn release_all(&self) {
        if let Some(id) = self.id {
            registry::release_owner(id);
        }
    }
}

impl Default for MemGuard {
    fn default() -> Self {
        MemGuard::new()
    }
}

impl Drop for MemGuard {
    fn drop(&mut self) {
        if let Some(i) = self.id {
            registry::release_owner(i);
            if let Some(c) = callbacks().get_mut(i) {
                *c = None;
            }
            OWNERS[i].used.store(false, Ordering::Release);
        }
    }
}

/// Called by the signal handler (async-signal-safe: atomics only).
fn poison(owner: usize) {
    if let Some(o) = OWNERS.get(owner) {
        o.faults.fetch_add(1, Ordering::Relaxed);
        o.poisoned.store(true, Ordering::Release);
    }
}

/// The reaper: runs the fault callbacks of newly poisoned owners (outside the handler).
fn reap() {
    for (i, o) in OWNERS.iter().enumerate() {
        if !o.used.load(Ordering::Acquire) || !o.poisoned.load(Ordering::Acquire) {
            continue;
        }
        if o.reported.swap(true, Ordering::AcqRel) {
            continue;
        }
        log::warn!(
            "memguard: a frontend's memory file shrank under its mapping ({} faults so far); \
             disconnecting it",
            o.faults.load(Ordering::Relaxed)
        );
        let cb = callbacks().get(i).cloned().flatten();
        if let Some(cb) = cb {
            cb();
        }
    }
}

#[cfg(test)]
mod tests;
