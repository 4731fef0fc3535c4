//! The catalogue of served resources: the built-in kinds, with the names, scopes and
//! short names that kubectl resolves (`po`, `deploy`, …), and the custom resources of
//! established CustomResourceDefinitions ([`Catalog`]), which change while serving.

use std::sync::{Arc, OnceLock, RwLock};

use super::crd::CustomVersion;

/// One served resource.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group; "" for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind of its objects.
    pub kind: String,
    /// Plural resource name used in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// kubectl short names.
    pub short_names: Vec<String>,
    /// Categories (`all` decides what `kubectl get all` shows).
    pub categories: Vec<String>,
    /// What a CustomResourceDefinition says of this version (schema, subresources,
    /// printer columns); None for built-in kinds.
    pub custom: Option<Arc<CustomVersion>>,
}

/// A served resource, shared: built-in ones live as long as the process, custom ones as
/// long as their definition is served or a request still uses them.
pub type Def = Arc<ResourceDef>;

impl ResourceDef {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list of these objects.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The storage prefix of all objects of this resource (ends with `/`); the same for
    /// every version of a resource, and for events.k8s.io Events the core one (one
    /// resource served by two groups, as kube-apiserver stores them).
    pub fn storage_prefix(&self) -> String {
        let group = if self.group.is_empty() || super::event_versions::is_events_v1(self) {
            "core"
        } else {
            &self.group
        };
        format!("/registry/{group}/{}/", self.plural)
    }

    /// The storage key of one object.
    pub fn storage_key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}{ns}/{name}", self.storage_prefix()),
            _ => format!("{}{name}", self.storage_prefix()),
        }
    }

    /// Whether this is a create-only review resource, answered and never stored.
    pub fn is_review(&self) -> bool {
        self.custom.is_none()
            && REVIEWS_TABLE
                .iter()
                .any(|r| r.group == self.group && r.plural == self.plural)
    }

    /// Whether this is `kind` of the built-in group `group`.
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.custom.is_none() && self.group == group && self.kind == kind
    }

    /// Verbs served for this resource.
    pub fn verbs(&self) -> &'static [&'static str] {
        if self.is_review() {
            return &["create"];
        }
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// A row of the built-in table.
struct Builtin {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
}

impl Builtin {
    fn def(&self) -> Def {
        let strings = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        Arc::new(ResourceDef {
            group: self.group.into(),
            version: self.version.into(),
            kind: self.kind.into(),
            plural: self.plural.into(),
            singular: self.singular.into(),
            namespaced: self.namespaced,
            short_names: strings(self.short_names),
            categories: strings(self.categories),
            custom: None,
        })
    }
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! def {
    ($g:expr, $v:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr, $short:expr, $cat:expr) => {
        Builtin {
            group: $g,
            version: $v,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: $short,
            categories: $cat,
        }
    };
}

/// Every built-in resource pikube serves (see [`builtin`]).
static BUILTIN_TABLE: &[Builtin] = &[
    def!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        false,
        &["ns"],
        NONE
    ),
    def!("", "v1", "Pod", "pods", "pod", true, &["po"], ALL),
    def!(
        "",
        "v1",
        "Service",
        "services",
        "service",
        true,
        &["svc"],
        ALL
    ),
    def!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        true,
        &["ep"],
        NONE
    ),
    def!("", "v1", "Node", "nodes", "node", false, &["no"], NONE),
    def!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        true,
        &["cm"],
        NONE
    ),
    def!("", "v1", "Secret", "secrets", "secret", true, NONE, NONE),
    def!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        &["sa"],
        NONE
    ),
    def!("", "v1", "Event", "events", "event", true, &["ev"], NONE),
    def!(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        &["pv"],
        NONE
    ),
    def!(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        &["pvc"],
        NONE
    ),
    def!(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        true,
        &["quota"],
        NONE
    ),
    def!(
        "",
        "v1",
        "LimitRange",
        "limitranges",
        "limitrange",
        true,
        &["limits"],
        NONE
    ),
    def!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        &["deploy"],
        ALL
    ),
    def!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        &["rs"],
        ALL
    ),
    def!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        true,
        &["ds"],
        ALL
    ),
    def!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        &["sts"],
        ALL
    ),
    def!(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        NONE,
        NONE
    ),
    def!("batch", "v1", "Job", "jobs", "job", true, NONE, ALL),
    def!(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        true,
        &["cj"],
        ALL
    ),
    def!(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        true,
        &["ing"],
        NONE
    ),
    def!(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        false,
        NONE,
        NONE
    ),
    def!(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        "networkpolicy",
        true,
        &["netpol"],
        NONE
    ),
    def!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        NONE,
        NONE
    ),
    def!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        true,
        NONE,
        NONE
    ),
    def!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        true,
        NONE,
        NONE
    ),
    def!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        NONE,
        NONE
    ),
    def!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        NONE,
        NONE
    ),
    def!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        NONE,
        NONE
    ),
    def!(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        false,
        &["sc"],
        NONE
    ),
    def!(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        "event",
        true,
        NONE,
        NONE
    ),
    def!(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        true,
        &["pdb"],
        NONE
    ),
    def!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        &["hpa"],
        ALL
    ),
    def!(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        false,
        &["crd", "crds"],
        NONE
    ),
];

