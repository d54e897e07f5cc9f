//! `quarry archive`: hot/cold tiering through a remote archiver or one
//! running in-process.

use std::path::PathBuf;

use anyhow::bail;
use quarry_cli::archive;
use quarry_core::Config;
use quarry_core::config::WarehouseKind;

use super::args::{ArchiveAction, WarehouseArg};

/// Runs `action` on the archiver at `archiver`, or on one in-process under
/// `config` with the given overrides.
pub(crate) async fn archive_command(
    config: &mut Config,
    action: ArchiveAction,
    archiver: Option<String>,
    cold: Option<String>,
    sqlite: Option<PathBuf>,
    warehouse: Option<WarehouseArg>,
) -> anyhow::Result<()> {
    if let Some(c) = cold {
        config.archiver.cold_root = c;
    }
    if let Some(db) = sqlite {
        config.warehouse.sqlite.path = db;
    }
    if let Some(w) = warehouse {
        config.warehouse.kind = w.into();
    }
    let url = archiver.as_deref();
    let db = &config.warehouse.sqlite.path;
    if url.is_none() && config.warehouse.kind == WarehouseKind::Sqlite && !db.exists() {
        bail!(
            "{} does not exist: run `quarry run` first or pass --sqlite / --archiver",
            db.display()
        );
    }
    let failed = archive::with_archiver(config, url, |mut c| async move {
        let report = match action {
            ArchiveAction::Run {
                table,
                as_of,
                dry_run,
            } => {
                let req = quarry_proto::ArchiveRequest {
                    table: table.unwrap_or_default(),
                    as_of: as_of.unwrap_or_default(),
                    dry_run,
                };
                archive::archive(&mut c, req).await?
            }
            ArchiveAction::Restore { table, from, to } => {
                let req = quarry_proto::RestoreRequest { table, from, to };
                archive::restore(&mut c, req).await?
            }
            ArchiveAction::List { table } => {
                let parts = archive::list(&mut c, &table.unwrap_or_default()).await?;
                print!("{}", archive::render_list(&parts));
                return Ok(0);
            }
            ArchiveAction::Status { events } => {
                print!("{}", archive::status(&mut c, events).await?);
                return Ok(0);
            }
        };
        print!("{}", archive::render_report(&report));
        Ok(report
            .moves
            .iter()
            .filter(|m| m.outcome == "failed")
            .count())
    })
    .await?;
    if failed > 0 {
        bail!("{failed} partition(s) failed to move; nothing was lost (see the detail column)");
    }
    Ok(())
}
