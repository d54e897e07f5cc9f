//! Services started in-process on ephemeral loopback ports. The pipeline still
//! goes through real gRPC and Flight: the same code paths as a deployment.

use quarry_core::{Config, Result, grpc};
use quarry_extractor::Extractor;
use quarry_loader::Loader;
use quarry_transformer::Transformer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Cluster {
    pub extractor_url: Option<String>,
    pub transformer_url: Option<String>,
    pub loader_url: String,
    /// The transformer stops first: a run it is still aborting (or
    /// committing) needs the loader to record that.
    front: Stage,
    back: Stage,
}

/// Services stopped together.
struct Stage {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<()>>>,
}

impl Stage {
    fn new() -> Self {
        Self {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    fn shutdown(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.changed().await;
        }
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await
                .map_err(|e| quarry_core::Error::internal(format!("service task: {e}")))??;
        }
        Ok(())
    }
}

fn url(listener: &tokio::net::TcpListener) -> Result<String> {
    let addr = listener
        .local_addr()
        .map_err(|e| quarry_core::Error::internal(format!("local address: {e}")))?;
    Ok(format!("http://{addr}"))
}

impl Cluster {
    /// Starts the extractor, transformer and loader. The warehouse and the data
    /// roots are checked before anything listens.
    pub async fn start(config: &Config) -> Result<Self> {
        Self::start_services(config, true, None).await
    }

    /// Starts only the loader (history and report commands).
    pub async fn start_loader(config: &Config) -> Result<Self> {
        Self::start_services(config, false, None).await
    }

    /// Starts the transformer and loader, reading from an extractor elsewhere.
    pub async fn start_with_extractor(config: &Config, extractor_url: &str) -> Result<Self> {
        Self::start_services(config, true, Some(extractor_url.to_string())).await
    }

    async fn start_services(
        config: &Config,
        pipeline: bool,
        extractor_url: Option<String>,
    ) -> Result<Self> {
        let (mut front, mut back) = (Stage::new(), Stage::new());
        // In-process services serve no metrics endpoint: the CLI is one process.
        let mut config = config.clone();
        config.extractor.metrics_listen.clear();
        config.transformer.metrics_listen.clear();
        config.loader.metrics_listen.clear();
        let config = &config;
        let loader = Loader::open(&config.loader, &config.warehouse).await?;
        let loader_listener = grpc::bind("127.0.0.1:0").await?;
        let loader_url = url(&loader_listener)?;
        back.tasks
            .push(tokio::spawn(loader.serve(loader_listener, back.shutdown())));
        let (mut extractor_url, mut transformer_url) = (extractor_url, None);
        if pipeline {
            let e_url = match &extractor_url {
                Some(u) => u.clone(),
                None => {
                    let extractor = Extractor::new(config)?;
                    let listener = grpc::bind("127.0.0.1:0").await?;
                    let u = url(&listener)?;
                    back.tasks
                        .push(tokio::spawn(extractor.serve(listener, back.shutdown())));
                    extractor_url = Some(u.clone());
                    u
                }
            };
            let mut tcfg = config.transformer.clone();
            tcfg.extractor_url = e_url;
            tcfg.loader_url = loader_url.clone();
            let listener = grpc::bind("127.0.0.1:0").await?;
            transformer_url = Some(url(&listener)?);
            front.tasks.push(tokio::spawn(
                Transformer::new(tcfg)
                    .with_lineage(&config.lineage)
                    .serve(listener, front.shutdown()),
            ));
        }
        Ok(Self {
            extractor_url,
            transformer_url,
            loader_url,
            front,
            back,
        })
    }

    /// Stops the transformer (its runs finish their commit or abort), then
    /// the extractor and the loader, and waits for them.
    pub async fn stop(self) -> Result<()> {
        let front = self.front.stop().await;
        let back = self.back.stop().await;
        front.and(back)
    }

    /// Stops the transformer only; the loader keeps serving (e.g. to read
    /// back how an interrupted run ended). `stop` then stops the rest.
    pub async fn stop_transformer(&mut self) -> Result<()> {
        std::mem::replace(&mut self.front, Stage::new())
            .stop()
            .await
    }
}
