//! The API server's HTTP surface: health and version endpoints, discovery, and the
//! resource paths (`/api/v1/...`, `/apis/G/V/...`) dispatched to the REST verbs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use pikube_raft::Store;
use serde_json::{json, Value};

use super::fields::FieldValidation;
use super::managed::Manager;
use super::rest::{self, ListOptions, PatchKind, Registry, Target};
use super::selectors::{FieldSelector, LabelSelector};
use super::service_account_tokens::{self, SigningKey};
use super::services::ServiceRanges;
use super::status::ApiError;
use super::table::{self, IncludeObject};
use super::watch::{self, WatchParams};
use super::{discovery, objects, resources};

/// Who is making a request: set by the TLS layer from the client certificate, or by the
/// in-process client for components of the server itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// User name (certificate CN).
    pub user: String,
    /// Groups (certificate O values).
    pub groups: Vec<String>,
    /// The user's uid, when the authenticator knows one (service accounts).
    pub uid: String,
    /// Extra attributes (a service-account token's pod and credential id).
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

/// The API server: the store plus what the HTTP surface needs.
#[derive(Clone)]
pub struct ApiServer {
    registry: Registry,
    server_address: String,
    node_tls: Option<Arc<rustls::ClientConfig>>,
    service_account_key: Option<Arc<SigningKey>>,
    authenticator: Option<Arc<super::authn::Authenticator>>,
}

impl ApiServer {
    /// An API server over `store`, reachable by clients at `server_address` (host:port),
    /// giving Services addresses from `services`.
    pub fn new(store: Store, server_address: String, services: ServiceRanges) -> Self {
        ApiServer {
            registry: Registry {
                store: store.clone(),
                services: Arc::new(services),
                allocating: Arc::default(),
                catalog: resources::Catalog::default(),
                unreachable_toleration_seconds: super::defaults::TOLERATION_SECONDS,
                cache: super::cache::ListCache::new(store.clone()),
            },
            server_address,
            node_tls: None,
            service_account_key: None,
            authenticator: None,
        }
    }

    /// The same server, answering TokenReviews with `auth` (the authenticator its HTTPS
    /// listener uses).
    pub fn with_authenticator(mut self, auth: Arc<super::authn::Authenticator>) -> Self {
        self.authenticator = Some(auth);
        self
    }

    /// The same server, issuing service-account tokens (TokenRequest) signed with `key`.
    pub fn with_service_account_key(mut self, key: Arc<SigningKey>) -> Self {
        self.service_account_key = Some(key);
        self
    }

    /// The same server, giving new pods `seconds` of tolerance of an unreachable node
    /// (kube-apiserver's `--default-unreachable-toleration-seconds`).
    pub fn with_unreachable_toleration(mut self, seconds: i64) -> Self {
        self.registry.unreachable_toleration_seconds = seconds;
        self
    }

    /// The same server, reaching node agents (pods' log, exec, attach) with `tls`.
    pub fn with_node_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.node_tls = Some(tls);
        self
    }

    /// TLS towards node agents, when configured.
    pub fn node_tls(&self) -> Option<&Arc<rustls::ClientConfig>> {
        self.node_tls.as_ref()
    }

    /// The store this API server writes to.
    pub fn store(&self) -> &Store {
        &self.registry.store
    }

    /// The write path shared by every verb.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The resources this server serves now.
    pub fn catalog(&self) -> &resources::Catalog {
        &self.registry.catalog
    }

    /// Keeps the served custom resources current with the stored
    /// CustomResourceDefinitions (every API server of a cluster runs this); ends when
    /// the store shuts down.
    pub fn follow_definitions(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        super::crd::follow(self.registry.store.clone(), self.registry.catalog.clone())
    }

    /// After a write of a CustomResourceDefinition through this server: serve what it
    /// defines now (`obj`; None once removed), before the watch of [`Self::follow_definitions`]
    /// reports it.
    fn settle(&self, target: &Target, dry_run: bool, obj: Option<&Value>) {
        if dry_run || !super::crd::is_definitions(&target.def) {
            return;
        }
        let name = obj
            .and_then(|o| o.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| target.name.clone())
            .unwrap_or_default();
        super::crd::install(&self.registry.catalog, &name, obj);
    }

    /// Serves the custom resources of the stored definitions (before the first request;
    /// [`Self::follow_definitions`] keeps them current).
    pub async fn load_definitions(&self) -> Result<(), ApiError> {
        super::crd::load(&self.registry.store, &self.registry.catalog)
            .await
            .map(|_| ())
    }

    /// The axum router serving the whole API; requests must carry an [`Identity`].
    pub fn router(&self) -> Router {
        Router::new()
            .route("/version", get(version))
            .route("/healthz", get(healthy))
            .route("/livez", get(healthy))
            .route("/readyz", get(healthy))
            .route("/openapi/v2", get(super::openapi::swagger))
            .route("/openapi/v3", get(super::openapi::index))
            .route("/openapi/v3/{*path}", get(super::openapi::group_version))
            .fallback(dispatch)
            .with_state(self.clone())
    }
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": format!("v1.33.0+pikube-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH),
    }))
}

