//! Errors, one type per domain:
//!
//! - [`OutgoingError`]: a preserve, unpreserve, blob or finalize call refused (the caller's
//!   mistake, the platform out of memory, or a write to metadata that failed);
//! - [`DecodeError`]: untrusted handover metadata refused by the incoming side, always naming
//!   the structure [`Field`], the physical address it was read at and what was wrong
//!   ([`DecodeErrorKind`]), so an operator can go straight to the offending byte;
//! - [`RestoreError`]: a restore call the next kernel made that cannot be honoured.
//!
//! A failed memory access is a [`MemError`] that says whether it was a read or a write, and is
//! the [`source`](core::error::Error::source) of the error it caused. [`Error`] wraps the three
//! domains for callers that mix them, and every error has an [`ErrorClass`] for reports.

use alloc::string::String;
use core::fmt;

use crate::platform::{AllocError, MemError};
use crate::types::{Block, Order, PhysAddr, PhysRange};

/// The structure field an error is about, named as in the Linux ABI headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// An argument of an outgoing API call.
    Argument,
    /// A preserved block.
    Block,
    /// The root KHO FDT (header or structure).
    RootFdt,
    /// The root node's `compatible`.
    Compatible,
    /// The root node's `preserved-memory-map`.
    PreservedMemoryMap,
    /// A sub-node's name.
    SubtreeName,
    /// A sub-node's `fdt` (kho-v1) or `preserved-data` (kho-v4) pointer.
    SubtreeData,
    /// A sub-node's `blob-size` (kho-v4).
    SubtreeSize,
    /// A sub-blob's content.
    Blob,
    /// The `kho_scratch[]` array (address or size).
    ScratchArray,
    /// One `struct kho_scratch` entry.
    ScratchEntry,
    /// x86 `setup_data` payload (`struct kho_data`).
    SetupData,
    /// Device-tree `/chosen` `linux,kho-fdt`.
    ChosenKhoFdt,
    /// Device-tree `/chosen` `linux,kho-scratch`.
    ChosenKhoScratch,
    /// `khoser_mem_chunk.hdr.next`.
    ChunkNext,
    /// `khoser_mem_chunk.hdr.order`.
    ChunkOrder,
    /// `khoser_mem_chunk.hdr.num_elms`.
    ChunkNumElms,
    /// `khoser_mem_bitmap_ptr.phys_start`.
    ChunkPhysStart,
    /// `khoser_mem_bitmap_ptr.bitmap`.
    ChunkBitmap,
    /// A radix tree table entry (`kho_radix_node.table[i]`).
    RadixEntry,
    /// A radix tree key (decoded from a leaf bit).
    RadixKey,
    /// `kho_vmalloc.first` / `kho_vmalloc_chunk.hdr.next`.
    VmallocChunk,
    /// `kho_vmalloc_chunk.phys[i]`.
    VmallocPiece,
    /// `kho_vmalloc.total_pages`.
    VmallocTotalPages,
    /// `kho_vmalloc.flags`.
    VmallocFlags,
    /// `kho_vmalloc.order`.
    VmallocOrder,
    /// A memory source (dump file, `--mem` argument).
    MemorySource,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Field::Argument => "argument",
            Field::Block => "preserved block",
            Field::RootFdt => "root FDT",
            Field::Compatible => "/compatible",
            Field::PreservedMemoryMap => "/preserved-memory-map",
            Field::SubtreeName => "sub-node name",
            Field::SubtreeData => "sub-node fdt/preserved-data",
            Field::SubtreeSize => "sub-node blob-size",
            Field::Blob => "sub-blob",
            Field::ScratchArray => "kho_scratch[] array",
            Field::ScratchEntry => "kho_scratch entry",
            Field::SetupData => "setup_data kho_data",
            Field::ChosenKhoFdt => "/chosen/linux,kho-fdt",
            Field::ChosenKhoScratch => "/chosen/linux,kho-scratch",
            Field::ChunkNext => "khoser_mem_chunk.hdr.next",
            Field::ChunkOrder => "khoser_mem_chunk.hdr.order",
            Field::ChunkNumElms => "khoser_mem_chunk.hdr.num_elms",
            Field::ChunkPhysStart => "khoser_mem_bitmap_ptr.phys_start",
            Field::ChunkBitmap => "khoser_mem_bitmap_ptr.bitmap",
            Field::RadixEntry => "kho_radix_node entry",
            Field::RadixKey => "kho radix key",
            Field::VmallocChunk => "kho_vmalloc chunk pointer",
            Field::VmallocPiece => "kho_vmalloc_chunk.phys[]",
            Field::VmallocTotalPages => "kho_vmalloc.total_pages",
            Field::VmallocFlags => "kho_vmalloc.flags",
            Field::VmallocOrder => "kho_vmalloc.order",
            Field::MemorySource => "memory source",
        };
        f.write_str(s)
    }
}

