//! gzip encoding of request bodies, with libdeflate. A request body is compressed whole, in
//! one call: libdeflate's whole-buffer compressor needs no streaming state, and on the bodies
//! irisd sends it takes about half the instructions of zlib-rs (BENCHMARKS.md, "gzip
//! backends": 10-user bodies at level 6, 197 k against 475 k instructions each; 1000-user
//! bodies at level 6, 12.4 M against 17.4 M) and compresses as well or better. Each thread
//! keeps one compressor per level (creating one allocates its tables). The output is a
//! standard single-member gzip file (RFC 1952) with no name and no time. Pure: no I/O.
//! Decoding (of answers and intake bodies) stays with flate2, which streams with a bound.

use std::cell::RefCell;

use flate2::Compression;
use libdeflater::{CompressionLvl, Compressor};

thread_local! {
    /// Compressors of this thread, by level (a thread sees at most a few levels).
    static COMPRESSORS: RefCell<Vec<(u32, Compressor)>> = const { RefCell::new(Vec::new()) };
}

/// Appends `input`, gzip-encoded at `level` (1–9), to `out`.
pub fn encode_into(input: &[u8], level: Compression, out: &mut Vec<u8>) {
    let level = level.level().clamp(1, 9);
    COMPRESSORS.with(|cell| {
        let mut list = cell.borrow_mut();
        let i = match list.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                let lvl = CompressionLvl::new(level as i32).expect("1 to 9 are valid levels");
                list.push((level, Compressor::new(lvl)));
                list.len() - 1
            }
        };
        let c = &mut list[i].1;
        let at = out.len();
        out.resize(at + c.gzip_compress_bound(input.len()), 0);
        let n = c
            .gzip_compress(input, &mut out[at..])
            .expect("the bound leaves room for any input");
        out.truncate(at + n);
    });
}

/// `input` gzip-encoded at `level`, in a new buffer.
pub fn encode(input: &[u8], level: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(input, level, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn round_trips_at_every_level_and_size_with_one_reused_compressor() {
        let mut rng = fastrand::Rng::with_seed(7);
        for level in [1, 6, 9] {
            // Reuse across very different sizes: a stale state would corrupt the next body.
            for size in [0usize, 1, 100, 70_000, 3, 1_000_000, 10] {
                let input: Vec<u8> = (0..size)
                    .map(|_| b"0123456789abcdef\"{},:"[rng.usize(..21)])
                    .collect();
                let gz = encode(&input, Compression::new(level));
                assert_eq!(gunzip(&gz), input, "level {level}, {size} bytes");
            }
        }
    }

    #[test]
    fn a_reused_compressor_gives_the_bytes_of_a_fresh_one() {
        let input = br#"{"ProcessTime":"Thu Jan 01 00:00:00 UTC 1970","Users":[]}"#.repeat(50);
        let other = vec![b'x'; 100_000];
        for level in [
            Compression::fast(),
            Compression::default(),
            Compression::best(),
        ] {
            // A fresh thread has a fresh compressor.
            let input2 = input.clone();
            let fresh = std::thread::spawn(move || encode(&input2, level))
                .join()
                .unwrap();
            let _ = encode(&other, level);
            assert_eq!(encode(&input, level), fresh);
            assert_eq!(&fresh[..3], &[0x1f, 0x8b, 8], "a gzip member, deflate");
            assert_eq!(
                &fresh[fresh.len() - 4..],
                &(input.len() as u32).to_le_bytes()
            );
            // flate2's own encoder agrees on what the bytes mean.
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(&input).unwrap();
            assert_eq!(gunzip(&e.finish().unwrap()), gunzip(&fresh));
        }
    }
}
