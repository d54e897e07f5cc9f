//! Leases: of two archivers, only one moves a partition at a time.

use super::Tier;
use chrono::Utc;
use object_store::{ObjectStore, PutMode, PutPayload};
use quarry_core::{Result, Table};

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    /// Unix seconds.
    expires: i64,
}

impl Tier {
    /// Takes the partition's lease, or returns false if another archiver
    /// holds an unexpired one. Leases are numbered; a new one is created
    /// only if absent, so of two archivers replacing an expired lease one wins.
    pub(super) async fn lease(&self, table: Table, partition: &str) -> Result<bool> {
        let dir = self.dir(table, partition);
        let mut seqs: Vec<u64> = self
            .names(&dir)
            .await?
            .iter()
            .filter_map(|n| {
                n.strip_prefix("_lease-")?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        seqs.sort_unstable();
        let now = Utc::now().timestamp();
        if let Some(&last) = seqs.last() {
            let path = dir.clone().join(format!("_lease-{last:010}.json"));
            if let Some(l) = self.get_json::<Lease>(&path).await?
                && l.expires > now
                && l.holder != self.holder
            {
                return Ok(false);
            }
        }
        let next = seqs.last().map_or(0, |s| s + 1);
        let lease = Lease {
            holder: self.holder.clone(),
            expires: now + self.config.lease_secs as i64,
        };
        let path = dir.clone().join(format!("_lease-{next:010}.json"));
        match self
            .cold
            .store
            .put_opts(
                &path,
                PutPayload::from(serde_json::to_vec(&lease).expect("lease json")),
                PutMode::Create.into(),
            )
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => return Ok(false),
            Err(e) => return Err(self.store_err("writing", &path, e)),
        }
        // Earlier leases are history now.
        for s in seqs {
            self.delete(&dir.clone().join(format!("_lease-{s:010}.json")))
                .await?;
        }
        Ok(true)
    }

    pub(super) async fn release(&self, table: Table, partition: &str) {
        let dir = self.dir(table, partition);
        let Ok(names) = self.names(&dir).await else {
            return;
        };
        for n in names.iter().filter(|n| n.starts_with("_lease-")) {
            let path = dir.clone().join(n.as_str());
            if let Ok(Some(l)) = self.get_json::<Lease>(&path).await
                && l.holder == self.holder
            {
                let _ = self.delete(&path).await;
            }
        }
    }
}
