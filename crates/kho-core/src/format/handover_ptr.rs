//! How the previous kernel tells the next one where the handover is (spec §1.7, §1.8): the
//! FDT's address and size and the scratch array's address and size.
//!
//! - x86: a `setup_data` node of type `SETUP_KEXEC_KHO` (10) whose 32-byte payload is
//!   `struct kho_data`, four little-endian u64s.
//! - Device tree: `/chosen` properties `linux,kho-fdt` and `linux,kho-scratch`, each an
//!   (address, size) pair in big-endian cells sized by the root's `#address-cells` and
//!   `#size-cells`.

use alloc::vec::Vec;

use zerocopy::{FromBytes, IntoBytes};

use crate::error::{DecodeError, DecodeErrorKind, Field, Result};
use crate::fdt::FdtNode;
use crate::format::abi::{KhoData, SetupDataHeader};
use crate::types::PhysAddr;

/// `setup_data.type` for KHO.
pub const SETUP_KEXEC_KHO: u32 = 10;
/// Payload bytes of `struct kho_data`.
pub const KHO_DATA_BYTES: usize = core::mem::size_of::<KhoData>();
/// `/chosen` property with the FDT's (address, size).
pub const CHOSEN_FDT: &str = "linux,kho-fdt";
/// `/chosen` property with the scratch array's (address, size).
pub const CHOSEN_SCRATCH: &str = "linux,kho-scratch";

/// Where the handover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandoverPtr {
    /// Physical address of the root KHO FDT.
    pub fdt: PhysAddr,
    /// Bytes available at `fdt` (Linux always passes `PAGE_SIZE`).
    pub fdt_size: u64,
    /// Physical address of `kho_scratch[]`.
    pub scratch: PhysAddr,
    /// Bytes of `kho_scratch[]` (16 per area).
    pub scratch_size: u64,
}

impl HandoverPtr {
    /// The 32-byte `struct kho_data` payload.
    #[must_use]
    pub fn to_setup_data_payload(&self) -> [u8; KHO_DATA_BYTES] {
        let data = KhoData {
            fdt_addr: self.fdt.as_u64().into(),
            fdt_size: self.fdt_size.into(),
            scratch_addr: self.scratch.as_u64().into(),
            scratch_size: self.scratch_size.into(),
        };
        zerocopy::transmute!(data)
    }