impl Field {
    /// The field a property of a KHO FDT holds, by property name (a sub-blob's own properties
    /// are [`Field::Blob`]).
    #[must_use]
    pub fn for_property(prop: &str) -> Self {
        match prop {
            "compatible" => Field::Compatible,
            "preserved-memory-map" => Field::PreservedMemoryMap,
            "fdt" | "preserved-data" => Field::SubtreeData,
            "blob-size" => Field::SubtreeSize,
            "linux,kho-fdt" => Field::ChosenKhoFdt,
            "linux,kho-scratch" => Field::ChosenKhoScratch,
            _ => Field::Blob,
        }
    }
}

/// The class of a problem, for reports and exit statuses: a short stable name per kind of
/// failure, taken from the error's type (so no caller has to classify variants by hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A malformed FDT, a missing or mis-sized property.
    Fdt,
    /// A root `compatible` this crate does not speak.
    Incompatible,
    /// A linked structure that loops.
    Cycle,
    /// A configured work bound exceeded.
    Limit,
    /// Memory that could not be read.
    Unreadable,
    /// Memory that could not be written.
    Unwritable,
    /// A NULL or misaligned pointer.
    Pointer,
    /// A range outside RAM.
    OutsideRam,
    /// A range inside a scratch area.
    InScratch,
    /// Two different blocks (or a block and metadata) overlap.
    Overlap,
    /// The same block listed twice.
    Duplicate,
    /// An order above the applicable maximum.
    Order,
    /// A count, size or name outside what the structure allows.
    Value,
    /// A sub-blob that is not preserved, or a blob-level failure.
    Blob,
    /// An operation in the wrong state (finalized, not finalized).
    State,
    /// Preserve, unpreserve or restore of something not in the expected state.
    Preservation,
    /// The platform ran out of pages.
    OutOfMemory,
    /// A restore argument the next kernel cannot honour.
    Restore,
}

