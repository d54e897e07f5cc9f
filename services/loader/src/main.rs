//! `quarry-loader`: stages Flight streams into the warehouse and commits runs.

use quarry_core::grpc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    grpc::service_main(
        "quarry-loader",
        |config| &config.loader.listen,
        |config, security, listener| async move {
            quarry_loader::serve(
                &config.loader,
                &config.warehouse,
                &security,
                listener,
                grpc::shutdown_signal(),
            )
            .await
        },
    )
    .await
}
