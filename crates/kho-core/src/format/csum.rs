//! x86-64 `csum_partial`, bit-exact: the 32-bit partial Internet checksum Linux's
//! `test_kho` stores in its blob (spec §6) and recomputes over every restored folio.
//!
//! The x86-64 implementation (facts from arch/x86/lib/csum-partial_64.c) adds the buffer as
//! little-endian u64 words into a 64-bit one's-complement accumulator (add with carry, the
//! final carry added back), starting from the 32-bit `sum` argument zero-extended. Blocks of
//! 80 bytes go to two accumulators (the bytes 0..40 and 40..80 of each block), combined
//! afterwards; then one 40-byte block (a buffer of exactly 40 remaining bytes returns right
//! there), then 32, 16 and 8-byte blocks by the bits of the remaining length, then the last
//! 1-7 bytes as one zero-padded little-endian word. The 64-bit result `t` is folded to 32
//! bits as the high half of `t + rotate_right(t, 32)`.
//!
//! One's-complement sums are equal modulo 2^64 - 1 whatever the order, but the accumulator can
//! end as 0 or as all-ones for the same congruence class, and the fold maps those to 0 and
//! 0xffffffff. So the order of the adds is reproduced exactly, carry by carry.

/// One `add`/`adc` chain over `words`, ending with `adc $0`, as the kernel's asm does.
fn add_chain(mut sum: u64, words: impl IntoIterator<Item = u64>) -> u64 {
    let mut carry = 0u64;
    for w in words {
        let t = u128::from(sum) + u128::from(w) + u128::from(carry);
        sum = t as u64;
        carry = (t >> 64) as u64;
    }
    sum.wrapping_add(carry)
}

fn words(b: &[u8]) -> impl Iterator<Item = u64> + '_ {
    b.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
}

fn finalize(t: u64) -> u32 {
    (t.wrapping_add(t.rotate_right(32)) >> 32) as u32
}

/// `csum_partial(buf, buf.len(), sum)` as x86-64 Linux computes it.
///
/// Linux takes the length as an `int`; `test_kho` passes folio sizes up to 4 MiB. Longer
/// buffers are summed as the same algorithm would with a wider length.
#[must_use]
pub fn csum_partial(buf: &[u8], sum: u32) -> u32 {
    let mut t = u64::from(sum);
    let mut rest = buf;
    if rest.len() >= 80 {
        let mut t2 = 0u64;
        while rest.len() >= 80 {
            t = add_chain(t, words(&rest[..40]));
            t2 = add_chain(t2, words(&rest[40..80]));
            rest = &rest[80..];
        }
        t = add_chain(t, [t2]);
    }
    if rest.len() >= 40 {
        t = add_chain(t, words(&rest[..40]));
        rest = &rest[40..];
        if rest.is_empty() {
            return finalize(t);
        }
    }
    for block in [32, 16, 8] {
        if rest.len() & block != 0 {
            t = add_chain(t, words(&rest[..block]));
            rest = &rest[block..];
        }
    }
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        t = add_chain(t, [u64::from_le_bytes(last)]);
    }
    finalize(t)
}

/// Folds a 32-bit partial checksum to the 16-bit Internet checksum (`csum_fold`): the
/// one's complement of the end-around-carry sum of its halves.
#[must_use]
pub fn csum_fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// RFC 1071's definition: the 16-bit one's-complement sum of big-endian... here
    /// little-endian 16-bit words (x86 byte order), end-around carry.
    fn ones_complement_16(buf: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in buf.chunks(2) {
            let w = u32::from(c[0]) | (u32::from(*c.get(1).unwrap_or(&0)) << 8);
            s += w;
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn pattern(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn known_vectors() {
        assert_eq!(csum_partial(&[], 0), 0);
        assert_eq!(csum_partial(&[], 0x1234_5678), 0x1234_5678);
        assert_eq!(csum_partial(&[1], 0), 1);
        assert_eq!(csum_partial(&[0, 1], 0), 0x100);
        assert_eq!(csum_partial(&[0xff; 8], 0), 0xffff_ffff, "all-ones u64 folds to all-ones");
        // One u64 word w = 0x0000_0001_0000_0002: t = w, fold = high(w + rotr(w,32)) = 3.
        assert_eq!(csum_partial(&0x0000_0001_0000_0002u64.to_le_bytes(), 0), 3);
        // Carry out of the low half: 0xffff_ffff + 1.
        assert_eq!(csum_partial(&0x0000_0001_ffff_ffffu64.to_le_bytes(), 0), 1);
        // 4096 zero bytes with a seed keep the seed.
        assert_eq!(csum_partial(&[0u8; 4096], 0xdead_beef), 0xdead_beef);
        // 4096 bytes of 0xff: 512 all-ones words, t stays all-ones.
        assert_eq!(csum_partial(&[0xffu8; 4096], 0), 0xffff_ffff);
    }

    #[test]
    fn carries_are_added_back() {
        // Two words whose sum overflows: 0xffff_ffff_ffff_fff0 + 0x20 = 0x10 + carry 1 = 0x11.
        let mut b = Vec::new();
        b.extend_from_slice(&0xffff_ffff_ffff_fff0u64.to_le_bytes());
        b.extend_from_slice(&0x20u64.to_le_bytes());
        assert_eq!(csum_partial(&b, 0), 0x11);
    }

    #[test]
    fn folds_to_the_rfc1071_sum_for_every_length() {
        for len in 0..300 {
            let b = pattern(len, len as u64 + 7);
            let ours = csum_fold(csum_partial(&b, 0));
            let reference = !ones_complement_16(&b);
            // 0 and 0xffff are the same one's-complement value.
            let norm = |x: u16| if x == 0xffff { 0 } else { x };
            assert_eq!(norm(ours), norm(reference), "len {len}");
        }
    }

    #[test]
    fn chaining_is_a_sum() {
        // csum(a ++ b) == csum(b, csum(a)) modulo 2^32 - 1 when a is a multiple of 8 bytes.
        let a = pattern(4096, 1);
        let b = pattern(8192, 2);
        let whole: Vec<u8> = a.iter().chain(&b).copied().collect();
        let one = u64::from(csum_partial(&whole, 0)) % 0xffff_ffff;
        let two = u64::from(csum_partial(&b, csum_partial(&a, 0))) % 0xffff_ffff;
        assert_eq!(one, two);
    }

    #[test]
    fn tail_is_zero_padded() {
        let b = [1, 2, 3, 4, 5, 6, 7];
        let mut padded = b.to_vec();
        padded.push(0);
        assert_eq!(csum_partial(&b, 0), csum_partial(&padded, 0));
    }
}