impl ErrorClass {
    /// The stable short name (`fdt`, `pointer`, `overlap`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Fdt => "fdt",
            ErrorClass::Incompatible => "incompatible",
            ErrorClass::Cycle => "cycle",
            ErrorClass::Limit => "limit",
            ErrorClass::Unreadable => "unreadable",
            ErrorClass::Unwritable => "unwritable",
            ErrorClass::Pointer => "pointer",
            ErrorClass::OutsideRam => "outside-ram",
            ErrorClass::InScratch => "in-scratch",
            ErrorClass::Overlap => "overlap",
            ErrorClass::Duplicate => "duplicate",
            ErrorClass::Order => "order",
            ErrorClass::Value => "value",
            ErrorClass::Blob => "blob",
            ErrorClass::State => "state",
            ErrorClass::Preservation => "preservation",
            ErrorClass::OutOfMemory => "out-of-memory",
            ErrorClass::Restore => "restore",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn mem_class(e: &MemError) -> ErrorClass {
    if e.access.is_write() { ErrorClass::Unwritable } else { ErrorClass::Unreadable }
}

// ---- decode ------------------------------------------------------------------------------------

/// Untrusted handover metadata refused: which field, where it was read, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The structure field.
    pub field: Field,
    /// The physical address the field was read at (for an FDT problem, the FDT's address; for
    /// an unreadable structure, the first byte that could not be read).
    pub at: PhysAddr,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// What was wrong with a field of the handover.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// A pointer that must not be NULL is.
    Null,
    /// An address or size that must be aligned is not.
    Misaligned {
        /// Value found.
        value: u64,
        /// Alignment expected.
        align: u64,
    },
    /// A range is not inside RAM.
    OutsideRam {
        /// The offending range.
        range: PhysRange,
    },
    /// A range overlaps a scratch area.
    InScratch {
        /// The offending range.
        range: PhysRange,
        /// The scratch area.
        scratch: PhysRange,
    },
    /// Two different preserved blocks overlap (or a block overlaps metadata).
    Overlap {
        /// The block found second.
        block: Block,
        /// The block found first.
        other: Block,
    },
    /// The same block is listed twice.
    Duplicate {
        /// The block.
        block: Block,
    },
    /// An order above the limit that applies.
    OrderTooLarge {
        /// Order found.
        order: u64,
        /// Largest order allowed.
        max: u32,
    },
    /// A count, length or name outside what the structure can hold.
    BadValue {
        /// Value found.
        found: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// A linked structure points back to an element already visited.
    Cycle {
        /// Where it points.
        target: PhysAddr,
    },
    /// A structure is longer than the configured bound.
    TooMany {
        /// The bound.
        limit: u64,
    },
    /// Memory the handover points to is not readable.
    Unreadable(MemError),
    /// A malformed FDT.
    BadFdt {
        /// What the parser said.
        reason: String,
    },
    /// The root compatible string is not one this crate speaks.
    Incompatible {
        /// Compatible string found.
        found: String,
        /// The versions this crate supports.
        supported: &'static str,
    },
    /// A required property is missing.
    MissingProperty {
        /// Node path.
        node: String,
        /// Property name.
        prop: &'static str,
    },
    /// A property has the wrong length.
    PropertyLength {
        /// Node path.
        node: String,
        /// Property name.
        prop: &'static str,
        /// Length found.
        len: usize,
        /// Length expected.
        expected: usize,
    },
    /// A sub-blob that is not inside preserved memory: the next kernel would read memory
    /// nobody promised to keep.
    BlobNotPreserved {
        /// Sub-node name.
        name: String,
        /// The blob's bytes.
        range: PhysRange,
    },
}

impl DecodeError {
    /// An error about `field`, read at `at`.
    #[must_use]
    pub const fn new(field: Field, at: PhysAddr, kind: DecodeErrorKind) -> Self {
        Self { field, at, kind }
    }

    /// The error for a structure that `field` pointed to and that could not be read.
    #[must_use]
    pub const fn unreadable(field: Field, e: MemError) -> Self {
        Self { field, at: e.phys, kind: DecodeErrorKind::Unreadable(e) }
    }

    /// A missing property of the FDT at `at`; the field is named after the property.
    #[must_use]
    pub fn missing_property(at: PhysAddr, node: &str, prop: &'static str) -> Self {
        Self::new(Field::for_property(prop), at, DecodeErrorKind::MissingProperty { node: node.into(), prop })
    }

    /// A property of the wrong length in the FDT at `at`.
    #[must_use]
    pub fn property_length(at: PhysAddr, node: &str, prop: &'static str, len: usize, expected: usize) -> Self {
        Self::new(
            Field::for_property(prop),
            at,
            DecodeErrorKind::PropertyLength { node: node.into(), prop, len, expected },
        )
    }

