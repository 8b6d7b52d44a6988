//! The load tool behind `switchboard bench`: fanout over WebSocket (`bench ws`) and the
//! UserService over gRPC (`bench grpc`). Bounded in connections and time, it stops by
//! itself and talks only to the address it is given.

pub mod grpc;
pub mod grpc_subscribe;
pub mod report;
pub mod ws;

pub use grpc::GrpcBenchArgs;
pub use ws::WsBenchArgs;

/// `switchboard bench …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum BenchTarget {
    /// Fanout over the seed-compatible WebSocket chat protocol.
    Ws(WsBenchArgs),
    /// `GetUser` or `StreamUsers` over gRPC.
    Grpc(GrpcBenchArgs),
}

/// Runs one benchmark and prints its summary table and JSON line.
pub fn run(target: BenchTarget) -> anyhow::Result<()> {
    match target {
        BenchTarget::Ws(args) => ws::run(args),
        BenchTarget::Grpc(args) => grpc::run(args),
    }
}
