//! The machine's RAM: one shared memory file mapped `MAP_SHARED | MAP_NORESERVE`.
//!
//! Physical address = file offset. Only touched pages cost memory, so a 1 TiB machine costs
//! what its workload writes. The first [`RAM_BASE`] bytes (1 MiB) are not RAM: address 0 is
//! never valid, and the boot-parameter block lives there ([`Ram::firmware_read`]).
//!
//! The file descriptor survives `exec()` (the simulated kexec): [`Ram::inherit_fd`] clears
//! `FD_CLOEXEC` and the next kernel process adopts it with [`Ram::from_inherited_fd`].
//!
//! This module holds every `unsafe` block of the crate. The mapping is private to one
//! `Ram` value, which is `Send` but not `Sync`: all accesses go through `&self` copies on one
//! thread at a time, so no two Rust accesses to the mapping can race.

use std::ffi::c_void;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::ptr::NonNull;

use kho_core::{Access, MemError, PAGE_SIZE, PhysAddr, PhysRange, PhysRead, PhysWrite};
use rustix::fs::{MemfdFlags, SeekFrom};
use rustix::io::{Errno, FdFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::SimError;

/// The first byte of RAM: `[0, RAM_BASE)` is "firmware" memory, never handed to the kernel.
pub const RAM_BASE: u64 = 1 << 20;

/// Where the backing file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backing {
    /// An anonymous `memfd_create` file.
    Memfd,
    /// An unlinked file in `/dev/shm` or the temp dir (when memfd is unavailable).
    File,
}

/// Simulated physical memory.
#[derive(Debug)]
pub struct Ram {
    fd: OwnedFd,
    base: NonNull<u8>,
    size: u64,
    range: PhysRange,
    backing: Backing,
}

// SAFETY: the mapping is owned by this value and unmapped in `Drop`; moving the owner to
// another thread moves the only handle to it. `Ram` is deliberately not `Sync`.
unsafe impl Send for Ram {}

impl Ram {
    /// Creates a zeroed RAM file of `size` bytes (a multiple of the page size, above
    /// [`RAM_BASE`]) and maps it.
    ///
    /// # Errors
    /// [`SimError::Ram`] if the size is unusable or the file cannot be created or mapped.
    pub fn create(size: u64) -> Result<Self, SimError> {
        if size <= RAM_BASE || !size.is_multiple_of(PAGE_SIZE) || usize::try_from(size).is_err() {
            return Err(SimError::Ram(format!(
                "RAM size {size:#x} must be a multiple of 4 KiB above 1 MiB and fit the address space"
            )));
        }
        let (fd, backing) = match rustix::fs::memfd_create("kho-ram", MemfdFlags::CLOEXEC) {
            Ok(fd) => (fd, Backing::Memfd),
            Err(_) => (unlinked_file()?, Backing::File),
        };
        rustix::fs::ftruncate(&fd, size).map_err(|e| SimError::Ram(format!("cannot size the RAM file: {e}")))?;
        Self::map(fd, size, backing)
    }

