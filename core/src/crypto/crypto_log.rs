//! `CryptoLog`: an append-only log of blocks under a Merkle tree (being written by engineer "log").
