//! The `kexec-metadata` sub-blob (spec §2.5, kho-v3 and later): a packed 73-byte
//! `struct kho_kexec_metadata` telling the next kernel which release kexec'd into it and how
//! many kexecs led here.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `version` (1) |
//! | 4 | 65 | `previous_release`, NUL-terminated |
//! | 69 | 4 | `kexec_count` |

use alloc::string::String;
use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, FromZeros};

use crate::error::{DecodeError, DecodeErrorKind, Field, Result};
use crate::format::abi::{self, KexecMetadataRaw};
use crate::types::PhysAddr;

/// Bytes of the packed struct.
pub const SIZE: usize = size_of::<KexecMetadataRaw>();
/// The only version defined.
pub const VERSION: u32 = 1;
/// Bytes of `previous_release`, NUL included (`__NEW_UTS_LEN + 1`).
pub const RELEASE_BYTES: usize = abi::RELEASE_BYTES;

/// What the previous kernel said about itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KexecMetadata {
    /// Layout version ([`VERSION`]).
    pub version: u32,
    /// `uname -r` of the kernel that did the kexec (at most 64 bytes).
    pub previous_release: String,
    /// Kexecs since the last cold boot, this one included.
    pub kexec_count: u32,
}

impl KexecMetadata {
    /// Decodes the blob found at `at`, with Linux's checks in Linux's order: at least 4
    /// bytes, version 1, at least 73 bytes; plus a NUL inside `previous_release`. A release
    /// that is not UTF-8 is kept lossily: it is informational.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadValue`] (`Blob`) naming the check that failed.
    pub fn parse(blob: &[u8], at: PhysAddr) -> Result<Self, DecodeError> {
        let bad =
            |found: u64, expected| DecodeError::new(Field::Blob, at, DecodeErrorKind::BadValue { found, expected });
        let Ok((v, _)) = zerocopy::little_endian::U32::read_from_prefix(blob) else {
            return Err(bad(blob.len() as u64, "a blob of at least 4 bytes (the version)"));
        };
        let version = v.get();
        if version != VERSION {
            return Err(bad(u64::from(version), "kexec-metadata version 1"));
        }
        let Ok((b, _)) = KexecMetadataRaw::ref_from_prefix(blob) else {
            return Err(bad(blob.len() as u64, "a blob of at least 73 bytes"));
        };
        let release = &b.previous_release;
        let Some(len) = release.iter().position(|&c| c == 0) else {
            return Err(DecodeError::new(
                Field::Blob,
                abi::field_addr(at, offset_of!(KexecMetadataRaw, previous_release)),
                DecodeErrorKind::BadValue {
                    found: RELEASE_BYTES as u64,
                    expected: "a NUL-terminated release string within 65 bytes",
                },
            ));
        };
        Ok(Self {
            version,
            previous_release: String::from_utf8_lossy(&release[..len]).into_owned(),
            kexec_count: b.kexec_count.get(),
        })
    }

    /// Metadata for a kexec from `release`, the `count`-th since the cold boot.
    #[must_use]
    pub fn new(release: &str, count: u32) -> Self {
        Self { version: VERSION, previous_release: release.into(), kexec_count: count }
    }

    /// The 73 packed bytes. A release longer than 64 bytes is cut (at a byte, as `uname`'s
    /// field would be), so the NUL always fits.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut raw = KexecMetadataRaw::new_zeroed();
        raw.version = self.version.into();
        let rel = self.previous_release.as_bytes();
        let n = rel.len().min(RELEASE_BYTES - 1);
        raw.previous_release[..n].copy_from_slice(&rel[..n]);
        raw.kexec_count = self.kexec_count.into();
        zerocopy::transmute!(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = KexecMetadata::new("7.3.4", 1);
        let b = m.to_bytes();
        assert_eq!(&b[..9], &[1, 0, 0, 0, b'7', b'.', b'3', b'.', b'4']);
        assert_eq!(&b[69..], &[1, 0, 0, 0]);
        assert_eq!(KexecMetadata::parse(&b, PhysAddr::new(0)).unwrap(), m);
    }

    #[test]
    fn long_release_is_cut_to_fit_the_nul() {
        let long = "x".repeat(100);
        let b = KexecMetadata::new(&long, 3).to_bytes();
        let back = KexecMetadata::parse(&b, PhysAddr::new(0)).unwrap();
        assert_eq!(back.previous_release.len(), 64);
        assert_eq!(back.kexec_count, 3);
    }

    #[test]
    fn checks_in_linux_order() {
        let at = PhysAddr::new(0x8000);
        let e = KexecMetadata::parse(&[1, 0, 0], at).unwrap_err();
        assert!(
            matches!(e, DecodeError { field: Field::Blob, kind: DecodeErrorKind::BadValue { found: 3, .. }, .. }),
            "{e}"
        );
        let mut b = KexecMetadata::new("r", 1).to_bytes();
        b[0] = 2;
        let e = KexecMetadata::parse(&b, at).unwrap_err();
        assert!(matches!(e, DecodeError { kind: DecodeErrorKind::BadValue { found: 2, .. }, .. }), "{e}");
        b[0] = 1;
        let e = KexecMetadata::parse(&b[..72], at).unwrap_err();
        assert!(matches!(e, DecodeError { kind: DecodeErrorKind::BadValue { found: 72, .. }, .. }), "{e}");
        b[4..69].fill(b'a');
        let e = KexecMetadata::parse(&b, at).unwrap_err();
        assert!(
            matches!(e, DecodeError { at, kind: DecodeErrorKind::BadValue { found: 65, .. }, .. } if at == PhysAddr::new(0x8004)),
            "{e}"
        );
        // Longer blobs are fine (blob-size may be rounded up).
        let mut long = KexecMetadata::new("r", 9).to_bytes().to_vec();
        long.extend_from_slice(&[0xff; 8]);
        assert_eq!(KexecMetadata::parse(&long, at).unwrap().kexec_count, 9);
    }
}
