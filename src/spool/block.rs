//! How a destination's events sit in one spool row (pure, no I/O): an [`EventBlock`] is the
//! events of one intake request for one destination, each length-prefixed, in consecutive ids;
//! [`decode_block`] reads one back as slices of a single buffer; [`DoneBits`] is the bit set that
//! says which of a block's events are done (delivered or dead-lettered).

use bytes::Bytes;

/// Events of one destination as the spool stores them in one row: each event's length (u32,
/// little endian) followed by its bytes. The intake renders events straight into it, so an
/// event costs no allocation of its own between the request and the disk.
#[derive(Debug, Default, Clone)]
pub struct EventBlock {
    pub(super) body: Vec<u8>,
    count: usize,
}

impl EventBlock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A block of these events.
    pub fn from_bodies(bodies: &[Bytes]) -> Self {
        let mut block = Self {
            body: Vec::with_capacity(bodies.iter().map(|b| 4 + b.len()).sum()),
            count: 0,
        };
        for b in bodies {
            block.push(b);
        }
        block
    }

    pub fn push(&mut self, event: &[u8]) {
        self.body
            .extend_from_slice(&(event.len() as u32).to_le_bytes());
        self.body.extend_from_slice(event);
        self.count += 1;
    }

    /// Appends the event `render` writes; returns it (as written in the block). If `render`
    /// fails, the block is left as it was.
    pub fn push_with<E>(
        &mut self,
        render: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<&[u8], E> {
        let at = self.body.len();
        self.body.extend_from_slice(&[0; 4]);
        if let Err(e) = render(&mut self.body) {
            self.body.truncate(at);
            return Err(e);
        }
        let len = (self.body.len() - at - 4) as u32;
        self.body[at..at + 4].copy_from_slice(&len.to_le_bytes());
        self.count += 1;
        Ok(&self.body[at + 4..])
    }

    /// Events in the block.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the events themselves (what the spool's bounds count).
    pub fn event_bytes(&self) -> u64 {
        (self.body.len() - 4 * self.count) as u64
    }
}

/// A block's events (slices of `body`, no copies); `None` unless it holds exactly `count`.
pub(super) fn decode_block(body: &Bytes, count: usize) -> Option<Vec<Bytes>> {
    let mut events = Vec::with_capacity(count);
    let mut at = 0usize;
    while at < body.len() {
        let len = u32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let start = at + 4;
        let end = start.checked_add(len).filter(|&e| e <= body.len())?;
        events.push(body.slice(start..end));
        at = end;
    }
    (events.len() == count).then_some(events)
}

/// Which events of a block are done (delivered or dead-lettered): a bit per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DoneBits {
    words: Vec<u64>,
    pub(super) done: u32,
    pub(super) count: u32,
}

impl DoneBits {
    pub(super) fn new(count: u32) -> Self {
        Self {
            words: vec![0; (count as usize).div_ceil(64)],
            done: 0,
            count,
        }
    }

    /// Read back from `block_done`; `None` if the stored bits do not fit the block.
    pub(super) fn from_stored(count: u32, bits: &[u8]) -> Option<Self> {
        let mut d = Self::new(count);
        if bits.len() != d.words.len() * 8 {
            return None;
        }
        for (w, chunk) in d.words.iter_mut().zip(bits.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        d.done = d.words.iter().map(|w| w.count_ones()).sum();
        (d.done <= count).then_some(d)
    }

    pub(super) fn stored(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub(super) fn is_done(&self, i: u32) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Marks event `i`; marking one twice counts once.
    pub(super) fn mark(&mut self, i: u32) {
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        if self.words[w] & b == 0 {
            self.words[w] |= b;
            self.done += 1;
        }
    }

    pub(super) fn complete(&self) -> bool {
        self.done == self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_bodies_round_trip_and_malformed_ones_are_refused() {
        let events = vec![
            Bytes::new(),
            Bytes::from_static(b"x"),
            Bytes::from_static(b"event-0"),
        ];
        let body = Bytes::from(EventBlock::from_bodies(&events).body);
        assert_eq!(decode_block(&body, 3).unwrap(), events);
        assert!(decode_block(&body, 2).is_none(), "count must match");
        assert!(
            decode_block(&body.slice(..body.len() - 1), 3).is_none(),
            "truncated"
        );
        assert!(decode_block(&Bytes::from_static(&[9, 0, 0, 0, 1]), 1).is_none());
        // Rendered in place: a failed render leaves the block as it was.
        let mut block = EventBlock::new();
        assert_eq!(
            block
                .push_with(|b| {
                    b.extend_from_slice(b"ab");
                    Ok::<_, ()>(())
                })
                .unwrap(),
            b"ab"
        );
        assert!(block
            .push_with(|b| {
                b.extend_from_slice(b"half");
                Err("bad")
            })
            .is_err());
        block.push(b"cde");
        assert_eq!((block.len(), block.event_bytes()), (2, 5));
        assert_eq!(
            decode_block(&Bytes::from(block.body), 2).unwrap(),
            [Bytes::from_static(b"ab"), Bytes::from_static(b"cde")]
        );
        let mut bits = DoneBits::new(70);
        bits.mark(69);
        bits.mark(69);
        bits.mark(0);
        assert_eq!(bits.done, 2);
        assert_eq!(
            DoneBits::from_stored(70, &bits.stored()),
            Some(bits.clone())
        );
        assert!(DoneBits::from_stored(200, &bits.stored()).is_none());
    }
}
