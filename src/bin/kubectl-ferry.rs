//! `kubectl ferry`: power, restart, migrate and inspect ferry VMs without editing their spec.
//!
//! Install the binary on `$PATH` as `kubectl-ferry`; kubectl finds it as a plugin.
//!
//! Power changes are designed not to fight GitOps. A `Manual` VM is started and stopped through
//! the `ferry.dev/power` annotation, which Argo CD and Flux leave alone when it is not in Git. For
//! `Always`, `RerunOnFailure` and `Halted` VMs starting or stopping means changing
//! `spec.runStrategy`, which a GitOps tool with self-heal reverts: the plugin refuses and explains
//! unless `--force-spec` is given.
//!
//! Everything that decides what to send is a pure function of the objects read (unit-tested
//! below); `main` only reads, writes and prints.

use clap::{Parser, Subcommand};
use ferry::api::host_pool::HostStatus;
use ferry::api::virtual_machine::{POWER_ANNOTATION, RESTART_ANNOTATION};
use ferry::api::{
    HostPool, RunStrategy, VirtualMachine, VirtualMachineMigration, VirtualMachineMigrationSpec,
    VmPhase,
};
use ferry::plan::lifecycle::Power;
use ferry::plan::{naming, uri};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Field manager of the plugin's writes (shown in `managedFields`).
const FIELD_MANAGER: &str = "kubectl-ferry";

