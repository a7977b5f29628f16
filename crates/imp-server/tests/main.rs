//! The server's routes driven in process (`tower::ServiceExt::oneshot`): answers equal the
//! library's, OpenAI-shaped errors with the right status, caches, queueing and cancellation.

mod answers;
mod caches;
mod errors;
mod images;
mod queue;
mod support;
