//! wse-meshbench: how much a publication frame costs to cross from one worker process to
//! another over a Unix stream socket (the mesh's transport today) and over a shared-memory
//! single-producer/single-consumer byte ring.
//!
//! - [`ring`]: the shared-memory ring (memfd mapping, atomics, futex sleep when idle);
//! - [`frame`]: the mesh's publication frame layout, built and parsed the same way for both;
//! - [`sys`]: process plumbing (fork, pipes, CPU time, pinning, the monotonic clock);
//! - [`run`]: one measured run of one transport, producer in this process, consumer in a child.

pub mod frame;
pub mod ring;
pub mod run;
pub mod sys;
