//! Response bodies of the mock, including the misbehaving ones: a body that stops half way
//! and drops the connection (its `Content-Length` promised more), and one that dribbles out a
//! few bytes at a time (a partner that is slow to answer, not slow to start).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use tokio::time::Sleep;

/// Bytes per dribbled piece.
const DRIBBLE_PIECE: usize = 8;

/// A mock response body.
pub enum MockBody {
    Whole(Full<Bytes>),
    /// Sends the first half, then fails: the connection is closed mid-body.
    Truncated {
        data: Bytes,
        total: u64,
        sent: bool,
    },
    /// Sends `DRIBBLE_PIECE` bytes every `every`.
    Dribble {
        data: Bytes,
        total: u64,
        every: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl MockBody {
    pub fn whole(full: Full<Bytes>) -> Self {
        MockBody::Whole(full)
    }

    pub fn truncated(data: Bytes) -> Self {
        MockBody::Truncated {
            total: data.len() as u64,
            data,
            sent: false,
        }
    }

    pub fn dribble(data: Bytes, every: Duration) -> Self {
        MockBody::Dribble {
            total: data.len() as u64,
            data,
            every,
            sleep: None,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            MockBody::Whole(full) => Pin::new(full)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(|never| match never {}))),
            MockBody::Truncated { data, sent, .. } => {
                if *sent {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "mock fault: connection closed mid-body",
                    ))));
                }
                *sent = true;
                let half = data.split_to(data.len() / 2);
                Poll::Ready(Some(Ok(Frame::data(half))))
            }
            MockBody::Dribble {
                data, every, sleep, ..
            } => {
                if data.is_empty() {
                    return Poll::Ready(None);
                }
                if let Some(s) = sleep {
                    if s.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                *sleep = Some(Box::pin(tokio::time::sleep(*every)));
                let piece = data.split_to(data.len().min(DRIBBLE_PIECE));
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Whole(full) => full.is_end_stream(),
            MockBody::Truncated { .. } => false,
            MockBody::Dribble { data, .. } => data.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        // The full length is announced, so a truncated body is detectably short.
        match self {
            MockBody::Whole(full) => full.size_hint(),
            MockBody::Truncated { total, .. } | MockBody::Dribble { total, .. } => {
                SizeHint::with_exact(*total)
            }
        }
    }
}