    /// The class of the problem.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        use DecodeErrorKind as K;
        match &self.kind {
            K::BadFdt { .. } | K::MissingProperty { .. } | K::PropertyLength { .. } => ErrorClass::Fdt,
            K::Incompatible { .. } => ErrorClass::Incompatible,
            K::Cycle { .. } => ErrorClass::Cycle,
            K::TooMany { .. } => ErrorClass::Limit,
            K::Unreadable(e) => mem_class(e),
            K::Null | K::Misaligned { .. } => ErrorClass::Pointer,
            K::OutsideRam { .. } => ErrorClass::OutsideRam,
            K::InScratch { .. } => ErrorClass::InScratch,
            K::Overlap { .. } => ErrorClass::Overlap,
            K::Duplicate { .. } => ErrorClass::Duplicate,
            K::OrderTooLarge { .. } => ErrorClass::Order,
            K::BadValue { .. } => ErrorClass::Value,
            K::BlobNotPreserved { .. } => ErrorClass::Blob,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind as K;
        let (what, at) = (self.field, self.at);
        match &self.kind {
            K::Null => write!(f, "{what} at {at}: NULL pointer"),
            K::Misaligned { value, align } => {
                write!(f, "{what} at {at}: value {value:#x} is not aligned to {align:#x}")
            }
            K::OutsideRam { range } => write!(f, "{what} at {at}: {range} is outside RAM"),
            K::InScratch { range, scratch } => {
                write!(f, "{what} at {at}: {range} overlaps scratch area {scratch}")
            }
            K::Overlap { block, other } => write!(f, "{what}: {block} overlaps {other}"),
            K::Duplicate { block } => write!(f, "{what} at {at}: {block} is listed twice"),
            K::OrderTooLarge { order, max } => {
                write!(f, "{what} at {at}: order {order} is above the maximum order {max}")
            }
            K::BadValue { found, expected } => write!(f, "{what} at {at}: found {found}, expected {expected}"),
            K::Cycle { target } => write!(f, "{what} at {at}: points to {target}, already visited (cycle)"),
            K::TooMany { limit } => write!(f, "{what} at {at}: more than {limit} elements"),
            K::Unreadable(e) => write!(f, "{what}: cannot read {} bytes at {}: not in memory", e.len, e.phys),
            K::BadFdt { reason } => write!(f, "{what} at {at}: malformed FDT: {reason}"),
            K::Incompatible { found, supported } => {
                write!(f, "handover at {at} is {found:?}; supported: {supported}")
            }
            K::MissingProperty { node, prop } => {
                write!(f, "node {node:?} of the FDT at {at}: missing property {prop:?}")
            }
            K::PropertyLength { node, prop, len, expected } => {
                write!(f, "node {node:?} of the FDT at {at}: property {prop:?} is {len} bytes, expected {expected}")
            }
            K::BlobNotPreserved { name, range } => {
                write!(f, "sub-blob {name:?} at {range} is not inside preserved memory")
            }
        }
    }
}

impl core::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match &self.kind {
            DecodeErrorKind::Unreadable(e) => Some(e),
            _ => None,
        }
    }
}

// ---- outgoing ----------------------------------------------------------------------------------

