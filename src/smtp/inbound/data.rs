//! Message data: DATA (dot-stuffed, RFC 5321 §4.5.2) and BDAT (RFC 3030).
//!
//! The DATA scanner is a byte state machine. The message ends only at
//! `<CRLF>.<CRLF>` (or `.<CRLF>` as the very first line). A bare CR or a
//! bare LF anywhere marks the message as refused but does not end it, so
//! the smuggling variants (`<LF>.<LF>`, `<CR>.<CR>`, `<LF>.<CRLF>`,
//! `<CRLF>.<LF>`) all stay inside one refused message and nothing after
//! them can be read as a new command. NUL octets are refused the same way.
//!
//! Memory is bounded by the connector's size limit: past it the scanner
//! keeps looking for the end but stops storing.

/// What made a message unacceptable, with the 1-based line where it was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    BareCr { line: usize },
    BareLf { line: usize },
    Nul { line: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line.
    LineStart,
    /// Inside a line.
    Mid,
    /// Saw CR inside a line.
    Cr,
    /// Line began with '.'.
    Dot,
    /// Line is ".\r" so far.
    DotCr,
}

/// Receives DATA bytes until end-of-data.
#[derive(Debug)]
pub struct DataReceiver {
    state: State,
    body: Vec<u8>,
    /// Unstuffed size seen so far (counted even after storing stops).
    size: u64,
    max: u64,
    line: usize,
    violation: Option<Violation>,
    done: bool,
}

impl DataReceiver {
    pub fn new(max: u64) -> Self {
        DataReceiver {
            state: State::LineStart,
            body: Vec::with_capacity(4096),
            size: 0,
            max,
            line: 1,
            violation: None,
            done: false,
        }
    }

    fn violate(&mut self, v: Violation) {
        self.violation.get_or_insert(v);
    }

    fn push(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.size <= self.max {
            self.body.extend_from_slice(bytes);
        }
    }

    /// Feeds bytes; returns how many were consumed. When end-of-data is
    /// found the rest of `input` is left for the command reader.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut i = 0;
        while i < input.len() && !self.done {
            let b = input[i];
            match self.state {
                State::Mid | State::LineStart
                    if !(matches!(b, b'\r' | b'\n' | 0)
                        || (self.state == State::LineStart && b == b'.')) =>
                {
                    // Fast path: copy up to the next special byte.
                    let end = input[i..]
                        .iter()
                        .position(|c| matches!(c, b'\r' | b'\n' | 0))
                        .map_or(input.len(), |p| i + p);
                    self.push(&input[i..end]);
                    self.state = State::Mid;
                    i = end;
                    continue;
                }
                State::LineStart | State::Mid => match b {
                    b'.' => self.state = State::Dot,
                    b'\r' => self.state = State::Cr,
                    b'\n' => {
                        self.violate(Violation::BareLf { line: self.line });
                        self.push(b"\n");
                        self.state = State::Mid;
                    }
                    0 => {
                        self.violate(Violation::Nul { line: self.line });
                        self.push(&[0]);
                        self.state = State::Mid;
                    }
                    _ => {
                        self.push(&[b]);
                        self.state = State::Mid;
                    }
                },
                State::Cr => {
                    if b == b'\n' {
                        self.push(b"\r\n");
                        self.line += 1;
                        self.state = State::LineStart;
                    } else {
                        self.violate(Violation::BareCr { line: self.line });
                        self.push(b"\r");
                        self.state = State::Mid;
                        continue; // re-examine b inside the line
                    }
                }
                State::Dot => {
                    if b == b'\r' {
                        self.state = State::DotCr;
                    } else {
                        // Dot-stuffed line: the leading dot is removed and
                        // the byte handled as line content.
                        self.state = State::Mid;
                        continue;
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        self.done = true;
                    } else {
                        // ".\r" + something: a bare CR on a dot line.
                        self.violate(Violation::BareCr { line: self.line });
                        self.push(b"\r");
                        self.state = State::Mid;
                        continue;
                    }
                }
            }
            i += 1;
        }
        i
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Unstuffed size in octets.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn oversized(&self) -> bool {
        self.size > self.max
    }

    pub fn violation(&self) -> Option<Violation> {
        self.violation
    }

    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

/// Checks BDAT content for bare CR/LF and NUL across chunk boundaries.
///
/// BDAT itself cannot be smuggled (lengths are explicit), but a message
/// with bare line endings would be re-interpreted by the next hop when we
/// relay it with DATA, so the same rule applies.
#[derive(Debug, Default)]
pub struct LineEndingCheck {
    pending_cr: bool,
    line: usize,
    violation: Option<Violation>,
}

impl LineEndingCheck {
    pub fn new() -> Self {
        LineEndingCheck {
            pending_cr: false,
            line: 1,
            violation: None,
        }
    }

