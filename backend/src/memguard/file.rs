//! Vetting the file behind a guest memory region before anything touches the mapping.

use super::MemGuardError;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// `statfs.f_type` of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// What [`check_region`] learnt about a region's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionFile {
    /// Size of the file when checked.
    pub size: u64,
    /// The file can no longer shrink (`F_SEAL_SHRINK` present or added).
    pub sealed: bool,
    /// Page granularity of the mapping (huge page size on hugetlbfs).
    pub gran: usize,
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

/// Page granularity of mappings of `file`: the huge page size on hugetlbfs.
fn granularity(file: &File) -> usize {
    // SAFETY: statfs is plain old data; all zeroes is valid for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs on a descriptor we own, into a struct we own.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    if r == 0 && st.f_type as i64 == HUGETLBFS_MAGIC {
        usize::try_from(st.f_bsize).unwrap_or(0).max(page_size())
    } else {
        page_size()
    }
}

/// Adds `F_SEAL_SHRINK` when the file takes seals; whether the file is now shrink-sealed.
fn seal_shrink(file: &File) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(F_GET_SEALS) on a descriptor we own; no memory is involved.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        log::info!(
            "memguard: memory file cannot be sealed ({}); a truncation will be contained",
            std::io::Error::last_os_error()
        );
        return false;
    }
    if seals & libc::F_SEAL_SHRINK != 0 {
        return true;
    }
    // SAFETY: fcntl(F_ADD_SEALS) on a descriptor we own; no memory is involved.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } == 0 {
        return true;
    }
    log::info!(
        "memguard: frontend did not allow sealing its memory file ({}); a truncation will be \
         contained",
        std::io::Error::last_os_error()
    );
    false
}

/// Checks that `file` is a regular file holding at least `offset + len` bytes, then seals it
/// against shrinking where possible (and checks the size again, in case it shrank between).
pub fn check_region(file: &File, offset: u64, len: u64) -> Result<RegionFile, MemGuardError> {
    let end = offset.checked_add(len).ok_or(MemGuardError::FileTooSmall {
        offset,
        end: u64::MAX,
        size: 0,
    })?;
    let size_ok = |file: &File| -> Result<u64, MemGuardError> {
        let m = file.metadata()?;
        if !m.file_type().is_file() {
            return Err(MemGuardError::NotRegularFile(m.mode()));
        }
        if m.size() < end {
            return Err(MemGuardError::FileTooSmall {
                offset,
                end,
                size: m.size(),
            });
        }
        Ok(m.size())
    };
    size_ok(file)?;
    let sealed = seal_shrink(file);
    let size = size_ok(file)?;
    Ok(RegionFile {
        size,
        sealed,
        gran: granularity(file),
    })
}
