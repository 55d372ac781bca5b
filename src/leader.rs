//! Leader election over a `coordination.k8s.io` Lease (kube-lease-manager): only the holder runs
//! the controllers; a standby takes over within one lease period after the holder dies.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::time::Duration;

/// Lease settings.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub duration: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace: u64,
}

/// Wait until this process holds the lease. Returns the manager's state channel (it turns `false`
/// if leadership is lost) and the background task keeping the lease renewed.
pub async fn acquire(
    client: Client,
    s: &LeaseSettings,
) -> Result<
    (
        tokio::sync::watch::Receiver<bool>,
        tokio::task::JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    ),
    kube_lease_manager::LeaseManagerError,
> {
    let manager = LeaseManagerBuilder::new(client, &s.name)
        .with_namespace(&s.namespace)
        .with_identity(&s.identity)
        .with_duration(s.duration)
        .with_grace(s.grace)
        .build()
        .await?;
    let (mut rx, task) = manager.watch().await;
    loop {
        if *rx.borrow_and_update() {
            tracing::info!(lease = %s.name, identity = %s.identity, "acquired leadership");
            return Ok((rx, task));
        }
        if rx.changed().await.is_err() {
            // The manager task ended; surface its error.
            return match task.await {
                Ok(Ok(_)) => Err(kube_lease_manager::LeaseManagerError::InconsistentState(
                    "lease manager stopped".into(),
                )),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(kube_lease_manager::LeaseManagerError::InconsistentState(
                    e.to_string(),
                )),
            };
        }
    }
}

/// Resolves when leadership is lost (the channel turns `false` or closes).
pub async fn lost(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        if !*rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(0)).await;
    }
}