/// Manage ferry virtual machines: start, stop, restart, migrate, console, status, hosts.
#[derive(Parser, Debug)]
#[command(name = "kubectl-ferry", bin_name = "kubectl ferry", version, about)]
struct Cli {
    /// Namespace; default: the kubeconfig context's namespace.
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// kubeconfig file; default: $KUBECONFIG, then ~/.kube/config.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a VM (runStrategy Manual: sets ferry.dev/power=on).
    Start(PowerArgs),
    /// Stop a VM gracefully (runStrategy Manual: sets ferry.dev/power=off).
    Stop(PowerArgs),
    /// Restart a VM (sets ferry.dev/restart to a new token).
    Restart {
        /// VirtualMachine name.
        vm: String,
    },
    /// Live-migrate a VM: creates a VirtualMachineMigration, which the controller runs within the
    /// pool's migration limits (`kubectl get vmim` shows its progress).
    Migrate {
        /// VirtualMachine name.
        vm: String,
        /// Destination host (Node name); default: placement chooses.
        #[arg(long)]
        to: Option<String>,
        /// Why (shown in Events).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel a migration (deletes the VirtualMachineMigration).
    Cancel {
        /// VirtualMachineMigration name.
        migration: String,
    },
    /// Show where a VM's serial console is logged and attach with virsh.
    ///
    /// Attaching runs `virsh -c URI console DOMAIN` with your own libvirt client credentials
    /// (not the controller's): the HostPool's URI must be reachable from this machine.
    Console {
        /// VirtualMachine name.
        vm: String,
        /// Only print the log path and the virsh command.
        #[arg(long)]
        no_attach: bool,
        /// libvirt URI to attach through, instead of the HostPool's.
        #[arg(long)]
        uri: Option<String>,
    },
    /// Show a VM's host, IP, phase, conditions and last restart.
    Status {
        /// VirtualMachine name.
        vm: String,
    },
    /// Show the hosts of one or all HostPools: state, libvirt version, VMs per host.
    Hosts {
        /// HostPool name; default: every HostPool in the namespace.
        pool: Option<String>,
        /// HostPools of all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
}

#[derive(clap::Args, Debug)]
struct PowerArgs {
    /// VirtualMachine name.
    vm: String,
    /// For runStrategy Always, RerunOnFailure or Halted: patch spec.runStrategy (a GitOps tool
    /// with self-heal will revert it; see `kubectl ferry --help`).
    #[arg(long)]
    force_spec: bool,
}

/// Which way `start` / `stop` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Start,
    Stop,
}

/// What a command will do to a VirtualMachine.
#[derive(Debug, PartialEq)]
enum Plan {
    /// Send this JSON merge patch; the text says what it does.
    Patch(Value, String),
    /// Nothing to change; the text says why.
    Nothing(String),
    /// Refused; the text says what to do instead.
    Refuse(String),
}

fn annotation_patch(pairs: &[(&str, &str)]) -> Value {
    let map: serde_json::Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect();
    json!({ "metadata": { "annotations": map } })
}

fn phase(vm: &VirtualMachine) -> Option<VmPhase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

fn power_annotation(vm: &VirtualMachine) -> Option<Power> {
    vm.annotations()
        .get(POWER_ANNOTATION)
        .and_then(|v| Power::parse(v))
}

/// Why `start`/`stop` does not patch the spec by default.
fn gitops_refusal(name: &str, strategy: RunStrategy, want: Want) -> String {
    let (verb, target) = match want {
        Want::Start => ("start", "Always"),
        Want::Stop => ("stop", "Halted"),
    };
    format!(
        "{name} has runStrategy {strategy:?}, so to {verb} it the spec must change \
         (spec.runStrategy: {target}). If the VM is managed by GitOps (Argo CD or Flux with \
         self-heal), the spec in Git wins: the change is reverted and ferry undoes the {verb}.\n\
         Instead, either change spec.runStrategy in Git, or set runStrategy: Manual in Git and use \
         `kubectl ferry start|stop`, which set the {POWER_ANNOTATION} annotation (annotations that \
         are not in Git are not compared, so they are not reverted).\n\
         To patch spec.runStrategy to {target} anyway: kubectl ferry {verb} {name} --force-spec"
    )
}

/// What `start` or `stop` sends.
fn power_plan(vm: &VirtualMachine, want: Want, force_spec: bool, token: &str) -> Plan {
    let name = vm.name_any();
    let strategy = vm.run_strategy();
    if strategy == RunStrategy::Manual {
        let (value, wanted) = match want {
            Want::Start => ("on", Power::On),
            Want::Stop => ("off", Power::Off),
        };
        if power_annotation(vm) == Some(wanted) {
            return Plan::Nothing(format!("{name}: {POWER_ANNOTATION} is already {value}"));
        }
        let effect = match want {
            Want::Start => "ferry starts it",
            Want::Stop => "ferry shuts the guest down (forced off after the grace period)",
        };
        return Plan::Patch(
            annotation_patch(&[(POWER_ANNOTATION, value)]),
            format!("{name}: set {POWER_ANNOTATION}={value}; {effect}"),
        );
    }
    match (want, strategy) {
        (Want::Start, RunStrategy::Always) => Plan::Nothing(format!(
            "{name} has runStrategy Always: ferry keeps it running already"
        )),
        (Want::Stop, RunStrategy::Halted) => Plan::Nothing(format!(
            "{name} has runStrategy Halted: ferry keeps it stopped already"
        )),
        (Want::Start, RunStrategy::RerunOnFailure) => {
            let stopped = phase(vm) == Some(VmPhase::Stopped)
                || vm.status.as_ref().is_some_and(|s| s.stopped_by_guest);
            if stopped {
                Plan::Patch(
                    annotation_patch(&[(RESTART_ANNOTATION, token)]),
                    format!(
                        "{name}: set {RESTART_ANNOTATION}={token}; ferry starts it again (runStrategy RerunOnFailure unchanged)"
                    ),
                )
            } else {
                Plan::Nothing(format!(
                    "{name} has runStrategy RerunOnFailure and is not stopped: nothing to start"
                ))
            }
        }
        (_, _) if !force_spec => Plan::Refuse(gitops_refusal(&name, strategy, want)),
        (_, _) => {
            let target = match want {
                Want::Start => RunStrategy::Always,
                Want::Stop => RunStrategy::Halted,
            };
            Plan::Patch(
                json!({ "spec": { "runStrategy": target } }),
                format!(
                    "{name}: set spec.runStrategy={target:?} (was {strategy:?}); a GitOps tool with self-heal will set it back"
                ),
            )
        }
    }
}

/// What `restart` sends.
fn restart_plan(vm: &VirtualMachine, token: &str) -> Plan {
    let name = vm.name_any();
    match vm.run_strategy() {
        RunStrategy::Halted => Plan::Refuse(format!(
            "{name} has runStrategy Halted, which keeps it stopped: a restart would do nothing. \
             Change spec.runStrategy (in Git, if GitOps manages it) or use `kubectl ferry start {name} --force-spec`."
        )),
        RunStrategy::Manual => match power_annotation(vm) {
            Some(Power::Off) => Plan::Refuse(format!(
                "{name} is powered off ({POWER_ANNOTATION}=off): use `kubectl ferry start {name}`"
            )),
            Some(Power::On) => Plan::Patch(
                annotation_patch(&[(RESTART_ANNOTATION, token)]),
                format!(
                    "{name}: set {RESTART_ANNOTATION}={token}; ferry shuts it down and starts it again"
                ),
            ),
            None if phase(vm) == Some(VmPhase::Running) => Plan::Patch(
                // Without power=on a Manual VM stays off once the restart has stopped it.
                annotation_patch(&[(RESTART_ANNOTATION, token), (POWER_ANNOTATION, "on")]),
                format!(
                    "{name}: set {RESTART_ANNOTATION}={token} and {POWER_ANNOTATION}=on; ferry shuts it down and starts it again"
                ),
            ),
            None => Plan::Refuse(format!(
                "{name} (runStrategy Manual) is not running: use `kubectl ferry start {name}`"
            )),
        },
        RunStrategy::Always | RunStrategy::RerunOnFailure => Plan::Patch(
            annotation_patch(&[(RESTART_ANNOTATION, token)]),
            format!(
                "{name}: set {RESTART_ANNOTATION}={token}; ferry shuts it down and starts it again"
            ),
        ),
    }
}

/// The VirtualMachineMigration `migrate` creates.
fn migration(
    vm: &VirtualMachine,
    to: Option<&str>,
    reason: Option<&str>,
) -> Result<VirtualMachineMigration, String> {
    let name = vm.name_any();
    let host = vm
        .status
        .as_ref()
        .and_then(|s| s.host.as_deref())
        .ok_or_else(|| format!("{name} is not placed on a host yet: nothing to migrate"))?;
    if to == Some(host) {
        return Err(format!("{name} already runs on {host}"));
    }
    match phase(vm) {
        Some(VmPhase::Running) => {}
        other => {
            let shown = other.map_or("without a phase".to_string(), |p| p.to_string());
            return Err(format!(
                "{name} is {shown}: only a running VM can be live-migrated"
            ));
        }
    }
    let mut m = VirtualMachineMigration::new(
        "",
        VirtualMachineMigrationSpec {
            vm_name: name.clone(),
            target_host: to.map(str::to_string),
            reason: Some(
                reason
                    .unwrap_or("manual (kubectl ferry migrate)")
                    .to_string(),
            ),
        },
    );
    m.metadata = ObjectMeta {
        generate_name: Some(format!("{name}-")),
        namespace: vm.namespace(),
        labels: Some(BTreeMap::from([("ferry.dev/vm".to_string(), name)])),
        ..ObjectMeta::default()
    };
    Ok(m)
}

/// Where a VM's console is.
#[derive(Debug, PartialEq)]
struct ConsoleTarget {
    host: String,
    domain: String,
    log_path: String,
    /// libvirt URI of the host, when known.
    uri: Option<String>,
}

/// Where `console` looks: the log file in the pool's console directory, and the host's URI from
/// the pool's template and the Node (or, without the Node, from the pool's status, which has no
/// credentials or query parameters).
fn console_target(
    vm: &VirtualMachine,
    pool: &HostPool,
    node: Option<&Node>,
) -> Result<ConsoleTarget, String> {
    let name = vm.name_any();
    let host = vm
        .status
        .as_ref()
        .and_then(|s| s.host.clone())
        .ok_or_else(|| format!("{name} is not placed on a host yet: it has no console"))?;
    let domain = naming::domain_name(&vm.namespace().unwrap_or_default(), &name);
    let log_path = naming::console_log_path(pool.console_dir(), &domain);
    let uri = match node {
        Some(n) => uri::render(
            &pool.spec.libvirt.uri_template,
            n,
            pool.spec.libvirt.address_type.unwrap_or_default(),
        )
        .ok(),
        None => None,
    }
    .or_else(|| {
        pool.status
            .as_ref()
            .and_then(|s| s.hosts.iter().find(|h| h.name == host))
            .and_then(|h| h.uri.clone())
    });
    Ok(ConsoleTarget {
        host,
        domain,
        log_path,
        uri,
    })
}

/// `status` output.
fn status_report(vm: &VirtualMachine) -> String {
    let mut out = String::new();
    let st = vm.status.clone().unwrap_or_default();
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    let _ = writeln!(
        out,
        "Name:       {}/{}",
        vm.namespace().unwrap_or_default(),
        vm.name_any()
    );
    let _ = writeln!(out, "Phase:      {}", dash(st.phase.map(|p| p.to_string())));
    let _ = writeln!(
        out,
        "Host:       {} (HostPool {})",
        dash(st.host.clone()),
        vm.spec.host_pool
    );
    let mut strategy = format!("{:?}", vm.run_strategy());
    if let Some(p) = vm.annotations().get(POWER_ANNOTATION) {
        let _ = write!(strategy, " ({POWER_ANNOTATION}={p})");
    }
    let _ = writeln!(out, "Strategy:   {strategy}");
    if st.interfaces.is_empty() {
        let _ = writeln!(out, "IP:         -");
    }
    for (i, nic) in st.interfaces.iter().enumerate() {
        let label = if i == 0 { "IP:" } else { "" };
        let _ = writeln!(
            out,
            "{label:<11} {} {} ({})",
            nic.name,
            nic.ip_address.as_deref().unwrap_or("-"),
            nic.mac
        );
    }
    let requested = vm.annotations().get(RESTART_ANNOTATION);
    let last = match (&st.last_restart_request, requested) {
        (Some(done), Some(req)) if done != req => format!("{done} (requested {req}: pending)"),
        (Some(done), _) => done.clone(),
        (None, Some(req)) => format!("requested {req}: pending"),
        (None, None) => "never".to_string(),
    };
    let _ = writeln!(out, "Restarted:  {last}");
    if let (Some(g), Some(o)) = (vm.metadata.generation, st.observed_generation)
        && o < g
    {
        let _ = writeln!(
            out,
            "Note:       status describes generation {o}; the spec is at generation {g}"
        );
    }
    let _ = writeln!(out, "Conditions:");
    if st.conditions.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for c in &st.conditions {
        let _ = writeln!(
            out,
            "  {:<16} {:<7} {:<20} {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    out
}

/// `hosts` output: one table per pool, with the VMs placed on each host.
fn hosts_report(pools: &[HostPool], vms: &[VirtualMachine]) -> String {
    let mut out = String::new();
    for pool in pools {
        let ns = pool.namespace().unwrap_or_default();
        let name = pool.name_any();
        let st = pool.status.clone().unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        let _ = writeln!(
            out,
            "HostPool {ns}/{name}: {} of {} host(s) ready{}",
            st.ready_hosts,
            st.selected_hosts,
            ready.map_or(String::new(), |c| format!(
                "; Ready={} ({})",
                c.status, c.reason
            ))
        );
        let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
        for vm in vms
            .iter()
            .filter(|v| v.spec.host_pool == name && v.namespace().unwrap_or_default() == ns)
        {
            let host = vm
                .status
                .as_ref()
                .and_then(|s| s.host.clone())
                .unwrap_or_else(|| "(unplaced)".to_string());
            *per_host.entry(host).or_default() += 1;
        }
        let mut rows: Vec<(String, String, String, usize, String)> = st
            .hosts
            .iter()
            .map(|h: &HostStatus| {
                (
                    h.name.clone(),
                    format!("{:?}", h.state),
                    h.libvirt_version.clone().unwrap_or_else(|| "-".into()),
                    per_host.remove(&h.name).unwrap_or(0),
                    h.message.clone().unwrap_or_default(),
                )
            })
            .collect();
        for (host, count) in per_host {
            let note = if host == "(unplaced)" {
                "waiting for a host".to_string()
            } else {
                "no longer in the pool's status".to_string()
            };
            rows.push((host, "-".into(), "-".into(), count, note));
        }
        let _ = writeln!(
            out,
            "  {:<24} {:<14} {:<10} {:>4}  MESSAGE",
            "HOST", "STATE", "LIBVIRT", "VMS"
        );
        for (host, state, version, count, message) in rows {
            let _ = writeln!(
                out,
                "  {host:<24} {state:<14} {version:<10} {count:>4}  {message}"
            );
        }
    }
    if pools.is_empty() {
        out.push_str("No HostPools found.\n");
    }
    out
}

/// A token for `ferry.dev/restart`: the current time, new on every call.
fn restart_token() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

async fn client(cli: &Cli) -> Result<(Client, String), String> {
    let opts = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| e.to_string())
        }
        (None, Some(_)) => Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| e.to_string()),
        (None, None) => Config::infer().await.map_err(|e| e.to_string()),
    }
    .map_err(|e| format!("no usable Kubernetes configuration: {e}"))?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
    Ok((client, namespace))
}

