//! The bounded buffer a shell job's output is captured in: it keeps the tail.

/// Keeps the last `limit` bytes written to it, and counts the bytes it dropped before them.
///
/// It holds at most twice `limit` (plus one write) at any time: it drops the excess in one move
/// once it has grown to twice the limit, so that dropping costs little per byte.
#[derive(Debug)]
pub(crate) struct TailBuffer {
    bytes: Vec<u8>,
    dropped: u64,
    limit: usize,
}

impl TailBuffer {
    /// An empty buffer keeping the last `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        TailBuffer {
            bytes: Vec::new(),
            dropped: 0,
            limit,
        }
    }

    /// Appends `data`.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if data.len() >= self.limit {
            self.dropped += (self.bytes.len() + data.len() - self.limit) as u64;
            self.bytes.clear();
            self.bytes
                .extend_from_slice(&data[data.len() - self.limit..]);
            return;
        }
        self.bytes.extend_from_slice(data);
        if self.bytes.len() >= 2 * self.limit {
            self.drop_excess();
        }
    }

    /// Whether bytes were, or will be, dropped.
    pub(crate) fn truncated(&self) -> bool {
        self.dropped > 0 || self.bytes.len() > self.limit
    }

    /// Cuts the buffer down to its last `limit` bytes.
    fn drop_excess(&mut self) {
        let excess = self.bytes.len().saturating_sub(self.limit);
        if excess > 0 {
            self.bytes.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The output as text: invalid UTF-8 replaced, whitespace trimmed at both ends (as amboy
    /// does), and, when earlier bytes were dropped, a first line saying how many.
    pub(crate) fn into_text(mut self) -> String {
        self.drop_excess();
        let mut kept: &[u8] = &self.bytes;
        if self.dropped > 0 {
            // The cut may have split a character: skip its continuation bytes.
            let partial = kept
                .iter()
                .take(3)
                .take_while(|&&byte| byte & 0b1100_0000 == 0b1000_0000)
                .count();
            kept = &kept[partial..];
            self.dropped += partial as u64;
        }
        let text = String::from_utf8_lossy(kept);
        let text = text.trim();
        if self.dropped == 0 {
            text.to_owned()
        } else {
            format!(
                "[output truncated: the first {} bytes were dropped, the last {} bytes follow]\n{text}",
                self.dropped,
                kept.len()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_and_trimmed() {
        let mut buffer = TailBuffer::new(16);
        buffer.push(b"  hello\n");
        buffer.push(b"world \n");
        assert_eq!(buffer.into_text(), "hello\nworld");
    }

    #[test]
    fn long_output_keeps_the_tail_in_small_writes() {
        let mut buffer = TailBuffer::new(10);
        for n in 0..100u8 {
            buffer.push(&[b'a' + n % 26]);
            assert!(buffer.bytes.len() <= 20);
        }
        let text = buffer.into_text();
        assert_eq!(
            text,
            "[output truncated: the first 90 bytes were dropped, the last 10 bytes follow]\nmnopqrstuv"
        );
    }

    #[test]
    fn a_write_longer_than_the_limit_keeps_its_tail() {
        let mut buffer = TailBuffer::new(4);
        buffer.push(b"ab");
        buffer.push(b"0123456789");
        assert_eq!(buffer.dropped, 8);
        assert!(buffer.into_text().ends_with("\n6789"));
    }

    #[test]
    fn a_cut_character_is_skipped() {
        let mut buffer = TailBuffer::new(5);
        // "é" is two bytes: the cut falls inside the first one.
        buffer.push("éééé".as_bytes());
        let text = buffer.into_text();
        assert!(text.ends_with("\néé"), "{text}");
        assert!(text.contains("the first 4 bytes were dropped, the last 4 bytes"));
    }

    #[test]
    fn exactly_the_limit_is_not_truncated() {
        let mut buffer = TailBuffer::new(4);
        buffer.push(b"abcd");
        assert_eq!(buffer.into_text(), "abcd");
    }
}
