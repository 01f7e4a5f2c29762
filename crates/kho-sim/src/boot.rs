//! The boot-parameter block: what the previous kernel leaves for the next one at a fixed
//! address in the unused first MiB (the simulator's `boot_params` + `setup_data`).
//!
//! Layout (little-endian):
//!
//! | Offset | Size | Field |
//! |---|---|---|
//! | 0 | 8 | magic `"KHOSIMBB"` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | flags: bit 0 = a KHO handover is present |
//! | 16 | 32 | `struct kho_data` (the x86 `SETUP_KEXEC_KHO` payload) |
//! | 48 | 8 | generation (kexecs so far) |
//! | 56 | 8 | RAM size in bytes (file size) |
//! | 64 | 8 | wall clock at finalize start, ns since the epoch (for the blackout) |
//! | 72 | 8 | wall clock just before `exec()`, ns |
//! | 80 | 4 | configuration length `n` |
//! | 84 | n | configuration (JSON text) |
//! | 84+n | 8 | FNV-1a 64 checksum of bytes `0..84+n` |
//!
//! The block is the commit point of a kexec: it is written last, after finalize, so a kernel
//! killed before it leaves no handover, and a torn write fails the checksum. The next kernel
//! consumes it (clears the magic) as it boots, so a stale block is never replayed.

use kho_core::{HandoverPtr, PhysAddr};

use crate::SimError;
use crate::ram::{RAM_BASE, Ram};

/// Where the block lives.
pub const BOOT_BLOCK_PHYS: u64 = 0x1000;
/// Its magic.
pub const MAGIC: &[u8; 8] = b"KHOSIMBB";
/// Its version.
pub const VERSION: u32 = 2;
const HEADER: usize = 84;
/// Largest configuration text.
pub const MAX_CONFIG: usize = (RAM_BASE - BOOT_BLOCK_PHYS) as usize - HEADER;

/// The decoded block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootBlock {
    /// The handover pointer, if the previous kernel finalized one.
    pub kho: Option<HandoverPtr>,
    /// Kexecs so far (the kernel reading this block is kernel number `generation`).
    pub generation: u64,
    /// RAM file size.
    pub ram_size: u64,
    /// Finalize start of the previous kernel (ns since the epoch).
    pub finalize_start_ns: u64,
    /// Just before `exec()` (ns since the epoch).
    pub exec_start_ns: u64,
    /// The run's configuration, as JSON text.
    pub config: String,
}

