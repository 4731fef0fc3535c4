//! The review resources a client asks about itself: SelfSubjectAccessReview
//! (`kubectl auth can-i`), SelfSubjectRulesReview (`kubectl auth can-i --list`) and
//! SelfSubjectReview (`kubectl auth whoami`). They are create-only and never stored:
//! the answer is the object with its `status` filled in.

use serde_json::{json, Map, Value};

use super::objects;
use super::resources::ResourceDef;
use super::rest::Target;
use super::router::Identity;
use super::status::ApiError;

/// The group every authenticated user belongs to, as kube-apiserver adds it.
const AUTHENTICATED: &str = "system:authenticated";

/// Whether `identity` is a service account: a pod's identity.
pub fn is_service_account(identity: &Identity) -> bool {
    identity.user.starts_with("system:serviceaccount:")
}

/// The resources a service account may use until RBAC exists: asking about itself
/// (Kubernetes' `system:basic-user`); discovery and OpenAPI are not resources and stay
/// open to it (`system:discovery`).
const SELF_REVIEWS: &[(&str, &str)] = &[
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
];

/// Whether `identity` may do what `attributes` (a SubjectAccessReview's
/// resourceAttributes or nonResourceAttributes) describe, and why. This is the one
/// authorization decision of the API server: there is no RBAC yet, so users and nodes may
/// do everything, while service accounts — whose tokens every pod holds — may only
/// discover the API and ask about themselves, as with Kubernetes' default roles.
pub fn authorize(identity: &Identity, attributes: &Map<String, Value>) -> (bool, String) {
    if !is_service_account(identity) {
        return (
            true,
            "no authorization mode is configured: every authenticated user may do everything"
                .to_string(),
        );
    }
    let text = |k: &str| attributes.get(k).and_then(Value::as_str).unwrap_or("");
    let allowed = if attributes.contains_key("path") {
        true
    } else {
        SELF_REVIEWS.contains(&(text("group"), text("resource"))) && text("verb") == "create"
    };
    let reason = if allowed {
        "allowed to every service account".to_string()
    } else {
        "service accounts have no permissions until RBAC is available".to_string()
    };
    (allowed, reason)
}

/// Refuses a request to `target` that `identity` may not make (403 with kube-apiserver's
/// message); `verb` is the Kubernetes verb of the request.
pub fn admit(identity: &Identity, verb: &str, target: &Target) -> Result<(), ApiError> {
    let def = &target.def;
    let resource = match &target.subresource {
        Some(sub) => format!("{}/{sub}", def.plural),
        None => def.plural.clone(),
    };
    let mut attributes = Map::new();
    attributes.insert("verb".into(), json!(verb));
    attributes.insert("group".into(), json!(def.group));
    attributes.insert("resource".into(), json!(resource));
    if authorize(identity, &attributes).0 {
        return Ok(());
    }
    let scope = match &target.namespace {
        Some(ns) => format!("in the namespace {ns:?}"),
        None => "at the cluster scope".to_string(),
    };
    let what = match &target.name {
        Some(name) => format!("{resource} {name:?}"),
        None => resource.clone(),
    };
    Err(ApiError::forbidden(format!(
        "{what} is forbidden: User {:?} cannot {verb} resource {resource:?} in API group {:?} {scope}",
        identity.user, def.group
    )))
}

/// What `identity` may do (a SubjectRulesReviewStatus), by the same rule as [`authorize`].
pub fn rules(identity: &Identity) -> Value {
    if is_service_account(identity) {
        let resource_rules: Vec<Value> = SELF_REVIEWS
            .iter()
            .map(|(g, r)| json!({"verbs": ["create"], "apiGroups": [g], "resources": [r]}))
            .collect();
        return json!({
            "resourceRules": resource_rules,
            "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/healthz", "/livez", "/readyz"]}],
            "incomplete": false,
        });
    }
    json!({
        "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
        "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
        "incomplete": false,
    })
}

/// The `UserInfo` of an identity, as SelfSubjectReview and TokenReview report it (with
/// `system:authenticated` among its groups).
pub fn user_info(identity: &Identity) -> Value {
    let mut groups = identity.groups.clone();
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.to_string());
    }
    let mut user = json!({"username": identity.user, "groups": groups});
    if !identity.uid.is_empty() {
        user["uid"] = json!(identity.uid);
    }
    if !identity.extra.is_empty() {
        user["extra"] = json!(identity.extra);
    }
    user
}

/// Answers a POST of a review object `body` (already decoded) for `identity`.
pub fn create(def: &ResourceDef, identity: &Identity, mut body: Value) -> Result<Value, ApiError> {
    objects::check_type(def, &mut body)?;
    let status = match def.kind.as_str() {
        "SelfSubjectAccessReview" => access_review(def, identity, &body)?,
        "SelfSubjectRulesReview" => rules(identity),
        "SelfSubjectReview" => json!({ "userInfo": user_info(identity) }),
        other => return Err(ApiError::method_not_allowed(other)),
    };
    let obj = objects::child_map(&mut body, "metadata");
    obj.entry("creationTimestamp").or_insert(Value::Null);
    body["status"] = status;
    Ok(body)
}

fn access_review(def: &ResourceDef, identity: &Identity, body: &Value) -> Result<Value, ApiError> {
    let spec = body.get("spec").and_then(Value::as_object);
    let resource = spec
        .and_then(|s| s.get("resourceAttributes"))
        .and_then(Value::as_object);
    let non_resource = spec
        .and_then(|s| s.get("nonResourceAttributes"))
        .and_then(Value::as_object);
    let attributes = match (resource, non_resource) {
        (Some(a), None) | (None, Some(a)) => a,
        _ => {
            return Err(ApiError::invalid(
                &def.kind,
                &def.group,
                "",
                vec![(
                    "spec.resourceAttributes".into(),
                    "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified".into(),
                )],
            ))
        }
    };
    let (allowed, reason) = authorize(identity, attributes);
    Ok(json!({"allowed": allowed, "reason": reason}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn reviews_answer_for_the_caller() {
        let admin = Identity {
            user: "system:admin".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        };
        let ssar = &lookup("authorization.k8s.io", "v1", "selfsubjectaccessreviews").unwrap();
        let out = create(
            ssar,
            &admin,
            json!({"spec": {"resourceAttributes": {"verb": "create", "resource": "pods"}}}),
        )
        .unwrap();
        assert_eq!(out["status"]["allowed"], true);
        assert_eq!(out["kind"], "SelfSubjectAccessReview");
        let err = create(ssar, &admin, json!({"spec": {}})).unwrap_err();
        assert_eq!(err.code, 422);
        let rules = &lookup("authorization.k8s.io", "v1", "selfsubjectrulesreviews").unwrap();
        let out = create(rules, &admin, json!({"spec": {"namespace": "default"}})).unwrap();
        assert_eq!(out["status"]["resourceRules"][0]["verbs"], json!(["*"]));
        assert_eq!(out["spec"]["namespace"], "default");
        let ssr = &lookup("authentication.k8s.io", "v1", "selfsubjectreviews").unwrap();
        let out = create(ssr, &admin, json!({})).unwrap();
        assert_eq!(
            out["status"]["userInfo"],
            json!({"username": "system:admin", "groups": ["system:masters", "system:authenticated"]})
        );
    }
}
