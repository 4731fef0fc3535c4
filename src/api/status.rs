//! API errors as Kubernetes `Status` objects: the code, reason and message kubectl prints
//! as `Error from server (<Reason>): <message>`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An error answer of the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (NotFound, AlreadyExists, Conflict, Invalid, BadRequest…).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Optional details (name, group, kind, causes).
    pub details: Option<Value>,
}

/// `resource.group`, or `resource` for the core group, as kube-apiserver names things.
fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    /// The same error with another message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    /// 404 NotFound for an object.
    pub fn not_found(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        let mut e = Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "group": group, "kind": resource}));
        e
    }

    /// 404 NotFound for a path that serves nothing.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(what: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({what})"),
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{qualified} \"{name}\" already exists"),
        );
        e.details = Some(json!({"name": name, "group": group, "kind": resource}));
        e
    }

    /// 409 Conflict on a stale resourceVersion.
    pub fn conflict(resource: &str, group: &str, name: &str) -> Self {
        let qualified = qualified(resource, group);
        let mut e = Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {qualified} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
        e.details = Some(json!({"name": name, "group": group, "kind": resource}));
        e
    }

    /// 410 Expired (Gone): the requested resourceVersion was compacted.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"))
    }

    /// Ok when `causes` is empty, else [`ApiError::invalid`] for `obj` (named by its
    /// `metadata.name`).
    pub fn unless_invalid(
        kind: &str,
        group: &str,
        obj: &Value,
        causes: Vec<(String, String)>,
    ) -> Result<(), Self> {
        if causes.is_empty() {
            return Ok(());
        }
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        Err(Self::invalid(kind, group, name, causes))
    }

    /// 422 Invalid with field causes `(field, message)`.
    pub fn invalid(kind: &str, group: &str, name: &str, causes: Vec<(String, String)>) -> Self {
        let summary: Vec<String> = causes.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        let qualified = qualified(kind, group);
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {}", summary.join(", ")),
        );
        let causes: Vec<Value> = causes
            .into_iter()
            .map(|(f, m)| json!({"reason": "FieldValueInvalid", "field": f, "message": m}))
            .collect();
        e.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        e
    }

    /// 403 Forbidden (e.g. a namespace that is being deleted).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    /// 500 InternalError: only for failures of the server itself, never client input.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// An error answered by a node agent (plain text), as kube-apiserver passes it on.
    pub fn from_node(code: u16, message: impl Into<String>) -> Self {
        match code {
            400 => Self::bad_request(message),
            403 => Self::forbidden(message),
            404 => Self::new(404, "NotFound", message),
            _ => Self::internal(message),
        }
    }

    /// The metav1.Status object.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl From<pikube_raft::Error> for ApiError {
    fn from(e: pikube_raft::Error) -> Self {
        use pikube_raft::Error as E;
        match e {
            E::Compacted { requested, compacted } => ApiError::gone(format!(
                "The resourceVersion for the provided watch is too old (requested {requested}, oldest available {})",
                compacted + 1
            )),
            E::FutureRevision { requested, current } => ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            E::ValueTooLarge { .. } | E::TxnTooLarge(_) => ApiError::too_large(e.to_string()),
            E::EmptyKey | E::InvalidArgument(_) | E::LeaseNotFound(_) => ApiError::bad_request(e.to_string()),
            E::NotLeader { .. } | E::Unavailable(_) | E::Shutdown | E::WatchLagged => ApiError::unavailable(e.to_string()),
            E::Corrupt(_) | E::ForeignCluster(_) | E::Storage(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            code,
            [("content-type", "application/json")],
            self.to_status().to_string(),
        )
            .into_response()
    }
}
