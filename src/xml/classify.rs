//! A structural classifier: one 64-byte block of a stream in, one bitmask
//! per byte class out (bit `i` set when byte `i` of the block is of that
//! class), as simdjson does for JSON.
//!
//! The fast tokenizer's scans stop at a handful of bytes (`<`, `&`, `]`
//! in text; the quote, `&` and `<` in attribute values; `>` closing a
//! tag) and its validation pass looks for control characters and
//! non-ASCII bytes. Classifying a block once gives every one of those
//! answers from a few SIMD compares, where a `memchr` per question sets up
//! its own search each time; the next stop is then a `trailing_zeros` on
//! an OR of masks.
//!
//! Measured (`cargo bench --bench framer`, fast/frame, the binary before
//! and after in one run, 2026-12-06): with [`find`] in place of `memchr3`
//! for text runs and attribute values the framer ran mixed 492 → 451
//! MB/s, large 1.62 → 1.32 GB/s, small-iq 241 → 208 MB/s; with a cache
//! of the last block (so the attribute values of one start tag share one
//! classification) mixed 497 → 496, large 1.58 → 1.30 GB/s, small-iq
//! 243 → 242. `memchr`'s AVX2 loop looks for three bytes where this
//! computes eight classes, and on short runs the framer's time is per
//! stanza work (names, namespaces, decoded routing values), not the scan.
//! So the tokenizer keeps `memchr`; this stays, tested, for a fused
//! validate-and-classify pass to build on.
//!
//! The SIMD paths are picked at run time: AVX2 where the CPU has it
//! (`is_x86_feature_detected!`), SSE2 otherwise on x86-64 (part of that
//! architecture's baseline), and a scalar loop on every other target.
//! [`classify_scalar`] is the reference the SIMD paths are tested against
//! (unit proptest below, and the `classify_vs_scalar` fuzz target).

/// Bytes per block: one `u64` mask bit each.
pub const BLOCK: usize = 64;

/// The classes of the 64 bytes of one block, one bit per byte (bit 0 is
/// the block's first byte).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masks {
    /// `<`
    pub lt: u64,
    /// `>`
    pub gt: u64,
    /// `&`
    pub amp: u64,
    /// `"`
    pub quot: u64,
    /// `'`
    pub apos: u64,
    /// `]`
    pub rbracket: u64,
    /// A byte below 0x20 other than TAB, LF and CR: XML forbids it.
    pub ctrl: u64,
    /// A byte of 0x80 or above: part of a multi-byte UTF-8 sequence (or
    /// invalid), which the UTF-8 check must look at.
    pub high: u64,
}

impl Masks {
    /// Where text content stops: `<`, `&` or `]`.
    pub fn text_stops(&self) -> u64 {
        self.lt | self.amp | self.rbracket
    }

    /// Where an attribute value quoted with `quote` stops: the quote,
    /// `&` or `<`.
    pub fn value_stops(&self, quote: u8) -> u64 {
        let q = if quote == b'"' { self.quot } else { self.apos };
        q | self.amp | self.lt
    }
}

/// Classifies the 64 bytes at `data[at..]`. Bytes past the end of `data`
/// count as spaces (in no class), so a short tail can be classified too.
pub fn classify_at(data: &[u8], at: usize) -> Masks {
    match data.get(at..at.saturating_add(BLOCK)) {
        Some(block) => classify(block.try_into().unwrap_or(&[b' '; BLOCK])),
        None => {
            let mut block = [b' '; BLOCK];
            let rest = data.get(at..).unwrap_or(&[]);
            block[..rest.len()].copy_from_slice(rest);
            classify(&block)
        }
    }
}

/// The first offset at or after `from` whose byte is one of `stops`
/// (masks picked from a block's classes, e.g. [`Masks::text_stops`]),
/// block by block; None when `data` ends first. The padding past the end
/// is in no class, so a found offset is always inside `data`.
#[inline]
pub fn find(data: &[u8], from: usize, stops: impl Fn(&Masks) -> u64) -> Option<usize> {
    let mut at = from;
    while at < data.len() {
        let bits = stops(&classify_at(data, at));
        if bits != 0 {
            return Some(at + bits.trailing_zeros() as usize);
        }
        at += BLOCK;
    }
    None
}

/// Classifies one block with the best path this CPU has.
#[inline]
pub fn classify(block: &[u8; BLOCK]) -> Masks {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked on the line above), the
            // only requirement of `x86::classify_avx2`'s `target_feature`.
            return unsafe { x86::classify_avx2(block) };
        }
        x86::classify_sse2(block)
    }
    #[cfg(not(target_arch = "x86_64"))]
    classify_scalar(block)
}

