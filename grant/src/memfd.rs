//! Guest memory backed by `memfd`, the way a vhost-user frontend shares it (QEMU's
//! `memory-backend-memfd,share=on`): for tests, benchmarks and in-process guests.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use vm_memory::mmap::NewBitmap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// A new anonymous memory file of `size` bytes.
pub fn memfd(name: &CStr, size: u64) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no other memory
    // effects.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Guest memory with one memfd-backed, shared mapping per `(guest address, size)` range
/// (sorted, non-overlapping), each in its own file.
pub fn guest_memory<B: NewBitmap>(ranges: &[(u64, usize)]) -> io::Result<GuestMemoryMmap<B>> {
    let mut regions = Vec::with_capacity(ranges.len());
    for &(gpa, size) in ranges {
        let file = memfd(c"pvnet-guest", size as u64)?;
        regions.push((GuestAddress(gpa), size, Some(FileOffset::new(file, 0))));
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(io::Error::other)
}

/// A second mapping of the same files as `mem`, at the same guest addresses: what a
/// repeated SET_MEM_TABLE produces (new mappings, same memory).
pub fn remap<B: NewBitmap>(mem: &GuestMemoryMmap<B>) -> io::Result<GuestMemoryMmap<B>> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let mut regions = Vec::with_capacity(mem.num_regions());
    for r in mem.iter() {
        let fo = r
            .file_offset()
            .ok_or_else(|| io::Error::other("region has no backing file"))?;
        regions.push((r.start_addr(), r.len() as usize, Some(fo.clone())));
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(io::Error::other)
}
