//! libimp as C sees it: C programs built against the header and the shared library, and the
//! committed header checked against the source.

mod header;
mod programs;
mod support;
