//! Errors: each names the field or object, the value found and what was expected.

use kho_core::types::PhysAddr;

/// A bzImage, a zero page or a load plan that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// The file is shorter than the part that must be read.
    #[error("bzImage is {len} bytes, shorter than the {need} bytes its {what} needs")]
    TooShort {
        /// What needed the bytes.
        what: &'static str,
        /// File length.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A header field has the wrong value.
    #[error("bzImage field {field} at offset {offset:#x} is {found:#x}, expected {expected}")]
    BadField {
        /// Setup-header field name.
        field: &'static str,
        /// Its offset in the file.
        offset: usize,
        /// The value found.
        found: u64,
        /// What a usable 64-bit bzImage has there.
        expected: &'static str,
    },
    /// A zero page of the wrong size.
    #[error("boot_params is {len} bytes, expected {expected}")]
    BootParamsSize {
        /// Bytes given.
        len: usize,
        /// 4096.
        expected: usize,
    },
    /// More e820 entries than the zero page holds.
    #[error("boot_params e820_entries is {found}, the table holds at most {max}")]
    E820Entries {
        /// The count found.
        found: u8,
        /// 128.
        max: usize,
    },
    /// The command line does not fit.
    #[error("command line is {len} bytes with its NUL, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Bytes including the terminating NUL.
        len: usize,
        /// The kernel's `cmdline_size` + 1.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("command line contains a NUL byte at offset {at}")]
    CmdlineNul {
        /// Offset of the NUL.
        at: usize,
    },
    /// No free RAM for a segment.
    #[error("no room for {what}: {size:#x} bytes aligned to {align:#x} at or above {min}{where_}")]
    NoRoom {
        /// The segment.
        what: &'static str,
        /// Bytes needed.
        size: u64,
        /// Alignment needed.
        align: u64,
        /// Lowest address allowed.
        min: PhysAddr,
        /// Where it was looked for.
        where_: &'static str,
    },
    /// A plan with more segments than `kexec_load` accepts.
    #[error("{count} segments, kexec_load accepts at most {max}")]
    TooManySegments {
        /// Segments planned.
        count: usize,
        /// 16.
        max: usize,
    },
    /// Two segments overlap, or a segment is misplaced.
    #[error("segment {what} at {at}: {problem}")]
    BadSegment {
        /// The segment.
        what: &'static str,
        /// Its address.
        at: PhysAddr,
        /// What is wrong.
        problem: &'static str,
    },
    /// The segments need more memory than `kexec_load` allows (half of RAM).
    #[error("segments need {total:#x} bytes; kexec_load accepts at most half of RAM ({max:#x} bytes)")]
    TooLarge {
        /// Bytes of all segments.
        total: u64,
        /// Half of RAM.
        max: u64,
    },
}