async fn healthy() -> &'static str {
    "ok"
}

/// What a path addresses.
enum Route {
    ApiVersions,
    GroupList,
    Group(String),
    ResourceList(String, String),
    Resource(Target),
}

fn parse_path(catalog: &resources::Catalog, path: &str) -> Result<Route, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Ok(Route::ApiVersions),
        ["apis"] => return Ok(Route::GroupList),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    if rest.is_empty() {
        return Ok(Route::ResourceList(group.to_string(), version.to_string()));
    }
    let namespace_status =
        group.is_empty() && rest.len() == 3 && matches!(rest[2], "status" | "finalize");
    let (namespace, rest) = if rest[0] == "namespaces" && rest.len() >= 3 && !namespace_status {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    if rest.len() > 3 {
        return Err(ApiError::no_route(path));
    }
    let def = catalog
        .lookup(group, version, rest[0])
        .ok_or_else(|| ApiError::no_route(path))?;
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = rest.get(2).map(|s| s.to_string());
    if namespace.is_some() && !def.namespaced {
        return Err(ApiError::no_route(path));
    }
    if def.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::no_route(path));
    }
    if let Some(sub) = &subresource {
        let served = match sub.as_str() {
            "status" => objects::has_status(&def),
            "scale" => rest::has_scale(&def),
            "binding" | "log" | "exec" | "attach" | "portforward" => def.is("", "Pod"),
            "token" => def.is("", "ServiceAccount"),
            _ => false,
        };
        if !served {
            return Err(ApiError::no_route(path));
        }
    }
    Ok(Route::Resource(Target {
        def,
        namespace,
        name,
        subresource,
    }))
}

