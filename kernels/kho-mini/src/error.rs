//! The mini kernel's own errors: typed, naming the structure field, the physical address and
//! what was expected, like the engine's.

use core::fmt;

use kho_core::{MemError, PhysAddr};

/// Something the boot data, the payload or the memory layout did not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MiniError {
    /// A field of a boot structure has a value outside what is allowed.
    BadValue {
        /// The field, named as in Linux's boot protocol.
        what: &'static str,
        /// Where it was read.
        at: PhysAddr,
        /// Value found.
        found: u64,
        /// What was expected.
        expected: &'static str,
    },
    /// Memory a structure points to is not backed.
    Unreadable {
        /// What pointed there.
        what: &'static str,
        /// The failed access.
        err: MemError,
    },
    /// No free memory of the size and alignment asked for.
    NoRoom {
        /// What it was for.
        what: &'static str,
        /// Bytes needed.
        size: u64,
        /// Alignment needed.
        align: u64,
    },
    /// The engine refused something.
    Kho(kho_core::Error),
    /// kho-boot refused the next kernel's image.
    Boot(kho_boot::BootError),
    /// A folio was preserved with another order than the one its producer listed.
    OrderMismatch {
        /// The folio.
        phys: PhysAddr,
        /// Order it was preserved with.
        preserved: u32,
        /// Order listed in the blob.
        listed: u32,
    },
    /// The folios do not match what their producer recorded.
    Verify {
        /// What differs.
        what: &'static str,
        /// Value found.
        found: u64,
        /// Value recorded.
        expected: u64,
    },
}

impl fmt::Display for MiniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MiniError::BadValue { what, at, found, expected } => {
                write!(f, "{what} at {at}: found {found:#x}, expected {expected}")
            }
            MiniError::Unreadable { what, err } => write!(f, "{what}: {err}"),
            MiniError::NoRoom { what, size, align } => {
                write!(f, "{what}: no free memory for {size:#x} bytes aligned to {align:#x}")
            }
            MiniError::Kho(e) => write!(f, "{e}"),
            MiniError::Boot(e) => write!(f, "next kernel: {e}"),
            MiniError::OrderMismatch { phys, preserved, listed } => {
                write!(f, "kho_test folio at {phys}: preserved as order {preserved}, listed as order {listed}")
            }
            MiniError::Verify { what, found, expected } => {
                write!(f, "{what}: found {found:#x}, expected {expected:#x}")
            }
        }
    }
}

impl From<kho_core::Error> for MiniError {
    fn from(e: kho_core::Error) -> Self {
        MiniError::Kho(e)
    }
}

impl From<kho_boot::BootError> for MiniError {
    fn from(e: kho_boot::BootError) -> Self {
        MiniError::Boot(e)
    }
}

impl From<kho_core::DecodeError> for MiniError {
    fn from(e: kho_core::DecodeError) -> Self {
        MiniError::Kho(e.into())
    }
}

impl From<kho_core::OutgoingError> for MiniError {
    fn from(e: kho_core::OutgoingError) -> Self {
        MiniError::Kho(e.into())
    }
}

impl From<kho_core::RestoreError> for MiniError {
    fn from(e: kho_core::RestoreError) -> Self {
        MiniError::Kho(e.into())
    }
}

/// Result with [`MiniError`].
pub type Result<T, E = MiniError> = core::result::Result<T, E>;

/// Shorthand for a [`MiniError::BadValue`].
pub(crate) fn bad(what: &'static str, at: u64, found: u64, expected: &'static str) -> MiniError {
    MiniError::BadValue { what, at: PhysAddr::new(at), found, expected }
}
