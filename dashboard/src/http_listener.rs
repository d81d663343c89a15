//! The HTTP listener, hardened against clients that connect and then stall.
//!
//! hyper serves each connection on its own task, so an idle socket never delays another
//! client's connect. It does cost a task and a file descriptor, though, and hyper enforces no
//! header deadline unless a timer is configured, which `axum::serve` does not do. So a
//! slowloris client could hold sockets forever and run the process out of descriptors. This
//! listener closes a connection whose first request headers have not arrived in time, and
//! holds the number of open HTTP connections to a bound. After the first request the
//! connection is left alone: live streams legitimately read nothing for hours.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

pub struct GuardedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    header_timeout: Duration,
}

impl GuardedListener {
    /// Wraps `inner`: at most `max_connections` open, `header_timeout` for the first request.
    pub fn new(inner: TcpListener, max_connections: usize, header_timeout: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            header_timeout,
        }
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedIo, SocketAddr) {
        let (stream, peer, slot) = accept_within(&self.inner, &self.slots).await;
        (GuardedIo::new(stream, slot, self.header_timeout), peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The next connection there is a slot for (one without is closed and counted), with
/// Nagle's delay off: live streams write small frames that must leave at once. Shared by the
/// HTTP and HTTPS listeners.
pub(crate) async fn accept_within(
    inner: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    loop {
        let (stream, peer) = match inner.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("fieldline_http_refused_connections_total", "reason" => "too_many")
                .increment(1);
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
        }
        return (stream, peer, slot);
    }
}

/// One accepted connection: the socket (or its TLS session), its header deadline until the
/// first request's headers are complete, and its connection slot.
pub struct GuardedIo<S = TcpStream> {
    stream: S,
    deadline: Option<Pin<Box<Sleep>>>,
    /// How much of `\r\n\r\n` the bytes read so far end with.
    tail: usize,
    _slot: OwnedSemaphorePermit,
}

impl<S> GuardedIo<S> {
    /// `stream` with `header_timeout` for its first request's headers, holding `slot`.
    pub(crate) fn new(stream: S, slot: OwnedSemaphorePermit, header_timeout: Duration) -> Self {
        GuardedIo {
            stream,
            deadline: Some(Box::pin(tokio::time::sleep(header_timeout))),
            tail: 0,
            _slot: slot,
        }
    }
}

/// Advances the `\r\n\r\n` matcher over `bytes`; true once the end of headers is seen.
fn headers_end(tail: &mut usize, bytes: &[u8]) -> bool {
    const END: &[u8; 4] = b"\r\n\r\n";
    for &byte in bytes {
        *tail = if byte == END[*tail] {
            *tail + 1
        } else if byte == b'\r' {
            1
        } else {
            0
        };
        if *tail == END.len() {
            return true;
        }
    }
    false
}

impl<S: AsyncRead + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            if let Poll::Ready(Ok(())) = &polled {
                if headers_end(&mut this.tail, &buf.filled()[before..]) {
                    this.deadline = None;
                    return polled;
                }
            }
            if deadline.as_mut().poll(cx).is_ready() {
                metrics::counter!("fieldline_http_refused_connections_total", "reason" => "header_timeout")
                    .increment(1);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request headers did not arrive in time",
                )));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::headers_end;

    #[test]
    fn finds_the_end_of_headers_across_reads() {
        let mut tail = 0;
        assert!(!headers_end(&mut tail, b"GET / HTTP/1.1\r\nHost: x\r"));
        assert!(!headers_end(&mut tail, b"\n"));
        assert!(headers_end(&mut tail, b"\r\n"));
        let mut tail = 0;
        assert!(!headers_end(&mut tail, b"a\r\n\rb\r\r\n"));
        assert!(headers_end(&mut tail, b"\r\n"));
    }
}
