// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! The device-mapper target `mlsdisk`:
//!
//! - [`binding`]: our device-mapper abstraction (mainline Rust has none):
//!   the only place that touches device-mapper's C structures, the bio
//!   queues and the trampolines;
//! - [`target`]: the target in safe Rust: the table line (`table.rs`, one
//!   level up, shared with the blk-mq disks' parameters), status, messages,
//!   and `map` into the engine's front end (`engine/`).

pub(crate) mod binding;
pub(crate) mod target;
