//! Events: what the scheduler, the controllers and the node agents report about the
//! objects they act on (`kubectl describe` lists them; `kubectl get events`). Core/v1
//! Events as Kubernetes components write them: one Event per object, reason and message,
//! whose `count` and `lastTimestamp` grow when it happens again.

use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// Events older than this are deleted (kube-apiserver's `--event-ttl`).
pub const TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// Writes the Events of one component (`default-scheduler`, `kubelet` on a host…).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    host: Option<String>,
}

impl Recorder {
    /// A recorder for `component`, running on `host` (node agents name their node).
    pub fn new(client: Client, component: &str, host: Option<&str>) -> Recorder {
        Recorder {
            client,
            component: component.to_string(),
            host: host.map(String::from),
        }
    }

    /// Records that `reason` happened to `obj` (`field`: the part of it, such as
    /// `spec.containers{web}`), in the background: a failure is logged, never returned.
    pub fn record<K>(&self, obj: &K, field: Option<&str>, kind: Kind, reason: &str, message: &str)
    where
        K: Resource<DynamicType = ()>,
    {
        let mut involved = obj.object_ref(&());
        involved.field_path = field.map(String::from);
        // At most this many Events are being written at once; more are dropped (as
        // client-go's broadcaster drops when its queue is full), so a slow API server
        // never piles up tasks.
        static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(64);
        let Ok(permit) = IN_FLIGHT.try_acquire() else {
            tracing::debug!(component = %self.component, %reason, "too many events in flight; dropped");
            return;
        };
        let this = self.clone();
        let (reason, message) = (reason.to_string(), message.to_string());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = this.write(involved, kind, &reason, &message).await {
                tracing::debug!(component = %this.component, %reason, error = %e, "cannot record event");
            }
        });
    }

    async fn write(
        &self,
        involved: ObjectReference,
        kind: Kind,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        // Cluster-scoped objects' events live in `default`, as in Kubernetes.
        let ns = involved
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        // The same happening on the same object has one Event (its name is a hash), so
        // a repeat raises its count instead of adding another.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &involved.uid,
            &involved.field_path,
            &self.component,
            reason,
            message,
        )
            .hash(&mut h);
        let name = format!(
            "{}.{:016x}",
            involved.name.as_deref().unwrap_or("object"),
            h.finish()
        );
        let now = crate::api::objects::now_rfc3339();
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": match kind { Kind::Normal => "Normal", Kind::Warning => "Warning" },
            "count": 1,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component,
            "reportingInstance": self.host.as_deref().unwrap_or(&self.component),
        }))
        .map_err(kube::Error::SerdeError)?;
        match api.create(&PostParams::default(), &event).await {
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let mut current = api.get(&name).await?;
                current.count = Some(current.count.unwrap_or(1) + 1);
                current.last_timestamp = event.last_timestamp;
                api.replace(&current.name_any(), &PostParams::default(), &current)
                    .await
                    .map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }
}
