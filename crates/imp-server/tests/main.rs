//! The server's routes driven in process (`tower::ServiceExt::oneshot`): answers equal the
//! library's, OpenAI-shaped errors with the right status, caches, queueing and cancellation; and
//! served on loopback (`Served`): connection limits and timeouts, graceful shutdown.

mod answers;
mod caches;
mod connections;
mod errors;
mod images;
mod queue;
mod shutdown;
mod support;
