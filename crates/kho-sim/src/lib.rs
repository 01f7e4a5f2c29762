//! A simulated machine for Kexec HandOver (KHO).
//!
//! - [`ram`]: RAM as one sparse shared memory file, mapped `MAP_SHARED | MAP_NORESERVE`
//!   (physical address = file offset; the first MiB is not RAM).
//! - [`buddy`], [`memmap`], [`machine`]: the kernel's page allocator (with the scratch-only
//!   boot mode of a KHO boot) and per-page memory map, both sized by fragmentation, not RAM.
//! - [`boot`]: the boot-parameter block the previous kernel leaves at a fixed address.
//! - [`kexec`]: poisoning of every page that was not handed over, and `exec()` of the next
//!   kernel process with the RAM file descriptor inherited.
//! - [`workload`]: subsystems that preserve memory the way Linux subsystems do.
//! - [`kernel`]: one kernel's life: boot (cold or KHO), restore, verify, change, preserve,
//!   finalize, kexec.

#![deny(unsafe_code)]

pub mod boot;
pub mod buddy;
pub mod kernel;
pub mod kexec;
pub mod machine;
pub mod memmap;
#[allow(unsafe_code)] // the mapping: the crate's only unsafe code, each block with a SAFETY note
pub mod ram;
pub mod results;
pub mod workload;

pub use machine::{Machine, MapRef, ScratchSizes};
pub use ram::{RAM_BASE, Ram};
pub use results::Results;

/// Errors of the simulator itself (the engine's own errors are `kho_core::Error`).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The RAM file could not be created, mapped or adopted.
    #[error("RAM: {0}")]
    Ram(String),
    /// A configuration that cannot work (sizes, layout).
    #[error("configuration: {0}")]
    Config(String),
    /// The page allocator has no block of this size.
    #[error("out of memory: no free block of {pages} pages")]
    OutOfMemory {
        /// Pages asked for.
        pages: u64,
    },
    /// Physical memory access failed.
    #[error("memory access: {0}")]
    Mem(#[from] kho_core::MemError),
    /// The boot-parameter block is missing or malformed.
    #[error("boot block: {0}")]
    BootBlock(String),
    /// The KHO engine refused an operation.
    #[error("{context}: {source}")]
    Kho {
        /// What was being done.
        context: String,
        /// The engine's error.
        source: kho_core::Error,
    },
    /// The results file or exec failed.
    #[error("{0}")]
    Io(String),
}

impl SimError {
    /// Wraps an engine error with what was being done.
    pub fn kho<E: Into<kho_core::Error>>(context: impl Into<String>) -> impl FnOnce(E) -> SimError {
        let context = context.into();
        move |source| SimError::Kho { context, source: source.into() }
    }
}
