//! The console proxy: a VM's serial console and VNC display as WebSockets, relayed to the host
//! over the controller's libvirt connection (no port on the host, no credentials for the user).
//!
//! `GET /api/v1/namespaces/{ns}/virtualmachines/{name}/console` (serial) and `.../vnc` (raw RFB
//! in binary messages, as noVNC and websockify speak it). Before the upgrade: 401 without a
//! valid token, 404 for an unknown VM, 403 unless RBAC grants `get` on
//! `virtualmachines/console` (or `/vnc`), 409 when the VM does not run or has no such console,
//! 503 past [`MAX_SESSIONS`](super::MAX_SESSIONS). Every session is a pair of Events on the VM:
//! `ConsoleOpened` (who, which console) and `ConsoleClosed` (who, how long).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource};

use super::auth::{authorize, caller};
use super::{Web, problem};
use crate::access::{Identity, Request};
use crate::api::VirtualMachine;
use crate::api::virtual_machine::ConsolesSpec;
use crate::controller::Context;
use crate::controller::hosts::allowed;
use crate::hypervisor::{ConsoleKind, ConsoleStream, Hypervisor, error_code};
use crate::plan::uri_policy::Role;

/// The console routes.
pub fn routes(web: Arc<Web>) -> Router {
    let kind =
        |k: ConsoleKind| move |state, path, headers, ws| session(state, path, headers, ws, k);
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/virtualmachines/{name}/console",
            get(kind(ConsoleKind::Serial)),
        )
        .route(
            "/api/v1/namespaces/{ns}/virtualmachines/{name}/vnc",
            get(kind(ConsoleKind::Vnc)),
        )
        .with_state(web)
}

/// A request for `kind` console: the caller, then [`open`].
async fn session(
    State(web): State<Arc<Web>>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    kind: ConsoleKind,
) -> Response {
    let who = match caller(&web, &headers).await {
        Ok((who, _)) => who,
        Err(r) => return r,
    };
    open(web, who, ns, name, kind, ws)
        .await
        .unwrap_or_else(|r| r)
}

/// `who`'s session on `kind` console of VM `ns/name`, once RBAC allows it (a
/// SubjectAccessReview), or the response that says why not.
pub(super) async fn open(
    web: Arc<Web>,
    who: Identity,
    ns: String,
    name: String,
    kind: ConsoleKind,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Response> {
    let ctx = web.context()?;
    let vm = ctx
        .caches
        .vms
        .get(&ObjectRef::new(&name).within(&ns))
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                format!("virtualmachine {ns}/{name} not found"),
            )
        })?;
    let request = match kind {
        ConsoleKind::Serial => Request::console(&ns, &name),
        ConsoleKind::Vnc => Request::vnc(&ns, &name),
    };
    authorize(&web, &who, &request).await?;
    check_console(&vm, kind).map_err(|m| problem(StatusCode::CONFLICT, m))?;
    let ws = ws.map_err(IntoResponse::into_response)?;
    let permit = web.sessions.clone().try_acquire_owned().map_err(|_| {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console sessions are open; try again later",
        )
    })?;
    let (hv, own) = connect(&ctx, &vm, kind).await?;
    let uuid = crate::plan::naming::vm_domain_uuid(&vm);
    let stream = match hv.open_console(&uuid, kind).await {
        Ok(s) => s,
        Err(e) => {
            if own {
                hv.close().await;
            }
            let status = if matches!(&e, crate::hypervisor::HypervisorError::OperationFailed { code, .. } if *code == error_code::ARGUMENT_UNSUPPORTED)
            {
                StatusCode::NOT_IMPLEMENTED
            } else {
                StatusCode::BAD_GATEWAY
            };
            let hint = if status == StatusCode::NOT_IMPLEMENTED {
                " (libvirt hands a VNC display over only on a unix-socket connection: see docs/virtual-machines.md#consoles)"
            } else {
                ""
            };
            return Err(problem(
                status,
                format!("opening the {} of {ns}/{name}: {e}{hint}", kind.as_str()),
            ));
        }
    };
    Ok(ws
        .protocols(["binary"])
        .on_upgrade(move |socket| async move {
            let started = Instant::now();
            let what = match kind {
                ConsoleKind::Serial => "serial console",
                ConsoleKind::Vnc => "VNC display",
            };
            session_event(
                &web,
                &ctx,
                &vm,
                "ConsoleOpened",
                format!("{} opened the {what}", who.username),
            )
            .await;
            relay(socket, stream).await;
            if own {
                hv.close().await;
            }
            drop(permit);
            session_event(
                &web,
                &ctx,
                &vm,
                "ConsoleClosed",
                format!(
                    "{}'s {what} session ended after {}",
                    who.username,
                    duration(started.elapsed())
                ),
            )
            .await;
            tracing::info!(user = %who.username, vm = %format!("{ns}/{name}"), console = kind.as_str(), seconds = started.elapsed().as_secs(), "console session ended");
        }))
}