    /// Creates a zeroed RAM file of `size` bytes at `path` (kept after the process ends, so a
    /// crashed kernel's RAM can be booted again with [`Ram::open`]) and maps it.
    ///
    /// # Errors
    /// [`SimError::Ram`] if the size is unusable or the file cannot be created or mapped.
    pub fn create_at(path: &std::path::Path, size: u64) -> Result<Self, SimError> {
        if size <= RAM_BASE || !size.is_multiple_of(PAGE_SIZE) || usize::try_from(size).is_err() {
            return Err(SimError::Ram(format!(
                "RAM size {size:#x} must be a multiple of 4 KiB above 1 MiB and fit the address space"
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| SimError::Ram(format!("cannot create the RAM file {}: {e}", path.display())))?;
        let fd = OwnedFd::from(file);
        rustix::fs::ftruncate(&fd, size).map_err(|e| SimError::Ram(format!("cannot size the RAM file: {e}")))?;
        Self::map(fd, size, Backing::File)
    }

    /// Maps an existing RAM file (one made by [`Ram::create_at`]); the size is the file's.
    ///
    /// # Errors
    /// [`SimError::Ram`] if the file is missing or not a usable RAM size.
    pub fn open(path: &std::path::Path) -> Result<Self, SimError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| SimError::Ram(format!("cannot open the RAM file {}: {e}", path.display())))?;
        let fd = OwnedFd::from(file);
        let st = rustix::fs::fstat(&fd).map_err(|e| SimError::Ram(format!("cannot stat the RAM file: {e}")))?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size <= RAM_BASE || !size.is_multiple_of(PAGE_SIZE) {
            return Err(SimError::Ram(format!("{} is {size} bytes, not a usable RAM size", path.display())));
        }
        Self::map(fd, size, Backing::File)
    }

    /// Adopts a RAM file descriptor inherited across `exec()`; the RAM size is the file's.
    ///
    /// # Errors
    /// [`SimError::Ram`] if `fd` is not an open file of a usable size.
    pub fn from_inherited_fd(fd: RawFd) -> Result<Self, SimError> {
        let fd = adopt_inherited_fd(fd, "RAM")?;
        let st = rustix::fs::fstat(&fd).map_err(|e| SimError::Ram(format!("cannot stat RAM fd: {e}")))?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size <= RAM_BASE || size % PAGE_SIZE != 0 {
            return Err(SimError::Ram(format!("inherited RAM file is {size} bytes, not a usable RAM size")));
        }
        Self::map(fd, size, Backing::Memfd)
    }

    fn map(fd: OwnedFd, size: u64, backing: Backing) -> Result<Self, SimError> {
        let len = usize::try_from(size).map_err(|_| SimError::Ram("RAM size does not fit usize".into()))?;
        let range = PhysRange::from_bounds(PhysAddr::new(RAM_BASE), PhysAddr::new(size))
            .ok_or_else(|| SimError::Ram(format!("RAM size {size:#x} leaves no RAM above 1 MiB")))?;
        // SAFETY: a fresh shared mapping of our own file at an address the kernel picks;
        // it aliases no Rust object. NORESERVE: pages are allocated on first touch.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::NORESERVE,
                &fd,
                0,
            )
        }
        .map_err(|e| SimError::Ram(format!("cannot map {size} bytes of RAM: {e}")))?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| SimError::Ram("mmap returned NULL".into()))?;
        Ok(Self { fd, base, size, range, backing })
    }

    /// Bytes of the RAM file, including the unused first MiB.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The usable RAM range `[RAM_BASE, size)`.
    #[must_use]
    pub fn range(&self) -> PhysRange {
        self.range
    }

    /// How the file is backed.
    #[must_use]
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Makes the descriptor survive `exec()` and returns its number. The descriptor stays
    /// owned by `self`; if the exec fails, the flag is harmless.
    ///
    /// # Errors
    /// [`SimError::Ram`] if `fcntl` fails.
    pub fn inherit_fd(&self) -> Result<RawFd, SimError> {
        rustix::io::fcntl_setfd(&self.fd, FdFlags::empty())
            .map_err(|e| SimError::Ram(format!("cannot clear FD_CLOEXEC on the RAM fd: {e}")))?;
        Ok(self.fd.as_raw_fd())
    }

    /// Bytes of the file actually allocated (pages that were written).
    ///
    /// # Errors
    /// [`SimError::Ram`] if `fstat` fails.
    pub fn allocated_bytes(&self) -> Result<u64, SimError> {
        let st = rustix::fs::fstat(&self.fd).map_err(|e| SimError::Ram(format!("cannot stat RAM: {e}")))?;
        Ok(u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512))
    }

    /// The extents of `[from, to)` that hold data, found with `SEEK_DATA`/`SEEK_HOLE`
    /// (page granular). Everything else is a hole and reads as zero.
    ///
    /// # Errors
    /// [`SimError::Ram`] if `lseek` fails other than with `ENXIO` (no more data).
    pub fn data_extents(&self, from: u64, to: u64) -> Result<Vec<(u64, u64)>, SimError> {
        let to = to.min(self.size);
        let mut out = Vec::new();
        let mut pos = from;
        while pos < to {
            let start = match rustix::fs::seek(&self.fd, SeekFrom::Data(pos)) {
                Ok(s) => s,
                Err(Errno::NXIO) => break,
                Err(e) => return Err(SimError::Ram(format!("SEEK_DATA at {pos:#x}: {e}"))),
            };
            if start >= to {
                break;
            }
            let end = match rustix::fs::seek(&self.fd, SeekFrom::Hole(start)) {
                Ok(e) => e,
                Err(Errno::NXIO) => self.size,
                Err(e) => return Err(SimError::Ram(format!("SEEK_HOLE at {start:#x}: {e}"))),
            };
            out.push((start, end.min(to)));
            pos = end;
        }
        Ok(out)
    }

    /// Reads "firmware" memory: any address of the file, including the first MiB.
    ///
    /// # Errors
    /// [`MemError`] past the end of the file.
    pub fn firmware_read(&self, phys: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let off = self.check(Access::Read, phys, buf.len(), 0)?;
        // SAFETY: `check` proved `[off, off + len)` lies inside the mapping. `buf` is a
        // distinct Rust allocation (the mapping is never handed out as a slice), and `Ram` is
        // not `Sync`, so no other Rust access to these bytes runs concurrently.
        unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Writes "firmware" memory (the boot block).
    ///
    /// # Errors
    /// [`MemError`] past the end of the file.
    pub fn firmware_write(&self, phys: u64, data: &[u8]) -> Result<(), MemError> {
        let off = self.check(Access::Write, phys, data.len(), 0)?;
        // SAFETY: as in `firmware_read`, with the copy going the other way.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), data.len()) };
        Ok(())
    }

    /// Fills `[phys, phys + len)` of RAM with copies of `pattern` (whose length divides
    /// the page size), without allocating a buffer of `len` bytes.
    ///
    /// # Errors
    /// [`MemError`] outside RAM.
    pub fn fill(&self, phys: u64, len: u64, pattern: &[u8; 64]) -> Result<(), MemError> {
        let n = usize::try_from(len).map_err(|_| MemError::write(PhysAddr::new(phys), len))?;
        let off = self.check(Access::Write, phys, n, RAM_BASE)?;
        let mut done = 0;
        while done < n {
            let k = (n - done).min(pattern.len());
            // SAFETY: `check` proved the whole range is inside the mapping; `pattern` is a
            // separate allocation; no concurrent access (not `Sync`).
            unsafe { std::ptr::copy_nonoverlapping(pattern.as_ptr(), self.base.as_ptr().add(off + done), k) };
            done += k;
        }
        Ok(())
    }

    fn check(&self, access: Access, phys: u64, len: usize, low: u64) -> Result<usize, MemError> {
        let err = MemError { access, phys: PhysAddr::new(phys), len: len as u64 };
        let end = phys.checked_add(len as u64).ok_or(err)?;
        if phys < low || end > self.size {
            return Err(err);
        }
        usize::try_from(phys).map_err(|_| err)
    }
}

