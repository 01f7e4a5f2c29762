#![doc = include_str!("../docs.md")]
#![cfg_attr(not(any(test, loom)), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod blockset;
pub mod error;
pub mod fdt;
pub mod format;
pub mod incoming;
pub mod outgoing;
pub mod platform;
pub mod split;
mod sync;
pub mod testing;
pub mod types;

pub use blockset::BlockSet;
pub use error::{DecodeError, DecodeErrorKind, Error, ErrorClass, Field, OutgoingError, RestoreError, Result};
pub use format::handover_ptr::HandoverPtr;
pub use format::{BitmapBytes, FormatVersion, Limits};
pub use incoming::{Handover, IncomingConfig, OversizedPolicy, Validation};
pub use outgoing::{Finalized, Kho, OutgoingConfig};
pub use platform::{Access, AllocError, MemError, MemMap, MetaAlloc, PhysRead, PhysWrite, Platform};
pub use types::{Block, Order, PAGE_SHIFT, PAGE_SIZE, Pfn, PhysAddr, PhysRange};
