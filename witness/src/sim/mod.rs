//! Simulated pieces of a Carbonio site, for tests, `witness demo` and the
//! jepsen harness: real servers on real (loopback) sockets that behave like
//! the things the witness talks to, driven by a scriptable state.
//!
//! - [`consul`]: a fake Consul agent serving the real HTTP API's shapes,
//!   headers, status codes and error bodies (reference/consul-api.md), with
//!   injectable faults.
//!
//! Invariant: a fake never invents behaviour the reference does not
//! document; where it simplifies (no `filter` expressions, no streaming
//! backend), its docs say so. What it does not do: run anything of
//! Carbonio's, or listen anywhere the caller did not bind.

pub mod consul;

pub use consul::FakeConsul;

#[cfg(test)]
mod consul_tests;
