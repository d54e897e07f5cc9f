//! `quarry-extractor`: serves sources over Arrow Flight.

use quarry_core::grpc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    grpc::service_main(
        "quarry-extractor",
        |config| &config.extractor.listen,
        |config, security, listener| async move {
            quarry_extractor::serve(&config, &security, listener, grpc::shutdown_signal()).await
        },
    )
    .await
}