/// A preserve, unpreserve, blob or finalize call refused by the outgoing engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutgoingError {
    /// Preservations are frozen between `finalize` and `abort`.
    #[error("the handover is finalized: abort it before changing preservations")]
    Finalized,
    /// The operation needs a finalized handover.
    #[error("the handover is not finalized")]
    NotFinalized,
    /// A range of zero pages or bytes.
    #[error("{what}: empty range")]
    Empty {
        /// Which field.
        what: Field,
    },
    /// The platform ran out of metadata pages.
    #[error("out of memory for KHO metadata")]
    OutOfMemory,
    /// A write to (or read of) KHO metadata the engine owns failed.
    #[error("{what}: {source}")]
    Memory {
        /// The structure being written or read.
        what: Field,
        /// The failed access (read or write).
        source: MemError,
    },
    /// The block is already preserved with exactly this shape.
    #[error("{block} is already preserved")]
    AlreadyPreserved {
        /// The block.
        block: Block,
    },
    /// Unpreserve of a block that is not preserved with exactly this shape.
    #[error("{block} is not preserved")]
    NotPreserved {
        /// The block.
        block: Block,
    },
    /// Unpreserve of a block that belongs to a sub-blob: remove the blob instead.
    #[error("{block} holds sub-blob {name:?}: remove the blob instead of unpreserving its pages")]
    OwnedByBlob {
        /// The block.
        block: Block,
        /// The blob's name.
        name: String,
    },
    /// A blob of this name already exists.
    #[error("a sub-blob named {name:?} already exists")]
    DuplicateBlob {
        /// Its name.
        name: String,
    },
    /// No blob of this name.
    #[error("no sub-blob named {name:?}")]
    UnknownBlob {
        /// Its name.
        name: String,
    },
    /// A sub-blob's content is not what the output format needs (kho-v1 blobs are FDTs).
    #[error("sub-blob {name:?}: {source}")]
    BadBlob {
        /// The blob's name.
        name: String,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// The root FDT does not fit in its page.
    #[error("the root FDT needs {needed} bytes, more than its {limit}-byte page")]
    FdtTooLarge {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        limit: u64,
    },
    /// The next kernel needs at least one scratch area to boot from.
    #[error("no scratch area: the next kernel needs at least one to boot from")]
    NoScratch,
    /// An address or size that must be aligned is not.
    #[error("{what} at {at}: value {value:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// Which field.
        what: Field,
        /// The argument's address.
        at: PhysAddr,
        /// Value found.
        value: u64,
        /// Alignment expected.
        align: u64,
    },
    /// A range is not inside RAM.
    #[error("{what} at {at}: {range} is outside RAM")]
    OutsideRam {
        /// Which field.
        what: Field,
        /// The argument's address.
        at: PhysAddr,
        /// The offending range.
        range: PhysRange,
    },
    /// A range overlaps a scratch area.
    #[error("{what} at {at}: {range} overlaps scratch area {scratch}")]
    InScratch {
        /// Which field.
        what: Field,
        /// The argument's address.
        at: PhysAddr,
        /// The offending range.
        range: PhysRange,
        /// The scratch area.
        scratch: PhysRange,
    },
    /// The block overlaps a different preserved block or KHO metadata.
    #[error("{what}: {block} overlaps {other}")]
    Overlap {
        /// Which field.
        what: Field,
        /// The block asked for.
        block: Block,
        /// The block already there.
        other: Block,
    },
    /// An order above this kernel's maximum.
    #[error("{what} at {at}: order {order} is above the maximum order {max}")]
    OrderTooLarge {
        /// Which field.
        what: Field,
        /// The argument's address.
        at: PhysAddr,
        /// Order asked for.
        order: u64,
        /// Largest order allowed.
        max: u32,
    },
    /// A count, name or configuration value outside what is allowed.
    #[error("{what} at {at}: found {found}, expected {expected}")]
    BadValue {
        /// Which field.
        what: Field,
        /// Where (the argument's address, or the offending range's start).
        at: PhysAddr,
        /// Value found.
        found: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// More elements than a structure can hold.
    #[error("{what}: more than {limit} elements")]
    TooMany {
        /// Which field.
        what: Field,
        /// The bound.
        limit: u64,
    },
    /// Engine metadata that does not decode (memory the engine owns was changed behind its
    /// back).
    #[error("KHO metadata corrupted: {source}")]
    Corrupted {
        /// What the decoder found.
        source: DecodeError,
    },
}

impl OutgoingError {
    /// A failed read of engine metadata.
    #[must_use]
    pub const fn memory(what: Field, source: MemError) -> Self {
        OutgoingError::Memory { what, source }
    }

    /// The class of the problem.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        use OutgoingError as E;
        match self {
            E::Finalized | E::NotFinalized => ErrorClass::State,
            E::Empty { .. } | E::BadValue { .. } | E::FdtTooLarge { .. } | E::NoScratch => ErrorClass::Value,
            E::OutOfMemory => ErrorClass::OutOfMemory,
            E::Memory { source, .. } => mem_class(source),
            E::AlreadyPreserved { .. } | E::NotPreserved { .. } | E::OwnedByBlob { .. } => ErrorClass::Preservation,
            E::DuplicateBlob { .. } | E::UnknownBlob { .. } | E::BadBlob { .. } => ErrorClass::Blob,
            E::Misaligned { .. } => ErrorClass::Pointer,
            E::OutsideRam { .. } => ErrorClass::OutsideRam,
            E::InScratch { .. } => ErrorClass::InScratch,
            E::Overlap { .. } => ErrorClass::Overlap,
            E::OrderTooLarge { .. } => ErrorClass::Order,
            E::TooMany { .. } => ErrorClass::Limit,
            E::Corrupted { source } => source.class(),
        }
    }
}

