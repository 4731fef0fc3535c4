//! Discovery documents (/api, /apis, /api/v1, /apis/G/V) built from the resource catalogue.
//!
//! Both the aggregated form (APIGroupDiscoveryList, which kubectl asks for first: one
//! request for all groups) and the plain forms (APIVersions, APIGroupList,
//! APIResourceList) that older clients use.

use serde_json::{json, Value};

use super::resources::{Catalog, Def, ResourceDef};

/// `/api`: the core group's versions.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers first,
/// other names last in alphabetical order.
fn version_rank(v: &str) -> (u8, i64, i64, String) {
    let parse = || -> Option<(u8, i64, i64)> {
        let rest = v.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        match &rest[digits.len()..] {
            "" => Some((0, -major, 0)),
            t => {
                let (level, n) = if let Some(n) = t.strip_prefix("beta") {
                    (1, n)
                } else {
                    (2, t.strip_prefix("alpha")?)
                };
                Some((level, -major, -n.parse::<i64>().ok()?))
            }
        }
    };
    match parse() {
        Some((l, a, b)) => (l, a, b, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

/// Every non-core group with its versions, the preferred one first.
fn grouped(catalog: &Catalog) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (g, v) in catalog.groups() {
        match out.iter_mut().find(|(x, _)| *x == g) {
            Some((_, vs)) => vs.push(v),
            None => out.push((g, vec![v])),
        }
    }
    for (_, vs) in &mut out {
        vs.sort_by_key(|v| version_rank(v));
    }
    out
}

fn group_entry(g: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": gvs, "preferredVersion": gvs.first()})
}

/// `/apis`: every non-core group with its versions.
pub fn api_group_list(catalog: &Catalog) -> Value {
    let groups: Vec<Value> = grouped(catalog)
        .iter()
        .map(|(g, vs)| group_entry(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/G`: one group.
pub fn api_group(catalog: &Catalog, group: &str) -> Option<Value> {
    let (g, vs) = grouped(catalog).into_iter().find(|(g, _)| g == group)?;
    let mut doc = group_entry(&g, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn resource_entry(d: &ResourceDef) -> Value {
    let mut r = json!({
        "name": d.plural,
        "singularName": d.singular,
        "namespaced": d.namespaced,
        "kind": d.kind,
        "verbs": d.verbs(),
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    r
}

/// `/api/v1` or `/apis/G/V`: the resources of one group-version.
pub fn api_resource_list(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let defs: Vec<Def> = catalog
        .all()
        .into_iter()
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut list: Vec<Value> = Vec::new();
    for d in &defs {
        let d: &ResourceDef = d;
        list.push(resource_entry(d));
        if super::objects::has_status(d) {
            list.push(json!({"name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"]}));
        }
        if d.is("", "Pod") {
            list.push(
                json!({"name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"]}),
            );
            for (sub, kind, verbs) in POD_STREAMS {
                list.push(
                    json!({"name": format!("pods/{sub}"), "singularName": "", "namespaced": true,
                    "kind": kind, "verbs": verbs}),
                );
            }
        }
        if super::rest::has_scale(d) {
            list.push(json!({"name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
    }
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}),
    )
}

/// Versions of the aggregated discovery format a client may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregated {
    /// apidiscovery.k8s.io/v2
    V2,
    /// apidiscovery.k8s.io/v2beta1
    V2Beta1,
}

impl Aggregated {
    /// The response content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Aggregated::V2 => {
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            }
            Aggregated::V2Beta1 => {
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            }
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Aggregated::V2 => "apidiscovery.k8s.io/v2",
            Aggregated::V2Beta1 => "apidiscovery.k8s.io/v2beta1",
        }
    }
}

/// The aggregated form the Accept header prefers, if any (the first acceptable entry wins).
pub fn negotiate_aggregated(accept: &str) -> Option<Aggregated> {
    for entry in accept.split(',') {
        let params: Vec<&str> = entry.split(';').map(str::trim).collect();
        let wants = |p: &str| params.contains(&p);
        if wants("g=apidiscovery.k8s.io") && wants("as=APIGroupDiscoveryList") {
            if wants("v=v2") {
                return Some(Aggregated::V2);
            }
            if wants("v=v2beta1") {
                return Some(Aggregated::V2Beta1);
            }
        } else if params
            .first()
            .is_some_and(|m| *m == "application/json" || *m == "*/*")
        {
            return None;
        }
    }
    None
}

/// The pods' streaming subresources (served through the node agent): name, kind, verbs.
const POD_STREAMS: &[(&str, &str, &[&str])] = &[
    ("log", "Pod", &["get"]),
    ("exec", "PodExecOptions", &["create", "get"]),
    ("attach", "PodAttachOptions", &["create", "get"]),
    ("portforward", "PodPortForwardOptions", &["create", "get"]),
];

fn aggregated_resource(d: &ResourceDef) -> Value {
    let mut subresources = Vec::new();
    if super::objects::has_status(d) {
        subresources.push(json!({"subresource": "status",
            "responseKind": {"group": d.group, "version": d.version, "kind": d.kind}, "verbs": ["get", "patch", "update"]}));
    }
    if d.is("", "Pod") {
        subresources.push(json!({"subresource": "binding",
            "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]}));
        for (sub, kind, verbs) in POD_STREAMS {
            subresources.push(json!({"subresource": sub,
                "responseKind": {"group": "", "version": "v1", "kind": kind}, "verbs": verbs}));
        }
    }
    if d.kind == "ServiceAccount" && d.group.is_empty() {
        subresources.push(json!({"subresource": "token",
            "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
    }
    if super::rest::has_scale(d) {
        subresources.push(json!({"subresource": "scale",
            "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
    }
    let mut r = json!({
        "resource": d.plural,
        "responseKind": {"group": d.group, "version": d.version, "kind": d.kind},
        "scope": if d.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": d.singular,
        "verbs": d.verbs(),
    });
    if !d.short_names.is_empty() {
        r["shortNames"] = json!(d.short_names);
    }
    if !d.categories.is_empty() {
        r["categories"] = json!(d.categories);
    }
    if !subresources.is_empty() {
        r["subresources"] = json!(subresources);
    }
    r
}

/// The aggregated discovery document of `/api` (`core`) or `/apis`.
pub fn aggregated(catalog: &Catalog, core: bool, format: Aggregated) -> Value {
    let groups: Vec<(String, Vec<String>)> = if core {
        vec![(String::new(), vec!["v1".to_string()])]
    } else {
        grouped(catalog)
    };
    let all = catalog.all();
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let resources: Vec<Value> = all
                        .iter()
                        .filter(|d| d.group == g && d.version == *v)
                        .map(|d| aggregated_resource(d))
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if g.is_empty() {
                json!({})
            } else {
                json!({"name": g})
            };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format.api_version(), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_list_what_the_catalogue_serves() {
        let catalog = Catalog::default();
        let core = api_resource_list(&catalog, "", "v1").unwrap();
        let pods = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"], json!(["po"]));
        assert_eq!(pods["namespaced"], json!(true));
        assert_eq!(pods["categories"], json!(["all"]));
        let apps = api_resource_list(&catalog, "apps", "v1").unwrap();
        let scale = apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["kind"], "Scale");
        assert_eq!(scale["group"], "autoscaling");
        assert!(api_resource_list(&catalog, "nope", "v1").is_none());
        let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(negotiate_aggregated(accept), Some(Aggregated::V2));
        assert_eq!(negotiate_aggregated("application/json"), None);
        assert_eq!(negotiate_aggregated("application/json, application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"), None);
        let agg = aggregated(&catalog, false, Aggregated::V2);
        let apps = agg["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["subresources"][1]["responseKind"]["kind"], "Scale");
        assert_eq!(
            aggregated(&catalog, true, Aggregated::V2Beta1)["items"][0]["versions"][0]["version"],
            "v1"
        );
        let groups = api_group_list(&catalog);
        assert!(groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "apps"));
        assert_eq!(
            api_group(&catalog, "batch").unwrap()["preferredVersion"]["groupVersion"],
            "batch/v1"
        );
        let mut vs = vec!["v1alpha1", "v2", "v1beta2", "v1", "v1beta1", "foo"];
        vs.sort_by_key(|v| version_rank(v));
        assert_eq!(vs, ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "foo"]);
    }
}
