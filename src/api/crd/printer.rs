//! Table output of custom resources: NAME, the definition's `additionalPrinterColumns`,
//! then AGE (unless a column already shows the creation time), as kube-apiserver builds
//! them; date columns print as ages, like kubectl shows them.

use serde_json::{json, Value};

use super::CustomVersion;
use crate::api::table::{age, column, since_time};

fn shows_age(c: &CustomVersion) -> bool {
    !c.columns
        .iter()
        .any(|col| col.path.pointer().as_deref() == Some("/metadata/creationTimestamp"))
}

/// The column definitions.
pub fn columns(c: &CustomVersion) -> Vec<Value> {
    let mut out = vec![column("Name", "string", 0)];
    out.extend(
        c.columns
            .iter()
            .map(|col| column(&col.name, &col.type_, col.priority)),
    );
    if shows_age(c) {
        out.push(column("Age", "date", 0));
    }
    out
}

/// The cells of `o`'s row.
pub fn cells(c: &CustomVersion, o: &Value) -> Vec<Value> {
    let mut out = vec![o.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
    for col in &c.columns {
        let v = col.path.eval(o);
        out.push(match (col.type_.as_str(), v.as_str()) {
            ("date", Some(t)) => json!(since_time(t)),
            _ => v,
        });
    }
    if shows_age(c) {
        out.push(json!(age(o)));
    }
    out
}