impl From<AllocError> for OutgoingError {
    fn from(_: AllocError) -> Self {
        OutgoingError::OutOfMemory
    }
}

/// The shared range checks ([`crate::format::check_in_ram`] and friends) report in decode
/// terms; on the outgoing side the same findings are argument errors.
impl From<DecodeError> for OutgoingError {
    fn from(e: DecodeError) -> Self {
        use DecodeErrorKind as K;
        let (what, at) = (e.field, e.at);
        match e.kind {
            K::Misaligned { value, align } => OutgoingError::Misaligned { what, at, value, align },
            K::OutsideRam { range } => OutgoingError::OutsideRam { what, at, range },
            K::InScratch { range, scratch } => OutgoingError::InScratch { what, at, range, scratch },
            K::Overlap { block, other } => OutgoingError::Overlap { what, block, other },
            K::OrderTooLarge { order, max } => OutgoingError::OrderTooLarge { what, at, order, max },
            K::BadValue { found, expected } => OutgoingError::BadValue { what, at, found, expected },
            K::TooMany { limit } => OutgoingError::TooMany { what, limit },
            K::Unreadable(source) => OutgoingError::Memory { what, source },
            kind => OutgoingError::Corrupted { source: DecodeError { field: what, at, kind } },
        }
    }
}

// ---- restore -----------------------------------------------------------------------------------

/// A restore the next kernel asked for that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The address is not page aligned.
    #[error("restore of {phys}: not page aligned")]
    Misaligned {
        /// Address asked for.
        phys: PhysAddr,
    },
    /// A restore of zero pages.
    #[error("restore of zero pages at {phys}")]
    Empty {
        /// Address asked for.
        phys: PhysAddr,
    },
    /// The address is not a page this kernel manages.
    #[error("restore of {phys}: not a valid page of RAM")]
    InvalidPage {
        /// Address asked for.
        phys: PhysAddr,
    },
    /// Nothing was preserved at this address.
    #[error("restore of {phys}: never preserved")]
    NeverPreserved {
        /// Address asked for.
        phys: PhysAddr,
    },
    /// Already restored once.
    #[error("restore of {block}: already restored")]
    AlreadyRestored {
        /// The block.
        block: Block,
    },
    /// Preserved with another shape than the one asked for.
    #[error("restore of {requested}: preserved as {found}")]
    ShapeMismatch {
        /// What the caller asked for.
        requested: PhysRange,
        /// What was preserved there.
        found: Block,
    },
    /// The block's order is above this kernel's maximum: it cannot be one folio here.
    #[error("restore of {block}: order {} is above this kernel's maximum order {max}", block.order())]
    OrderTooLarge {
        /// The preserved block.
        block: Block,
        /// This kernel's maximum.
        max: Order,
    },
}

impl RestoreError {
    /// The class of the problem.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            RestoreError::NeverPreserved { .. } | RestoreError::AlreadyRestored { .. } => ErrorClass::Preservation,
            RestoreError::OrderTooLarge { .. } => ErrorClass::Order,
            _ => ErrorClass::Restore,
        }
    }
}

// ---- all domains -------------------------------------------------------------------------------

/// An error of any domain, for callers that mix them (a simulator, a tool).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The outgoing side refused a call.
    #[error(transparent)]
    Outgoing(#[from] OutgoingError),
    /// The incoming side refused the handover.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A restore was refused.
    #[error(transparent)]
    Restore(#[from] RestoreError),
}

impl Error {
    /// The class of the problem.
    #[must_use]
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Outgoing(e) => e.class(),
            Error::Decode(e) => e.class(),
            Error::Restore(e) => e.class(),
        }
    }
}

/// Result with this crate's [`Error`] by default.
pub type Result<T, E = Error> = core::result::Result<T, E>;
