//! Applying rulesets: [`Proxier`] keeps the ruleset it installed last and sends the
//! kernel only the difference (changed chains, map elements) as one `nft -j -f -`
//! transaction, or replaces the whole table (first sync, changed node facts, failed
//! update, drift). Every call blocks on `nft`: async callers use `spawn_blocking`.

use std::collections::BTreeSet;

use crate::host::NetNs;
use crate::render::SERVICES;
use crate::ruleset::{to_json, Ruleset};
use crate::Error;

use nftables::schema::Nftables;

/// How thoroughly [`Proxier::check_drift`] looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriftCheck {
    /// Every chain of the table still exists (`nft list chains`, milliseconds at any
    /// size): catches a deleted table and `nft flush ruleset`.
    Chains,
    /// The DNAT hook's rule is still there (lists one chain, but nft 1.0 fetches every
    /// set with its elements for that: about 2 s at 10,000 services): also catches
    /// `nft flush table`. Meant for a slow period.
    Rules,
}

/// What a [`Proxier::sync`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// The table was replaced in one transaction.
    Full,
    /// Only the difference to the installed ruleset was sent.
    Incremental,
    /// The desired ruleset was already installed.
    Unchanged,
}

/// Installs rulesets in one network namespace and remembers what it installed.
#[derive(Debug)]
pub struct Proxier {
    ns: NetNs,
    table: String,
    applied: Option<Ruleset>,
}

impl Proxier {
    /// A proxier for table `inet <table>` in `ns`; the first sync replaces the table.
    pub fn new(ns: NetNs, table: &str) -> Self {
        Self {
            ns,
            table: table.to_owned(),
            applied: None,
        }
    }

    /// The ruleset installed by the last successful sync.
    pub fn applied(&self) -> Option<&Ruleset> {
        self.applied.as_ref()
    }

    fn nft(&self, batch: &Nftables<'_>) -> Result<(), Error> {
        let json = to_json(batch)?;
        self.ns
            .run("nft", &["-j", "-f", "-"], Some(json.as_bytes()))
            .map(drop)
    }

    /// Brings the kernel to `desired`: nothing if it is installed already, the
    /// difference if possible, otherwise (or if the update fails) a full replacement.
    pub fn sync(&mut self, desired: Ruleset) -> Result<SyncKind, Error> {
        if desired.table != self.table {
            return Err(Error::Invalid(format!(
                "ruleset for table {} given to the proxier of table {}",
                desired.table, self.table
            )));
        }
        let Some(old) = &self.applied else {
            return self.full_sync(desired);
        };
        if *old == desired {
            return Ok(SyncKind::Unchanged);
        }
        let Some(batch) = desired.update_from(old) else {
            return self.full_sync(desired);
        };
        match self.nft(&batch) {
            Ok(()) => {
                self.applied = Some(desired);
                Ok(SyncKind::Incremental)
            }
            Err(e) => {
                tracing::warn!(table = %self.table, error = %e, "incremental nftables update failed; replacing the table");
                self.full_sync(desired)
            }
        }
    }

    /// Replaces the table with `desired` in one transaction.
    pub fn full_sync(&mut self, desired: Ruleset) -> Result<SyncKind, Error> {
        self.applied = None;
        self.nft(&desired.full_replace())?;
        self.applied = Some(desired);
        Ok(SyncKind::Full)
    }

    /// Checks that the installed table is still intact, as thoroughly as `depth` says;
    /// on drift the remembered state is dropped, so the next [`sync`](Self::sync)
    /// replaces the table. Returns whether drift was found.
    pub fn check_drift(&mut self, depth: DriftCheck) -> Result<bool, Error> {
        let Some(applied) = &self.applied else {
            return Ok(false);
        };
        let intact = match depth {
            DriftCheck::Chains => {
                let out = self
                    .ns
                    .run("nft", &["-j", "list", "chains", "inet"], None)?;
                let doc: serde_json::Value = serde_json::from_str(&out)?;
                let listed: BTreeSet<&str> = doc["nftables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o.get("chain"))
                    .filter(|c| c["table"] == self.table.as_str())
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                applied.chains.keys().all(|c| listed.contains(c.as_str()))
            }
            DriftCheck::Rules => {
                let listed = self.ns.run(
                    "nft",
                    &["-j", "list", "chain", "inet", &self.table, "nat-output"],
                    None,
                );
                match listed {
                    Ok(out) => {
                        let doc: serde_json::Value = serde_json::from_str(&out)?;
                        doc["nftables"].as_array().into_iter().flatten().any(|o| {
                            o.pointer("/rule/expr/0/jump/target")
                                .is_some_and(|t| t == SERVICES)
                        })
                    }
                    Err(Error::Failed { .. }) => false,
                    Err(e) => return Err(e),
                }
            }
        };
        if !intact {
            tracing::warn!(table = %self.table, "nftables table changed behind the proxier's back");
            self.applied = None;
        }
        Ok(!intact)
    }

    /// Deletes the table (if present) and forgets the installed state.
    pub fn uninstall(&mut self) -> Result<(), Error> {
        self.applied = None;
        match self.nft(&Ruleset::delete_table(&self.table)) {
            Ok(()) => Ok(()),
            Err(Error::Failed { stderr, .. }) if stderr.contains("No such file") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