    /// Decodes a `struct kho_data` payload. Unlike Linux, which does not check `len`, a
    /// payload shorter than 32 bytes is refused (`at` is its address, for the message).
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadValue`] for a short payload.
    pub fn from_setup_data_payload(payload: &[u8], at: PhysAddr) -> Result<Self, DecodeError> {
        let (d, _) = KhoData::read_from_prefix(payload).map_err(|_| {
            DecodeError::new(
                Field::SetupData,
                at,
                DecodeErrorKind::BadValue { found: payload.len() as u64, expected: "a 32-byte kho_data payload" },
            )
        })?;
        Ok(Self {
            fdt: PhysAddr::new(d.fdt_addr.get()),
            fdt_size: d.fdt_size.get(),
            scratch: PhysAddr::new(d.scratch_addr.get()),
            scratch_size: d.scratch_size.get(),
        })
    }

    /// A whole `setup_data` node (16-byte header with `next`, `type`, `len`, then payload).
    #[must_use]
    pub fn to_setup_data_node(&self, next: PhysAddr) -> Vec<u8> {
        let hdr = SetupDataHeader {
            next: next.as_u64().into(),
            kind: SETUP_KEXEC_KHO.into(),
            len: (KHO_DATA_BYTES as u32).into(),
        };
        let mut out = Vec::with_capacity(core::mem::size_of::<SetupDataHeader>() + KHO_DATA_BYTES);
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(&self.to_setup_data_payload());
        out
    }

    /// Decodes a whole `setup_data` node; returns the pointer and the `next` field.
    ///
    /// # Errors
    /// [`DecodeErrorKind::BadValue`] for a short node, a type other than 10, or a `len` below 32.
    pub fn from_setup_data_node(node: &[u8], at: PhysAddr) -> Result<(Self, PhysAddr), DecodeError> {
        let bad = |found: u64, expected| {
            DecodeError::new(Field::SetupData, at, DecodeErrorKind::BadValue { found, expected })
        };
        let (hdr, payload) = SetupDataHeader::read_from_prefix(node)
            .map_err(|_| bad(node.len() as u64, "a 16-byte setup_data header"))?;
        let (ty, len) = (hdr.kind.get(), hdr.len.get());
        if ty != SETUP_KEXEC_KHO {
            return Err(bad(u64::from(ty), "setup_data type 10 (SETUP_KEXEC_KHO)"));
        }
        if (len as usize) < KHO_DATA_BYTES {
            return Err(bad(u64::from(len), "setup_data len of at least 32"));
        }
        let ptr = Self::from_setup_data_payload(payload, at)?;
        Ok((ptr, PhysAddr::new(hdr.next.get())))
    }

    /// The two `/chosen` property values, with `address_cells`/`size_cells` of 1 or 2.
    #[must_use]
    pub fn to_chosen(&self, address_cells: u32, size_cells: u32) -> [(&'static str, Vec<u8>); 2] {
        [
            (CHOSEN_FDT, cells(self.fdt.as_u64(), address_cells, self.fdt_size, size_cells)),
            (CHOSEN_SCRATCH, cells(self.scratch.as_u64(), address_cells, self.scratch_size, size_cells)),
        ]
    }

    /// Reads the pointer from a `/chosen` node. Missing properties mean "no KHO" (Linux
    /// boots cold); wrong lengths are errors.
    ///
    /// # Errors
    /// [`DecodeErrorKind::MissingProperty`] or [`DecodeErrorKind::PropertyLength`].
    pub fn from_chosen(chosen: &FdtNode, address_cells: u32, size_cells: u32) -> Result<Self, DecodeError> {
        let read = |prop: &'static str| -> Result<(u64, u64), DecodeError> {
            let v = chosen.get(prop).ok_or_else(|| {
                DecodeError::new(
                    Field::for_property(prop),
                    PhysAddr::new(0),
                    DecodeErrorKind::MissingProperty { node: "/chosen".into(), prop },
                )
            })?;
            // Cell counts come from the boot loader's device tree: range-check them before
            // any arithmetic (0xffffffff + 2 overflows u32).
            let cells_ok = (1..=2).contains(&address_cells) && (1..=2).contains(&size_cells);
            let want = 4 * (address_cells as usize).saturating_add(size_cells as usize);
            if !cells_ok || v.len() != want {
                return Err(DecodeError::new(
                    Field::for_property(prop),
                    PhysAddr::new(0),
                    DecodeErrorKind::PropertyLength { node: "/chosen".into(), prop, len: v.len(), expected: want },
                ));
            }
            let (a, s) = v.split_at(4 * address_cells as usize);
            Ok((be_cells(a), be_cells(s)))
        };
        let (fdt, fdt_size) = read(CHOSEN_FDT)?;
        let (scratch, scratch_size) = read(CHOSEN_SCRATCH)?;
        Ok(Self { fdt: PhysAddr::new(fdt), fdt_size, scratch: PhysAddr::new(scratch), scratch_size })
    }
}

fn cells(addr: u64, acells: u32, size: u64, scells: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for (val, n) in [(addr, acells), (size, scells)] {
        if n >= 2 {
            v.extend_from_slice(&val.to_be_bytes());
        } else {
            v.extend_from_slice(&(val as u32).to_be_bytes());
        }
    }
    v
}

fn be_cells(b: &[u8]) -> u64 {
    b.chunks_exact(4).fold(0u64, |acc, c| (acc << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 32-byte payload Linux 7.3.4 handed its successor (captures/…/kernel2-setup_data).
    const CAPTURED: [u8; 32] = [
        0x00, 0x20, 0x18, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0, //
        0x00, 0x00, 0x3f, 0x7d, 0, 0, 0, 0, 0x30, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn decodes_the_linux_capture() {
        let p = HandoverPtr::from_setup_data_payload(&CAPTURED, PhysAddr::new(0)).unwrap();
        assert_eq!(p.fdt, PhysAddr::new(0x18_2000));
        assert_eq!(p.fdt_size, 4096);
        assert_eq!(p.scratch, PhysAddr::new(0x7d3f_0000));
        assert_eq!(p.scratch_size, 48);
        assert_eq!(p.to_setup_data_payload(), CAPTURED);
    }

    #[test]
    fn setup_data_node_round_trip_and_checks() {
        let p = HandoverPtr {
            fdt: PhysAddr::new(0x1000),
            fdt_size: 4096,
            scratch: PhysAddr::new(0x2000),
            scratch_size: 32,
        };
        let node = p.to_setup_data_node(PhysAddr::new(0x9000));
        assert_eq!(HandoverPtr::from_setup_data_node(&node, PhysAddr::new(0)).unwrap(), (p, PhysAddr::new(0x9000)));
        let mut wrong = node.clone();
        wrong[8] = 9;
        assert!(matches!(
            HandoverPtr::from_setup_data_node(&wrong, PhysAddr::new(0)),
            Err(DecodeError { kind: DecodeErrorKind::BadValue { found: 9, .. }, .. })
        ));
        assert!(HandoverPtr::from_setup_data_payload(&node[16..40], PhysAddr::new(0)).is_err());
    }

    #[test]
    fn chosen_round_trip_with_both_cell_sizes() {
        let p = HandoverPtr {
            fdt: PhysAddr::new(0x1_0000_1000),
            fdt_size: 4096,
            scratch: PhysAddr::new(0x2000),
            scratch_size: 48,
        };
        let props = p.to_chosen(2, 2);
        assert_eq!(props[0].1, [0, 0, 0, 1, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
        let mut chosen = FdtNode::new("chosen");
        for (n, v) in &props {
            chosen = chosen.prop(n, v);
        }
        assert_eq!(HandoverPtr::from_chosen(&chosen, 2, 2).unwrap(), p);
        let short = FdtNode::new("chosen").prop(CHOSEN_FDT, &[0; 8]).prop(CHOSEN_SCRATCH, &props[1].1);
        assert!(matches!(
            HandoverPtr::from_chosen(&short, 2, 2),
            Err(DecodeError { kind: DecodeErrorKind::PropertyLength { len: 8, expected: 16, .. }, .. })
        ));
        assert!(matches!(
            HandoverPtr::from_chosen(&FdtNode::new("chosen"), 2, 2),
            Err(DecodeError { kind: DecodeErrorKind::MissingProperty { .. }, .. })
        ));
    }
}
