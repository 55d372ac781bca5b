//! `kubectl ferry`: power, restart, migrate and inspect ferry VMs without editing their spec.
//!
//! Install the binary on `$PATH` as `kubectl-ferry`; kubectl finds it as a plugin.
//!
//! Everything that decides what to send is a pure function of the objects read, in the modules
//! below (unit-tested there); this file only reads, writes and prints.

mod adopt;
mod console;
#[cfg(test)]
mod fixtures;
mod migrate;
mod output;
mod ova;
mod ovf;
mod proxy;
mod recommend;
mod release;
mod report;

use clap::{Parser, Subcommand};
use ferry::api::{HostPool, VirtualMachine, VirtualMachineMigration};
use ferry::plan::power_request::{self as power, Plan, Want};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use output::Output;
use std::path::PathBuf;
use std::process::ExitCode;

/// Field manager of the plugin's writes (shown in `managedFields`).
const FIELD_MANAGER: &str = "kubectl-ferry";

/// Manage ferry virtual machines: start, stop, restart, pause, unpause, migrate (and cancel),
/// console, status, hosts, adopt, release, a pool's balancing recommendations, and
/// VirtualMachines for OVA appliances (import-ova).
///
/// Start and stop do not fight GitOps: for a VM with runStrategy Manual they set the
/// ferry.dev/power annotation, which Argo CD and Flux leave alone when it is not in Git; for other
/// run strategies they refuse to patch spec.runStrategy unless given --force-spec.
#[derive(Parser, Debug)]
#[command(name = "kubectl-ferry", bin_name = "kubectl ferry", version = ferry::VERSION, about, long_about)]
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
    /// Restart a VM: the guest is shut down and started again (sets ferry.dev/restart to a new
    /// token).
    Restart {
        /// VirtualMachine name.
        vm: String,
    },
    /// Pause a running VM's vCPUs; its memory and devices stay (sets ferry.dev/paused=true).
    Pause {
        /// VirtualMachine name.
        vm: String,
    },
    /// Let a VM paused with `pause` run again (removes ferry.dev/paused).
    Unpause {
        /// VirtualMachine name.
        vm: String,
    },
    /// Live-migrate a VM: creates a VirtualMachineMigration, which the controller runs within the
    /// pool's migration limits (`kubectl get fvmim` shows its progress).
    Migrate {
        /// VirtualMachine name.
        vm: String,
        /// Destination host (Node name); default: placement chooses.
        #[arg(long)]
        to: Option<String>,
        /// Why (shown in Events).
        #[arg(long)]
        reason: Option<String>,
        /// Print the created VirtualMachineMigration in this format instead of a summary.
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// Cancel a VM's unfinished live migration (deletes its VirtualMachineMigration; the VM stays
    /// on its source host, running).
    Cancel {
        /// VirtualMachine name.
        vm: String,
    },
    /// Attach to a VM's serial console (Ctrl-] leaves).
    ///
    /// Through the Kubernetes API server (ferry's aggregated API) with your kubeconfig's
    /// credentials; RBAC: get virtualmachines/console in subresources.ferry.dev (the edit role
    /// has it). With --virsh: shows where the console is logged and attaches with `virsh -c URI
    /// console DOMAIN`, which needs your own libvirt access to the host.
    Console {
        /// VirtualMachine name.
        vm: String,
        /// Attach with virsh instead (your own libvirt access to the host).
        #[arg(long)]
        virsh: bool,
        /// With --virsh: only print the log path and the virsh command.
        #[arg(long, requires = "virsh")]
        no_attach: bool,
        /// With --virsh: libvirt URI to attach through, instead of the HostPool's.
        #[arg(long, requires = "virsh")]
        uri: Option<String>,
    },
    /// Open a VM's VNC display through the Kubernetes API server (ferry's aggregated API):
    /// listens locally for a VNC viewer and prints the address (RBAC: get virtualmachines/vnc
    /// in subresources.ferry.dev).
    Vnc {
        /// VirtualMachine name.
        vm: String,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// End after the first viewer disconnects.
        #[arg(long)]
        once: bool,
    },
    /// Take a domain made outside ferry over, without restarting it: prints the VirtualMachine
    /// that describes the running domain (from its HostPool's adoption candidates, which
    /// spec.adoption.domains names), then creates it unless --dry-run. The controller checks
    /// the claim again and reports Ready=False, reason AdoptionBlocked, if it refuses.
    Adopt {
        /// Node name of the host the domain is on.
        host: String,
        /// The domain's name.
        domain: String,
        /// Name of the VirtualMachine; default: the domain's name, made a DNS label.
        #[arg(long)]
        name: Option<String>,
        /// Print the VirtualMachine only; create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the VirtualMachine in this format (default yaml).
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// Delete a VM but leave its domain on its host, running (or not) and defined, with its
    /// disks, without ferry's metadata (sets ferry.dev/release=true, then deletes). Only for a
    /// domain the VM's HostPool names in spec.adoption.domains.
    Release {
        /// VirtualMachine name.
        vm: String,
    },
    /// Show a VM's host, IP, phase, conditions and last restart.
    Status {
        /// VirtualMachine name.
        vm: String,
        /// Print the VirtualMachine in this format instead of a summary.
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
    /// Show a HostPool's balancing recommendations (VM, from, to, gain, cost, memory to copy);
    /// `apply` creates the VirtualMachineMigrations that carry them out (reason `balance`).
    Recommendations {
        /// HostPool name.
        pool: String,
        /// `apply`: create the migrations for the current recommendations.
        #[arg(value_enum)]
        action: Option<RecommendationAction>,
    },
    /// Print the VirtualMachine (YAML) that runs an OVA appliance: its vCPUs, memory, disks
    /// (imported from the OVA by the controller) and network adapters (mapped with --network).
    ///
    /// The OVA is read once (a FILE, or downloaded from a URL) for its SHA-256 and its OVF
    /// descriptor; a manifest (.mf) in it is checked. What ferry does not carry over is listed in
    /// comments at the top. Guest drivers are not changed (virt-v2v is not used). Nothing is
    /// sent to the cluster: pipe the output to `kubectl apply -f -`.
    ImportOva(ImportOvaArgs),
    /// Show the hosts of one or all HostPools: state, libvirt version, VMs per host.
    Hosts {
        /// HostPool name; default: every HostPool in the namespace.
        pool: Option<String>,
        /// HostPools of all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Print the HostPools (a List) in this format instead of a table.
        #[arg(short, long, value_enum)]
        output: Option<Output>,
    },
}

/// What to do with a pool's recommendations besides showing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RecommendationAction {
    /// Create the VirtualMachineMigrations for the current recommendations.
    Apply,
}

/// The arguments of `import-ova`.
#[derive(clap::Args, Debug)]
struct ImportOvaArgs {
    /// The OVA: a file, or an http:// or https:// URL the controller can download too.
    source: String,
    /// For a FILE: the URL where that same file is served to the controller.
    #[arg(long)]
    url: Option<String>,
    /// Name of the VirtualMachine; default: the virtual system's name, made a DNS label.
    #[arg(long)]
    name: Option<String>,
    /// HostPool that runs the VM.
    #[arg(long)]
    host_pool: String,
    /// Connect the appliance's OVF network OVFNAME to the pool's libvirt network NETWORK, or
    /// to the bridge BRIDGE with `OVFNAME=bridge:BRIDGE`. Every network the appliance's
    /// adapters use must be mapped. Repeat for several.
    #[arg(long = "network", value_name = "OVFNAME=NETWORK")]
    networks: Vec<String>,
    /// Attach every disk on this bus instead of the one nearest to the appliance's controller
    /// (IDE and SATA: sata, SCSI: scsi, otherwise virtio).
    #[arg(long, value_enum)]
    disk_bus: Option<BusArg>,
}

/// A disk bus on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BusArg {
    Virtio,
    Sata,
    Scsi,
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

/// A token for `ferry.dev/restart`: the current time, new on every call.
fn restart_token() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A client and the namespace.
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

/// `import-ova`: read the OVA once, print the VirtualMachine.
async fn import_ova(a: &ImportOvaArgs, namespace: Option<String>) -> Result<(), String> {
    use futures::StreamExt;
    use std::io::Read;
    let is_url = a.source.starts_with("http://") || a.source.starts_with("https://");
    let url = match (is_url, &a.url) {
        (true, None) => a.source.clone(),
        (true, Some(_)) => {
            return Err("--url is for a FILE; for a URL the manifest names that URL".into());
        }
        (false, Some(u)) => u.clone(),
        (false, None) => {
            return Err(format!(
                "{} is a file: give --url, where the controller downloads that same file",
                a.source
            ));
        }
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("--url {url:?} is not an http:// or https:// URL"));
    }
    let mut networks = std::collections::BTreeMap::new();
    for m in &a.networks {
        let (from, to) = ovf::network_mapping(m)?;
        if networks.insert(from.clone(), to).is_some() {
            return Err(format!("--network maps {from:?} twice"));
        }
    }
    let mut reader = ova::Reader::default();
    if is_url {
        ferry::telemetry::install_tls_provider();
        let resp = reqwest::get(&a.source)
            .await
            .map_err(|e| format!("downloading {}: {e}", a.source))?;
        if !resp.status().is_success() {
            return Err(format!(
                "downloading {}: the server answered {}",
                a.source,
                resp.status()
            ));
        }
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("downloading {}: {e}", a.source))?;
            reader.feed(&chunk)?;
        }
    } else {
        let mut file =
            std::fs::File::open(&a.source).map_err(|e| format!("opening {}: {e}", a.source))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| format!("reading {}: {e}", a.source))?;
            if n == 0 {
                break;
            }
            reader.feed(&buf[..n])?;
        }
    }
    let archive = reader.finish()?;
    let checked = archive.check_manifest()?;
    let opts = ovf::Options {
        name: a.name.clone(),
        namespace,
        host_pool: a.host_pool.clone(),
        url,
        sha256: archive.sha256.clone(),
        networks,
        disk_bus: a.disk_bus.map(|b| match b {
            BusArg::Virtio => ferry::api::virtual_machine::DiskBus::Virtio,
            BusArg::Sata => ferry::api::virtual_machine::DiskBus::Sata,
            BusArg::Scsi => ferry::api::virtual_machine::DiskBus::Scsi,
        }),
    };
    let mapped = ovf::map(&archive.ovf, &opts)
        .map_err(|e| format!("{} in {}: {e}", archive.ovf_name, a.source))?;
    print!("{}", ovf::render(&mapped, &a.source)?);
    match &archive.manifest {
        Some((mf, _)) => eprintln!(
            "{}: sha256 {}; manifest {mf} checked ({} files)",
            a.source,
            archive.sha256,
            checked.len()
        ),
        None => eprintln!("{}: sha256 {}; no manifest", a.source, archive.sha256),
    }
    if !mapped.not_carried.is_empty() {
        eprintln!(
            "{} item(s) of the appliance not carried over: see the comments at the top",
            mapped.not_carried.len()
        );
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Command::ImportOva(a) = &cli.command {
        return import_ova(a, cli.namespace.clone()).await;
    }
    let (client, ns) = client(&cli).await?;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    match &cli.command {
        Command::Start(a) | Command::Stop(a) => {
            let want = match cli.command {
                Command::Start(_) => Want::Start,
                _ => Want::Stop,
            };
            let vm = get(&vms, "VirtualMachine", &ns, &a.vm).await?;
            let plan = power::power_plan(&vm, want, a.force_spec, &restart_token());
            apply_plan(&vms, &a.vm, plan).await
        }
        Command::Restart { vm } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            apply_plan(&vms, vm, power::restart_plan(&obj, &restart_token())).await
        }
        Command::Pause { vm } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            apply_plan(&vms, vm, power::pause_plan(&obj)).await
        }
        Command::Unpause { vm } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            apply_plan(&vms, vm, power::unpause_plan(&obj)).await
        }
        Command::Migrate {
            vm,
            to,
            reason,
            output,
        } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            let m = migrate::migration(
                &obj,
                to.as_deref(),
                reason.as_deref().unwrap_or(migrate::MANUAL),
            )?;
            let api: Api<VirtualMachineMigration> = Api::namespaced(client, &ns);
            let created = api
                .create(&PostParams::default(), &m)
                .await
                .map_err(|e| format!("creating the VirtualMachineMigration: {e}"))?;
            if let Some(format) = output {
                return output::print(&created, *format);
            }
            println!(
                "virtualmachinemigration/{} created: {vm} from {} to {}",
                created.name_any(),
                obj.status
                    .as_ref()
                    .and_then(|s| s.host.as_deref())
                    .unwrap_or("?"),
                to.as_deref().unwrap_or("a host placement chooses")
            );
            println!(
                "follow it: kubectl -n {ns} get fvmim {} -w; cancel: kubectl ferry -n {ns} cancel {vm}",
                created.name_any()
            );
            Ok(())
        }
        Command::Cancel { vm } => {
            let api: Api<VirtualMachineMigration> = Api::namespaced(client, &ns);
            let all = api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing VirtualMachineMigrations: {e}"))?
                .items;
            let m = migrate::to_cancel(vm, &all)?;
            let name = m.name_any();
            api.delete(&name, &DeleteParams::default())
                .await
                .map_err(|e| format!("deleting VirtualMachineMigration {name}: {e}"))?;
            println!(
                "virtualmachinemigration/{name} deleted: ferry cancels the transfer and {vm} stays on its source host"
            );
            Ok(())
        }
        Command::Console {
            vm, virsh: false, ..
        } => proxy::console(&client, &proxy::path(&ns, vm, "console")).await,
        Command::Vnc {
            vm, listen, once, ..
        } => proxy::vnc(&client, &proxy::path(&ns, vm, "vnc"), listen, *once).await,
        Command::Console {
            vm, no_attach, uri, ..
        } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            let pools: Api<HostPool> = Api::namespaced(client.clone(), &ns);
            let pool = get(&pools, "HostPool", &ns, &obj.spec.host_pool).await?;
            console::attach(client, &obj, &pool, uri.clone(), *no_attach).await
        }
        Command::Adopt {
            host,
            domain,
            name,
            dry_run,
            output,
        } => {
            let pools: Api<HostPool> = Api::namespaced(client.clone(), &ns);
            let all = pools
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing HostPools: {e}"))?
                .items;
            let (vm, notes) = adopt::manifest(&all, host, domain, name.as_deref(), &ns)?;
            print!(
                "{}",
                adopt::render(&vm, &notes, output.unwrap_or(Output::Yaml))?
            );
            if *dry_run {
                return Ok(());
            }
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            vms.create(&pp, &vm)
                .await
                .map_err(|e| format!("creating VirtualMachine {}: {e}", vm.name_any()))?;
            eprintln!(
                "virtualmachine/{} created: ferry takes domain {domain} on host {host} over (kubectl ferry -n {ns} status {})",
                vm.name_any(),
                vm.name_any()
            );
            Ok(())
        }
        Command::Release { vm } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            let pools: Api<HostPool> = Api::namespaced(client.clone(), &ns);
            let pool = match pools.get(&obj.spec.host_pool).await {
                Ok(p) => Some(p),
                Err(kube::Error::Api(e)) if e.code == 404 => None,
                Err(e) => return Err(format!("reading HostPool {}: {e}", obj.spec.host_pool)),
            };
            let (patch, what) = release::release_plan(&obj, pool.as_ref())?;
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            vms.patch(vm, &pp, &Patch::Merge(&patch))
                .await
                .map_err(|e| format!("patching VirtualMachine {vm}: {e}"))?;
            vms.delete(vm, &DeleteParams::default())
                .await
                .map_err(|e| format!("deleting VirtualMachine {vm}: {e}"))?;
            println!("{what}");
            Ok(())
        }
        Command::Status { vm, output } => {
            let obj = get(&vms, "VirtualMachine", &ns, vm).await?;
            match output {
                Some(format) => output::print(&obj, *format),
                None => {
                    print!("{}", report::status_report(&obj));
                    Ok(())
                }
            }
        }
        Command::Recommendations { pool, action } => {
            let pools: Api<HostPool> = Api::namespaced(client.clone(), &ns);
            let obj = get(&pools, "HostPool", &ns, pool).await?;
            if action.is_none() {
                print!("{}", recommend::table(&obj));
                return Ok(());
            }
            let all_vms = vms
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing VirtualMachines: {e}"))?
                .items;
            let api: Api<VirtualMachineMigration> = Api::namespaced(client, &ns);
            let migrations = api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing VirtualMachineMigrations: {e}"))?
                .items;
            let (create, skipped) = recommend::to_apply(&obj, &all_vms, &migrations)?;
            for note in &skipped {
                println!("skipped {note}");
            }
            for m in &create {
                let created = api
                    .create(&PostParams::default(), m)
                    .await
                    .map_err(|e| format!("creating the migration of {}: {e}", m.spec.vm_name))?;
                println!(
                    "virtualmachinemigration/{} created: {} to {}",
                    created.name_any(),
                    m.spec.vm_name,
                    m.spec.target_host.as_deref().unwrap_or("?")
                );
            }
            Ok(())
        }
        Command::ImportOva(a) => import_ova(a, Some(ns)).await,
        Command::Hosts {
            pool,
            all_namespaces,
            output,
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
            if let Some(format) = output {
                return output::print_list(&list, *format);
            }
            let all_vms = vm_api
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing VirtualMachines: {e}"))?
                .items;
            print!("{}", report::hosts_report(&list, &all_vms));
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
            matches!(cli.command, Command::Migrate { ref to, output: None, .. } if to.as_deref() == Some("hv-2"))
        );
        assert!(
            Cli::try_parse_from(["kubectl-ferry", "start"]).is_err(),
            "needs a VM"
        );
        let cli = Cli::try_parse_from(["kubectl-ferry", "cancel", "web-1"]).expect("parses");
        assert!(matches!(cli.command, Command::Cancel { ref vm } if vm == "web-1"));
        let cli = Cli::try_parse_from(["kubectl-ferry", "recommendations", "rack1", "apply"])
            .expect("parses");
        assert!(matches!(
            cli.command,
            Command::Recommendations { ref pool, action: Some(RecommendationAction::Apply) } if pool == "rack1"
        ));
        assert!(Cli::try_parse_from(["kubectl-ferry", "recommendations", "rack1", "now"]).is_err());
    }

    #[test]
    fn output_formats_where_objects_are_printed() {
        for (args, want) in [
            (vec!["status", "web-1", "-o", "yaml"], Output::Yaml),
            (vec!["hosts", "-A", "-o", "json"], Output::Json),
            (vec!["migrate", "web-1", "--output", "json"], Output::Json),
        ] {
            let cli = Cli::try_parse_from(std::iter::once("kubectl-ferry").chain(args.clone()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let got = match cli.command {
                Command::Status { output, .. }
                | Command::Hosts { output, .. }
                | Command::Migrate { output, .. } => output,
                _ => None,
            };
            assert_eq!(got, Some(want), "{args:?}");
        }
        assert!(Cli::try_parse_from(["kubectl-ferry", "status", "web-1", "-o", "wide"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-ferry", "start", "web-1", "-o", "yaml"]).is_err());
    }
}
