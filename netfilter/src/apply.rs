//! Applying rulesets: [`Proxier`] keeps the ruleset it installed last and sends the
//! kernel only the difference (changed chains, map elements) as one `nft -j -f -`
//! transaction, or replaces the whole table (first sync, changed node facts, failed
//! update, drift). Every call blocks on `nft`: async callers use `spawn_blocking`.

use crate::host::NetNs;
use crate::render::SERVICES;
use crate::ruleset::{to_json, Ruleset};
use crate::Error;

use nftables::schema::Nftables;

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

    /// Checks that the installed table is still intact (someone may have flushed or
    /// deleted it); on drift the remembered state is dropped, so the next
    /// [`sync`](Self::sync) replaces the table. Returns whether drift was found. Only
    /// the small `nat-output` base chain is listed.
    pub fn check_drift(&mut self) -> Result<bool, Error> {
        if self.applied.is_none() {
            return Ok(false);
        }
        let listed = self.ns.run(
            "nft",
            &["-j", "list", "chain", "inet", &self.table, "nat-output"],
            None,
        );
        let intact = match listed {
            Ok(out) => out.contains(&format!("\"target\": \"{SERVICES}\""))
                || out.contains(&format!("\"target\":\"{SERVICES}\"")),
            Err(Error::Failed { .. }) => false,
            Err(e) => return Err(e),
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
