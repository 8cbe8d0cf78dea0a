//! Closing long-lived connections that carry nothing (`[proxy]
//! idle_timeout`): tunnels and upgraded connections (WebSocket) hold a
//! socket and memory on both sides for as long as they stay open, and after
//! they are established they no longer hold a concurrency slot that would
//! otherwise bound them.
//!
//! Watching the *client* side is enough: every byte either way passes
//! through it (what the client sends is read from it, what the upstream
//! sends is written to it). The deadline is one timer per connection,
//! pushed back on every read or write that moved bytes; when it fires while
//! the copy waits for a read, the read fails with `TimedOut`, which ends the
//! copy (ours for tunnels, pingora's for upgrades) and closes both sides.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The deadline of one connection.
#[derive(Debug)]
pub struct IdleWatch {
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleWatch {
    pub fn new(timeout: Duration) -> IdleWatch {
        IdleWatch {
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Bytes moved: the connection is not idle.
    pub fn touch(&mut self) {
        let at = Instant::now() + self.timeout;
        self.deadline.as_mut().reset(at);
    }

    /// `Ready` with the error to fail a pending read with, once the
    /// connection has carried nothing for the timeout; else registers the
    /// wake-up.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no bytes either way for {} s ([proxy] idle_timeout)",
                    self.timeout.as_secs()
                ),
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    /// A read's outcome, watched: bytes push the deadline back; a read that
    /// waits fails once the deadline has passed.
    pub fn after_read(
        &mut self,
        cx: &mut Context<'_>,
        before: usize,
        buf: &ReadBuf<'_>,
        polled: Poll<std::io::Result<()>>,
    ) -> Poll<std::io::Result<()>> {
        match polled {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.poll_expired(cx).map(Err),
            other => other,
        }
    }

    /// A write's outcome, watched.
    pub fn after_write(
        &mut self,
        polled: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &polled {
            if *n > 0 {
                self.touch();
            }
        }
        polled
    }
}

/// A stream whose reads fail once it has carried nothing either way for the
/// timeout (for tunnels; upgrades watch inside `framing::Framed`).
pub struct Idle<S> {
    inner: S,
    watch: IdleWatch,
}

impl<S> Idle<S> {
    pub fn new(inner: S, timeout: Duration) -> Idle<S> {
        Idle {
            inner,
            watch: IdleWatch::new(timeout),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.watch.after_read(cx, before, buf, polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.watch.after_write(polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Silent for the timeout: the read fails with `TimedOut`. Traffic
    /// either way keeps it open past several timeouts.
    #[tokio::test(start_paused = true)]
    async fn only_silence_closes() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut idle = Idle::new(a, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(8)).await;
            b.write_all(b"x").await.expect("write");
            assert_eq!(idle.read(&mut buf).await.expect("read"), 1);
            tokio::time::advance(Duration::from_secs(8)).await;
            idle.write_all(b"y").await.expect("write");
        }
        let started = Instant::now();
        let err = idle.read(&mut buf).await.expect_err("idle");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(10) - Duration::from_millis(1));
        assert!(err.to_string().contains("idle_timeout"));
    }
}