impl PhysRead for Ram {
    fn read_phys(&self, phys: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let off = self.check(Access::Read, phys.as_u64(), buf.len(), RAM_BASE)?;
        // SAFETY: `check` proved `[off, off + len)` is inside the mapping and inside RAM;
        // `buf` is a separate allocation; no concurrent access (not `Sync`).
        unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

impl PhysWrite for Ram {
    fn write_phys(&self, phys: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let off = self.check(Access::Write, phys.as_u64(), data.len(), RAM_BASE)?;
        // SAFETY: as in `read_phys`, copying the other way.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), data.len()) };
        Ok(())
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        let Ok(len) = usize::try_from(self.size) else { return };
        // SAFETY: `base`/`len` are exactly the mapping created in `map`, and no reference into
        // it can outlive `self` (the mapping is only ever accessed by copies).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast::<c_void>(), len) };
    }
}

impl AsFd for Ram {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Takes ownership of a descriptor the parent process left open across `exec()` (numbered
/// on this process's command line), and sets `FD_CLOEXEC` on it again so it goes no further
/// unless handed on explicitly. `what` names it in errors.
///
/// # Errors
/// [`SimError::Ram`] if `fd` is not an open descriptor.
pub fn adopt_inherited_fd(fd: RawFd, what: &str) -> Result<OwnedFd, SimError> {
    if fd < 0 {
        return Err(SimError::Ram(format!("inherited {what} fd {fd} is not a descriptor number")));
    }
    // Check the descriptor is open before taking ownership of it.
    let flags = rustix::io::fcntl_getfd(
        // SAFETY: the descriptor is only borrowed for this call; `fcntl(F_GETFD)` on a
        // closed or foreign number fails with EBADF and touches nothing.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
    )
    .map_err(|e| SimError::Ram(format!("inherited {what} fd {fd} is not open: {e}")))?;
    // SAFETY: the previous kernel process handed us this descriptor number exclusively (it
    // kept it open across exec for us); nothing else in this process owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&fd, flags | FdFlags::CLOEXEC)
        .map_err(|e| SimError::Ram(format!("cannot set FD_CLOEXEC on the {what} fd: {e}")))?;
    Ok(fd)
}

/// An anonymous file: a `memfd_create` file, or an unlinked file in `/dev/shm` or the temp
/// dir where memfd is unavailable. It has no name in any directory, so nothing is left
/// behind however the process ends (Ctrl-C, SIGTERM, SIGKILL).
///
/// # Errors
/// [`SimError::Ram`] if neither can be created.
pub fn anonymous_file(name: &str) -> Result<OwnedFd, SimError> {
    match rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC) {
        Ok(fd) => Ok(fd),
        Err(_) => unlinked_file(),
    }
}

/// An unlinked file in `/dev/shm` or the temp dir, for systems without memfd.
fn unlinked_file() -> Result<OwnedFd, SimError> {
    let mut dirs = vec![PathBuf::from("/dev/shm")];
    dirs.push(std::env::temp_dir());
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut last = String::new();
    for dir in dirs {
        let path = dir.join(format!("kho-ram-{}-{stamp}", std::process::id()));
        match OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
            Ok(f) => {
                let _ = std::fs::remove_file(&path);
                return Ok(OwnedFd::from(f));
            }
            Err(e) => last = format!("{}: {e}", path.display()),
        }
    }
    Err(SimError::Ram(format!("cannot create a RAM file (no memfd; {last})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's backend contract (kho_core::testing), on the simulator's RAM: the last
    /// pages of RAM, where a read or write one byte past the end must fail.
    #[test]
    fn ram_keeps_the_engine_backend_contract() {
        let size = RAM_BASE + 4 * PAGE_SIZE;
        let ram = Ram::create(size).unwrap();
        let backed = PhysRange::new(PhysAddr::new(size - 3 * PAGE_SIZE), 3 * PAGE_SIZE).unwrap();
        kho_core::testing::check_phys_write(&ram, backed);
    }

    #[test]
    fn sparse_terabyte_costs_only_touched_pages() {
        let ram = Ram::create(1 << 40).unwrap();
        let last = (1u64 << 40) - PAGE_SIZE;
        ram.write_u64(PhysAddr::new(RAM_BASE), 0x1122_3344_5566_7788).unwrap();
        ram.write_u64(PhysAddr::new(last), 42).unwrap();
        assert_eq!(ram.read_u64(PhysAddr::new(last)).unwrap(), 42);
        assert!(ram.allocated_bytes().unwrap() <= 64 << 10);
        let ext = ram.data_extents(0, ram.size()).unwrap();
        assert_eq!(ext, [(RAM_BASE, RAM_BASE + PAGE_SIZE), (last, last + PAGE_SIZE)]);
    }

    #[test]
    fn accesses_outside_ram_fail() {
        let ram = Ram::create(16 << 20).unwrap();
        let mut b = [0u8; 8];
        assert!(ram.read_phys(PhysAddr::new(0), &mut b).is_err());
        assert!(ram.read_phys(PhysAddr::new(RAM_BASE - 4), &mut b).is_err());
        assert!(ram.read_phys(PhysAddr::new((16 << 20) - 4), &mut b).is_err());
        assert!(ram.read_phys(PhysAddr::new(u64::MAX - 2), &mut b).is_err());
        assert!(ram.write_phys(PhysAddr::new(16 << 20), &b).is_err());
        ram.firmware_write(0x1000, b"boot").unwrap();
        let mut back = [0u8; 4];
        ram.firmware_read(0x1000, &mut back).unwrap();
        assert_eq!(&back, b"boot");
        assert!(Ram::create(4096).is_err());
        assert!(Ram::create((16 << 20) + 1).is_err());
    }

    #[test]
    fn fill_writes_the_pattern() {
        let ram = Ram::create(8 << 20).unwrap();
        let mut pat = [0u8; 64];
        pat.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        ram.fill(RAM_BASE + 4096, 8192, &pat).unwrap();
        let mut buf = vec![0u8; 8192];
        ram.read_phys(PhysAddr::new(RAM_BASE + 4096), &mut buf).unwrap();
        assert!(buf.chunks(64).all(|c| c == pat));
        assert!(ram.fill(RAM_BASE - 64, 64, &pat).is_err());
    }
}
