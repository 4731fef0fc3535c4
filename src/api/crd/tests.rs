//! Unit tests of definitions, their catalogue entries and custom resource values.

use serde_json::{json, Value};

use super::*;
use crate::api::fields::{self, FieldValidation};

fn widgets() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true,
                 "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                 "additionalPrinterColumns": [{"name": "Size", "type": "string", "jsonPath": ".spec.size"}],
                 "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "string", "enum": ["small", "large"]},
                        "replicas": {"type": "integer", "minimum": 0, "maximum": 10, "default": 1},
                        "ports": {"type": "array", "maxItems": 2, "items": {"type": "object", "properties": {"port": {"type": "integer"}}}},
                        "note": {"type": "string", "nullable": true, "maxLength": 5},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "closed": {"type": "object"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "port": {"x-kubernetes-int-or-string": true}
                    }},
                    "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
                 }}}},
                {"name": "v1beta1", "served": false, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object"}}}
            ]
        }
    })
}

fn established(catalog: &Catalog) -> Value {
    let mut crd = widgets();
    prepare(catalog, None, &mut crd).expect("valid");
    crd
}

fn causes(e: &ApiError) -> String {
    e.message.clone()
}

#[test]
fn valid_definitions_are_established_with_their_names() {
    let crd = established(&Catalog::default());
    let names = &crd["status"]["acceptedNames"];
    assert_eq!(names["singular"], "widget");
    assert_eq!(names["listKind"], "WidgetList");
    assert_eq!(names["shortNames"], json!(["wd"]));
    let conditions = crd["status"]["conditions"].as_array().expect("conditions");
    for t in ["NamesAccepted", "Established"] {
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == t && c["status"] == "True"),
            "{t}: {crd}"
        );
    }
    assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
    let defs = served_defs(&crd);
    assert_eq!(defs.len(), 1, "v1beta1 is not served");
    let d = &defs[0];
    assert_eq!(
        (d.group.as_str(), d.version.as_str()),
        ("example.com", "v1")
    );
    assert_eq!(
        (d.plural.as_str(), d.singular.as_str()),
        ("widgets", "widget")
    );
    assert!(d.namespaced);
    let c = d.custom.as_ref().expect("custom");
    assert!(c.status);
    assert_eq!(
        c.scale,
        Some(ScalePaths {
            spec_replicas: "/spec/replicas".into(),
            status_replicas: "/status/replicas".into(),
            label_selector: None,
        })
    );
    assert_eq!(c.columns[0].path.pointer().as_deref(), Some("/spec/size"));
    // Not established: nothing served.
    assert!(served_defs(&widgets()).is_empty());
}