fn query_map(req: &Request) -> Result<HashMap<String, String>, ApiError> {
    match req.uri().query() {
        None => Ok(HashMap::new()),
        Some(q) => serde_urlencoded::from_str(q)
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}"))),
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The answer to a write: the object, and each warning in a `Warning` header.
fn written(code: StatusCode, w: rest::Written) -> Response {
    let mut resp = json_response(code, &w.object);
    // Bounded, as kube-apiserver bounds them: a body full of unknown fields must not
    // make headers clients refuse.
    const MAX: usize = 50;
    let mut warnings: Vec<String> = w.warnings.iter().take(MAX).cloned().collect();
    if w.warnings.len() > MAX {
        warnings.push(format!("and {} more warnings", w.warnings.len() - MAX));
    }
    for warning in &warnings {
        // RFC 7234 warn-text: a quoted string, `"` and `\` escaped.
        let text = warning.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

async fn dispatch(State(api): State<ApiServer>, req: Request) -> Response {
    match handle(api, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn list_options(
    def: &resources::ResourceDef,
    q: &HashMap<String, String>,
) -> Result<ListOptions, ApiError> {
    Ok(ListOptions {
        labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
        fields: FieldSelector::parse_for(
            def,
            q.get("fieldSelector").map(String::as_str).unwrap_or(""),
        )?,
        limit: match q.get("limit") {
            Some(l) => l
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit: {l:?}")))?
                .max(0) as usize,
            None => 0,
        },
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
    })
}

/// The Kubernetes verb of a request (what authorization decides on).
fn verb_of(method: &Method, target: &Target, q: &HashMap<String, String>) -> &'static str {
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    match (method, target.name.is_some()) {
        (&Method::GET, _) if watch => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "get",
    }
}

/// Whether a PATCH is a server-side apply.
fn is_apply(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';').next().unwrap_or("").trim() == "application/apply-patch+yaml"
        })
}

/// The patch type of a PATCH on `def`; custom resources take no strategic merge patch
/// (they have no merge facts), as kube-apiserver refuses it.
fn patch_kind_for(
    def: &resources::ResourceDef,
    headers: &axum::http::HeaderMap,
) -> Result<PatchKind, ApiError> {
    match patch_kind(headers)? {
        PatchKind::Strategic if def.custom.is_some() => Err(ApiError::unsupported_media_type(
            "application/strategic-merge-patch+json",
        )
        .with_message(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        )),
        kind => Ok(kind),
    }
}

fn patch_kind(headers: &axum::http::HeaderMap) -> Result<PatchKind, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match ct.split(';').next().unwrap_or("").trim() {
        "application/json-patch+json" => Ok(PatchKind::Json),
        "application/merge-patch+json" => Ok(PatchKind::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

async fn handle(api: ApiServer, req: Request) -> Result<Response, ApiError> {
    let Some(identity) = req.extensions().get::<Identity>().cloned() else {
        return Err(ApiError::unauthorized());
    };
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let q = query_map(&req)?;
    let route = parse_path(api.catalog(), &path)?;
    if let Route::Resource(t) = &route {
        super::reviews::admit(&identity, verb_of(&method, t, &q), t)?;
        if super::pod_streams::is_stream(t) {
            return super::pod_streams::handle(&api, t.clone(), req).await;
        }
    }
    let target = match route {
        Route::ApiVersions | Route::GroupList => {
            let core = matches!(route, Route::ApiVersions);
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if let Some(format) = discovery::negotiate_aggregated(accept) {
                let doc = discovery::aggregated(api.catalog(), core, format);
                return Ok((
                    [(header::CONTENT_TYPE, format.content_type())],
                    doc.to_string(),
                )
                    .into_response());
            }
            let doc = if core {
                discovery::api_versions(&api.server_address)
            } else {
                discovery::api_group_list(api.catalog())
            };
            return Ok(Json(doc).into_response());
        }
        Route::Group(g) => {
            return discovery::api_group(api.catalog(), &g)
                .map(|v| Json(v).into_response())
                .ok_or_else(|| ApiError::no_route(&path))
        }
        Route::ResourceList(g, v) => {
            return discovery::api_resource_list(api.catalog(), &g, &v)
                .map(|v| Json(v).into_response())
                .ok_or_else(|| ApiError::no_route(&path))
        }
        Route::Resource(t) => t,
    };
    let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
    // Checked only by the writes that use it.
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let write = FieldValidation::parse(q.get("fieldValidation").map(String::as_str)).map(|f| {
        rest::WriteOptions {
            dry_run,
            fields: Some(f),
            manager: Some(Manager::of_request(
                q.get("fieldManager").map(String::as_str),
                user_agent.as_deref(),
            )),
            force: q.get("force").is_some_and(|f| f == "true"),
        }
    });
    let options = match method {
        Method::POST => Some("CreateOptions"),
        Method::PUT => Some("UpdateOptions"),
        Method::PATCH => Some("PatchOptions"),
        _ => None,
    };
    if let Some(options) = options {
        Manager::check_options(
            options,
            q.get("fieldManager").map(String::as_str),
            q.get("force").is_some_and(|f| f == "true"),
            method == Method::PATCH && is_apply(req.headers()),
        )?;
    }
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), objects::MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::too_large(format!(
                "request body exceeds the limit of {} bytes",
                objects::MAX_BODY_BYTES
            ))
        })?;
    let store = api.store().clone();
    let reg = api.registry.clone();
    let what = format!("{method} {path}");
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let as_table = table::wants_table(accept)
        .then(|| IncludeObject::parse(q.get("includeObject").map(String::as_str)));
    if target.def.is_review() {
        if method != Method::POST || target.name.is_some() {
            return Err(ApiError::method_not_allowed(&what));
        }
        let obj = objects::decode_body(&headers, &body)?;
        let review = if target.def.is("authentication.k8s.io", "TokenReview") {
            super::authn::token_review(api.authenticator.as_deref(), &target.def, obj).await?
        } else {
            super::reviews::create(&target.def, &identity, obj)?
        };
        return Ok(json_response(StatusCode::CREATED, &review));
    }
    if target.subresource.as_deref() == Some("token") {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(&what));
        }
        let key = api
            .service_account_key
            .as_ref()
            .ok_or_else(|| ApiError::no_route(&path))?;
        let obj = objects::decode_body(&headers, &body)?;
        let ns = target.namespace.clone().unwrap_or_default();
        let name = target.name.clone().unwrap_or_default();
        let issued = service_account_tokens::token_request(&store, key, &ns, &name, obj).await?;
        return Ok(json_response(StatusCode::CREATED, &issued));
    }
    if target.subresource.as_deref() == Some("binding") {
        if method != Method::POST {
            return Err(ApiError::method_not_allowed(&what));
        }
        let obj = objects::decode_body(&headers, &body)?;
        let name = target.name.clone().unwrap_or_default();
        let status = rest::bind(&reg, &target, &name, &obj, dry_run).await?;
        return Ok(json_response(StatusCode::CREATED, &status));
    }
    if target.subresource.as_deref() == Some("scale") {
        let name = target.name.clone().unwrap_or_default();
        return match method {
            Method::GET => Ok(Json(rest::get_scale(&store, &target, &name).await?).into_response()),
            Method::PUT => {
                let obj = objects::decode_body(&headers, &body)?;
                Ok(
                    Json(rest::update_scale(&reg, &target, &name, None, Some(obj), write?).await?)
                        .into_response(),
                )
            }
            Method::PATCH => {
                let kind = patch_kind_for(&target.def, &headers)?;
                Ok(Json(
                    rest::update_scale(&reg, &target, &name, Some((kind, &body)), None, write?)
                        .await?,
                )
                .into_response())
            }
            _ => Err(ApiError::method_not_allowed(&what)),
        };
    }
    match (&method, target.name.clone()) {
        (&Method::GET, Some(name)) => {
            let obj = rest::get(&store, &target, &name).await?;
            match as_table {
                Some(include) => {
                    let rv = obj
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null);
                    Ok(Json(table::to_table(
                        &target.def,
                        &[obj],
                        include,
                        json!({"resourceVersion": rv}),
                    ))
                    .into_response())
                }
                None => Ok(Json(obj).into_response()),
            }
        }
        (&Method::GET, None) => {
            let opts = list_options(&target.def, &q)?;
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let timeout = match q.get("timeoutSeconds") {
                    Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                        ApiError::bad_request(format!("invalid timeoutSeconds: {t:?}"))
                    })?)),
                    None => None,
                };
                let params = WatchParams {
                    resource_version: q.get("resourceVersion").cloned().unwrap_or_default(),
                    timeout,
                    bookmarks: q.get("allowWatchBookmarks").is_some_and(|b| b == "true"),
                    opts,
                    table: as_table,
                };
                let stream = watch::watch(reg, target, params).await?;
                return Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from_stream(stream))
                    .unwrap_or_else(|_| {
                        ApiError::internal("cannot build the watch response").into_response()
                    }));
            }
            let list = rest::list(&reg, &target, &opts).await?;
            match as_table {
                Some(include) => Ok(Json(table::to_table(
                    &target.def,
                    &list.items,
                    include,
                    list.metadata.clone(),
                ))
                .into_response()),
                None => Ok(Json(list).into_response()),
            }
        }
        (&Method::POST, None) => {
            let obj = objects::decode_body(&headers, &body)?;
            let created = rest::create(&reg, &target, obj, write?).await?;
            api.settle(&target, dry_run, Some(&created.object));
            Ok(written(StatusCode::CREATED, created))
        }
        (&Method::PUT, Some(name)) => {
            let obj = objects::decode_body(&headers, &body)?;
            let updated = rest::update(&reg, &target, &name, obj, write?).await?;
            api.settle(&target, dry_run, Some(&updated.object));
            Ok(written(StatusCode::OK, updated))
        }
        (&Method::PATCH, Some(name)) if is_apply(&headers) => {
            let mut write = write?;
            // Apply names its manager; no User-Agent stands in for it.
            write.manager = q.get("fieldManager").filter(|m| !m.is_empty()).cloned();
            let (applied, created) = rest::apply(&reg, &target, &name, &body, write).await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            api.settle(&target, dry_run, Some(&applied.object));
            Ok(written(code, applied))
        }
        (&Method::PATCH, Some(name)) => {
            let kind = patch_kind_for(&target.def, &headers)?;
            let patched = rest::patch(&reg, &target, &name, kind, &body, write?).await?;
            api.settle(&target, dry_run, Some(&patched.object));
            Ok(written(StatusCode::OK, patched))
        }
        (&Method::DELETE, name) => {
            let opts: Value = if body.is_empty() {
                json!({})
            } else {
                objects::decode_body(&headers, &body).map_err(|e| {
                    let message = format!("invalid DeleteOptions: {}", e.message);
                    e.with_message(message)
                })?
            };
            let dry = dry_run
                || opts
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.iter().any(|x| x == "All"));
            match name {
                Some(name) => {
                    let obj = rest::delete(&reg, &target, &name, &opts, dry).await?;
                    let remains = obj.pointer("/metadata/deletionTimestamp").is_some();
                    api.settle(&target, dry, remains.then_some(&obj));
                    // Still there (finalizers pending): the object; removed: a Success
                    // Status, as kube-apiserver answers for immediate deletions.
                    if obj.pointer("/metadata/deletionTimestamp").is_some() {
                        return Ok(Json(obj).into_response());
                    }
                    Ok(Json(json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": target.def.group,
                            "kind": target.def.plural,
                            "uid": obj.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                        },
                    }))
                    .into_response())
                }
                None => {
                    let lo = list_options(&target.def, &q)?;
                    Ok(
                        Json(rest::delete_collection(&reg, &target, &lo, &opts, dry).await?)
                            .into_response(),
                    )
                }
            }
        }
        _ => Err(ApiError::method_not_allowed(&what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_like_kube_apiserver() {
        let catalog = resources::Catalog::default();
        let t = |p: &str| match parse_path(&catalog, p) {
            Ok(Route::Resource(t)) => {
                (t.def.plural.to_string(), t.namespace, t.name, t.subresource)
            }
            _ => panic!("{p} did not resolve to a resource"),
        };
        assert_eq!(
            t("/api/v1/namespaces"),
            ("namespaces".to_string(), None, None, None)
        );
        assert_eq!(
            t("/api/v1/namespaces/default"),
            ("namespaces".to_string(), None, Some("default".into()), None)
        );
        assert_eq!(
            t("/api/v1/namespaces/x/status"),
            (
                "namespaces".to_string(),
                None,
                Some("x".into()),
                Some("status".into())
            )
        );
        assert_eq!(
            t("/api/v1/namespaces/d/configmaps"),
            ("configmaps".to_string(), Some("d".into()), None, None)
        );
        assert_eq!(
            t("/api/v1/namespaces/d/pods/p/status"),
            (
                "pods".to_string(),
                Some("d".into()),
                Some("p".into()),
                Some("status".into())
            )
        );
        assert_eq!(t("/api/v1/pods"), ("pods".to_string(), None, None, None));
        assert_eq!(
            t("/apis/apps/v1/namespaces/d/deployments/x"),
            (
                "deployments".to_string(),
                Some("d".into()),
                Some("x".into()),
                None
            )
        );
        assert_eq!(
            t("/api/v1/nodes/n1"),
            ("nodes".to_string(), None, Some("n1".into()), None)
        );
        assert_eq!(
            t("/apis/apps/v1/namespaces/d/deployments/x/scale"),
            (
                "deployments".to_string(),
                Some("d".into()),
                Some("x".into()),
                Some("scale".into())
            )
        );
        assert_eq!(
            t("/api/v1/namespaces/d/pods/p/exec"),
            (
                "pods".to_string(),
                Some("d".into()),
                Some("p".into()),
                Some("exec".into())
            )
        );
        for bad in [
            "/api/v1/namespaces/d/configmaps/c/log",
            "/api/v1/pods/p",
            "/api/v1/namespaces/d/nodes",
            "/api/v1/bogus",
            "/apis/apps/v9/deployments",
            "/nope",
            "/api/v1/namespaces/d/configmaps/c/status",
            "/api/v1/namespaces/d/pods/p/status/x",
        ] {
            assert!(parse_path(&catalog, bad).is_err(), "{bad}");
        }
    }
}
