//! The review resources a client asks about itself: SelfSubjectAccessReview
//! (`kubectl auth can-i`), SelfSubjectRulesReview (`kubectl auth can-i --list`) and
//! SelfSubjectReview (`kubectl auth whoami`). They are create-only and never stored:
//! the answer is the object with its `status` filled in.

use serde_json::{json, Map, Value};

use super::objects;
use super::resources::ResourceDef;
use super::router::Identity;
use super::status::ApiError;

/// The group every authenticated user belongs to, as kube-apiserver adds it.
const AUTHENTICATED: &str = "system:authenticated";

/// Whether `identity` may do what `attributes` (a SubjectAccessReview's
/// resourceAttributes or nonResourceAttributes) describe, and why. This is the one
/// authorization decision of the API server: there is no authorization mode yet, so
/// every authenticated user may do everything — the answer every request gets today.
pub fn authorize(_identity: &Identity, _attributes: &Map<String, Value>) -> (bool, String) {
    (
        true,
        "no authorization mode is configured: every authenticated user may do everything"
            .to_string(),
    )
}

/// What `identity` may do (a SubjectRulesReviewStatus): everything, for the same reason
/// as [`authorize`]; the two change together when authorization arrives.
pub fn rules(_identity: &Identity) -> Value {
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
