//! # folio-node
//!
//! The Tahoe-style node on the Folio RPC layer: the `tahoe.cfg` file and the `private/`
//! directory ([`config`], [`create`]), the introducer service and its client
//! ([`introducer`]), the storage server ([`storage`]) and the client's storage broker
//! ([`broker`]), and the running node that ties them together ([`node`]).
//!
//! The `tahoe` binary is a thin command line over this library; tests and embedders can
//! drive the same pieces directly.
#![warn(missing_docs)]

pub mod aliases;
pub mod broker;
pub mod caps;
pub mod config;
pub mod control;
pub mod create;
pub mod dirnode;
pub mod files;
pub mod fscmd;
pub mod immutable;
pub mod introducer;
pub mod mutable;
pub mod node;
pub mod private;
pub mod storage;
pub mod transfer;
pub mod web;