/// Why `vm` has no `kind` console to open now, if it has none.
pub fn check_console(vm: &VirtualMachine, kind: ConsoleKind) -> Result<(), String> {
    let consoles = vm.spec.consoles.as_ref();
    let on = match kind {
        ConsoleKind::Serial => ConsolesSpec::serial_of(consoles),
        ConsoleKind::Vnc => ConsolesSpec::vnc_of(consoles),
    };
    if !on {
        return Err(format!(
            "the VM has no {}: spec.consoles turns it off",
            kind.as_str()
        ));
    }
    let status = vm.status.as_ref();
    let running = status.and_then(|s| s.phase) == Some(crate::api::VmPhase::Running);
    if !running || status.and_then(|s| s.host.as_ref()).is_none() {
        return Err("the VM is not running".into());
    }
    Ok(())
}

/// A connection to the VM's host: one of its own for the serial console (its relay occupies
/// the connection's thread), the shared one for VNC (one short call). The flag says whether the
/// caller must close it.
async fn connect(
    ctx: &Context,
    vm: &VirtualMachine,
    kind: ConsoleKind,
) -> Result<(Arc<dyn Hypervisor>, bool), Response> {
    let gone = |m: String| problem(StatusCode::CONFLICT, m);
    let pool = ctx
        .caches
        .pool_of(vm)
        .ok_or_else(|| gone(format!("HostPool {} not found", vm.spec.host_pool)))?;
    let host = vm
        .status
        .as_ref()
        .and_then(|s| s.host.clone())
        .unwrap_or_default();
    let node = ctx
        .caches
        .node(&host)
        .ok_or_else(|| gone(format!("host {host} not found")))?;
    let uri = ctx.hosts.uri(&pool, &node).map_err(gone)?;
    let unreachable = |e: crate::hypervisor::HypervisorError| {
        problem(StatusCode::BAD_GATEWAY, format!("host {host}: {e}"))
    };
    match kind {
        ConsoleKind::Vnc => Ok((
            ctx.hosts.connect(&uri, &pool).await.map_err(unreachable)?,
            false,
        )),
        ConsoleKind::Serial => {
            allowed(&uri, Role::Controller, &pool, ctx.hosts.uri_limits()).map_err(gone)?;
            let uri = ctx
                .hosts
                .credentialed_uri(&uri, &pool)
                .await
                .map_err(unreachable)?;
            let opts = ctx.hosts.dedicated_options(&pool, Duration::from_secs(30));
            let hv = ctx
                .hosts
                .connections
                .dedicated(&uri, &opts)
                .await
                .map_err(unreachable)?;
            Ok((hv, true))
        }
    }
}

/// One Event per session start and end, never folded into a series (the shared recorder
/// counts repeats of a reason as one Event with the first note, which would lose who and how
/// long).
async fn session_event(web: &Web, ctx: &Context, vm: &VirtualMachine, reason: &str, note: String) {
    let name = vm.metadata.name.clone().unwrap_or_default();
    let ns = vm.metadata.namespace.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.console-")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(Timestamp::now())),
        action: Some("Console".into()),
        reason: Some(reason.into()),
        note: Some(note),
        type_: Some("Normal".into()),
        reporting_controller: Some("ferry".into()),
        reporting_instance: Some(web.instance.clone()),
        regarding: Some(vm.object_ref(&())),
        ..Default::default()
    };
    if let Err(e) = Api::<Event>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams::default(), &event)
        .await
    {
        tracing::warn!(error = %e, reason, "could not record Event");
    }
}

/// Relays until either side ends.
async fn relay(mut socket: WebSocket, mut stream: ConsoleStream) {
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    if stream.to_guest.send(b.to_vec()).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    if stream.to_guest.send(t.as_bytes().to_vec()).await.is_err() { break; }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            bytes = stream.from_guest.recv() => match bytes {
                Some(b) => {
                    if socket.send(Message::Binary(b.into())).await.is_err() { break; }
                }
                None => break,
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// `42 s`, `3 min 5 s`, `2 h 1 min`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(duration(Duration::from_secs(42)), "42 s");
        assert_eq!(duration(Duration::from_secs(185)), "3 min 5 s");
        assert_eq!(duration(Duration::from_secs(7260)), "2 h 1 min");
    }
}
