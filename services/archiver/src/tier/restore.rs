//! Bringing cold partitions back into the warehouse in one run.

use chrono::{Days, NaiveDate, Utc};
use object_store::PutMode;
use quarry_core::{Error, Result};
use quarry_proto::PartitionMove;

use super::store::Hold;
use super::{Tier, date_text_of, outcome};
use quarry_warehouse::{RunCommit, RunFailure, RunStart, WriteMode};

impl Tier {
    /// Copies the cold partitions from..=to back into the warehouse in one
    /// run (an atomic partition overwrite) and holds them hot for `hold_days`.
    pub async fn restore(
        &self,
        only: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<PartitionMove>> {
        if only.is_empty() {
            return Err(Error::input("restore needs a table"));
        }
        let table = self.tables(only)?[0];
        let _busy = self.busy.lock().await;
        let (from, to) = (date_text_of(from), date_text_of(to));
        let parts: Vec<String> = self
            .cold_partitions(table)
            .await?
            .into_keys()
            .filter(|p| *p >= from && *p <= to)
            .collect();
        let mut moves = vec![];
        if parts.is_empty() {
            return Ok(moves);
        }
        let mut leased = vec![];
        let result = async {
            for p in &parts {
                if !self.lease(table, p).await? {
                    return Err(Error::backend(
                        format!("{table} {p} is being moved by another archiver; try again later"),
                        true,
                    ));
                }
                leased.push(p.clone());
            }
            let run_id = format!("restore-{}", uuid::Uuid::now_v7());
            self.warehouse
                .begin_run(RunStart {
                    run_id: run_id.clone(),
                    source: format!("{}/{table} {from}..{to}", self.cold.display),
                    options_json: serde_json::json!({"restore": {"table": table.name(), "from": from, "to": to}}).to_string(),
                    owner_json: quarry_warehouse::owner::RunOwner::this_process("archiver").to_json(),
                })
                .await?;
            let written = async {
                for p in &parts {
                    let batches = self.read_cold(table, p).await?;
                    let mut m = outcome(table, p, "restored");
                    for b in batches {
                        m.rows += self
                            .warehouse
                            .write(&run_id, table, WriteMode::Replace, b)
                            .await?;
                    }
                    let manifest = self.manifest(table, p).await?.expect("read above");
                    m.bytes = manifest.bytes();
                    m.files = manifest.files.len() as u32;
                    moves.push(m);
                }
                self.warehouse
                    .commit(RunCommit {
                        run_id: run_id.clone(),
                        ..Default::default()
                    })
                    .await
            }
            .await;
            if let Err(e) = written {
                let _ = self
                    .warehouse
                    .abort(RunFailure {
                        run_id,
                        category: e.category(),
                        message: e.to_string(),
                        stats: Default::default(),
                        quality_json: String::new(),
                    })
                    .await;
                return Err(e);
            }
            let until = date_text_of(
                Utc::now().date_naive() + Days::new(self.config.hold_days.into()),
            );
            for m in &moves {
                let hold = serde_json::to_vec(&Hold {
                    until: until.clone(),
                })
                .expect("hold json");
                self.put(
                    &self.dir(table, &m.partition).join("_hold.json"),
                    hold,
                    PutMode::Overwrite,
                )
                .await?;
                self.event("restored", table, &m.partition, m).await;
            }
            Ok(())
        }
        .await;
        for p in &leased {
            self.release(table, p).await;
        }
        result.map(|()| moves)
    }
}
