//! Who is running a run, so a run left `running` by a process that died
//! (SIGKILL, a crash, a lost machine) can be told from one still going.
//!
//! Every run records its owner in `pipeline_runs.owner` as JSON: the host,
//! the loader's process id and start time, a random id of the loader
//! instance, and a heartbeat time. Deciding whether a `running` run is dead:
//! - its owner is on this host (same host name, boot and PID namespace):
//!   the process is alive exactly when a process with that id and start
//!   time exists — decided at once;
//! - otherwise the backend decides ([`crate::Warehouse::may_still_run`]):
//!   by default the heartbeat, which loaders refresh while a run stages,
//!   must be younger than `loader.stale_run_secs`; SQLite asks its lock
//!   instead (a live SQLite run holds the database's write lock throughout).

use serde::{Deserialize, Serialize};

use quarry_core::dates::now_text;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOwner {
    /// Host name, boot id and PID namespace, e.g. `loader-7f9c|3f2…|pid:[4026531836]`.
    pub host: String,
    pub pid: u32,
    /// The process's start time in clock ticks after boot (Linux), so a
    /// recycled process id is not mistaken for the owner.
    pub process_start: u64,
    /// Random id of the loader instance.
    pub loader: String,
    /// When the owner last said it was alive (RFC 3339, UTC).
    pub heartbeat_at: String,
}

impl RunOwner {
    /// The current process, as owner of runs begun by loader `loader`.
    pub fn this_process(loader: &str) -> Self {
        let pid = std::process::id();
        Self {
            host: this_host(),
            pid,
            process_start: process_start(pid).unwrap_or(0),
            loader: loader.to_string(),
            heartbeat_at: now_text(),
        }
    }

    pub fn parse(json: &str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an owner serialises")
    }

    /// `json` with the heartbeat set to now (unchanged if it does not parse).
    pub fn beat(json: &str) -> String {
        match Self::parse(json) {
            Some(mut o) => {
                o.heartbeat_at = now_text();
                o.to_json()
            }
            None => json.to_string(),
        }
    }

    /// Whether this process can see the owner's process table.
    pub fn is_local(&self) -> bool {
        !self.host.is_empty() && self.host == this_host()
    }

    /// For a local owner: whether its process still runs.
    pub fn process_alive(&self) -> bool {
        match process_start(self.pid) {
            Some(start) => self.process_start == 0 || start == self.process_start,
            None => false,
        }
    }

    /// A short description for messages, e.g. `pid 4242 on loader-7f9c`.
    pub fn describe(&self) -> String {
        let name = self.host.split('|').next().unwrap_or_default();
        format!("pid {} on {name}", self.pid)
    }
}

/// This machine as owners name it. Off Linux (no /proc) it is empty, and
/// owners are never taken for local.
fn this_host() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .ok()
    };
    let name = read("/proc/sys/kernel/hostname");
    let boot = read("/proc/sys/kernel/random/boot_id");
    let pidns = std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.display().to_string());
    match (name, boot, pidns) {
        (Some(n), Some(b), Some(ns)) => format!("{n}|{b}|{ns}"),
        _ => String::new(),
    }
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_round_trip_and_tell_live_from_dead() {
        let me = RunOwner::this_process("l1");
        assert_eq!(RunOwner::parse(&me.to_json()), Some(me.clone()));
        if cfg!(target_os = "linux") {
            assert!(me.is_local());
            assert!(me.process_alive());
            // A child that has exited is dead.
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            let start = process_start(pid);
            child.wait().unwrap();
            let dead = RunOwner {
                pid,
                process_start: start.unwrap_or(1),
                ..me.clone()
            };
            assert!(!dead.process_alive());
            // Same pid, another start time: a recycled id.
            let recycled = RunOwner {
                process_start: me.process_start + 1,
                ..me.clone()
            };
            assert!(!recycled.process_alive());
        }
        let elsewhere = RunOwner {
            host: "other|boot|pid:[1]".into(),
            ..me.clone()
        };
        assert!(!elsewhere.is_local());
        assert_eq!(elsewhere.describe(), format!("pid {} on other", me.pid));
        let beat = RunOwner::parse(&RunOwner::beat(&me.to_json())).unwrap();
        assert!(beat.heartbeat_at >= me.heartbeat_at);
        assert_eq!(RunOwner::beat("not json"), "not json");
    }
}
