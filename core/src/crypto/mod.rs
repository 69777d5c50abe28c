//! The `crypto` layer (being written; see the crate docs for its place in the stack).
