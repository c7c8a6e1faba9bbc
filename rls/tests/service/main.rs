//! The service against real processes: counters in a real `redis-server`, the gRPC server
//! over TCP with a tonic client, and the `voxgate-rls` binary itself.

mod cli;
mod redis;
mod support;
