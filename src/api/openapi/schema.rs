//! The structure of the built-in kinds (their published OpenAPI schemas without
//! descriptions), for what the server decides per field: which fields exist (field
//! validation drops or refuses the others) and how a list merges (strategic merge patch).

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::api::resources::ResourceDef;

static STRUCTURE: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi/structure.json"));

/// The schemas of every built-in kind, by name, and which schema each kind has.
#[derive(Debug, Default)]
pub struct Schemas {
    schemas: Map<String, Value>,
    kinds: Map<String, Value>,
    /// Where references not found here resolve (custom resources' `metadata`).
    base: Option<&'static Schemas>,
}

/// How a list field merges under a strategic merge patch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListMerge {
    /// Items are matched by this key and merged item by item.
    ByKey(String),
    /// A list of scalars merged as a set.
    Union,
    /// The patch's list replaces the original (lists without merge facts).
    Replace,
}

/// How a value is owned and merged by server-side apply (structured merge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An object with named fields, each owned on its own.
    Struct,
    /// A map whose entries are owned one by one.
    Map,
    /// A list whose items are identified by these key fields.
    KeyedList(Vec<String>),
    /// A list of scalars, each owned on its own.
    Set,
    /// Owned and replaced as a whole: scalars, atomic lists, maps and structs.
    Atomic,
}

/// The JSON a value must be, as Go's decoder into the built-in types demands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect<'a> {
    /// Anything (free-form, or nothing known).
    Any,
    /// An object.
    Object,
    /// An array.
    Array,
    /// A string, of this format (`date-time`, `byte`…) if any.
    String(Option<&'a str>),
    /// An integral number, of this format (`int32`, `int64`).
    Integer(Option<&'a str>),
    /// Any number.
    Number,
    /// true or false.
    Boolean,
    /// A number or a string (IntOrString, Quantity).
    NumberOrString,
}

/// A position in a schema: the schema of one value, or nothing known (free-form).
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    schemas: &'a Schemas,
    schema: Option<&'a Value>,
}

impl Schemas {
    /// The schemas built into the binary (parsed once).
    pub fn builtin() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| match serde_json::from_str::<Value>(STRUCTURE) {
            Ok(Value::Object(mut m)) => Schemas {
                schemas: match m.remove("schemas") {
                    Some(Value::Object(s)) => s,
                    _ => Map::new(),
                },
                kinds: match m.remove("kinds") {
                    Some(Value::Object(k)) => k,
                    _ => Map::new(),
                },
                base: None,
            },
            _ => {
                tracing::error!("the built-in OpenAPI structure does not parse");
                Schemas::default()
            }
        })
    }

    /// The schema of one custom resource kind (a CustomResourceDefinition version's
    /// `openAPIV3Schema`, already completed with `apiVersion`, `kind` and a `metadata`
    /// reference to [`Schemas::object_meta_ref`]); references resolve in the built-in
    /// schemas.
    pub fn custom(api_version: &str, kind: &str, schema: Value) -> Schemas {
        let name = format!("{api_version}/{kind}");
        let mut schemas = Map::new();
        schemas.insert(name.clone(), schema);
        let mut kinds = Map::new();
        kinds.insert(name.clone(), Value::String(name));
        Schemas {
            schemas,
            kinds,
            base: Some(Schemas::builtin()),
        }
    }

    /// The `$ref` of ObjectMeta, for the `metadata` of custom resources.
    pub fn object_meta_ref() -> &'static str {
        "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }

    /// The schema of objects of `def`: a custom resource's own, or the built-in one.
    pub fn of_def(def: &ResourceDef) -> Option<Node<'_>> {
        match &def.custom {
            Some(c) => c.schemas.kind(&def.api_version(), &def.kind),
            None => Schemas::builtin().kind(&def.api_version(), &def.kind),
        }
    }

    /// The name of the schema of `kind` in `api_version` (`v1`, `apps/v1`), if built in.
    pub fn schema_name(&self, api_version: &str, kind: &str) -> Option<&str> {
        self.kinds.get(&format!("{api_version}/{kind}"))?.as_str()
    }

    /// The schema of objects of `def`, free-form when it has none.
    pub fn of(def: &ResourceDef) -> Node<'_> {
        Schemas::of_def(def).unwrap_or(Node {
            schemas: Schemas::builtin(),
            schema: None,
        })
    }

    /// The schema of objects of `kind` in `api_version` (`v1`, `apps/v1`), if built in.
    pub fn kind(&self, api_version: &str, kind: &str) -> Option<Node<'_>> {
        let name = self.schema_name(api_version, kind)?;
        let schema = self.schemas.get(name)?;
        Some(Node {
            schemas: self,
            schema: Some(schema),
        })
    }

    /// Follows `$ref` and single-element `allOf` to the schema that describes the value.
    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..8 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                match r.strip_prefix("#/components/schemas/").and_then(|n| {
                    self.schemas
                        .get(n)
                        .or_else(|| self.base.and_then(|b| b.schemas.get(n)))
                }) {
                    Some(next) => s = next,
                    None => return s,
                }
            } else if let Some([one]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice)
            {
                s = one;
            } else {
                return s;
            }
        }
        s
    }
}

