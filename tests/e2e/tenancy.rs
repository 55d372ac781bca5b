//! Tenancy: what a namespace editor may do (VMs and migrations, never HostPools or HAPolicies),
//! what a HostPool may say (transports, URI parameters, host directories), and MACs that are
//! unique within a pool.

use crate::support::cluster::{self, Cluster, wait_for};
use crate::support::lab;
use crate::support::objects::{LABEL, host_of, pool_manifest, ready_reason, vm_manifest, wait_vm};
use ferry::api::{HostPool, VirtualMachine};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use std::time::Duration;

/// The roles for people from `config/rbac/aggregate_roles.yaml`, renamed with `suffix` so that
/// they are this test's own; deleted on drop.
struct UserRoles {
    client: Client,
    names: Vec<String>,
}

impl UserRoles {
    async fn install(client: &Client, suffix: &str) -> UserRoles {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/rbac/aggregate_roles.yaml"
        );
        let text = std::fs::read_to_string(path).expect("read aggregate_roles.yaml");
        let api: Api<ClusterRole> = Api::all(client.clone());
        let mut names = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("YAML");
            let mut role: ClusterRole = serde_yaml::from_value(v).expect("a ClusterRole");
            let name = format!("{}-{suffix}", role.name_any());
            role.metadata.name = Some(name.clone());
            api.create(&PostParams::default(), &role)
                .await
                .expect("create ClusterRole");
            names.push(name);
        }
        UserRoles {
            client: client.clone(),
            names,
        }
    }
}

impl Drop for UserRoles {
    fn drop(&mut self) {
        let (client, names) = (self.client.clone(), std::mem::take(&mut self.names));
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let api: Api<ClusterRole> = Api::all(client);
                    for n in names {
                        let _ = api.delete(&n, &DeleteParams::default()).await;
                    }
                });
            }
        })
        .join();
    }
}

/// A client acting as user `user`.
async fn impersonating(user: &str) -> Client {
    let mut cfg = kube::Config::infer().await.expect("kubeconfig");
    cfg.auth_info.impersonate = Some(user.to_string());
    Client::try_from(cfg).expect("client")
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

/// A user with the built-in `edit` role in a namespace (what an application team gets) creates
/// and changes VirtualMachines and VirtualMachineMigrations there, reads HostPools and
/// HAPolicies, and may neither create nor change nor delete them; the same for `admin`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn namespace_editors_cannot_change_pools_or_policies() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    if std::env::var_os("FERRY_STANDIN").is_some() {
        eprintln!(
            "skipping: the API stand-in does not authorize requests (RBAC needs a real API server)"
        );
        return;
    }
    let c = Cluster::new("ferry-e2e-rbac").await;
    let ns = c.namespace.clone();
    let _roles = UserRoles::install(&c.client, &ns).await;
    // The platform admin's pool and policy (this client is cluster-admin).
    c.apply::<HostPool>(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
        "metadata": {"name": "pool"},
        "spec": {"nodeSelector": {"matchLabels": {LABEL: "none"}},
                 "libvirt": {"uriTemplate": "qemu+tls://{address}/system"},
                 "storage": {"pool": "ferry"}}
    }))
    .await;
    c.apply::<ferry::api::HAPolicy>(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "HAPolicy",
        "metadata": {"name": "policy"},
        "spec": {"hostPools": ["pool"]}
    }))
    .await;
    for (user, role) in [("alice", "edit"), ("bob", "admin")] {
        let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("{user}-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }))
        .expect("RoleBinding");
        Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(c.client.clone(), &ns)
            .create(&PostParams::default(), &binding)
            .await
            .expect("create RoleBinding");
        let as_user = impersonating(user).await;
        let vms: Api<VirtualMachine> = Api::namespaced(as_user.clone(), &ns);
        let pools: Api<HostPool> = Api::namespaced(as_user.clone(), &ns);
        let policies: Api<ferry::api::HAPolicy> = Api::namespaced(as_user.clone(), &ns);
        // The aggregation controller adds ferry's rules to the built-in role within moments.
        let vm_name = format!("vm-{user}");
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": vm_name},
            "spec": {"hostPool": "pool", "runStrategy": "Halted", "cpu": {"cores": 1},
                     "memory": "128Mi", "disks": [{"name": "root", "image": "x.qcow2"}]}
        }))
        .expect("VM");
        wait_for(
            &format!("{user} ({role}) may create a VirtualMachine"),
            Duration::from_secs(30),
            || {
                let (vms, vm) = (vms.clone(), vm.clone());
                async move { vms.create(&PostParams::default(), &vm).await.ok() }
            },
        )
        .await;
        assert!(pools.get("pool").await.is_ok(), "{user} reads HostPools");
        assert!(
            policies.get("policy").await.is_ok(),
            "{user} reads HAPolicies"
        );
        let mut own_pool: HostPool = pools.get("pool").await.expect("pool");
        own_pool.metadata = kube::api::ObjectMeta {
            name: Some(format!("{user}-pool")),
            ..Default::default()
        };
        own_pool.status = None;
        assert!(
            forbidden(pools.create(&PostParams::default(), &own_pool).await),
            "{user} ({role}) created a HostPool"
        );
        let change = Patch::Merge(
            json!({"spec": {"libvirt": {"uriTemplate": "qemu+ext:///system?command=/bin/true"}}}),
        );
        assert!(
            forbidden(pools.patch("pool", &PatchParams::default(), &change).await),
            "{user} ({role}) changed a HostPool"
        );
        assert!(
            forbidden(pools.delete("pool", &DeleteParams::default()).await),
            "{user} ({role}) deleted a HostPool"
        );
        let mut own_policy = policies.get("policy").await.expect("policy");
        own_policy.metadata = kube::api::ObjectMeta {
            name: Some(format!("{user}-policy")),
            ..Default::default()
        };
        own_policy.status = None;
        assert!(
            forbidden(policies.create(&PostParams::default(), &own_policy).await),
            "{user} ({role}) created an HAPolicy"
        );
        let pause = Patch::Merge(json!({"spec": {"hostPools": []}}));
        assert!(
            forbidden(
                policies
                    .patch("policy", &PatchParams::default(), &pause)
                    .await
            ),
            "{user} ({role}) changed an HAPolicy"
        );
        // VMs and migrations are theirs.
        let strategy = Patch::Merge(json!({"spec": {"runStrategy": "Manual"}}));
        vms.patch(&vm_name, &PatchParams::default(), &strategy)
            .await
            .expect("an editor changes its VM");
        let migration: ferry::api::VirtualMachineMigration = serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachineMigration",
            "metadata": {"name": format!("move-{user}")},
            "spec": {"vmName": vm_name}
        }))
        .expect("migration");
        Api::<ferry::api::VirtualMachineMigration>::namespaced(as_user.clone(), &ns)
            .create(&PostParams::default(), &migration)
            .await
            .expect("an editor creates a migration");
        vms.delete(&vm_name, &DeleteParams::default())
            .await
            .expect("an editor deletes its VM");
    }
}

