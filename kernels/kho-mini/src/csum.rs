//! x86-64 `csum_partial`, bit-exact: the 32-bit `__wsum` Linux's test_kho accumulates over
//! its folios (spec §6). The kernel adds the buffer as little-endian 64-bit words with
//! end-around carry, starting from the 32-bit seed, then folds the 64-bit sum to 32 bits the
//! same way. The add-with-carry chains are reproduced step for step, in the kernel's grouping.
//!
//! Private copy: the shared one (kho-core `format/csum.rs`) belongs to the loader's work
//! and was not on main when this kernel was written.

/// One `addq; adcq ...; adcq $0` sequence as the kernel's inline assembly runs it: the
/// first add has no carry in, each later one adds the previous carry, and the carry out of
/// the final `adcq $0` is dropped (it is always 0: an all-ones sum with a carry pending is
/// unreachable, so this is end-around-carry addition; the steps are kept as the kernel's).
fn adc_chain(mut res: u64, words: &[u64]) -> u64 {
    let mut carry = false;
    for (i, &w) in words.iter().enumerate() {
        let (a, c1) = res.overflowing_add(w);
        let (b, c2) = if i == 0 { (a, false) } else { a.overflowing_add(u64::from(carry)) };
        res = b;
        carry = c1 || c2;
    }
    res.wrapping_add(u64::from(carry))
}

fn words<const N: usize>(b: &[u8]) -> [u64; N] {
    core::array::from_fn(|i| {
        let o = i * 8;
        u64::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]])
    })
}

/// `(x + ror64(x, 32)) >> 32`: the 64-bit sum folded to the 32-bit `__wsum`.
const fn finalize(x: u64) -> u32 {
    (x.wrapping_add(x.rotate_right(32)) >> 32) as u32
}

/// `csum_partial(buf, len, seed)` exactly as x86-64 Linux computes it: two interleaved
/// 40-byte accumulators while 80 bytes remain, one more 40-byte step, then 32/16/8-byte steps
/// and the zero-extended tail.
#[must_use]
pub fn csum_partial(buf: &[u8], seed: u32) -> u32 {
    let mut sum = u64::from(seed);
    let mut b = buf;
    if b.len() >= 80 {
        let mut sum2 = 0u64;
        while b.len() >= 80 {
            sum = adc_chain(sum, &words::<5>(&b[..40]));
            sum2 = adc_chain(sum2, &words::<5>(&b[40..80]));
            b = &b[80..];
        }
        sum = adc_chain(sum, &[sum2]);
    }
    if b.len() >= 40 {
        sum = adc_chain(sum, &words::<5>(&b[..40]));
        b = &b[40..];
        if b.is_empty() {
            return finalize(sum);
        }
    }
    if b.len() & 32 != 0 {
        sum = adc_chain(sum, &words::<4>(&b[..32]));
        b = &b[32..];
    }
    if b.len() & 16 != 0 {
        sum = adc_chain(sum, &words::<2>(&b[..16]));
        b = &b[16..];
    }
    if b.len() & 8 != 0 {
        sum = adc_chain(sum, &words::<1>(&b[..8]));
        b = &b[8..];
    }
    if !b.is_empty() {
        let mut t = [0u8; 8];
        t[..b.len()].copy_from_slice(b);
        sum = adc_chain(sum, &[u64::from_le_bytes(t)]);
    }
    finalize(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(csum_partial(&[], 0), 0);
        assert_eq!(csum_partial(&[0; 4096], 0), 0);
        assert_eq!(csum_partial(&[0; 64], 0x1234_5678), 0x1234_5678);
        // One word 0x0000_0002_0000_0001 folds to 3 (tail path: 8 bytes).
        assert_eq!(csum_partial(&[1, 0, 0, 0, 2, 0, 0, 0], 0), 3);
        // All ones stays all ones (-0), never 0, in ones' complement.
        assert_eq!(csum_partial(&[0xff; 16], 0), 0xffff_ffff);
        // Carry out of the 64-bit sum wraps around: (2^64-1) + 1 = 1.
        let mut b = [0xffu8; 16];
        b[8..].copy_from_slice(&1u64.to_le_bytes());
        assert_eq!(csum_partial(&b, 0), 1);
        // Carry out of the fold wraps around: 0xffff_ffff + 0x0000_0002 = 2.
        assert_eq!(csum_partial(&[2, 0, 0, 0, 0xff, 0xff, 0xff, 0xff], 0), 2);
        // A tail shorter than a word is zero-extended.
        assert_eq!(csum_partial(&[1, 0, 0, 0, 2], 0), 3);
        // Chains of all-ones words: M + M = 2^65 - 2 -> 0xff..fe carry 1 -> 0xff..ff.
        assert_eq!(adc_chain(u64::MAX, &[u64::MAX, u64::MAX]), u64::MAX);
        assert_eq!(adc_chain(u64::MAX - 1, &[1, u64::MAX]), u64::MAX);
        assert_eq!(adc_chain(0, &[u64::MAX, 1]), 1);
    }

    #[test]
    fn chaining_over_pieces_matches_one_pass() {
        let data: alloc::vec::Vec<u8> = (0..3 * 4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let whole = csum_partial(&data, 0);
        let mut s = 0;
        for piece in data.chunks(4096) {
            s = csum_partial(piece, s);
        }
        assert_eq!(s, whole);
        // The sum is congruent to the byte-pair sum modulo 2^32-1 (the defining property).
        let m = (1u128 << 32) - 1;
        let total: u128 = data.chunks_exact(4).map(|w| u128::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))).sum();
        assert_eq!(u128::from(whole) % m, total % m);
    }
}
