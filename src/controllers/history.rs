//! ControllerRevision history shared by the DaemonSet and StatefulSet controllers, as
//! kube-controller-manager's `controller/history` keeps it: each pod template a parent
//! has had is a ControllerRevision holding the patch that restores it
//! (`{"spec":{"template":{…,"$patch":"replace"}}}`, what `kubectl rollout undo` applies),
//! named `<parent>-<hash>` and labelled `controller-revision-hash`, numbered so the
//! newest template has the highest revision. Also the hash both kinds of history (and
//! Deployments' ReplicaSets) name things by.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{json, Value};

use super::{ownership, pods, Error, Result};

/// Label carrying a revision's hash (on revisions, and on the pods made from them).
pub const HASH_LABEL: &str = "controller-revision-hash";

/// How many names a create tries before giving up on hash collisions.
const MAX_COLLISIONS: i32 = 16;

/// FNV-1a (32 bit) of `parts`, its decimal form mapped onto kube's vowel-free alphabet
/// (`rand.SafeEncodeString`), so names made from it never spell words.
pub fn safe_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h: u32 = 0x811c9dc5;
    for bytes in parts {
        for b in bytes {
            h ^= *b as u32;
            h = h.wrapping_mul(0x01000193);
        }
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// The revision data that restores `template`: a strategic merge patch replacing the
/// parent's whole pod template.
pub fn patch_of(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision restores.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    t.as_object_mut()?.remove("$patch");
    serde_json::from_value(t).ok()
}

/// The hash of revision data (with the collision count, when there is one), as kube's
/// `HashControllerRevision`.
pub fn hash(data: &Value, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(data).unwrap_or_default();
    let probe = collision_count.map(|c| c.to_string());
    safe_hash(std::iter::once(bytes.as_slice()).chain(probe.as_ref().map(|p| p.as_bytes())))
}

/// A revision's name: `<parent>-<hash>`, the parent part cut so the name stays valid.
pub fn revision_name(parent: &str, hash: &str) -> String {
    let cut: String = parent.chars().take(223).collect();
    format!("{cut}-{hash}")
}

fn data_of(rev: &ControllerRevision) -> Option<&Value> {
    rev.data.as_ref().map(|d| &d.0)
}

/// The revisions of one parent and the one that matches its current template.
#[derive(Debug)]
pub struct History {
    /// Every revision the parent controls, oldest revision number first (includes
    /// `update`).
    pub revisions: Vec<ControllerRevision>,
    /// The revision of the parent's current template: the highest numbered one.
    pub update: ControllerRevision,
    /// The collision count after any name collisions met while creating `update`.
    pub collision_count: Option<i32>,
}

impl History {
    /// The revision named `name`, if the parent still has it.
    pub fn named(&self, name: &str) -> Option<&ControllerRevision> {
        self.revisions.iter().find(|r| r.name_any() == name)
    }
}

/// Claims `parent`'s revisions (adopting orphans its selector matches, as
/// `ClaimControllerRevisions` does) and makes sure one holds `template` with the
/// highest revision number: reused when it is already the newest, renumbered when it is
/// an older one (a rollback), created otherwise.
pub async fn sync<K>(
    api: &Api<ControllerRevision>,
    parent: &K,
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> Result<History>
where
    K: Resource<DynamicType = ()>,
{
    let mut revisions = ownership::claim(api, parent, selector, |_| true).await?;
    sort(&mut revisions);
    let data = patch_of(template);
    let max = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let equal = revisions.iter().rposition(|r| data_of(r) == Some(&data));
    let mut collision_count = collision_count;
    match equal {
        Some(i) if revisions[i].revision == max => {}
        Some(i) => {
            // An older template is back: its revision becomes the newest.
            let name = revisions[i].name_any();
            revisions[i] = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"revision": max + 1})),
                )
                .await?;
        }
        None => {
            let rev = create(api, parent, template, data, max + 1, &mut collision_count).await?;
            revisions.retain(|r| r.name_any() != rev.name_any());
            revisions.push(rev);
        }
    }
    sort(&mut revisions);
    let update = revisions
        .last()
        .cloned()
        .ok_or_else(|| Error::Object("no revision after sync".into()))?;
    Ok(History {
        revisions,
        update,
        collision_count,
    })
}

