//! The NBD (Network Block Device) front end: how QEMU reads and writes a volume.
//!
//! A server speaking the fixed-newstyle protocol (doc/proto.md of the NBD project)
//! over unix sockets (or TCP for tests), with structured replies, `base:allocation`
//! block status and pipelined, out-of-order replies; and a small pipelined client
//! for tests and tools. Every request becomes one call on a
//! [`BlockBackend`](crate::backend::BlockBackend).
//!
//! Layout — pure codecs and decisions first, I/O shells last:
//! - [`proto`] — constants and transmission frames (pure, pinned by tests);
//! - [`options`] — handshake frames (pure);
//! - [`negotiate`] — option haggling as a state machine (pure);
//! - [`session`] — request validation, error mapping, block-status shaping (pure);
//! - `server` — one connection ([`serve`], [`serve_with`]), [`Export`], [`ExportSet`];
//! - `listener` — [`UnixServer`], [`TcpServer`];
//! - [`file`](mod@file) — [`FileBackend`], a sparse raw file;
//! - [`client`] — [`NbdClient`].
//!
//! Must never: panic or misbehave on bytes from a client (a malformed frame closes
//! that connection only), or acknowledge a request before its backend call completed.

pub mod client;
pub mod file;
mod listener;
pub mod negotiate;
pub mod options;
pub mod proto;
mod server;
pub mod session;

pub use client::{ClientConfig, ClientError, NbdClient};
pub use file::FileBackend;
pub use listener::{DEFAULT_SOCKET_MODE, ServerStats, TcpServer, UnixServer};
pub use server::{Export, ExportSet, ExportSetError, ServeError, ServerConfig, serve, serve_with};
