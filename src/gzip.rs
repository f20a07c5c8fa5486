//! gzip encoding of request bodies with the compressor's state reused. Setting up a deflate
//! stream allocates and clears several hundred kilobytes of tables; at 10 users per request
//! that set-up costs as much as the compression itself. Each thread keeps one compressor per
//! level and resets it between bodies (`deflateReset`), so a body costs only its own
//! compression. The output is a standard single-member gzip file (RFC 1952): a 10-byte header
//! (no name, no time), the raw deflate stream, CRC-32 and length. Pure: no I/O.

use std::cell::RefCell;

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

thread_local! {
    /// Compressors of this thread, by level (a thread sees at most a few levels).
    static COMPRESSORS: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// The gzip header flate2's `GzEncoder` writes: no file name, no modification time, the
/// "extra flags" for the level, OS unknown.
fn header(level: Compression) -> [u8; 10] {
    let xfl = if level.level() >= Compression::best().level() {
        2
    } else if level.level() <= Compression::fast().level() {
        4
    } else {
        0
    };
    [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

/// Appends `input`, gzip-encoded at `level`, to `out`.
pub fn encode_into(input: &[u8], level: Compression, out: &mut Vec<u8>) {
    out.extend_from_slice(&header(level));
    COMPRESSORS.with(|cell| {
        let mut list = cell.borrow_mut();
        let i = match list.iter().position(|(l, _)| *l == level.level()) {
            Some(i) => i,
            None => {
                list.push((level.level(), Compress::new(level, false)));
                list.len() - 1
            }
        };
        let c = &mut list[i].1;
        c.reset();
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = c.total_in();
            let status = c
                .compress_vec(&input[consumed..], out, FlushCompress::Finish)
                .expect("deflate into a Vec with spare capacity cannot fail");
            consumed += (c.total_in() - before) as usize;
            if status == Status::StreamEnd {
                break;
            }
        }
    });
    let mut crc = Crc::new();
    crc.update(input);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
}

/// `input` gzip-encoded at `level`, in a new buffer sized from a typical ratio.
pub fn encode(input: &[u8], level: Compression) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 3 + 64);
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
    fn a_reset_compressor_gives_the_bytes_of_a_fresh_one() {
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
            assert_eq!(&fresh[..10], &header(level));
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
