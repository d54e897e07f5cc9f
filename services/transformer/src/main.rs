//! `quarry-transformer`: validates, aggregates and drives pipeline runs.

use quarry_core::grpc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    grpc::service_main(
        "quarry-transformer",
        |config| &config.transformer.listen,
        |config, security, listener| async move {
            quarry_transformer::serve(&config, &security, listener, grpc::shutdown_signal()).await
        },
    )
    .await
}
