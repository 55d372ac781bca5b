//! What the controller serves to people, behind Kubernetes authentication ([`crate::access`]):
//! the console proxy (`console`: WebSocket endpoints for a VM's serial console and VNC display),
//! reached directly with a bearer token or through the Kubernetes API server as ferry's
//! aggregated API (`aggregated`), and the web dashboard (`dashboard`, under `/dashboard/`).
//!
//! Only the leader has libvirt connections and caches: a standby answers 503 until it leads.
// Handlers turn a refusal into the response that says why: `Result<_, Response>` is the point.
#![allow(clippy::result_large_err)]

pub mod aggregated;
pub mod auth;
pub mod console;
pub mod dashboard;
pub mod front_proxy;
pub mod tls_listener;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kube::{Client, Config};
use tokio::sync::Semaphore;

use crate::access::Access;
use crate::controller::Context;

/// Console sessions open at once, at most; more are refused with 503.
pub const MAX_SESSIONS: usize = 64;

/// The state of the people-facing endpoints.
pub struct Web {
    /// TokenReview and SubjectAccessReview.
    pub access: Access,
    /// This replica's identity (the Events' reporting instance).
    pub instance: String,
    /// The web dashboard's sessions and change notices.
    pub dashboard: dashboard::Dashboard,
    leader: RwLock<Option<Arc<Context>>>,
    sessions: Arc<Semaphore>,
}

impl Web {
    /// Endpoints that review callers with `client`; the dashboard acts for users with clients
    /// made from `config` (the cluster `client` talks to) and the user's own token.
    pub fn new(client: Client, config: Config, instance: String) -> Self {
        Web {
            access: Access::new(client),
            dashboard: dashboard::Dashboard::new(config),
            instance,
            leader: RwLock::new(None),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
        }
    }

    /// This replica leads: serve from its controllers' context.
    pub fn set_context(&self, ctx: Arc<Context>) {
        self.dashboard.follow(ctx.clone());
        if let Ok(mut l) = self.leader.write() {
            *l = Some(ctx);
        }
    }

    /// The leader's context, or the answer a standby gives.
    pub fn context(&self) -> Result<Arc<Context>, Response> {
        self.leader
            .read()
            .ok()
            .and_then(|l| l.clone())
            .ok_or_else(|| {
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this ferry replica is a standby (or still starting): consoles and the dashboard are served by the leader",
                )
            })
    }
}

/// The routes, to merge into the controller's HTTP router.
pub fn routes(web: Arc<Web>) -> Router {
    console::routes(web.clone()).merge(dashboard::routes(web))
}

/// A plain-text error response.
pub fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    let mut text = message.into();
    text.push('\n');
    (status, text).into_response()
}