#[test]
fn invalid_definitions_name_each_field() {
    let catalog = Catalog::default();
    let mut crd = widgets();
    crd["metadata"]["name"] = json!("wrong.example.com");
    crd["spec"]["scope"] = json!("Global");
    crd["spec"]["versions"][1]["storage"] = json!(true);
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["untyped"] = json!({"description": "no type"});
    let e = prepare(&catalog, None, &mut crd).expect_err("invalid");
    assert_eq!(e.code, 422);
    let m = causes(&e);
    for want in [
        "metadata.name: Invalid value: \"wrong.example.com\": must be spec.names.plural+\".\"+spec.group",
        "spec.scope: Unsupported value: \"Global\"",
        "must have exactly one version marked as storage version",
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[untyped].type: Required value",
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
    let mut crd = widgets();
    crd["spec"]["group"] = json!("nodot");
    crd["metadata"]["name"] = json!("widgets.nodot");
    crd["spec"]["versions"][0]
        .as_object_mut()
        .expect("version")
        .remove("schema");
    let m = causes(&prepare(&catalog, None, &mut crd).expect_err("invalid"));
    assert!(m.contains("spec.group: Invalid value: \"nodot\""), "{m}");
    assert!(m.contains("schemas are required"), "{m}");
    // The scope cannot change.
    let old = established(&catalog);
    let mut crd = widgets();
    crd["spec"]["scope"] = json!("Cluster");
    let m = causes(&prepare(&catalog, Some(&old), &mut crd).expect_err("immutable"));
    assert!(
        m.contains("spec.scope: Invalid value: \"Cluster\": field is immutable"),
        "{m}"
    );
}

#[test]
fn a_kind_taken_in_the_group_is_not_accepted() {
    let catalog = Catalog::default();
    let crd = established(&catalog);
    install(&catalog, "widgets.example.com", Some(&crd));
    assert!(catalog.lookup("example.com", "v1", "widgets").is_some());
    let mut other = widgets();
    other["metadata"]["name"] = json!("gizmos.example.com");
    other["spec"]["names"] = json!({"plural": "gizmos", "kind": "Widget"});
    prepare(&catalog, None, &mut other).expect("valid, but not accepted");
    assert!(!definition::is_established(&other), "{other}");
    assert!(served_defs(&other).is_empty());
    install(&catalog, "widgets.example.com", None);
    assert!(catalog.lookup("example.com", "v1", "widgets").is_none());
}

fn widget_def() -> Def {
    served_defs(&established(&Catalog::default()))
        .pop()
        .expect("served")
}

#[test]
fn values_get_defaults_and_are_checked_with_field_paths() {
    let def = widget_def();
    let custom = def.custom.clone().expect("custom");
    let mut ok = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": "small", "note": null, "port": "http", "labels": {"a": "b"}}});
    check_values(&def, &custom, &mut ok).expect("valid");
    assert_eq!(ok["spec"]["replicas"], 1, "default applied");
    let mut bad = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": "huge", "replicas": 11, "note": "toolong", "port": 1.5,
                 "ports": [{"port": "x"}, {}, {}], "labels": {"a": 1}}});
    let e = check_values(&def, &custom, &mut bad).expect_err("invalid");
    assert_eq!(e.code, 422);
    let m = causes(&e);
    for want in [
        "spec.size: Unsupported value: \"huge\": supported values: \"small\", \"large\"",
        "spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10",
        "spec.note: Too long: may not be more than 5 bytes",
        "spec.port: Invalid value: \"number\"",
        "spec.ports[0].port: Invalid value: \"string\": spec.ports[0].port in body must be of type integer: \"string\"",
        "spec.ports: Too many: 3: must have at most 2 items",
        "spec.labels.a: Invalid value: \"integer\"",
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
    let mut missing = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}});
    let m = causes(&check_values(&def, &custom, &mut missing).expect_err("required"));
    assert!(m.contains("spec.size: Required value"), "{m}");
}

#[test]
fn unknown_fields_are_pruned_unless_preserved() {
    let def = widget_def();
    let mut obj = json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w", "labels": {"x": "y"}, "bogusMeta": 1},
        "top": 1,
        "spec": {"size": "small", "colour": "blue", "free": {"any": {"thing": [1]}},
                 "closed": {"gone": true}, "ports": [{"port": 1, "name": "p"}]}});
    let warnings = fields::validate(&def, &mut obj, FieldValidation::Warn, None).expect("warn");
    assert_eq!(
        warnings,
        [
            "unknown field \"metadata.bogusMeta\"",
            "unknown field \"spec.closed.gone\"",
            "unknown field \"spec.colour\"",
            "unknown field \"spec.ports[0].name\"",
            "unknown field \"top\"",
        ]
    );
    assert_eq!(obj["spec"]["free"]["any"]["thing"], json!([1]));
    assert_eq!(obj["metadata"]["labels"]["x"], "y");
    assert!(obj.get("top").is_none());
    assert_eq!(obj["spec"]["closed"], json!({}));
    let mut strict = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
        "spec": {"size": "small", "colour": "blue"}});
    let e = fields::validate(&def, &mut strict, FieldValidation::Strict, None).expect_err("strict");
    assert_eq!(e.code, 400);
    assert!(
        e.message.contains("unknown field \"spec.colour\""),
        "{}",
        e.message
    );
}

#[test]
fn simple_json_paths_become_pointers() {
    assert_eq!(
        json_path_pointer(".spec.replicas").as_deref(),
        Some("/spec/replicas")
    );
    assert_eq!(
        json_path_pointer("{.status.a/b}").as_deref(),
        Some("/status/a~1b")
    );
    assert_eq!(json_path_pointer(".spec.items[0].name"), None);
    assert_eq!(json_path_pointer("spec"), None);
    assert_eq!(json_path_pointer("."), None);
}
