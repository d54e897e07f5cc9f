//! `quarry archive …`: drives an archiver service, remote or started
//! in-process on a loopback port (no schedule) for the one command.

use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_BORDERS_ONLY};
use quarry_archiver::Archiver;
use quarry_core::grpc::{AuthChannel, Security};
use quarry_core::{Config, Error, Result, grpc};
use quarry_proto::archiver_service_client::ArchiverServiceClient;
use quarry_proto::{
    ArchiveReport, ArchiveRequest, ListPartitionsRequest, PartitionEntry, RestoreRequest,
    StatusRequest,
};
use tokio::sync::watch;

pub type ArchiverClient = ArchiverServiceClient<AuthChannel>;

/// Runs `f` against the archiver at `url`, or one started in-process from
/// `config` (warehouse and cold storage checked first).
pub async fn with_archiver<F, Fut, T>(config: &Config, url: Option<&str>, f: F) -> Result<T>
where
    F: FnOnce(ArchiverClient) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let connect = |url: String, sec: Security| async move {
        let channel = grpc::connect_with("archiver", &url, &sec).await?;
        Ok::<_, Error>(
            ArchiverServiceClient::new(sec.authorize(channel))
                .max_decoding_message_size(grpc::MAX_MESSAGE_BYTES),
        )
    };
    if let Some(url) = url {
        let sec = Security::from_config(config)?;
        return f(connect(url.to_string(), sec).await?).await;
    }
    let mut config = config.clone();
    config.archiver.interval_secs = 0;
    config.archiver.metrics_listen.clear();
    let archiver = Archiver::open(&config).await?;
    let listener = grpc::bind("127.0.0.1:0").await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("local address: {e}")).with_source(e))?;
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(archiver.serve(listener, async move {
        let _ = rx.changed().await;
    }));
    // In-process on loopback: no TLS, no token; the configured deadlines.
    let secs = std::time::Duration::from_secs;
    let sec = Security::default().with_deadlines(
        secs(config.client.connect_timeout_secs),
        secs(config.client.request_timeout_secs),
    );
    let result = f(connect(format!("http://{addr}"), sec).await?).await;
    let _ = stop.send(true);
    task.await
        .map_err(|e| Error::internal(format!("archiver task: {e}")).with_source(e))??;
    result
}

pub async fn archive(c: &mut ArchiverClient, req: ArchiveRequest) -> Result<ArchiveReport> {
    Ok(c.archive(req)
        .await
        .map_err(|s| Error::from_status(&s))?
        .into_inner())
}

pub async fn restore(c: &mut ArchiverClient, req: RestoreRequest) -> Result<ArchiveReport> {
    Ok(c.restore(req)
        .await
        .map_err(|s| Error::from_status(&s))?
        .into_inner())
}

pub async fn list(c: &mut ArchiverClient, table: &str) -> Result<Vec<PartitionEntry>> {
    Ok(c.list_partitions(ListPartitionsRequest {
        table: table.into(),
    })
    .await
    .map_err(|s| Error::from_status(&s))?
    .into_inner()
    .partitions)
}

pub async fn status(c: &mut ArchiverClient, events: u32) -> Result<String> {
    let s = c
        .status(StatusRequest { events })
        .await
        .map_err(|s| Error::from_status(&s))?
        .into_inner();
    let mut out = format!(
        "cold storage: {}\nhot days: {}\nschedule: {}\ntables: {}\nlast run: {}\n",
        s.cold_root,
        s.hot_days,
        match s.interval_secs {
            0 => "on demand only".to_string(),
            n => format!("every {n} s"),
        },
        s.tables.join(", "),
        if s.last_run_at.is_empty() {
            "none since the archiver started".to_string()
        } else {
            format!("{} ({})", s.last_run_at, s.last_run_result)
        },
    );
    if s.events.is_empty() {
        out.push_str("no archive events yet\n");
        return Ok(out);
    }
    let mut t = table(&[
        "at",
        "action",
        "table",
        "partition",
        "rows",
        "bytes",
        "detail",
    ]);
    for e in s.events {
        t.add_row(vec![
            Cell::new(e.at),
            Cell::new(e.action),
            Cell::new(e.table),
            Cell::new(e.partition),
            right(e.rows),
            right(e.bytes),
            Cell::new(e.detail),
        ]);
    }
    out.push_str(&t.to_string());
    Ok(out)
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn right(v: impl ToString) -> Cell {
    Cell::new(v.to_string()).set_alignment(CellAlignment::Right)
}

/// The moves of an archive or restore, one line each, and a total.
pub fn render_report(r: &ArchiveReport) -> String {
    let mut out = String::new();
    if !r.cutoff.is_empty() {
        out.push_str(&format!("partitions before {} are due\n", r.cutoff));
    }
    if r.moves.is_empty() {
        out.push_str("nothing to do\n");
        return out;
    }
    let mut t = table(&[
        "table",
        "partition",
        "outcome",
        "rows",
        "bytes",
        "files",
        "detail",
    ]);
    for m in &r.moves {
        t.add_row(vec![
            Cell::new(&m.table),
            Cell::new(&m.partition),
            Cell::new(&m.outcome),
            right(m.rows),
            right(m.bytes),
            right(m.files),
            Cell::new(&m.detail),
        ]);
    }
    out.push_str(&t.to_string());
    out.push('\n');
    out
}

pub fn render_list(parts: &[PartitionEntry]) -> String {
    let mut t = table(&[
        "table",
        "partition",
        "hot rows",
        "cold rows",
        "cold bytes",
        "files",
        "hold until",
    ]);
    let opt = |v: Option<u64>| right(v.map_or("-".to_string(), |n| n.to_string()));
    for p in parts {
        t.add_row(vec![
            Cell::new(&p.table),
            Cell::new(&p.partition),
            opt(p.hot_rows),
            opt(p.cold_rows),
            right(p.cold_bytes),
            right(p.cold_files),
            Cell::new(&p.hold_until),
        ]);
    }
    let hot = parts.iter().filter(|p| p.hot_rows.is_some()).count();
    let cold = parts.iter().filter(|p| p.cold_rows.is_some()).count();
    format!("{t}\n{hot} hot, {cold} cold partitions\n")
}
