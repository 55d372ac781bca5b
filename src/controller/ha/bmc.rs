//! The BMC client of a host, from the pool's fencing settings, its Node and the credentials Secret.

use crate::api::HostPool;
use crate::api::host_pool::FenceDriver;
use crate::controller::Context;
use crate::fence::{self, Credentials, Fencer};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt;
use kube::api::Api;
use std::time::Duration;

/// The host's BMC client, from the pool's fencing settings, the Node and the credentials Secret.
pub(super) async fn fencer(
    ctx: &Context,
    pool: &HostPool,
    node: &Node,
) -> std::result::Result<Box<dyn Fencer>, String> {
    let f = pool
        .spec
        .fencing
        .as_ref()
        .ok_or_else(|| "no fencing configured".to_string())?;
    let address_type = pool.spec.libvirt.address_type.unwrap_or_default();
    let address = crate::plan::uri::render(&f.address_template, node, address_type)?;
    let ns = pool.namespace().unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&f.credentials_secret)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", f.credentials_secret))?
        .ok_or_else(|| format!("Secret {ns}/{} does not exist", f.credentials_secret))?;
    let key = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
    };
    let text = |k: &str| {
        key(k)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| format!("Secret {ns}/{} lacks key {k:?}", f.credentials_secret))
    };
    let creds = Credentials {
        username: text("username")?,
        password: text("password")?,
        ca_pem: key("ca.crt"),
    };
    let timeout = Duration::from_secs(f.request_timeout_seconds.unwrap_or(5).max(1) as u64);
    match f.driver {
        FenceDriver::Redfish => {
            let tmpl = f
                .system_path_template
                .as_deref()
                .ok_or_else(|| "Redfish fencing needs systemPathTemplate".to_string())?;
            let path = crate::plan::uri::render(&format!("x://{tmpl}"), node, address_type)?;
            let path = path.trim_start_matches("x://").to_string();
            Ok(Box::new(
                fence::redfish::Redfish::new(&address, &path, creds, timeout)
                    .map_err(|e| e.to_string())?,
            ))
        }
        FenceDriver::Ipmi => Ok(Box::new(
            fence::ipmi::Ipmi::new(&address, creds, timeout).map_err(|e| e.to_string())?,
        )),
    }
}
