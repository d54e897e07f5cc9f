//! `quarry-archiver`: moves old partitions to cold storage on a schedule and
//! on request, restores them, and serves cold partitions over Flight.

use quarry_core::grpc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    grpc::service_main(
        "quarry-archiver",
        |config| &config.archiver.listen,
        |config, security, listener| async move {
            quarry_archiver::serve(&config, &security, listener, grpc::shutdown_signal()).await
        },
    )
    .await
}