/// The reference: one byte at a time.
pub fn classify_scalar(block: &[u8; BLOCK]) -> Masks {
    let mut m = Masks::default();
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        match b {
            b'<' => m.lt |= bit,
            b'>' => m.gt |= bit,
            b'&' => m.amp |= bit,
            b'"' => m.quot |= bit,
            b'\'' => m.apos |= bit,
            b']' => m.rbracket |= bit,
            9 | 10 | 13 => {}
            0..0x20 => m.ctrl |= bit,
            0x80.. => m.high |= bit,
            _ => {}
        }
    }
    m
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Masks, BLOCK};

    /// 16 bytes at once with SSE2, four times per block. SSE2 is part of
    /// the x86-64 baseline, so no run-time check is needed.
    pub(super) fn classify_sse2(block: &[u8; BLOCK]) -> Masks {
        let mut m = Masks::default();
        for lane in 0..BLOCK / 16 {
            // SAFETY: `lane * 16 + 16 <= BLOCK`, so the unaligned 16-byte
            // load reads inside `block`; the intrinsics only need SSE2,
            // which every x86-64 CPU has.
            let bits = unsafe {
                let v = _mm_loadu_si128(block.as_ptr().add(lane * 16).cast());
                let eq = |c: u8| _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8)));
                let high = _mm_movemask_epi8(v);
                // Signed compare: below 0x20 or 0x80 and above.
                let low = _mm_movemask_epi8(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
                let allowed = eq(9) | eq(10) | eq(13);
                [
                    eq(b'<'),
                    eq(b'>'),
                    eq(b'&'),
                    eq(b'"'),
                    eq(b'\''),
                    eq(b']'),
                    low & !high & !allowed,
                    high,
                ]
            };
            merge(&mut m, bits.map(|b| u64::from(b as u16)), lane * 16);
        }
        m
    }

    /// 32 bytes at once with AVX2, twice per block.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn classify_avx2(block: &[u8; BLOCK]) -> Masks {
        let mut m = Masks::default();
        for half in 0..BLOCK / 32 {
            // SAFETY: `half * 32 + 32 <= BLOCK`, so the unaligned 32-byte
            // load reads inside `block`; AVX2 is there (this function's
            // contract).
            let bits = unsafe {
                let v = _mm256_loadu_si256(block.as_ptr().add(half * 32).cast());
                let eq =
                    |c: u8| _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8)));
                let high = _mm256_movemask_epi8(v);
                // Signed compare: 0x20 greater than the byte means below
                // 0x20 or 0x80 and above.
                let low = _mm256_movemask_epi8(_mm256_cmpgt_epi8(_mm256_set1_epi8(0x20), v));
                let allowed = eq(9) | eq(10) | eq(13);
                [
                    eq(b'<'),
                    eq(b'>'),
                    eq(b'&'),
                    eq(b'"'),
                    eq(b'\''),
                    eq(b']'),
                    low & !high & !allowed,
                    high,
                ]
            };
            merge(&mut m, bits.map(|b| u64::from(b as u32)), half * 32);
        }
        m
    }

    /// ORs one lane's masks into the block's, shifted to the lane's place.
    #[inline(always)]
    fn merge(m: &mut Masks, bits: [u64; 8], shift: usize) {
        let [lt, gt, amp, quot, apos, rbracket, ctrl, high] = bits;
        m.lt |= lt << shift;
        m.gt |= gt << shift;
        m.amp |= amp << shift;
        m.quot |= quot << shift;
        m.apos |= apos << shift;
        m.rbracket |= rbracket << shift;
        m.ctrl |= ctrl << shift;
        m.high |= high << shift;
    }

    /// The SSE2 path whatever the CPU has: the tests hold both SIMD
    /// paths against the scalar one.
    pub fn sse2(block: &[u8; BLOCK]) -> Masks {
        classify_sse2(block)
    }
}

/// One way to classify a block.
pub type Path = fn(&[u8; BLOCK]) -> Masks;

/// Every path this CPU can run, by name: the proptest and the fuzz target
/// check each against [`classify_scalar`].
pub fn paths() -> Vec<(&'static str, Path)> {
    let mut v: Vec<(&'static str, Path)> =
        vec![("scalar", classify_scalar), ("dispatch", classify)];
    #[cfg(target_arch = "x86_64")]
    v.push(("sse2", x86::sse2));
    v
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn each_class_lands_on_its_bit() {
        let mut block = [b'a'; BLOCK];
        let put = [
            (0, b'<'),
            (15, b'>'),
            (16, b'&'),
            (31, b'"'),
            (32, b'\''),
            (47, b']'),
            (48, 0x01),
            (49, b'\t'),
            (62, 0xC3),
            (63, 0xFF),
        ];
        for (i, b) in put {
            block[i] = b;
        }
        let want = Masks {
            lt: 1,
            gt: 1 << 15,
            amp: 1 << 16,
            quot: 1 << 31,
            apos: 1 << 32,
            rbracket: 1 << 47,
            ctrl: 1 << 48,
            high: (1 << 62) | (1 << 63),
        };
        for (name, f) in paths() {
            assert_eq!(f(&block), want, "{name}");
        }
    }

    #[test]
    fn a_short_tail_is_padded_with_nothing() {
        let m = classify_at(b"ab<", 1);
        assert_eq!(m.lt, 0b10);
        assert_eq!(m.text_stops(), 0b10);
        assert_eq!(classify_at(b"ab", 5), Masks::default());
    }

    proptest! {
        #[test]
        fn simd_matches_scalar(data in proptest::collection::vec(any::<u8>(), 0..300),
                               at in 0usize..320) {
            let mut block = [b' '; BLOCK];
            let rest = data.get(at.min(data.len())..).unwrap_or(&[]);
            let n = rest.len().min(BLOCK);
            block[..n].copy_from_slice(&rest[..n]);
            let want = classify_scalar(&block);
            for (name, f) in paths() {
                prop_assert_eq!(f(&block), want, "{}", name);
            }
            prop_assert_eq!(classify_at(&data, at), want);
        }

        #[test]
        fn find_is_the_first_stop(data in proptest::collection::vec(
                                      prop_oneof![Just(b'<'), Just(b'&'), Just(b'\''), Just(b'a'), any::<u8>()],
                                      0..300),
                                  from in 0usize..320) {
            let naive = |set: &[u8]| {
                data.iter().enumerate().skip(from).find(|(_, b)| set.contains(b)).map(|(i, _)| i)
            };
            prop_assert_eq!(find(&data, from, Masks::text_stops), naive(b"<&]"));
            prop_assert_eq!(find(&data, from, |m| m.value_stops(b'\'')), naive(b"'&<"));
            prop_assert_eq!(find(&data, from, |m| m.value_stops(b'"')), naive(b"\"&<"));
        }
    }
}