fn sort(revisions: &mut [ControllerRevision]) {
    revisions.sort_by(|a, b| {
        (
            a.revision,
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
        )
            .cmp(&(
                b.revision,
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            ))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
}

/// Creates the revision of `template`, hashing again with a higher collision count while
/// its name is taken by a revision of other data (kube's `CreateControllerRevision`).
async fn create<K>(
    api: &Api<ControllerRevision>,
    parent: &K,
    template: &PodTemplateSpec,
    data: Value,
    number: i64,
    collision_count: &mut Option<i32>,
) -> Result<ControllerRevision>
where
    K: Resource<DynamicType = ()>,
{
    let owner =
        pods::controller_ref(parent).ok_or_else(|| Error::Object("parent has no uid".into()))?;
    let parent_name = parent.meta().name.clone().unwrap_or_default();
    for _ in 0..MAX_COLLISIONS {
        let h = hash(&data, *collision_count);
        let mut labels: BTreeMap<String, String> = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), h.clone());
        let rev = ControllerRevision {
            metadata: ObjectMeta {
                name: Some(revision_name(&parent_name, &h)),
                namespace: parent.meta().namespace.clone(),
                labels: Some(labels),
                annotations: parent.meta().annotations.clone(),
                owner_references: Some(vec![owner.clone()]),
                ..Default::default()
            },
            data: Some(RawExtension(data.clone())),
            revision: number,
        };
        match api.create(&PostParams::default(), &rev).await {
            Ok(r) => return Ok(r),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let name = rev.name_any();
                if let Some(existing) = api.get_opt(&name).await? {
                    if data_of(&existing) == Some(&data)
                        && pods::controller_of(&existing.metadata).map(|r| &r.uid)
                            == Some(&owner.uid)
                    {
                        return Ok(existing);
                    }
                }
                *collision_count = Some(collision_count.unwrap_or(0) + 1);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Object("too many revision name collisions".into()))
}

/// Which revisions to delete so that at most `limit` remain besides those `in_use`
/// (by name): the lowest numbered go first.
pub fn surplus<'a>(
    revisions: &'a [ControllerRevision],
    in_use: &HashSet<String>,
    limit: i32,
) -> Vec<&'a ControllerRevision> {
    let mut idle: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| !in_use.contains(&r.name_any()))
        .collect();
    idle.sort_by_key(|r| r.revision);
    let keep = limit.max(0) as usize;
    let n = idle.len().saturating_sub(keep);
    idle.truncate(n);
    idle
}

/// Deletes the revisions beyond `revisionHistoryLimit` that no pod and no status uses.
pub async fn prune(
    api: &Api<ControllerRevision>,
    revisions: &[ControllerRevision],
    in_use: &HashSet<String>,
    limit: i32,
) -> Result<()> {
    for r in surplus(revisions, in_use, limit) {
        super::delete(api, &r.name_any(), &DeleteParams::background()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": image}]},
        }))
        .expect("template")
    }

    fn revision(name: &str, number: i64, t: &PodTemplateSpec) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(RawExtension(patch_of(t))),
            revision: number,
        }
    }

    #[test]
    fn patch_replaces_the_template_and_restores_it() {
        let t = template("v1");
        let p = patch_of(&t);
        assert_eq!(p["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            p["spec"]["template"]["spec"]["containers"][0]["image"],
            "v1"
        );
        let r = revision("web-1", 1, &t);
        assert_eq!(template_of(&r), Some(t));
    }

    #[test]
    fn hash_is_stable_and_follows_data_and_collisions() {
        let a = patch_of(&template("v1"));
        let b = patch_of(&template("v2"));
        let h = hash(&a, None);
        assert_eq!(h, hash(&a.clone(), None));
        assert_ne!(h, hash(&b, None));
        assert_ne!(h, hash(&a, Some(1)));
        assert_ne!(hash(&a, Some(1)), hash(&a, Some(2)));
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_eq!(revision_name("web", &h), format!("web-{h}"));
        assert_eq!(revision_name(&"x".repeat(300), "h").len(), 225);
    }

    #[test]
    fn surplus_keeps_the_limit_and_what_is_in_use() {
        let t = template("v1");
        let revs: Vec<_> = (1..=5).map(|i| revision(&format!("r{i}"), i, &t)).collect();
        let in_use: HashSet<String> = ["r1".to_string(), "r5".to_string()].into();
        let gone: Vec<String> = surplus(&revs, &in_use, 1)
            .iter()
            .map(|r| r.name_any())
            .collect();
        // r2..r4 are idle; one (the newest, r4) stays.
        assert_eq!(gone, vec!["r2", "r3"]);
        assert!(surplus(&revs, &in_use, 10).is_empty());
        assert_eq!(surplus(&revs, &HashSet::new(), 0).len(), 5);
    }
}