/// The review resources (`kubectl auth can-i [--list]`, `kubectl auth whoami`): served by
/// `reviews.rs`, not stored, so not among the [`builtin`] kinds controllers watch.
const REVIEWS_TABLE: &[Builtin] = &[
    def!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        false,
        NONE,
        NONE
    ),
    def!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        false,
        NONE,
        NONE
    ),
    def!(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
        false,
        NONE,
        NONE
    ),
    def!(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        "tokenreview",
        false,
        NONE,
        NONE
    ),
];

/// Every stored built-in resource (built once).
pub fn builtin() -> &'static [Def] {
    static DEFS: OnceLock<Vec<Def>> = OnceLock::new();
    DEFS.get_or_init(|| BUILTIN_TABLE.iter().map(Builtin::def).collect())
}

/// The review resources.
pub fn reviews() -> &'static [Def] {
    static DEFS: OnceLock<Vec<Def>> = OnceLock::new();
    DEFS.get_or_init(|| REVIEWS_TABLE.iter().map(Builtin::def).collect())
}

/// Every built-in served resource: the stored kinds and the reviews.
pub fn served() -> impl Iterator<Item = &'static Def> {
    builtin().iter().chain(reviews())
}

/// Finds the built-in resource served at `group/version/plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<Def> {
    served()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
        .cloned()
}

/// The resources served now: the built-in ones and the custom resources of established
/// CustomResourceDefinitions. Cheap to clone (shared); every API server keeps its own
/// current from a watch of the definitions (`crd::follow`), so each of an HA cluster's
/// servers serves them.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    custom: Arc<RwLock<Vec<Def>>>,
}

impl Catalog {
    /// The custom resources served now.
    pub fn custom(&self) -> Vec<Def> {
        match self.custom.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Every served resource, built-in first.
    pub fn all(&self) -> Vec<Def> {
        served().cloned().chain(self.custom()).collect()
    }

    /// Finds the resource served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Def> {
        lookup(group, version, plural).or_else(|| {
            let custom = match self.custom.read() {
                Ok(c) => c,
                Err(p) => p.into_inner(),
            };
            custom
                .iter()
                .find(|d| d.group == group && d.version == version && d.plural == plural)
                .cloned()
        })
    }

    /// Serves `defs` as the versions of the definition named `crd` (replacing what it
    /// served before; empty: stops serving it).
    pub fn set(&self, crd: &str, defs: Vec<Def>) {
        let mut c = match self.custom.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        c.retain(|d| d.custom.as_ref().is_some_and(|x| x.crd != crd));
        c.extend(defs);
    }

    /// Serves exactly `defs` as the custom resources (after a full list of the
    /// definitions).
    pub fn reset(&self, defs: Vec<Def>) {
        let mut c = match self.custom.write() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        *c = defs;
    }

    /// The API groups (other than core) with their versions, built-in ones first, in a
    /// stable order.
    pub fn groups(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for d in self.all().iter().filter(|d| !d.group.is_empty()) {
            if !out.iter().any(|(g, v)| *g == d.group && *v == d.version) {
                out.push((d.group.clone(), d.version.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_storage_keys() {
        let cm = lookup("", "v1", "configmaps").unwrap();
        assert_eq!(
            cm.storage_key(Some("default"), "x"),
            "/registry/core/configmaps/default/x"
        );
        let ns = lookup("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.storage_key(Some("ignored"), "kube-system"),
            "/registry/core/namespaces/kube-system"
        );
        assert_eq!(
            lookup("apps", "v1", "deployments").unwrap().api_version(),
            "apps/v1"
        );
        assert!(lookup("apps", "v2", "deployments").is_none());
        // Both versions of Events are one stored resource.
        let events = lookup("events.k8s.io", "v1", "events").unwrap();
        assert_eq!(
            events.storage_key(Some("d"), "e"),
            lookup("", "v1", "events")
                .unwrap()
                .storage_key(Some("d"), "e")
        );
        assert!(Catalog::default()
            .groups()
            .contains(&("batch".into(), "v1".into())));
        // Plurals are unique within a group.
        for a in builtin() {
            assert_eq!(
                builtin()
                    .iter()
                    .filter(|b| b.group == a.group && b.plural == a.plural)
                    .count(),
                1
            );
        }
    }
}
