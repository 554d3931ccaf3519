//! Postfix's policy delegation protocol (SMTPD_POLICY_README, "Protocol
//! description"): a request is `name=value` lines ended by LF, closed by an
//! empty line; the answer is one `action=...` line and an empty line. One
//! connection carries many requests, one after the other.
//!
//! Must not: decide anything (see `answer.rs`), or hold more than
//! [`MAX_LINE`] bytes of a line and [`MAX_REQUEST`] bytes of a request,
//! whatever the peer sends.
//! Fails: never. A request that breaks a limit or the grammar is still one
//! request: it is marked [`Request::malformed`] and answered `DUNNO` when its
//! empty line arrives, so every empty line gets exactly one answer.

/// Longest attribute line kept; longer ones are counted, not stored, and
/// make the request malformed. Postfix's longest attributes (addresses,
/// certificate names) are far shorter.
pub const MAX_LINE: usize = 4096;
/// Most attribute lines in one request (Postfix 3.7 sends about 30).
pub const MAX_ATTRIBUTES: usize = 100;
/// Most bytes in one request.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest `action=` text written back (Postfix's reply line limit is far
/// above; our texts are shorter still).
pub const MAX_ACTION: usize = 512;

/// The attributes the policy reads; every other one is counted and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `request=`: always `smtpd_access_policy` from Postfix.
    pub request: Option<String>,
    /// `protocol_state=`: `RCPT` in smtpd_recipient_restrictions.
    pub protocol_state: Option<String>,
    /// `sender=`: the MAIL FROM address, empty for the null sender.
    pub sender: Option<String>,
    /// `recipient=`: the RCPT TO address.
    pub recipient: Option<String>,
    /// `size=`: the MAIL FROM `SIZE=` value, 0 when the client gave none.
    pub size: Option<String>,
    /// Why the request cannot be trusted (a limit, the grammar, a repeated
    /// attribute, a value that is not UTF-8); such a request gets `DUNNO`.
    pub malformed: Option<&'static str>,
}

impl Request {
    fn set(&mut self, name: &[u8], value: &[u8]) {
        let slot = match name {
            b"request" => &mut self.request,
            b"protocol_state" => &mut self.protocol_state,
            b"sender" => &mut self.sender,
            b"recipient" => &mut self.recipient,
            b"size" => &mut self.size,
            _ => return,
        };
        if slot.is_some() {
            self.malformed.get_or_insert("attribute repeated");
            return;
        }
        match std::str::from_utf8(value) {
            Ok(v) => *slot = Some(v.to_string()),
            Err(_) => {
                self.malformed.get_or_insert("value is not UTF-8");
            }
        }
    }
}

/// Splits a byte stream into requests, holding at most one line and one
/// request's known attributes.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The line being read is longer than [`MAX_LINE`].
    line_overflow: bool,
    current: Request,
    attributes: usize,
    bytes: usize,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// True while a request has started and its empty line has not come.
    pub fn in_request(&self) -> bool {
        self.bytes > 0 || !self.line.is_empty() || self.line_overflow
    }

    /// Feeds bytes from the connection; `on_request` gets every request
    /// whose empty line is among them, in order.
    pub fn feed(&mut self, mut data: &[u8], mut on_request: impl FnMut(Request)) {
        while !data.is_empty() {
            let (chunk, ended) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            data = &data[chunk.len() + usize::from(ended)..];
            if self.line.len() + chunk.len() > MAX_LINE {
                self.line_overflow = true;
                self.line.clear();
            }
            if !self.line_overflow {
                self.line.extend_from_slice(chunk);
            }
            self.bytes = self.bytes.saturating_add(chunk.len());
            if ended {
                self.end_line(&mut on_request);
            }
        }
    }

    fn end_line(&mut self, on_request: &mut impl FnMut(Request)) {
        let overflow = std::mem::take(&mut self.line_overflow);
        let mut line = std::mem::take(&mut self.line);
        // Postfix ends lines with LF; a client that sends CRLF is read the
        // same way.
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() && !overflow {
            let request = std::mem::take(&mut self.current);
            self.attributes = 0;
            self.bytes = 0;
            self.line = line;
            self.line.clear();
            on_request(request);
            return;
        }
        self.attributes += 1;
        self.bytes = self.bytes.saturating_add(1);
        let current = &mut self.current;
        if overflow {
            current.malformed.get_or_insert("line too long");
        } else if self.attributes > MAX_ATTRIBUTES {
            current.malformed.get_or_insert("too many attributes");
        } else if self.bytes > MAX_REQUEST {
            current.malformed.get_or_insert("request too large");
        } else {
            match line.iter().position(|&b| b == b'=') {
                Some(eq) if eq > 0 => current.set(&line[..eq], &line[eq + 1..]),
                _ => {
                    current.malformed.get_or_insert("not name=value");
                }
            }
        }
        // Keep the buffer's allocation for the next line.
        line.clear();
        self.line = line;
    }
}

/// The reply for one request: `action=TEXT`, LF, an empty line. `TEXT` is
/// kept to one printable line of at most [`MAX_ACTION`] bytes.
pub fn reply(action: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"action=");
    out.extend_from_slice(crate::status::printable(action, MAX_ACTION).as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Vec<Request> {
        let mut out = Vec::new();
        Parser::new().feed(input, |r| out.push(r));
        out
    }

    #[test]
    fn reads_postfix_requests() {
        let rs = parse(
            b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=a@b\n\
              recipient=incoming+k@x\nsize=12\nclient_address=127.0.0.1\n\n\
              request=smtpd_access_policy\nsender=\n\n",
        );
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].recipient.as_deref(), Some("incoming+k@x"));
        assert_eq!(rs[0].size.as_deref(), Some("12"));
        assert_eq!(rs[0].malformed, None);
        assert_eq!(rs[1].sender.as_deref(), Some(""));
    }

    #[test]
    fn split_anywhere_gives_the_same_requests() {
        let input = b"request=smtpd_access_policy\r\nrecipient=r@x\r\n\r\nsender=s\n\n";
        let whole = parse(input);
        for cut in 0..input.len() {
            let mut out = Vec::new();
            let mut p = Parser::new();
            p.feed(&input[..cut], |r| out.push(r));
            p.feed(&input[cut..], |r| out.push(r));
            assert_eq!(out, whole, "cut at {cut}");
        }
        assert_eq!(whole.len(), 2);
    }

    #[test]
    fn limits_mark_the_request_and_never_drop_it() {
        let mut long = b"recipient=".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE * 3));
        long.extend_from_slice(b"\n\n");
        let rs = parse(&long);
        assert_eq!(rs.len(), 1);
        assert_eq!(rs[0].malformed, Some("line too long"));
        assert_eq!(rs[0].recipient, None);

        let many: Vec<u8> = b"x=1\n"
            .repeat(MAX_ATTRIBUTES + 1)
            .into_iter()
            .chain(*b"\n")
            .collect();
        assert_eq!(parse(&many)[0].malformed, Some("too many attributes"));
        for bad in [
            &b"noequals\n\n"[..],
            b"=v\n\n",
            b"sender=a\nsender=b\n\n",
            b"sender=\xff\n\n",
        ] {
            let rs = parse(bad);
            assert_eq!(rs.len(), 1, "{bad:?}");
            assert!(rs[0].malformed.is_some(), "{bad:?}");
        }
    }

    #[test]
    fn replies_are_one_line() {
        let mut out = Vec::new();
        reply("550 5.1.1 a\nb", &mut out);
        assert_eq!(out, b"action=550 5.1.1 a b\n\n");
    }
}
