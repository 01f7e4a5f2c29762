//! kho-mini: a minimal x86_64 kernel that embeds `kho-core`.
//!
//! Linux kexecs into it with a KHO handover; it validates the handover, restores and checks
//! every folio Linux's `test_kho` preserved, preserves them again with some of its own, and
//! kexecs the next Linux with a handover of its own. This library is everything except the
//! few lines that touch the machine (entry, serial port, identity-mapped memory, jump),
//! which live in `main.rs`; it runs in host tests over a byte store.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod bootparams;
pub mod bzimage;
pub mod error;
pub mod flow;
pub mod memory;
pub mod payload;
pub mod pvh;
#[cfg(test)]
mod testmem;
#[cfg(test)]
mod tests;

pub use error::{MiniError, Result};
