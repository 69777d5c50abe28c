//! The `crypto` layer (being written; see the crate docs for its place in the stack).

pub mod crypto_log;
pub use crypto_log::{BlockAlloc, CryptoLog, RootMeta};
