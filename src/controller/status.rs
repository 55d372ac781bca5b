//! Writing status by server-side apply, only when it changed.

use super::FIELD_MANAGER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A status time in whole seconds, as the API server stores it: a status built from in-memory
/// times with sub-second parts never compares equal to the one read back, and would be written
/// again every time.
pub fn whole_seconds(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// Apply `status` to `obj`'s status subresource unless it equals `current`.
/// Returns whether a write was made.
pub async fn apply_status<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    apply_status_at(api, obj, status, None).await?;
    Ok(true)
}

/// Apply `status` to `obj`'s status subresource; with a `version` (a `resourceVersion`), only
/// while the object is still at that version: optimistic concurrency, so that a decision made on
/// that version is never written over a newer one. A newer object fails with 409 Conflict
/// ([`is_conflict`]). Returns the object as written.
pub async fn apply_status_at<K, S>(
    api: &Api<K>,
    obj: &K,
    status: &S,
    version: Option<&str>,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if let Some(v) = version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": v });
    }
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// Whether a write failed because the object changed since the version it was conditional on.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