impl<'a> Node<'a> {
    /// A position about which nothing is known: every field is accepted, lists replace.
    pub fn free(&self) -> Node<'a> {
        self.at(None)
    }

    fn resolved(&self) -> Option<&'a Value> {
        self.schema.map(|s| self.schemas.resolve(s))
    }

    fn at(&self, schema: Option<&'a Value>) -> Node<'a> {
        Node {
            schemas: self.schemas,
            schema,
        }
    }

    /// What JSON this value must be.
    pub fn expects(&self) -> Expect<'a> {
        let Some(s) = self.resolved() else {
            return Expect::Any;
        };
        if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return Expect::NumberOrString;
        }
        let format = s.get("format").and_then(Value::as_str);
        match s.get("type").and_then(Value::as_str) {
            // An object with neither fields nor values described is any JSON value
            // (apiextensions' JSON, RawExtension), as Go decodes them.
            Some("object")
                if s.get("properties").is_none() && s.get("additionalProperties").is_none() =>
            {
                Expect::Any
            }
            Some("object") => Expect::Object,
            Some("array") => Expect::Array,
            Some("string") => Expect::String(format),
            Some("integer") => Expect::Integer(format),
            Some("number") => Expect::Number,
            Some("boolean") => Expect::Boolean,
            _ if s.get("properties").is_some() => Expect::Object,
            _ => Expect::Any,
        }
    }

    /// The short name of the schema this position refers to (`DeploymentSpec`), if any.
    pub fn type_name(&self) -> Option<&'a str> {
        let s = self.schema?;
        let r = s.get("$ref").or_else(|| {
            s.get("allOf")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(|one| one.get("$ref"))
        });
        r.and_then(Value::as_str)?.rsplit('.').next()
    }

    /// Whether this value is an object with a fixed set of fields.
    pub fn has_fields(&self) -> bool {
        self.resolved()
            .and_then(|s| s.get("properties"))
            .is_some_and(Value::is_object)
    }

    /// The field `name` of this object: Some(node) when it exists or the object is a map
    /// or free-form, None when the object has fixed fields and `name` is not one of them.
    pub fn field(&self, name: &str) -> Option<Node<'a>> {
        let Some(s) = self.resolved() else {
            return Some(*self);
        };
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            return match props.get(name) {
                Some(p) => Some(self.at(Some(p))),
                // Custom resources keep unknown fields where their schema says so.
                None if s.get("x-kubernetes-preserve-unknown-fields")
                    == Some(&Value::Bool(true)) =>
                {
                    Some(self.at(None))
                }
                None => None,
            };
        }
        match s.get("additionalProperties") {
            Some(ap @ Value::Object(_)) => Some(self.at(Some(ap))),
            _ => Some(self.at(None)),
        }
    }

    /// The schema of this list's items (free-form when unknown).
    pub fn items(&self) -> Node<'a> {
        self.at(self.resolved().and_then(|s| s.get("items")))
    }

    /// How this value is owned and merged by server-side apply; `value` decides where
    /// the schema says nothing (free-form objects are maps, lists atomic).
    pub fn shape(&self, value: &Value) -> Shape {
        let own = self.schema;
        let resolved = self.resolved();
        let ext = |k: &str| {
            own.and_then(|s| s.get(k))
                .or_else(|| resolved.and_then(|s| s.get(k)))
                .and_then(Value::as_str)
        };
        match value {
            Value::Object(_) => {
                if ext("x-kubernetes-map-type") == Some("atomic") {
                    Shape::Atomic
                } else if self.has_fields() {
                    Shape::Struct
                } else {
                    Shape::Map
                }
            }
            Value::Array(_) => match ext("x-kubernetes-list-type") {
                Some("map") => {
                    let keys = own
                        .and_then(|s| s.get("x-kubernetes-list-map-keys"))
                        .and_then(Value::as_array)
                        .map(|k| {
                            k.iter()
                                .filter_map(Value::as_str)
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default();
                    Shape::KeyedList(keys)
                }
                Some("set") => Shape::Set,
                Some(_) => Shape::Atomic,
                // Without a list type, the patch strategy tells (as for older schemas).
                None => match self.list_merge() {
                    ListMerge::ByKey(k) => Shape::KeyedList(vec![k]),
                    ListMerge::Union => Shape::Set,
                    ListMerge::Replace => Shape::Atomic,
                },
            },
            _ => Shape::Atomic,
        }
    }

    /// How this field, when a list, merges (its own `x-kubernetes-patch-*` facts).
    pub fn list_merge(&self) -> ListMerge {
        let Some(s) = self.schema else {
            return ListMerge::Replace;
        };
        let merges = s
            .get("x-kubernetes-patch-strategy")
            .and_then(Value::as_str)
            .is_some_and(|st| st.split(',').any(|p| p == "merge"));
        if !merges {
            return ListMerge::Replace;
        }
        match s
            .get("x-kubernetes-patch-merge-key")
            .and_then(Value::as_str)
        {
            Some(k) => ListMerge::ByKey(k.to_string()),
            None => ListMerge::Union,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_through_references_to_their_fields() {
        let s = Schemas::builtin();
        let deploy = s.kind("apps/v1", "Deployment").expect("Deployment");
        let containers = deploy
            .field("spec")
            .and_then(|n| n.field("template"))
            .and_then(|n| n.field("spec"))
            .and_then(|n| n.field("containers"))
            .expect("containers");
        assert_eq!(containers.list_merge(), ListMerge::ByKey("name".into()));
        let c = containers.items();
        assert!(c.field("image").is_some());
        assert!(c.field("imagee").is_none());
        assert_eq!(
            c.field("ports").map(|p| p.list_merge()),
            Some(ListMerge::ByKey("containerPort".into()))
        );
        // Maps accept any key; free-form values anything.
        let labels = deploy
            .field("metadata")
            .and_then(|m| m.field("labels"))
            .expect("labels");
        assert!(labels.field("any-key").is_some());
        let svc = s.kind("v1", "Service").expect("Service");
        assert_eq!(
            svc.field("spec")
                .and_then(|n| n.field("ports"))
                .map(|p| p.list_merge()),
            Some(ListMerge::ByKey("port".into()))
        );
        let finalizers = svc
            .field("metadata")
            .and_then(|n| n.field("finalizers"))
            .expect("finalizers");
        assert_eq!(finalizers.list_merge(), ListMerge::Union);
        let tolerations = s
            .kind("v1", "Pod")
            .and_then(|p| p.field("spec"))
            .and_then(|p| p.field("tolerations"))
            .expect("tolerations");
        assert_eq!(tolerations.list_merge(), ListMerge::Replace);
        assert!(s.kind("v1", "Deployment").is_none());
    }

    #[test]
    fn every_served_kind_has_a_schema() {
        let s = Schemas::builtin();
        for def in crate::api::resources::served() {
            assert!(
                s.kind(&def.api_version(), &def.kind).is_some(),
                "no schema for {}/{}",
                def.api_version(),
                def.kind
            );
        }
    }
}
