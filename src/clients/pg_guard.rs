//! A bound on what one PostgreSQL message may make the client hold.
//!
//! `tokio-postgres` buffers a backend message until the length its header announces has
//! arrived, whatever that length (up to 2 GiB): something on a PostgreSQL port that sends a
//! header with a huge length and then streams bytes makes the client grow that far before it
//! fails. The core only ever reads small messages (a row of one boolean, errors, notices,
//! parameter statuses), so [`Frames`] follows the message boundaries of what is read and ends
//! the connection with an error as soon as a header announces more than [`MAX_MESSAGE`].
//!
//! It watches the socket itself ([`Guarded`], with which the driver connects through
//! `Config::connect_raw`) until TLS begins — from then on the bytes on the socket are TLS
//! records, which rustls bounds — and the plaintext inside TLS (`pg_tls.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest backend message accepted: far above anything the core's queries return.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The `SSLRequest` a client sends first when it would speak TLS: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Where the reader stands in the server's byte stream.
#[derive(Debug)]
enum State {
    /// Nothing written yet: whether the server answers an `SSLRequest` first is not known.
    Start,
    /// The one-byte answer to `SSLRequest`: `S` (TLS follows) or `N`.
    SslAnswer,
    /// In a message header (type byte and 4-byte length): `n` of its 5 bytes read so far.
    Header { bytes: [u8; 5], n: usize },
    /// In a message body: `left` bytes to go.
    Body { left: usize },
    /// TLS records: bounded by rustls, not read here.
    Tls,
}

/// The message boundaries of a backend stream, followed as bytes are read.
#[derive(Debug)]
pub struct Frames {
    state: State,
}

impl Frames {
    /// A raw socket, before the client has written anything.
    pub fn socket() -> Frames {
        Frames { state: State::Start }
    }

    /// The plaintext inside TLS: messages from the first byte.
    pub fn messages() -> Frames {
        Frames { state: State::Header { bytes: [0; 5], n: 0 } }
    }

    /// The client wrote `bytes` (only the first write matters: is it an `SSLRequest`?).
    fn wrote(&mut self, bytes: &[u8]) {
        if let State::Start = self.state {
            self.state =
                if bytes.starts_with(&SSL_REQUEST) { State::SslAnswer } else { State::Header { bytes: [0; 5], n: 0 } };
        }
    }

    /// Follows `bytes` read from the server; an error when a message is too large.
    pub fn read(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Start | State::Tls => return Ok(()),
                State::SslAnswer => {
                    if bytes[0] == b'S' {
                        self.state = State::Tls;
                        return Ok(());
                    }
                    // `N`: messages follow; anything else (an old server's error) is one.
                    if bytes[0] == b'N' {
                        bytes = &bytes[1..];
                    }
                    self.state = State::Header { bytes: [0; 5], n: 0 };
                }
                State::Header { bytes: header, n } => {
                    let take = (5 - *n).min(bytes.len());
                    header[*n..*n + take].copy_from_slice(&bytes[..take]);
                    *n += take;
                    bytes = &bytes[take..];
                    if *n == 5 {
                        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                        if !(4..=MAX_MESSAGE).contains(&len) {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "the server sent a message (type {:?}) announcing {len} bytes: not PostgreSQL, \
                                     or more than the {MAX_MESSAGE} bytes a reply to tooz may take",
                                    header[0] as char
                                ),
                            ));
                        }
                        self.state = State::Body { left: len - 4 };
                    }
                }
                State::Body { left } => {
                    let take = (*left).min(bytes.len());
                    *left -= take;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.state = State::Header { bytes: [0; 5], n: 0 };
                    }
                }
            }
        }
        // A message may end exactly here: a body of length 0 left waiting in `Body`.
        if let State::Body { left: 0 } = self.state {
            self.state = State::Header { bytes: [0; 5], n: 0 };
        }
        Ok(())
    }
}

/// Reads into `buf` from `inner` and follows what arrived with `frames`.
pub fn poll_read_framed<S: AsyncRead + Unpin>(
    inner: &mut S,
    frames: &mut Frames,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let before = buf.filled().len();
    match Pin::new(inner).poll_read(cx, buf) {
        Poll::Ready(Ok(())) => Poll::Ready(frames.read(&buf.filled()[before..])),
        other => other,
    }
}

/// A socket to a PostgreSQL server whose messages are bounded (see the module notes).
pub struct Guarded<S> {
    inner: S,
    frames: Frames,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Guarded<S> {
        Guarded { inner, frames: Frames::socket() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        poll_read_framed(&mut me.inner, &mut me.frames, cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let written = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            me.frames.wrote(&buf[..n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn follows_messages_split_anywhere_and_refuses_a_huge_one() {
        let stream: Vec<u8> = [message(b'R', &[0, 0, 0, 0]), message(b'Z', b"I"), message(b'1', b"")].concat();
        for split in 0..stream.len() {
            let mut f = Frames::messages();
            f.read(&stream[..split]).unwrap();
            f.read(&stream[split..]).unwrap();
            assert!(matches!(f.state, State::Header { n: 0, .. }), "split at {split}: {:?}", f.state);
        }
        let mut f = Frames::messages();
        let mut huge = vec![b'D'];
        huge.extend_from_slice(&(0x7fff_ffffu32).to_be_bytes());
        assert_eq!(f.read(&huge).unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A length under 4 is no message either.
        assert!(Frames::messages().read(&[b'D', 0, 0, 0, 2]).is_err());
    }

    #[test]
    fn the_answer_to_an_ssl_request_decides_what_follows() {
        let mut plain = Frames::socket();
        plain.wrote(&SSL_REQUEST);
        plain.read(b"N").unwrap();
        assert!(plain.read(&[b'E', 0x7f, 0, 0, 0]).is_err(), "messages are followed after N");

        let mut tls = Frames::socket();
        tls.wrote(&SSL_REQUEST);
        tls.read(&[b'S', 0x16, 3, 3, 0xff, 0xff]).unwrap();
        assert!(matches!(tls.state, State::Tls));

        let mut startup = Frames::socket();
        startup.wrote(&[0, 0, 0, 9, 0, 3, 0, 0, 0]);
        assert!(startup.read(&[b'R', 0x7f, 0xff, 0xff, 0xff]).is_err());
    }
}
