//! SHA-256 and HMAC-SHA256 written for size: about 2 KB of wasm, no tables but the
//! round constants. Constant-time by construction (no branch or index depends on the data).

use crate::encoding::Mac;

const BLOCK: usize = 64;

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

const INITIAL: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// One block into the state: the whole 64-word message schedule first, then the rounds eight
/// at a time (after eight, the working variables are back in their places, so no round moves
/// them): 1.2 KB of wasm. Sixteen rounds per pass with the schedule kept in locals ran
/// ~10% faster under V8 but took 2.9 KB, a fifth of the web package gzipped; that package is
/// still well over WebCrypto's speed (bench/RESULTS.md), and every page downloads the bytes.
fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    let mut w = [0u32; 64];
    // `% 64` only tells the compiler what it cannot see (16 words), sparing a panic path.
    for (i, word) in block.chunks_exact(4).enumerate() {
        w[i % 64] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    }
    for i in 16..64 {
        let (w2, w15) = (w[i - 2], w[i - 15]);
        let s1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
        let s0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
        w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
    }
    // Each round adds its constant and its word: added here, in one pass, they are one load.
    for (w, k) in w.iter_mut().zip(&K) {
        *w = w.wrapping_add(*k);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    // Eight rounds per pass over arrays of eight, so every index below is a constant. Ch and
    // Maj in their three- and four-operation forms (FIPS 180-4 writes them with five).
    for w in w.as_chunks::<8>().0 {
        macro_rules! round {
            ($a:ident, $b:ident, $c:ident, $d:ident, $e:ident, $f:ident, $g:ident, $h:ident, $r:literal) => {
                let t1 = $h
                    .wrapping_add($e.rotate_right(6) ^ $e.rotate_right(11) ^ $e.rotate_right(25))
                    .wrapping_add($g ^ ($e & ($f ^ $g)))
                    .wrapping_add(w[$r]);
                let t2 = ($a.rotate_right(2) ^ $a.rotate_right(13) ^ $a.rotate_right(22))
                    .wrapping_add(($a & $b) | ($c & ($a | $b)));
                $d = $d.wrapping_add(t1);
                $h = t1.wrapping_add(t2);
            };
        }
        round!(a, b, c, d, e, f, g, h, 0);
        round!(h, a, b, c, d, e, f, g, 1);
        round!(g, h, a, b, c, d, e, f, 2);
        round!(f, g, h, a, b, c, d, e, 3);
        round!(e, f, g, h, a, b, c, d, 4);
        round!(d, e, f, g, h, a, b, c, 5);
        round!(c, d, e, f, g, h, a, b, 6);
        round!(b, c, d, e, f, g, h, a, 7);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

/// A SHA-256 computation in progress.
#[derive(Clone)]
struct Sha256 {
    state: [u32; 8],
    buffer: [u8; BLOCK],
    buffered: usize,
    length: u64,
}

impl Sha256 {
    fn new() -> Self {
        Sha256 { state: INITIAL, buffer: [0; BLOCK], buffered: 0, length: 0 }
    }

    // No slicing by computed bounds and no `copy_from_slice` here or in `finalize`: each links
    // a panic path with its message and location into the web build (~1 KB in all). Bytes go
    // into the partial block through zips, which need no bounds checks.
    fn update(&mut self, mut data: &[u8]) {
        self.length = self.length.wrapping_add(data.len() as u64);
        if self.buffered > 0 {
            let taken = fill(self.buffer.iter_mut().skip(self.buffered), data);
            self.buffered += taken;
            data = data.get(taken..).unwrap_or_default();
            if self.buffered < BLOCK {
                return;
            }
            compress(&mut self.state, &self.buffer);
            self.buffered = 0;
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            // Always a whole block (`chunks_exact`); borrowed, not copied: a copy is a call into
            // the engine (`memory.copy`) per block.
            if let Ok(block) = block.try_into() {
                compress(&mut self.state, block);
            }
        }
        self.buffered = fill(self.buffer.iter_mut(), blocks.remainder());
    }

    fn finalize(mut self) -> Mac {
        const PAD: [u8; BLOCK] = {
            let mut pad = [0; BLOCK];
            pad[0] = 0x80;
            pad
        };
        let bits = self.length.wrapping_mul(8);
        // The 0x80, then zeros up to 8 bytes short of a block boundary, then the bit length.
        let zeros = (BLOCK + BLOCK - 8 - 1 - self.buffered) % BLOCK;
        self.update(PAD.get(..1 + zeros).unwrap_or(&PAD));
        self.update(&bits.to_be_bytes());
        // Big-endian words; `% 8` only tells the compiler what it cannot see (i < 32).
        core::array::from_fn(|i| (self.state[i / 4 % 8] >> (24 - 8 * (i % 4))) as u8)
    }
}

/// Copies as much of `data` as `into` has room for; how many bytes that was.
fn fill<'a>(into: impl Iterator<Item = &'a mut u8>, data: &[u8]) -> usize {
    let mut n = 0;
    for (slot, &byte) in into.zip(data) {
        *slot = byte;
        n += 1;
    }
    n
}

/// A keyed HMAC-SHA256 state: clone it, feed it, finish it. Both pads are hashed at keying,
/// so a MAC costs only the message and two finishing blocks.
#[derive(Clone)]
pub(crate) struct HmacSha256 {
    inner: Sha256,
    outer: Sha256,
}

impl HmacSha256 {
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut block = [0u8; BLOCK];
        let hashed;
        let key = if key.len() > BLOCK {
            let mut hash = Sha256::new();
            hash.update(key);
            hashed = hash.finalize();
            &hashed[..]
        } else {
            key
        };
        for (b, k) in block.iter_mut().zip(key) {
            *b = *k;
        }
        let pad = |byte: u8| {
            let mut hash = Sha256::new();
            hash.update(&block.map(|k| k ^ byte));
            hash
        };
        HmacSha256 { inner: pad(0x36), outer: pad(0x5c) }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    pub(crate) fn finalize(self) -> Mac {
        let mut outer = self.outer;
        outer.update(&self.inner.finalize());
        outer.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::hmac::{Hmac, Mac as _};
    use proptest::prelude::*;
    use std::vec::Vec;

    fn reference(key: &[u8], parts: &[&[u8]]) -> Mac {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    fn compact(key: &[u8], parts: &[&[u8]]) -> Mac {
        let mut mac = HmacSha256::new(key);
        for part in parts {
            mac.update(part);
        }
        mac.finalize()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    /// RFC 4231, test cases 1, 2, 6 and 7 (keys shorter than, and longer than, a block).
    #[test]
    fn rfc_4231_vectors() {
        let cases: [(&[u8], &[u8], &str); 4] = [
            (&[0x0b; 20], b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                &[0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.",
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(compact(key, &[data]).to_vec(), hex(expected));
        }
    }

    /// Every padding boundary: messages of 0..=200 bytes, where the length field fits in the
    /// last block or spills into one more.
    #[test]
    fn matches_rustcrypto_at_every_length_around_the_block_boundaries() {
        let data: Vec<u8> = (0..=200u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..=data.len() {
            assert_eq!(
                compact(b"whsec_test", &[&data[..len]]),
                reference(b"whsec_test", &[&data[..len]]),
                "{len}"
            );
        }
    }

    proptest! {
        #[test]
        fn matches_rustcrypto_for_any_key_and_any_split(
            key in proptest::collection::vec(any::<u8>(), 0..150),
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut start = 0;
            for cut in cuts {
                parts.push(&data[start..cut]);
                start = cut;
            }
            parts.push(&data[start..]);
            prop_assert_eq!(compact(&key, &parts), reference(&key, &[&data]));
        }
    }
}
