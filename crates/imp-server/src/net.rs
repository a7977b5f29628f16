//! Connections: at most `--max-connections` open (the next ones wait in the kernel's listen
//! backlog), and closed when the client stalls outside a request: silent for `--idle-timeout`
//! between requests, slower than `--header-timeout` to finish a request's headers once their
//! first byte came, or reading nothing of a response for `--idle-timeout`. Time inside a
//! request (its body, the generation) is bounded by the handler (`--body-timeout`,
//! `--request-timeout`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// A TCP listener that holds one of `max_connections` slots per open connection.
pub struct Limited {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    timeouts: Timeouts,
}

impl Limited {
    pub fn new(listener: TcpListener, max_connections: usize, timeouts: Timeouts) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max_connections)),
            timeouts,
        }
    }
}

impl Listener for Limited {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        // Not accepting while every slot is taken leaves the next clients in the backlog.
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, address)) => {
                    // Streamed tokens are small writes: send each at once.
                    let _ = stream.set_nodelay(true);
                    return (Connection::new(stream, slot, self.timeouts), address);
                }
                // A client that gave up before being accepted.
                Err(e) if is_connection_error(&e) => {}
                // Out of file descriptors or similar: wait rather than spin.
                Err(e) => {
                    tracing::error!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// What a connection is doing, which decides the timer its reads run under.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request since then.
    Idle(Instant),
    /// A request's first bytes came then; its headers are not complete.
    Head(Instant),
    /// Requests in flight (HTTP/2 may have several).
    Busy(usize),
}

/// A connection's [`Phase`], shared by its reads and the requests on it.
#[derive(Clone)]
pub struct Activity(Arc<Mutex<State>>);

struct State {
    phase: Phase,
    /// The last read that went pending: woken when the connection turns idle, so that it arms
    /// the idle timer (hyper does not read again on its own after a response).
    reader: Option<Waker>,
}

impl Activity {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(State {
            phase: Phase::Idle(Instant::now()),
            reader: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn received(&self) {
        let mut state = self.state();
        if let Phase::Idle(_) = state.phase {
            state.phase = Phase::Head(Instant::now());
        }
    }

    fn begin(&self) -> InFlight {
        let mut state = self.state();
        state.phase = match state.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Idle(_) | Phase::Head(_) => Phase::Busy(1),
        };
        InFlight(self.clone())
    }
}

/// A request in flight, until its response has been sent (or dropped).
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.phase = match state.phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        if let (Phase::Idle(_), Some(reader)) = (state.phase, state.reader.take()) {
            reader.wake();
        }
    }
}

impl Connected<IncomingStream<'_, Limited>> for Activity {
    fn connect_info(stream: IncomingStream<'_, Limited>) -> Self {
        stream.io().activity.clone()
    }
}

/// Middleware: marks the connection busy from a request's arrival until its response body is
/// done, so that no connection timer runs while the server is the one working.
pub async fn track(request: Request, next: Next) -> Response {
    let Some(ConnectInfo(activity)) = request.extensions().get::<ConnectInfo<Activity>>().cloned()
    else {
        // Called in process, without a connection (tests).
        return next.run(request).await;
    };
    let in_flight = activity.begin();
    let (mut parts, body) = next.run(request).await.into_parts();
    // The wrapper below hides the body's length from hyper: state it.
    if let Some(length) = body.size_hint().exact().filter(|&n| n > 0) {
        parts.headers.entry(CONTENT_LENGTH).or_insert(length.into());
    }
    let body = body.map_frame(move |frame| {
        let _ = &in_flight;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

/// A TCP stream whose reads fail with `TimedOut` when the client stalls outside a request, and
/// whose writes fail when the client reads nothing for the idle timeout.
pub struct Connection {
    stream: TcpStream,
    activity: Activity,
    timeouts: Timeouts,
    read_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    /// When pending writes give up.
    write_deadline: Option<Instant>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            stream,
            activity: Activity::new(),
            timeouts,
            read_timer: Box::pin(tokio::time::sleep_until(now)),
            write_timer: Box::pin(tokio::time::sleep_until(now)),
            write_deadline: None,
            _slot: slot,
        }
    }

    /// A pending write: fails once the writes have been pending for the idle timeout.
    fn stalled_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let deadline = *self
            .write_deadline
            .get_or_insert_with(|| Instant::now() + self.timeouts.idle);
        if expired(&mut self.write_timer, deadline, cx) {
            return Poll::Ready(Err(timed_out("the client read nothing")));
        }
        Poll::Pending
    }

    fn wrote(
        &mut self,
        poll: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Pending => self.stalled_write(cx),
            ready => {
                self.write_deadline = None;
                ready
            }
        }
    }
}

/// Whether `deadline` has passed, arming `timer` (and registering the waker) if not.
fn expired(timer: &mut Pin<Box<Sleep>>, deadline: Instant, cx: &mut Context<'_>) -> bool {
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.received();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let (deadline, what) = {
                    let mut state = this.activity.state();
                    state.reader = Some(cx.waker().clone());
                    match state.phase {
                        Phase::Idle(since) => (since + this.timeouts.idle, "idle connection"),
                        Phase::Head(since) => (since + this.timeouts.header, "incomplete headers"),
                        Phase::Busy(_) => return Poll::Pending,
                    }
                };
                if expired(&mut this.read_timer, deadline, cx) {
                    return Poll::Ready(Err(timed_out(what)));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(poll, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
