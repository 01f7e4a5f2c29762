//! The `kho_scratch[]` array (spec §1.6): `{u64 addr; u64 size;}` per area, little-endian.
//! Entry 0 is the lowmem area, 1 the global one, then one per NUMA node.

use alloc::vec::Vec;

use zerocopy::{FromBytes, IntoBytes};

use crate::error::{DecodeError, DecodeErrorKind, Field, Result};
use crate::format::abi::{self, KhoScratch};
use crate::format::check_in_ram;
use crate::platform::PhysRead;
use crate::types::{PAGE_SIZE, PhysAddr, PhysRange};

/// Bytes per entry.
pub const ENTRY_BYTES: u64 = core::mem::size_of::<KhoScratch>() as u64;

/// Encodes scratch areas as the array the next kernel receives.
#[must_use]
pub fn encode(areas: &[PhysRange]) -> Vec<u8> {
    let entries: Vec<KhoScratch> =
        areas.iter().map(|a| KhoScratch { addr: a.start().as_u64().into(), size: a.len().into() }).collect();
    entries.as_bytes().to_vec()
}

/// Reads and checks the scratch array at `array` of `size` bytes: size a non-zero multiple
/// of 16 within `max_areas` entries, every area page aligned, inside RAM, non-empty, and no
/// two areas overlapping. Returns the areas sorted by address.
///
/// # Errors
/// A typed error naming the entry's address and the rule it breaks.
pub fn decode<M: PhysRead + ?Sized>(
    mem: &M,
    ram: &[PhysRange],
    array: PhysAddr,
    size: u64,
    max_areas: u64,
) -> Result<Vec<PhysRange>, DecodeError> {
    if array.is_null() {
        return Err(DecodeError::new(Field::ScratchArray, array, DecodeErrorKind::Null));
    }
    if size == 0 || !size.is_multiple_of(ENTRY_BYTES) || size / ENTRY_BYTES > max_areas {
        return Err(DecodeError::new(
            Field::ScratchArray,
            array,
            DecodeErrorKind::BadValue {
                found: size,
                expected: "a non-zero multiple of 16 bytes within the scratch-area limit",
            },
        ));
    }
    if !array.is_aligned(8) {
        return Err(DecodeError::new(
            Field::ScratchArray,
            array,
            DecodeErrorKind::Misaligned { value: array.as_u64(), align: 8 },
        ));
    }
    let whole = PhysRange::new(array, size).ok_or(DecodeError::new(
        Field::ScratchArray,
        array,
        DecodeErrorKind::BadValue { found: size, expected: "an array that does not wrap" },
    ))?;
    check_in_ram(ram, Field::ScratchArray, array, whole)?;
    let mut buf = alloc::vec![0u8; usize::try_from(size).unwrap_or(0)];
    mem.read_phys(array, &mut buf).map_err(|e| DecodeError::unreadable(Field::ScratchArray, e))?;
    let mut areas = Vec::new();
    // `size` is a multiple of the entry size (checked above), so this cannot fail.
    let entries = <[KhoScratch]>::ref_from_bytes(&buf).map_err(|_| {
        DecodeError::new(
            Field::ScratchArray,
            array,
            DecodeErrorKind::BadValue { found: size, expected: "whole entries" },
        )
    })?;
    for (i, e) in entries.iter().enumerate() {
        let at = abi::field_addr(array, i * core::mem::size_of::<KhoScratch>());
        let (addr, len) = (e.addr.get(), e.size.get());
        let start = PhysAddr::new(addr);
        if !start.is_page_aligned() {
            return Err(DecodeError::new(
                Field::ScratchEntry,
                at,
                DecodeErrorKind::Misaligned { value: addr, align: PAGE_SIZE },
            ));
        }
        if !len.is_multiple_of(PAGE_SIZE) {
            return Err(DecodeError::new(
                Field::ScratchEntry,
                at,
                DecodeErrorKind::Misaligned { value: len, align: PAGE_SIZE },
            ));
        }
        let range = PhysRange::new(start, len).ok_or(DecodeError::new(
            Field::ScratchEntry,
            at,
            DecodeErrorKind::BadValue { found: len, expected: "a non-empty area that does not wrap" },
        ))?;
        check_in_ram(ram, Field::ScratchEntry, at, range)?;
        areas.push((range, at));
    }
    areas.sort_unstable_by_key(|(r, _)| r.start());
    for w in areas.windows(2) {
        if w[0].0.overlaps(w[1].0) {
            return Err(DecodeError::new(
                Field::ScratchEntry,
                w[1].1,
                DecodeErrorKind::InScratch { range: w[1].0, scratch: w[0].0 },
            ));
        }
    }
    Ok(areas.into_iter().map(|(r, _)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SparseMem;

    fn r(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    #[test]
    fn round_trip_and_sorting() {
        let mem = SparseMem::new();
        let areas = [r(0x8000_0000, 0x100_0000), r(0x200_0000, 0x10_0000)];
        mem.write_bytes(PhysAddr::new(0x1000), &encode(&areas));
        let ram = [r(0x1000, 0xf000_0000)];
        let got = decode(&mem, &ram, PhysAddr::new(0x1000), 32, 16).unwrap();
        assert_eq!(got, [areas[1], areas[0]]);
    }

    #[test]
    fn hostile_entries_are_refused() {
        let mem = SparseMem::new();
        let ram = [r(0x1000, 0xf000_0000)];
        mem.write_bytes(PhysAddr::new(0x1000), &encode(&[r(0x20_0000, 0x1000)]));
        assert!(matches!(
            decode(&mem, &ram, PhysAddr::new(0x1000), 24, 16),
            Err(DecodeError { kind: DecodeErrorKind::BadValue { .. }, .. })
        ));
        mem.write_bytes(PhysAddr::new(0x1000), &[0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            decode(&mem, &ram, PhysAddr::new(0x1000), 16, 16),
            Err(DecodeError { field: Field::ScratchEntry, kind: DecodeErrorKind::Misaligned { .. }, .. })
        ));
        mem.write_bytes(PhysAddr::new(0x1000), &encode(&[r(0xff00_0000, 0x1000)]));
        assert!(matches!(
            decode(&mem, &ram, PhysAddr::new(0x1000), 16, 16),
            Err(DecodeError { kind: DecodeErrorKind::OutsideRam { .. }, .. })
        ));
        mem.write_bytes(PhysAddr::new(0x1000), &encode(&[r(0x20_0000, 0x2000), r(0x20_1000, 0x1000)]));
        assert!(matches!(
            decode(&mem, &ram, PhysAddr::new(0x1000), 32, 16),
            Err(DecodeError { kind: DecodeErrorKind::InScratch { .. }, .. })
        ));
    }
}