    pub fn scan(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.violation.is_some() {
                return;
            }
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    self.line += 1;
                    continue;
                }
                self.violation = Some(Violation::BareCr { line: self.line });
                return;
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => self.violation = Some(Violation::BareLf { line: self.line }),
                0 => self.violation = Some(Violation::Nul { line: self.line }),
                _ => {}
            }
        }
    }

    /// The verdict once the last chunk is in.
    pub fn finish(&self) -> Option<Violation> {
        self.violation.or(if self.pending_cr {
            Some(Violation::BareCr { line: self.line })
        } else {
            None
        })
    }
}

/// Dot-stuffs a message for sending with DATA (RFC 5321 §4.5.2): used by
/// tests today and by the SMTP client later.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn receive(chunks: &[&[u8]]) -> (DataReceiver, Vec<u8>) {
        let mut r = DataReceiver::new(1 << 20);
        let mut rest = Vec::new();
        for c in chunks {
            let n = r.feed(c);
            if r.is_done() {
                rest.extend_from_slice(&c[n..]);
            }
        }
        (r, rest)
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_unstuffs() {
        let (r, rest) = receive(&[b"Subject: x\r\n\r\n..leading dot\r\n.\r\nQUIT\r\n"]);
        assert!(r.is_done());
        assert_eq!(rest, b"QUIT\r\n");
        assert_eq!(r.into_body(), b"Subject: x\r\n\r\n.leading dot\r\n");
    }

    #[test]
    fn empty_message() {
        let (r, _) = receive(&[b".\r\n"]);
        assert!(r.is_done());
        assert!(r.into_body().is_empty());
    }

    #[test]
    fn smuggling_variants_do_not_end_the_message() {
        for bad in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r.\rMAIL",
            b"a\n.\r\nMAIL",
            b"a\r\n.\nMAIL",
            b"a\r\n.\r MAIL",
        ] {
            let (r, _) = receive(&[bad]);
            assert!(
                !r.is_done(),
                "{:?} ended the message",
                String::from_utf8_lossy(bad)
            );
            assert!(r.violation().is_some());
        }
    }

    #[test]
    fn end_marker_split_across_reads() {
        let (r, rest) = receive(&[b"x\r", b"\n.", b"\r", b"\nNOOP\r\n"]);
        assert!(r.is_done());
        assert_eq!(rest, b"NOOP\r\n");
        assert_eq!(r.into_body(), b"x\r\n");
    }

    #[test]
    fn oversize_is_counted_not_stored() {
        let mut r = DataReceiver::new(10);
        r.feed(b"0123456789abcdef\r\n.\r\n");
        assert!(r.is_done() && r.oversized());
        assert!(r.into_body().len() <= 10);
    }

    #[test]
    fn bdat_check_spans_chunks() {
        let mut c = LineEndingCheck::new();
        c.scan(b"a\r");
        c.scan(b"\nb\r\n");
        assert_eq!(c.finish(), None);
        let mut c = LineEndingCheck::new();
        c.scan(b"a\r\nb\nc");
        assert_eq!(c.finish(), Some(Violation::BareLf { line: 2 }));
    }

    proptest! {
        /// Stuffing then receiving gives back the body exactly, whatever
        /// the read boundaries.
        #[test]
        fn dot_stuffing_round_trips(lines in proptest::collection::vec("[.a-z ]{0,12}", 0..20), split in 1usize..40) {
            let mut body = Vec::new();
            for l in &lines { body.extend_from_slice(l.as_bytes()); body.extend_from_slice(b"\r\n"); }
            let wire = dot_stuff(&body);
            let mut r = DataReceiver::new(1 << 20);
            let mut consumed = 0;
            for chunk in wire.chunks(split) { consumed += r.feed(chunk); if r.is_done() { break; } }
            prop_assert!(r.is_done());
            prop_assert_eq!(consumed, wire.len());
            prop_assert_eq!(r.violation(), None);
            prop_assert_eq!(r.into_body(), body);
        }

        /// No input makes the scanner end early on anything but CRLF.CRLF.
        #[test]
        fn end_requires_exact_marker(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut r = DataReceiver::new(1 << 20);
            let n = r.feed(&data);
            if r.is_done() {
                let consumed = &data[..n];
                prop_assert!(consumed.ends_with(b"\r\n.\r\n") || consumed == b".\r\n");
            }
        }
    }
}
