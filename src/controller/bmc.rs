//! A host's BMC client, from the pool's fencing settings, its Node and the credentials Secret:
//! only ever the host's own BMC (`plan::bmc`). The HA controller fences through it; power
//! management powers hosts off and on through it.

use crate::api::HostPool;
use crate::api::host_pool::FenceDriver;
use crate::controller::Context;
use crate::fence::{self, Credentials, Fencer};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::ResourceExt;
use kube::api::Api;

/// The host's BMC client, from the pool's fencing settings, the Node and the credentials Secret.
/// A Redfish client counts only the system whose UUID is the Node's `systemUUID`; an IPMI
/// address must be named for this Node alone (`plan::bmc::ipmi_address`). Power management
/// uses the same clients.
pub async fn client(
    ctx: &Context,
    pool: &HostPool,
    node: &Node,
) -> std::result::Result<Box<dyn Fencer>, String> {
    if let Some(bmcs) = &ctx.bmcs {
        return Ok(bmcs.bmc(&node.name_any()));
    }
    let f = pool
        .spec
        .fencing
        .as_ref()
        .ok_or_else(|| "no fencing configured".to_string())?;
    let address_type = pool.spec.libvirt.address_type.unwrap_or_default();
    let address = match f.driver {
        FenceDriver::Redfish => crate::plan::uri::render(&f.address_template, node, address_type)?,
        FenceDriver::Ipmi => {
            let nodes = ctx.caches.nodes.state();
            crate::plan::bmc::ipmi_address(
                &f.address_template,
                node,
                nodes.iter().map(|n| n.as_ref()),
                address_type,
            )?
        }
    };
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
    let timeout = f.request_timeout();
    match f.driver {
        FenceDriver::Redfish => {
            let tmpl = f
                .system_path_template
                .as_deref()
                .ok_or_else(|| "Redfish fencing needs systemPathTemplate".to_string())?;
            let path = crate::plan::uri::render(&format!("x://{tmpl}"), node, address_type)?;
            let path = path.trim_start_matches("x://").to_string();
            let uuid = crate::plan::bmc::system_uuid(node).ok_or_else(|| {
                format!(
                    "Node {} reports no status.nodeInfo.systemUUID: no Redfish system can be matched to the host, so none is powered off or read as its own",
                    node.name_any()
                )
            })?;
            Ok(Box::new(
                fence::redfish::Redfish::new(&address, &path, creds, timeout, ctx.gate().clone())
                    .map_err(|e| e.to_string())?
                    .for_system_uuid(uuid),
            ))
        }
        FenceDriver::Ipmi => Ok(Box::new(
            fence::ipmi::Ipmi::new(&address, creds, timeout, ctx.gate().clone())
                .map_err(|e| e.to_string())?,
        )),
    }
}