impl BootBlock {
    /// Encodes the block.
    ///
    /// # Errors
    /// [`SimError::BootBlock`] if the configuration is too long.
    pub fn encode(&self) -> Result<Vec<u8>, SimError> {
        if self.config.len() > MAX_CONFIG {
            return Err(SimError::BootBlock(format!("configuration of {} bytes is too long", self.config.len())));
        }
        let mut v = Vec::with_capacity(HEADER + self.config.len());
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&u32::from(self.kho.is_some()).to_le_bytes());
        v.extend_from_slice(&self.kho.map(|p| p.to_setup_data_payload()).unwrap_or([0; 32]));
        for x in [self.generation, self.ram_size, self.finalize_start_ns, self.exec_start_ns] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&u32::try_from(self.config.len()).unwrap_or(u32::MAX).to_le_bytes());
        v.extend_from_slice(self.config.as_bytes());
        let sum = fnv1a(&v);
        v.extend_from_slice(&sum.to_le_bytes());
        Ok(v)
    }

    /// Decodes a block.
    ///
    /// # Errors
    /// [`SimError::BootBlock`] naming what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, SimError> {
        let bad = |m: String| SimError::BootBlock(m);
        let hdr = b.get(..HEADER).ok_or_else(|| bad(format!("{} bytes, shorter than the header", b.len())))?;
        if &hdr[..8] != MAGIC {
            return Err(bad(format!("bad magic {:02x?} (expected \"KHOSIMBB\")", &hdr[..8])));
        }
        let u32_at = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&hdr[o..o + 8]);
            u64::from_le_bytes(a)
        };
        if u32_at(8) != VERSION {
            return Err(bad(format!("version {} (expected {VERSION})", u32_at(8))));
        }
        let kho = if u32_at(12) & 1 != 0 {
            Some(
                HandoverPtr::from_setup_data_payload(&hdr[16..48], PhysAddr::new(BOOT_BLOCK_PHYS + 16))
                    .map_err(|e| bad(e.to_string()))?,
            )
        } else {
            None
        };
        let n = u32_at(80) as usize;
        let cfg =
            b.get(HEADER..HEADER + n).ok_or_else(|| bad(format!("configuration length {n} runs past the block")))?;
        let sum = b.get(HEADER + n..HEADER + n + 8).ok_or_else(|| bad("the checksum is missing".into()))?;
        let want = fnv1a(&b[..HEADER + n]);
        if sum != want.to_le_bytes() {
            return Err(bad(format!(
                "checksum mismatch (found {:02x?}, computed {want:#018x}): torn or corrupted",
                sum
            )));
        }
        let config = String::from_utf8(cfg.to_vec()).map_err(|_| bad("configuration is not UTF-8".into()))?;
        Ok(Self {
            kho,
            generation: u64_at(48),
            ram_size: u64_at(56),
            finalize_start_ns: u64_at(64),
            exec_start_ns: u64_at(72),
            config,
        })
    }

    /// Writes the block into the firmware area of `ram`.
    ///
    /// # Errors
    /// As [`BootBlock::encode`], or a memory error.
    pub fn write(&self, ram: &Ram) -> Result<(), SimError> {
        ram.firmware_write(BOOT_BLOCK_PHYS, &self.encode()?)?;
        Ok(())
    }

    /// Reads the block from the firmware area of `ram`.
    ///
    /// # Errors
    /// As [`BootBlock::decode`].
    pub fn read(ram: &Ram) -> Result<Self, SimError> {
        let mut hdr = vec![0u8; HEADER];
        ram.firmware_read(BOOT_BLOCK_PHYS, &mut hdr)?;
        let n = u32::from_le_bytes([hdr[80], hdr[81], hdr[82], hdr[83]]) as usize;
        if n > MAX_CONFIG {
            return Err(SimError::BootBlock(format!("configuration length {n} is larger than the block")));
        }
        let mut all = vec![0u8; HEADER + n + 8];
        ram.firmware_read(BOOT_BLOCK_PHYS, &mut all)?;
        Self::decode(&all)
    }
}

impl BootBlock {
    /// Clears the block's magic so it can never be read again: the kernel that booted from
    /// it owns the handover now, and a later restart must not replay it.
    ///
    /// # Errors
    /// A memory error.
    pub fn consume(ram: &Ram) -> Result<(), SimError> {
        ram.firmware_write(BOOT_BLOCK_PHYS, &[0u8; 8])?;
        Ok(())
    }
}

/// FNV-1a, 64 bit: enough to detect a torn or scribbled block (not an adversary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Nanoseconds since the epoch (0 if the clock is before it).
#[must_use]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let b = BootBlock {
            kho: Some(HandoverPtr {
                fdt: PhysAddr::new(0x20_0000),
                fdt_size: 4096,
                scratch: PhysAddr::new(0x30_0000),
                scratch_size: 48,
            }),
            generation: 3,
            ram_size: 1 << 32,
            finalize_start_ns: 5,
            exec_start_ns: 6,
            config: "{\"seed\":1}".into(),
        };
        let ram = Ram::create(8 << 20).unwrap();
        b.write(&ram).unwrap();
        assert_eq!(BootBlock::read(&ram).unwrap(), b);
        let mut enc = b.encode().unwrap();
        enc[0] = b'X';
        assert!(BootBlock::decode(&enc).unwrap_err().to_string().contains("magic"));
        let fresh = Ram::create(8 << 20).unwrap();
        assert!(BootBlock::read(&fresh).is_err());
    }
}