/// Read an object, with a message that names it when it is missing.
async fn get<K>(api: &Api<K>, kind: &str, ns: &str, name: &str) -> Result<K, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            Err(format!("{kind} {name:?} not found in namespace {ns:?}"))
        }
        Err(e) => Err(format!("reading {kind} {ns}/{name}: {e}")),
    }
}

/// Carry out a plan on a VM; refusals are errors.
async fn apply_plan(api: &Api<VirtualMachine>, name: &str, plan: Plan) -> Result<(), String> {
    match plan {
        Plan::Nothing(why) => println!("{why}"),
        Plan::Refuse(why) => return Err(why),
        Plan::Patch(patch, what) => {
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            api.patch(name, &pp, &Patch::Merge(&patch))
                .await
                .map_err(|e| format!("patching VirtualMachine {name}: {e}"))?;
            println!("{what}");
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), String> {
    let (client, ns) = client(&cli).await?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    match &cli.command {
        Command::Start(a) | Command::Stop(a) => {
            let want = match cli.command {
                Command::Start(_) => Want::Start,
                _ => Want::Stop,
            };
            let vm = get(&vms, "VirtualMachine", &ns, &a.vm).await?;
            let plan = power_plan(&vm, want, a.force_spec, &restart_token());
            apply_plan(&vms, &a.vm, plan).await
        }
        Command::Restart { vm } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            apply_plan(&vms, vm, restart_plan(&obj, &restart_token())).await
        }
        Command::Migrate { vm, to, reason } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            let m = migration(&obj, to.as_deref(), reason.as_deref())?;
            let api: Api<VirtualMachineMigration> = Api::namespaced(client, &ns);
            let created = api
                .create(&PostParams::default(), &m)
                .await
                .map_err(|e| format!("creating the VirtualMachineMigration: {e}"))?;
            let name = created.name_any();
            println!(
                "virtualmachinemigration/{name} created: {vm} from {} to {}",
                obj.status
                    .as_ref()
                    .and_then(|s| s.host.as_deref())
                    .unwrap_or("?"),
                to.as_deref().unwrap_or("a host placement chooses")
            );
            println!(
                "follow it: kubectl -n {ns} get vmim {name} -w; cancel: kubectl ferry cancel {name}"
            );
            Ok(())
        }
        Command::Cancel { migration } => {
            let api: Api<VirtualMachineMigration> = Api::namespaced(client, &ns);
            let m = get(&api, "VirtualMachineMigration", &ns, migration).await?;
            let phase = m.status.as_ref().and_then(|s| s.phase);
            api.delete(migration, &DeleteParams::default())
                .await
                .map_err(|e| format!("deleting VirtualMachineMigration {migration}: {e}"))?;
            match phase {
                Some(
                    p @ (ferry::api::MigrationPhase::Succeeded
                    | ferry::api::MigrationPhase::Failed
                    | ferry::api::MigrationPhase::Cancelled),
                ) => {
                    println!("{migration} had already ended ({p:?}); its record is deleted")
                }
                _ => println!(
                    "{migration} deleted: ferry cancels the transfer and the VM stays on its source host"
                ),
            }
            Ok(())
        }
        Command::Console { vm, no_attach, uri } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            let pools: Api<HostPool> = Api::namespaced(client.clone(), &ns);
            let pool = get(&pools, "HostPool", &ns, &obj.spec.host_pool).await?;
            let host = obj.status.as_ref().and_then(|s| s.host.clone());
            // Users may not be allowed to read Nodes; the pool's status has the URI too.
            let node = match host {
                Some(h) => Api::<Node>::all(client).get(&h).await.ok(),
                None => None,
            };
            let target = console_target(&obj, &pool, node.as_ref())?;
            let uri = uri.clone().or(target.uri.clone());
            println!("{vm} is on host {}", target.host);
            println!("console log (on {}): {}", target.host, target.log_path);
            let Some(uri) = uri else {
                println!(
                    "no libvirt URI known for {}: pass --uri to attach",
                    target.host
                );
                return Ok(());
            };
            let command = format!("virsh -c {uri} console {}", target.domain);
            if *no_attach {
                println!("attach: {command}");
                return Ok(());
            }
            println!("attaching: {command}   (leave with Ctrl+])");
            match std::process::Command::new("virsh")
                .args(["-c", &uri, "console", &target.domain])
                .status()
            {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!(
                    "virsh exited with {s}: is {uri} reachable from here with your libvirt credentials?"
                )),
                Err(e) => Err(format!(
                    "cannot run virsh ({e}): install libvirt-clients, or read the log on the host"
                )),
            }
        }
        Command::Status { vm } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            print!("{}", status_report(&obj));
            Ok(())
        }
        Command::Hosts {
            pool,
            all_namespaces,
        } => {
            let (pools, vm_api): (Api<HostPool>, Api<VirtualMachine>) = if *all_namespaces {
                (Api::all(client.clone()), Api::all(client))
            } else {
                (Api::namespaced(client.clone(), &ns), vms)
            };
            let mut list = pools
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing HostPools: {e}"))?
                .items;
            if let Some(p) = pool {
                list.retain(|hp| &hp.name_any() == p);
                if list.is_empty() {
                    return Err(format!("HostPool {p:?} not found"));
                }
            }
            let all_vms = vm_api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing VirtualMachines: {e}"))?
                .items;
            print!("{}", hosts_report(&list, &all_vms));
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubectl-ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn vm(strategy: Option<&str>, annotations: Value, status: Value) -> VirtualMachine {
        let mut spec = json!({"hostPool": "rack1", "cpu": {"cores": 1}, "memory": "1Gi"});
        if let Some(s) = strategy {
            spec["runStrategy"] = json!(s);
        }
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web-1", "namespace": "vms", "generation": 2,
                         "annotations": annotations},
            "spec": spec,
            "status": status,
        }))
        .expect("valid VM")
    }

    fn running() -> Value {
        json!({"phase": "Running", "host": "hv-1", "observedGeneration": 2,
               "interfaces": [{"name": "eth0", "mac": "52:54:00:00:00:01", "ipAddress": "10.0.0.5"}],
               "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                               "message": "running on host hv-1", "observedGeneration": 2,
                               "lastTransitionTime": "2026-01-10T08:00:00Z"}]})
    }

    fn stopped() -> Value {
        json!({"phase": "Stopped", "host": "hv-1", "observedGeneration": 2})
    }

    fn patch_of(plan: Plan) -> Value {
        match plan {
            Plan::Patch(p, _) => p,
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    #[test]
    fn manual_vms_are_powered_by_annotation() {
        let v = vm(Some("Manual"), json!({}), stopped());
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, false, "t1")),
            json!({"metadata": {"annotations": {"ferry.dev/power": "on"}}})
        );
        assert_eq!(
            patch_of(power_plan(&v, Want::Stop, false, "t1")),
            json!({"metadata": {"annotations": {"ferry.dev/power": "off"}}})
        );
        // --force-spec never touches the spec of a Manual VM.
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, true, "t1")),
            json!({"metadata": {"annotations": {"ferry.dev/power": "on"}}})
        );
        let on = vm(Some("Manual"), json!({"ferry.dev/power": "on"}), running());
        assert!(matches!(
            power_plan(&on, Want::Start, false, "t1"),
            Plan::Nothing(_)
        ));
    }

    #[test]
    fn spec_strategies_are_refused_without_force_spec() {
        for (strategy, want) in [
            (Some("Halted"), Want::Start),
            (None, Want::Stop),
            (Some("Always"), Want::Stop),
            (Some("RerunOnFailure"), Want::Stop),
        ] {
            let v = vm(strategy, json!({}), running());
            match power_plan(&v, want, false, "t1") {
                Plan::Refuse(why) => {
                    assert!(why.contains("runStrategy: Manual"), "{why}");
                    assert!(why.contains("--force-spec"), "{why}");
                    assert!(why.contains("reverted"), "{why}");
                }
                other => panic!("{strategy:?} {want:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn force_spec_patches_the_run_strategy() {
        let v = vm(Some("Always"), json!({}), running());
        assert_eq!(
            patch_of(power_plan(&v, Want::Stop, true, "t1")),
            json!({"spec": {"runStrategy": "Halted"}})
        );
        let v = vm(Some("Halted"), json!({}), stopped());
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, true, "t1")),
            json!({"spec": {"runStrategy": "Always"}})
        );
    }

    #[test]
    fn nothing_to_do_is_said_and_not_sent() {
        let v = vm(None, json!({}), running());
        assert!(matches!(
            power_plan(&v, Want::Start, false, "t"),
            Plan::Nothing(_)
        ));
        let v = vm(Some("Halted"), json!({}), stopped());
        assert!(matches!(
            power_plan(&v, Want::Stop, true, "t"),
            Plan::Nothing(_)
        ));
        let v = vm(Some("RerunOnFailure"), json!({}), running());
        assert!(matches!(
            power_plan(&v, Want::Start, false, "t"),
            Plan::Nothing(_)
        ));
    }

    #[test]
    fn rerun_on_failure_starts_again_with_a_restart_token() {
        let mut st = stopped();
        st["stoppedByGuest"] = json!(true);
        let v = vm(Some("RerunOnFailure"), json!({}), st);
        assert_eq!(
            patch_of(power_plan(&v, Want::Start, false, "2026-01-10T08:00:00Z")),
            json!({"metadata": {"annotations": {"ferry.dev/restart": "2026-01-10T08:00:00Z"}}})
        );
    }

    #[test]
    fn restart_sets_a_new_token() {
        let v = vm(None, json!({"ferry.dev/restart": "old"}), running());
        assert_eq!(
            patch_of(restart_plan(&v, "new")),
            json!({"metadata": {"annotations": {"ferry.dev/restart": "new"}}})
        );
        // A running Manual VM without the power annotation would stay off after the stop.
        let v = vm(Some("Manual"), json!({}), running());
        assert_eq!(
            patch_of(restart_plan(&v, "new")),
            json!({"metadata": {"annotations": {"ferry.dev/restart": "new", "ferry.dev/power": "on"}}})
        );
        for v in [
            vm(Some("Halted"), json!({}), stopped()),
            vm(Some("Manual"), json!({"ferry.dev/power": "off"}), stopped()),
            vm(Some("Manual"), json!({}), stopped()),
        ] {
            assert!(matches!(restart_plan(&v, "new"), Plan::Refuse(_)));
        }
    }

    #[test]
    fn migrations_name_the_vm_and_target() {
        let v = vm(None, json!({}), running());
        let m = migration(&v, Some("hv-2"), None).expect("a migration");
        let obj = serde_json::to_value(&m).expect("json");
        assert_eq!(obj["metadata"]["generateName"], "web-1-");
        assert_eq!(obj["metadata"]["namespace"], "vms");
        assert_eq!(obj["metadata"]["labels"]["ferry.dev/vm"], "web-1");
        assert_eq!(obj["spec"]["vmName"], "web-1");
        assert_eq!(obj["spec"]["targetHost"], "hv-2");
        assert_eq!(obj["apiVersion"], "ferry.dev/v1alpha1");
        assert!(obj["metadata"].get("name").is_none());
        let any = migration(&v, None, Some("maintenance")).expect("a migration");
        assert_eq!(any.spec.target_host, None);
        assert_eq!(any.spec.reason.as_deref(), Some("maintenance"));

        assert!(migration(&v, Some("hv-1"), None).is_err(), "same host");
        let s = vm(None, json!({}), stopped());
        assert!(migration(&s, None, None).is_err(), "not running");
        let unplaced = vm(None, json!({}), json!({"phase": "Pending"}));
        assert!(migration(&unplaced, None, None).is_err(), "no host");
    }

    fn pool(status: Value) -> HostPool {
        serde_json::from_value(json!({
            "apiVersion": "ferry.dev/v1alpha1", "kind": "HostPool",
            "metadata": {"name": "rack1", "namespace": "vms"},
            "spec": {"nodeSelector": {"matchLabels": {"ferry.dev/hypervisor": "true"}},
                     "libvirt": {"uriTemplate": "qemu+ssh://root@{address}/system"},
                     "storage": {"pool": "ferry"},
                     "console": {"logDirectory": "/srv/console/"}},
            "status": status,
        }))
        .expect("valid HostPool")
    }

    #[test]
    fn console_uses_the_pool_log_directory_and_the_host_uri() {
        let v = vm(None, json!({}), running());
        let p = pool(
            json!({"hosts": [{"name": "hv-1", "state": "Ready", "uri": "qemu+ssh://10.0.0.11/system"}]}),
        );
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "hv-1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.11"}]}
        }))
        .expect("node");
        let t = console_target(&v, &p, Some(&node)).expect("target");
        assert_eq!(
            t,
            ConsoleTarget {
                host: "hv-1".into(),
                domain: "vms_web-1".into(),
                log_path: "/srv/console/vms_web-1.console.log".into(),
                uri: Some("qemu+ssh://root@10.0.0.11/system".into()),
            }
        );
        // Without the Node (no permission), the pool's status has the URI.
        let t = console_target(&v, &p, None).expect("target");
        assert_eq!(t.uri.as_deref(), Some("qemu+ssh://10.0.0.11/system"));
        let unplaced = vm(None, json!({}), json!({"phase": "Pending"}));
        assert!(console_target(&unplaced, &p, None).is_err());
    }

    #[test]
    fn status_shows_host_ip_phase_conditions_and_restarts() {
        let v = vm(
            Some("Manual"),
            json!({"ferry.dev/power": "on", "ferry.dev/restart": "t2"}),
            {
                let mut s = running();
                s["lastRestartRequest"] = json!("t1");
                s["observedGeneration"] = json!(1);
                s
            },
        );
        let text = status_report(&v);
        for want in [
            "Name:       vms/web-1",
            "Phase:      Running",
            "Host:       hv-1 (HostPool rack1)",
            "Strategy:   Manual (ferry.dev/power=on)",
            "eth0 10.0.0.5 (52:54:00:00:00:01)",
            "Restarted:  t1 (requested t2: pending)",
            "generation 1; the spec is at generation 2",
            "Ready            True    Running              running on host hv-1",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn hosts_counts_vms_per_host() {
        let p = pool(json!({
            "selectedHosts": 2, "readyHosts": 1,
            "hosts": [
                {"name": "hv-1", "state": "Ready", "libvirtVersion": "9.0.0"},
                {"name": "hv-2", "state": "Unreachable", "message": "connection refused"}
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "SomeHostsNotReady",
                            "message": "1 of 2", "lastTransitionTime": "2026-01-10T08:00:00Z"}]
        }));
        let vms = vec![
            vm(None, json!({}), running()),
            vm(None, json!({}), running()),
            vm(None, json!({}), json!({"phase": "Unknown", "host": "hv-2"})),
            vm(None, json!({}), json!({"phase": "Unknown", "host": "hv-9"})),
            vm(None, json!({}), json!({"phase": "Pending"})),
        ];
        let text = hosts_report(&[p], &vms);
        assert!(
            text.contains(
                "HostPool vms/rack1: 1 of 2 host(s) ready; Ready=True (SomeHostsNotReady)"
            ),
            "{text}"
        );
        let row = |host: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(host))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(row("hv-1")[..4], ["hv-1", "Ready", "9.0.0", "2"]);
        assert_eq!(row("hv-2")[..4], ["hv-2", "Unreachable", "-", "1"]);
        assert_eq!(row("hv-9")[..4], ["hv-9", "-", "-", "1"]);
        assert_eq!(row("(unplaced)")[..4], ["(unplaced)", "-", "-", "1"]);
    }

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "kubectl-ferry",
            "-n",
            "vms",
            "stop",
            "web-1",
            "--force-spec",
        ])
        .expect("parses");
        assert_eq!(cli.namespace.as_deref(), Some("vms"));
        assert!(
            matches!(cli.command, Command::Stop(PowerArgs { ref vm, force_spec: true }) if vm == "web-1")
        );
        let cli = Cli::try_parse_from(["kubectl-ferry", "migrate", "web-1", "--to", "hv-2"])
            .expect("parses");
        assert!(
            matches!(cli.command, Command::Migrate { ref to, .. } if to.as_deref() == Some("hv-2"))
        );
        assert!(
            Cli::try_parse_from(["kubectl-ferry", "start"]).is_err(),
            "needs a VM"
        );
    }
}