/// Two VMs of one pool never share a MAC: a VM asking for another VM's (derived) MAC, or for a
/// MAC an older VM asked for, waits with `DuplicateMAC` and is not placed; once the holder is
/// gone it is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster and root: run e2e/run.sh"]
async fn duplicate_macs_in_a_pool_are_refused() {
    assert!(
        cluster::enabled(),
        "set FERRY_E2E=1 and KUBECONFIG (e2e/run.sh does both)"
    );
    let lab = lab::Lab::up(1).expect("lab host");
    let mut c = Cluster::new("ferry-e2e-mac").await;
    let node = format!("{}-h1", c.namespace);
    c.add_node(&node, &lab.hosts[0].ip, LABEL).await;
    let _ctl = c.controller("e2e-mac");
    c.apply::<HostPool>(pool_manifest("lab", &lab)).await;
    let nic = |mac: Option<&str>| match mac {
        Some(m) => json!([{"name": "eth0", "network": "default", "mac": m}]),
        None => json!([{"name": "eth0", "network": "default"}]),
    };
    let vm = |name: &str, mac: Option<&str>| {
        let mut m = vm_manifest(name, "lab", &lab, "Halted");
        m["spec"]["networks"] = nic(mac);
        m
    };

    // `first` gets a MAC ferry derives and records; `copy` asks for exactly that one.
    c.apply::<VirtualMachine>(vm("first", None)).await;
    let first = wait_vm(&c, "first", "MAC recorded", Duration::from_secs(90), |v| {
        v.status.as_ref().is_some_and(|s| !s.interfaces.is_empty())
    })
    .await;
    let derived = first.status.as_ref().expect("status").interfaces[0]
        .mac
        .clone();
    c.apply::<VirtualMachine>(vm("copy", Some(&derived))).await;
    let copy = wait_vm(&c, "copy", "refused", Duration::from_secs(60), |v| {
        ready_reason(v).is_some_and(|(_, r)| r == "DuplicateMAC") || host_of(v).is_some()
    })
    .await;
    assert_eq!(
        ready_reason(&copy),
        Some(("False".into(), "DuplicateMAC".into())),
        "a VM with another VM's MAC was placed: {:?}",
        copy.status
    );
    assert_eq!(host_of(&copy), None);
    let message = crate::support::objects::condition(&copy, "Ready")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains(&format!("{}/first", c.namespace)) && message.contains(&derived),
        "{message}"
    );

    // Two VMs asking for one MAC: the older keeps it.
    let mac = "52:54:00:e2:e0:01";
    c.apply::<VirtualMachine>(vm("older", Some(mac))).await;
    wait_vm(&c, "older", "placed", Duration::from_secs(60), |v| {
        host_of(v).is_some()
    })
    .await;
    c.apply::<VirtualMachine>(vm("newer", Some(mac))).await;
    let newer = wait_vm(&c, "newer", "refused", Duration::from_secs(60), |v| {
        ready_reason(v).is_some_and(|(_, r)| r == "DuplicateMAC") || host_of(v).is_some()
    })
    .await;
    assert_eq!(
        ready_reason(&newer).map(|r| r.1),
        Some("DuplicateMAC".into()),
        "{:?}",
        newer.status
    );
    assert_eq!(host_of(&newer), None);

    // The all-zero MAC never gets in (the API server's CEL rule; the spec check otherwise).
    let zero = c
        .vms()
        .create(
            &PostParams::default(),
            &serde_json::from_value(vm("zero", Some("00:00:00:00:00:00"))).expect("VM"),
        )
        .await;
    if std::env::var_os("FERRY_STANDIN").is_none() {
        assert!(zero.is_err(), "the API server took an all-zero MAC");
    } else {
        wait_vm(&c, "zero", "refused", Duration::from_secs(60), |v| {
            ready_reason(v).is_some_and(|(_, r)| r == "InvalidSpec")
        })
        .await;
    }

    // Once the holder is gone, the refused VM is placed.
    c.vms()
        .delete("first", &DeleteParams::default())
        .await
        .expect("delete first");
    c.wait_vm_gone("first", Duration::from_secs(60)).await;
    wait_vm(
        &c,
        "copy",
        "placed after first is gone",
        Duration::from_secs(90),
        |v| host_of(v).is_some(),
    )
    .await;
}
