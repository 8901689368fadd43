//! Stream framing (SPEC R1, H4): a byte stream cut into SIP messages by Content-Length, with
//! RFC 5626 keep-alive pings recognized between them. Every stream transport uses this one
//! `Framer`; it is linear in the bytes received: the search for the end of the header section
//! resumes where the previous read left it instead of rescanning the buffer (a peer dribbling
//! a large header one byte per read once cost a rescan of everything per byte).

use crate::sip::wire::parse_u32;

/// What the start of the buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Incomplete,
    /// A CRLFCRLF ping (RFC 5626 §3.5.1): answer CRLF.
    Ping,
    /// A whole message.
    Message(Vec<u8>),
    /// A complete header section (these bytes) without Content-Length: the framing is lost.
    NoLength(Vec<u8>),
    /// The message would exceed the size limit; the bytes held are its start.
    TooLarge(Vec<u8>),
}

pub struct Framer {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for the end of the header section without finding it.
    searched: usize,
    max: usize,
}

impl Framer {
    pub fn new(max_message_size: usize) -> Framer {
        Framer {
            buf: Vec::with_capacity(4096),
            searched: 0,
            max: max_message_size,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Whether part of a message (not just line ends) is waiting for more bytes.
    pub fn is_partial(&self) -> bool {
        self.buf.iter().any(|&b| b != b'\r' && b != b'\n')
    }

    /// The next frame; call again until `Incomplete`.
    pub fn next_frame(&mut self) -> Frame {
        if self.buf.starts_with(b"\r\n\r\n") {
            self.consume(4);
            return Frame::Ping;
        }
        let blank = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if blank > 0 {
            if blank == self.buf.len() {
                return Frame::Incomplete;
            }
            // Stray line ends before a message: skip them.
            self.consume(blank);
        }
        let from = self.searched.saturating_sub(3);
        let Some(at) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") else {
            self.searched = self.buf.len();
            return if self.buf.len() > self.max {
                Frame::TooLarge(self.take(self.max))
            } else {
                Frame::Incomplete
            };
        };
        let end = from + at;
        self.searched = end;
        let head_len = end + 4;
        let Some(length) = content_length(&self.buf[..end]) else {
            return Frame::NoLength(self.take(head_len));
        };
        let total = head_len + length as usize;
        if total > self.max {
            let held = self.buf.len().min(self.max);
            Frame::TooLarge(self.take(held))
        } else if self.buf.len() < total {
            Frame::Incomplete
        } else {
            Frame::Message(self.take(total))
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let out = self.buf[..n].to_vec();
        self.consume(n);
        out
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.searched = 0;
    }
}

/// The Content-Length (or `l`) of a header section, if present and valid.
fn content_length(head: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
            .then(|| parse_u32(value))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(bytes: &[u8], max: usize) -> Framer {
        let mut f = Framer::new(max);
        f.push(bytes);
        f
    }

    #[test]
    fn r1_frames_by_content_length() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nl: 4\r\n\r\nbodyNEXT";
        let mut f = framer(msg, 1000);
        assert_eq!(
            f.next_frame(),
            Frame::Message(msg[..msg.len() - 4].to_vec())
        );
        assert_eq!(f.next_frame(), Frame::Incomplete);
        assert!(f.is_partial(), "NEXT waits for the rest");
        assert_eq!(framer(&msg[..20], 1000).next_frame(), Frame::Incomplete);
        assert_eq!(
            framer(&msg[..msg.len() - 6], 1000).next_frame(),
            Frame::Incomplete
        );
        let mut f = framer(b"\r\n\r\n\r\nOPTIONS", 1000);
        assert_eq!(f.next_frame(), Frame::Ping);
        assert_eq!(f.next_frame(), Frame::Incomplete, "line ends skipped");
        let head = b"OPTIONS sip:x SIP/2.0\r\nVia: a\r\n\r\n";
        assert_eq!(
            framer(head, 1000).next_frame(),
            Frame::NoLength(head.to_vec())
        );
        assert!(matches!(
            framer(
                b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 5000\r\n\r\n",
                1000
            )
            .next_frame(),
            Frame::TooLarge(_)
        ));
        assert!(matches!(
            framer(&[b'a'; 2000], 1000).next_frame(),
            Frame::TooLarge(b) if b.len() == 1000
        ));
    }

    #[test]
    fn h4_byte_by_byte_finds_the_same_messages() {
        let one = b"REGISTER sip:x SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        let stream: Vec<u8> = [&one[..], b"\r\n\r\n", &one[..], &one[..]].concat();
        let mut f = Framer::new(65_535);
        let mut frames = Vec::new();
        for b in &stream {
            f.push(std::slice::from_ref(b));
            loop {
                match f.next_frame() {
                    Frame::Incomplete => break,
                    other => frames.push(other),
                }
            }
        }
        assert_eq!(
            frames,
            vec![
                Frame::Message(one.to_vec()),
                Frame::Ping,
                Frame::Message(one.to_vec()),
                Frame::Message(one.to_vec()),
            ]
        );
    }

    #[test]
    fn h4_the_header_search_resumes_where_it_stopped() {
        let mut f = Framer::new(65_535);
        f.push(b"REGISTER sip:x SIP/2.0\r\nX: ");
        for _ in 0..10_000 {
            f.push(b"a");
            assert_eq!(f.next_frame(), Frame::Incomplete);
            assert_eq!(f.searched, f.buf.len(), "nothing is searched twice");
        }
        f.push(b"\r\nl: 0\r");
        assert_eq!(f.next_frame(), Frame::Incomplete);
        f.push(b"\n\r\n");
        assert!(matches!(f.next_frame(), Frame::Message(m) if m.len() == 27 + 10_000 + 10));
    }
}
