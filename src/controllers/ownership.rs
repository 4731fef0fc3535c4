//! Ownership between controllers and what they control: claiming (adopting matching
//! orphans, releasing children whose labels no longer match), as kube-controller-manager's
//! ControllerRefManager does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use std::sync::Arc;

use super::{pods, Result};

/// The children `owner` controls after adoption and release, listed fresh from the API.
/// Orphans are adopted only when `adoptable` says so (e.g. active pods).
pub async fn claim<K, C>(
    api: &Api<C>,
    owner: &K,
    selector: &LabelSelector,
    adoptable: impl Fn(&C) -> bool,
) -> Result<Vec<C>>
where
    K: Resource<DynamicType = ()>,
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let lp = ListParams::default().labels(&pods::match_labels_query(selector));
    let listed = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(Arc::new)
        .collect();
    let owned = claim_among(api, owner, selector, adoptable, listed).await?;
    Ok(owned.into_iter().map(Arc::unwrap_or_clone).collect())
}

/// [`claim`] among `candidates` (e.g. from a cache: the owner's children and the
/// orphans of its namespace) instead of a fresh list.
pub async fn claim_among<K, C>(
    api: &Api<C>,
    owner: &K,
    selector: &LabelSelector,
    adoptable: impl Fn(&C) -> bool,
    candidates: Vec<Arc<C>>,
) -> Result<Vec<Arc<C>>>
where
    K: Resource<DynamicType = ()>,
    C: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let uid = owner.meta().uid.clone().unwrap_or_default();
    let mut owned = Vec::new();
    for child in candidates {
        let matches = pods::selector_matches(selector, child.meta().labels.as_ref());
        match pods::controller_of(child.meta()).map(|r| r.uid.clone()) {
            Some(u) if u == uid => {
                if matches {
                    owned.push(child);
                } else {
                    // Labels changed: the child is no longer ours.
                    let refs: Vec<_> = child
                        .owner_references()
                        .iter()
                        .filter(|r| r.uid != uid)
                        .cloned()
                        .collect();
                    api.patch(
                        &child.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {
                            "ownerReferences": refs,
                            "resourceVersion": child.resource_version(),
                        }})),
                    )
                    .await?;
                }
            }
            None if matches
                && adoptable(&child)
                && child.meta().deletion_timestamp.is_none()
                && owner.meta().deletion_timestamp.is_none() =>
            {
                let Some(r) = pods::controller_ref(owner) else {
                    continue;
                };
                let mut refs = child.owner_references().to_vec();
                refs.push(r);
                let adopted = api
                    .patch(
                        &child.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {
                            "ownerReferences": refs,
                            "resourceVersion": child.resource_version(),
                        }})),
                    )
                    .await?;
                owned.push(Arc::new(adopted));
            }
            _ => {}
        }
    }
    Ok(owned)
}
