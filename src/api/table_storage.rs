//! Table rows of PersistentVolumes, PersistentVolumeClaims and StorageClasses, with the
//! columns kube-apiserver's printers give them (what `kubectl get pv,pvc,sc` shows).

use serde_json::{json, Value};

use super::table::Column;

/// The columns between NAME and AGE of a storage kind.
pub fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "PersistentVolume" => vec![
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("Reclaim Policy", "string", 0),
            ("Status", "string", 0),
            ("Claim", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
            ("Reason", "string", 0),
        ],
        "PersistentVolumeClaim" => vec![
            ("Status", "string", 0),
            ("Volume", "string", 0),
            ("Capacity", "string", 0),
            ("Access Modes", "string", 0),
            ("StorageClass", "string", 0),
            ("VolumeAttributesClass", "string", 0),
        ],
        "StorageClass" => vec![
            ("Provisioner", "string", 0),
            ("ReclaimPolicy", "string", 0),
            ("VolumeBindingMode", "string", 0),
            ("AllowVolumeExpansion", "string", 0),
        ],
        _ => vec![],
    }
}

/// The columns after AGE (`-o wide`).
pub fn wide_columns(kind: &str) -> Vec<Column> {
    match kind {
        "PersistentVolume" | "PersistentVolumeClaim" => vec![("VolumeMode", "string", 1)],
        _ => vec![],
    }
}

fn text<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
fn access_modes(o: &Value, pointer: &str) -> String {
    o.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn unset(v: &str) -> String {
    if v.is_empty() {
        "<unset>".into()
    } else {
        v.into()
    }
}

/// A row of a storage kind: `name`, its columns, `age`, the wide columns.
pub fn cells(kind: &str, o: &Value, name: Value, age: Value) -> Vec<Value> {
    let mode = json!(match text(o, "/spec/volumeMode") {
        "" => "Filesystem",
        m => m,
    });
    match kind {
        "PersistentVolume" => {
            let claim = match (
                text(o, "/spec/claimRef/namespace"),
                text(o, "/spec/claimRef/name"),
            ) {
                (_, "") => String::new(),
                (ns, n) => format!("{ns}/{n}"),
            };
            vec![
                name,
                json!(text(o, "/spec/capacity/storage")),
                json!(access_modes(o, "/spec/accessModes")),
                json!(text(o, "/spec/persistentVolumeReclaimPolicy")),
                json!(text(o, "/status/phase")),
                json!(claim),
                json!(text(o, "/spec/storageClassName")),
                json!(unset(text(o, "/spec/volumeAttributesClassName"))),
                json!(text(o, "/status/reason")),
                age,
                mode,
            ]
        }
        "PersistentVolumeClaim" => vec![
            name,
            json!(text(o, "/status/phase")),
            json!(text(o, "/spec/volumeName")),
            json!(text(o, "/status/capacity/storage")),
            json!(access_modes(o, "/status/accessModes")),
            json!(text(o, "/spec/storageClassName")),
            json!(unset(text(o, "/spec/volumeAttributesClassName"))),
            age,
            mode,
        ],
        _ => {
            let mut name = name;
            if super::storage_admission::is_default(o) {
                name = json!(format!("{} (default)", name.as_str().unwrap_or("")));
            }
            vec![
                name,
                json!(text(o, "/provisioner")),
                json!(match text(o, "/reclaimPolicy") {
                    "" => "Delete",
                    p => p,
                }),
                json!(match text(o, "/volumeBindingMode") {
                    "" => "Immediate",
                    m => m,
                }),
                json!(o
                    .pointer("/allowVolumeExpansion")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()),
                age,
            ]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_show_kubectl_columns() {
        let pvc = json!({"metadata": {"name": "data"},
            "spec": {"volumeName": "pvc-1", "storageClassName": "local-path"},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce", "ReadOnlyMany"]}});
        let row = cells("PersistentVolumeClaim", &pvc, json!("data"), json!("5s"));
        assert_eq!(
            row,
            vec![
                json!("data"),
                json!("Bound"),
                json!("pvc-1"),
                json!("1Gi"),
                json!("RWO,ROX"),
                json!("local-path"),
                json!("<unset>"),
                json!("5s"),
                json!("Filesystem"),
            ]
        );
        assert_eq!(
            columns("PersistentVolumeClaim").len() + 3,
            row.len(),
            "name, age and the wide column"
        );
    }
}
