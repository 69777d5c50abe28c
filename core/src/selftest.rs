//! Placeholder, owned by the kernel-module work: a small self-test the module calls.
