//! Test harness for the ferry lab (`e2e/lab/lab.sh`): several libvirt/QEMU hypervisor hosts on
//! this machine (network + mount namespaces), shared storage and the tiny test guest.
//!
//! Include it from an integration test with
//! `#[path = "support/lab.rs"] mod lab;` and start with
//!
//! ```ignore
//! if !lab::Lab::should_run("my_test") { return; }
//! let lab = lab::Lab::up(2).expect("lab up");
//! ```
//!
//! Every lab gets its own ID (1..=200), so tests in one or several processes can run in
//! parallel. `Drop` tears the lab down, also when the test panics; if the test process is
//! killed, the watchdog that `lab.sh up --owner-pid` starts does it instead.
//! Every wait here is bounded.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The lab script.
pub const LAB_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/lab/lab.sh");
/// Lock files that keep parallel tests (threads or processes) from picking the same lab ID.
const LOCK_DIR: &str = "/tmp/ferry-lab-locks";
/// Output of commands run by [`run_cmd`] (files, not pipes).
const CMD_DIR: &str = "/tmp/ferry-lab-cmd";
const MAX_ID: u32 = 200;
/// `lab.sh up` may build the guest on a fresh machine (kernel download): allow for it.
const UP_TIMEOUT: Duration = Duration::from_secs(900);
const DOWN_TIMEOUT: Duration = Duration::from_secs(180);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Exit status of `lab.sh up` when the ID is taken.
const EXIT_ID_IN_USE: i32 = 3;

static NEXT: AtomicU32 = AtomicU32::new(0);
static TMP_SEQ: AtomicU32 = AtomicU32::new(0);

/// One lab host: a libvirtd in its own namespaces.
#[derive(Debug, Clone)]
pub struct LabHost {
    /// `h1`, `h2`, ...
    pub name: String,
    /// The host's hostname as libvirt reports it (`labh1`, ...).
    pub hostname: String,
    pub ip: String,
    /// `qemu+unix:///system?socket=...`, usable from the root namespace (this process).
    pub unix_uri: String,
    /// `qemu+tcp://<ip>/system`, usable from the client namespace and from other lab hosts.
    pub tcp_uri: String,
    /// `qemu+tls://<ip>/system` when the lab was brought up with TLS ([`Lab::up_tls`]); add
    /// `?pkipath=` one of the lab's client directories ([`Lab::pki_dir`]).
    pub tls_uri: Option<String>,
    pub netns: String,
    pub host_uuid: String,
}

/// A running lab; `Drop` tears it down.
#[derive(Debug)]
pub struct Lab {
    pub id: u32,
    pub dir: PathBuf,
    pub env_file: PathBuf,
    pub hosts: Vec<LabHost>,
    pub client_netns: String,
    pub client_ip: String,
    pub shared_dir: PathBuf,
    /// Directory for a libvirt `dir` pool (not defined by the lab); holds the golden image.
    pub pool_dir: PathBuf,
    /// File name of the golden image in `pool_dir` (`tiny.qcow2`).
    pub golden: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line the tiny guest needs.
    pub cmdline: String,
    pub console_dir: PathBuf,
    /// `kvm` or `qemu` (TCG): the domain type to use.
    pub virt_type: String,
    /// With TLS ([`Lab::up_tls`]): the lab PKI. Client directories in libvirt's `pkipath` layout
    /// (`cacert.pem`, `clientcert.pem`, `clientkey.pem`): `client` (accepted), `rogue` (a client
    /// certificate from another CA: the hosts reject it), `wrong-ca` (another CA: ferry rejects
    /// the hosts' certificates).
    pub pki_dir: Option<PathBuf>,
    /// With SSH ([`Lab::up_ssh`]): keys and known_hosts files. `client` is the key every host
    /// accepts for root, `other` a key none accepts; `known_hosts` has the hosts' keys,
    /// `known_hosts.wrong` other keys under their addresses.
    pub ssh_dir: Option<PathBuf>,
    /// Every key of `lab.env`.
    pub env: BTreeMap<String, String>,
    lock: Option<File>,
    torn_down: bool,
}

/// Output of a command run with a deadline.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// `Ok(stdout)` on success, else an error that says what ran and how it failed.
    pub fn into_result(self, what: &str) -> Result<String, String> {
        if self.success() {
            Ok(self.stdout)
        } else if self.timed_out {
            Err(format!("{what}: timed out; stderr: {}", self.stderr.trim()))
        } else {
            Err(format!(
                "{what}: exit {:?}; stderr: {}; stdout: {}",
                self.code(),
                self.stderr.trim(),
                tail(&self.stdout, 2000)
            ))
        }
    }
}

/// Run `program args` with a deadline. Output goes to temporary files, not pipes, so a daemon
/// that inherits them cannot make us wait. On timeout the process gets SIGTERM, then SIGKILL.
pub fn run_cmd(program: &str, args: &[&str], timeout: Duration) -> CmdOutput {
    let seq = TMP_SEQ.fetch_add(1, Ordering::SeqCst);
    let dir = Path::new(CMD_DIR);
    if seq == 0 {
        remove_stale_cmd_files(dir);
    }
    let _ = fs::create_dir_all(dir);
    let base = dir.join(format!("{}-{seq}", std::process::id()));
    let out_path = base.with_extension("out");
    let err_path = base.with_extension("err");
    let result = (|| -> std::io::Result<CmdOutput> {
        let out = File::create(&out_path)?;
        let err = File::create(&err_path)?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let grace = Instant::now() + Duration::from_secs(30);
                loop {
                    if child.try_wait()?.is_some() {
                        break;
                    }
                    if Instant::now() >= grace {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(CmdOutput {
            status,
            stdout: fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: fs::read_to_string(&err_path).unwrap_or_default(),
            timed_out,
        })
    })();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    result.unwrap_or_else(|e| CmdOutput {
        status: None,
        stdout: String::new(),
        stderr: format!("cannot run {program}: {e}"),
        timed_out: false,
    })
}

/// Output files of processes that were killed before they could remove them.
fn remove_stale_cmd_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(e.path());
        }
    }
}

impl Lab {
    /// Bring up a lab with `hosts` hosts (1..=6) under a free ID.
    pub fn up(hosts: usize) -> Result<Lab, String> {
        Self::up_with(hosts, &[])
    }

    /// Like [`Lab::up`], with libvirtd also listening for TLS (port 16514) with certificates of a
    /// lab CA; see [`Lab::pki_dir`].
    pub fn up_tls(hosts: usize) -> Result<Lab, String> {
        Self::up_with(hosts, &["--tls"])
    }

    /// Like [`Lab::up`], with an sshd on each host's address (port 22) whose sessions reach that
    /// host's libvirtd; see [`Lab::ssh_dir`].
    pub fn up_ssh(hosts: usize) -> Result<Lab, String> {
        Self::up_with(hosts, &["--ssh"])
    }

    fn up_with(hosts: usize, extra: &[&str]) -> Result<Lab, String> {
        if !(1..=6).contains(&hosts) {
            return Err(format!("a lab has 1..=6 hosts, not {hosts}"));
        }
        let mut last_err = String::from("no free lab ID");
        for _ in 0..MAX_ID {
            let Some((id, lock)) = claim_id()? else {
                break;
            };
            let hosts_arg = hosts.to_string();
            let id_arg = id.to_string();
            let owner = std::process::id().to_string();
            let mut args = vec![
                "up",
                "--id",
                &id_arg,
                "--hosts",
                &hosts_arg,
                "--owner-pid",
                &owner,
            ];
            args.extend_from_slice(extra);
            let out = run_cmd(LAB_SH, &args, UP_TIMEOUT);
            if out.code() == Some(EXIT_ID_IN_USE) {
                last_err = format!("lab {id} in use: {}", out.stderr.trim());
                continue;
            }
            if !out.success() {
                // lab.sh tears down a failed up itself; make sure, whatever happened.
                let _ = run_cmd(LAB_SH, &["down", "--id", &id_arg], DOWN_TIMEOUT);
                return Err(format!(
                    "lab.sh up --id {id} --hosts {hosts} failed{}: {}",
                    if out.timed_out { " (timed out)" } else { "" },
                    tail(&out.stderr, 4000)
                ));
            }
            let env_file = PathBuf::from(out.stdout.trim().lines().last().unwrap_or_default());
            let mut lab = Lab::from_env_file(&env_file).inspect_err(|_| {
                let _ = run_cmd(LAB_SH, &["down", "--id", &id_arg], DOWN_TIMEOUT);
            })?;
            lab.lock = Some(lock);
            lab.torn_down = false;
            return Ok(lab);
        }
        Err(last_err)
    }

    /// Read a `lab.env` (for a lab someone else brought up). Such a lab is not torn down on
    /// drop unless it was created by [`Lab::up`].
    pub fn from_env_file(path: &Path) -> Result<Lab, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let env = parse_env(&text)?;
        let get = |k: &str| -> Result<String, String> {
            env.get(k)
                .cloned()
                .ok_or_else(|| format!("{} has no {k}", path.display()))
        };
        let mut hosts = Vec::new();
        for name in get("LAB_HOSTS")?.split_whitespace() {
            let k = name.trim_start_matches('h');
            let key = |what: &str| format!("LAB_H{k}_{what}");
            hosts.push(LabHost {
                name: name.to_string(),
                hostname: get(&key("HOSTNAME")).unwrap_or_else(|_| format!("lab{name}")),
                ip: get(&key("IP"))?,
                unix_uri: get(&key("UNIX_URI"))?,
                tcp_uri: get(&key("TCP_URI"))?,
                tls_uri: get(&key("TLS_URI")).ok(),
                netns: get(&key("NETNS"))?,
                host_uuid: get(&key("HOST_UUID")).unwrap_or_default(),
            });
        }
        Ok(Lab {
            id: get("LAB_ID")?.parse().map_err(|e| format!("LAB_ID: {e}"))?,
            dir: get("LAB_DIR")?.into(),
            env_file: path.to_path_buf(),
            hosts,
            client_netns: get("LAB_CLIENT_NETNS")?,
            client_ip: get("LAB_CLIENT_IP")?,
            shared_dir: get("LAB_SHARED_DIR")?.into(),
            pool_dir: get("LAB_POOL_DIR")?.into(),
            golden: get("LAB_GOLDEN")?,
            kernel: get("LAB_KERNEL")?.into(),
            initrd: get("LAB_INITRD")?.into(),
            cmdline: get("LAB_CMDLINE")?,
            console_dir: get("LAB_CONSOLE_DIR")?.into(),
            virt_type: get("LAB_VIRT_TYPE")?,
            pki_dir: get("LAB_PKI_DIR").ok().map(PathBuf::from),
            ssh_dir: get("LAB_SSH_DIR").ok().map(PathBuf::from),
            env,
            lock: None,
            torn_down: true,
        })
    }

    /// Tear the lab down now and report failures (Drop does the same, but can only print).
    pub fn down(mut self) -> Result<(), String> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let out = run_cmd(
            LAB_SH,
            &["down", "--id", &self.id.to_string()],
            DOWN_TIMEOUT,
        );
        // Keep the ID locked until the lab is gone.
        self.lock = None;
        out.into_result(&format!("lab.sh down --id {}", self.id))
            .map(|_| ())
    }

    /// The host called `name` (`h1`, ...). Panics if there is none.
    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab {} has no host {name}", self.id))
    }

    /// Absolute path of the golden image.
    pub fn golden_path(&self) -> PathBuf {
        self.pool_dir.join(&self.golden)
    }

    /// Where a VM called `name` should log its serial console.
    pub fn console_path(&self, name: &str) -> PathBuf {
        self.console_dir.join(format!("{name}.log"))
    }

    /// Create `pool_dir/<name>.qcow2`, a qcow2 overlay backed by the golden image.
    pub fn create_overlay(&self, name: &str) -> Result<PathBuf, String> {
        let path = self.pool_dir.join(format!("{name}.qcow2"));
        let golden = self.golden_path();
        run_cmd(
            "qemu-img",
            &[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                &golden.to_string_lossy(),
                &path.to_string_lossy(),
            ],
            CMD_TIMEOUT,
        )
        .into_result("qemu-img create")?;
        Ok(path)
    }

    /// Domain XML for the tiny guest: direct kernel boot, `disk` as virtio `vda` with
    /// `cache='none'` (live-migratable), the serial console logged (append) to `console`,
    /// ACPI on (for `virsh shutdown`), 128 MiB, 1 vCPU, no network.
    pub fn tiny_domain_xml(&self, name: &str, disk: &Path, console: &Path) -> String {
        self.tiny_domain_xml_with(name, disk, console, "", "")
    }

    /// Like [`Lab::tiny_domain_xml`], with `extra_cmdline` appended to the kernel command line
    /// (e.g. `ferry.tick_ms=20`) and `extra_devices` (XML) added to `<devices>` (e.g.
    /// [`cdrom_xml`]).
    pub fn tiny_domain_xml_with(
        &self,
        name: &str,
        disk: &Path,
        console: &Path,
        extra_cmdline: &str,
        extra_devices: &str,
    ) -> String {
        self.tiny_domain_xml_sized(name, disk, console, 128, extra_cmdline, extra_devices)
    }

    /// Like [`Lab::tiny_domain_xml_with`], with `memory_mib` MiB of guest memory.
    pub fn tiny_domain_xml_sized(
        &self,
        name: &str,
        disk: &Path,
        console: &Path,
        memory_mib: u32,
        extra_cmdline: &str,
        extra_devices: &str,
    ) -> String {
        let cmdline = if extra_cmdline.is_empty() {
            self.cmdline.clone()
        } else {
            format!("{} {extra_cmdline}", self.cmdline)
        };
        format!(
            r#"<domain type='{virt}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'>
      <log file='{console}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
{extra_devices}  </devices>
</domain>
"#,
            virt = xml_escape(&self.virt_type),
            name = xml_escape(name),
            kernel = xml_escape(&self.kernel.to_string_lossy()),
            initrd = xml_escape(&self.initrd.to_string_lossy()),
            cmdline = xml_escape(&cmdline),
            disk = xml_escape(&disk.to_string_lossy()),
            console = xml_escape(&console.to_string_lossy()),
        )
    }

    /// Write an ISO 9660 image labelled `cidata` (a cloud-init NoCloud seed) holding `files`
    /// (name, content) to `pool_dir/<name>.iso`. The tiny guest prints each file's first line
    /// as `FERRY-SEED <file>: <line>`.
    pub fn create_seed_iso(&self, name: &str, files: &[(&str, &str)]) -> Result<PathBuf, String> {
        let staging = self.dir.join(format!("seed-{name}"));
        let _ = fs::remove_dir_all(&staging);
        fs::create_dir_all(&staging).map_err(|e| format!("mkdir {}: {e}", staging.display()))?;
        for (file, content) in files {
            fs::write(staging.join(file), content).map_err(|e| format!("write {file}: {e}"))?;
        }
        let iso = self.pool_dir.join(format!("{name}.iso"));
        let out = run_cmd(
            "xorriso",
            &[
                "-as",
                "mkisofs",
                "-quiet",
                "-V",
                "cidata",
                "-r",
                "-J",
                "-o",
                &iso.to_string_lossy(),
                &staging.to_string_lossy(),
            ],
            CMD_TIMEOUT,
        );
        let _ = fs::remove_dir_all(&staging);
        out.into_result("xorriso")?;
        Ok(iso)
    }

    /// Run a `lab.sh` subcommand for this lab: `lab.sh <cmd> --id ID <args...>`.
    pub fn lab_sh(&self, cmd: &str, args: &[&str]) -> Result<String, String> {
        let id = self.id.to_string();
        let mut full = vec![cmd, "--id", &id];
        full.extend_from_slice(args);
        run_cmd(LAB_SH, &full, CMD_TIMEOUT).into_result(&format!("lab.sh {}", full.join(" ")))
    }

    /// The shell command that powers `host` off (for a BMC emulator's power-off hook).
    pub fn power_off_command(&self, host: &str) -> String {
        format!("{LAB_SH} power-off --id {} {host}", self.id)
    }

    /// Power loss: SIGKILL `host`'s QEMU guests and libvirtd.
    pub fn power_off(&self, host: &str) -> Result<(), String> {
        self.lab_sh("power-off", &[host]).map(|_| ())
    }

    /// Cut `host` off the lab network (its veth goes down).
    pub fn partition(&self, host: &str) -> Result<(), String> {
        self.lab_sh("partition", &[host]).map(|_| ())
    }

    /// Undo [`Lab::partition`].
    pub fn heal(&self, host: &str) -> Result<(), String> {
        self.lab_sh("heal", &[host]).map(|_| ())
    }

    /// Stop `host`'s libvirtd (SIGTERM, as a daemon restart would); its guests keep running.
    pub fn stop_libvirtd(&self, host: &str) -> Result<(), String> {
        self.lab_sh("stop-libvirtd", &[host]).map(|_| ())
    }

    /// Kill `host`'s libvirtd with SIGKILL (a daemon crash); its guests keep running.
    pub fn kill_libvirtd(&self, host: &str) -> Result<(), String> {
        self.lab_sh("stop-libvirtd", &["--kill", host]).map(|_| ())
    }

    /// Start `host`'s libvirtd again in the same namespaces; returns once it answers.
    pub fn start_libvirtd(&self, host: &str) -> Result<(), String> {
        self.lab_sh("start-libvirtd", &[host]).map(|_| ())
    }

    /// Run a command inside `host`'s namespaces (network, mount, UTS).
    pub fn exec_in_host(&self, host: &str, cmd: &[&str]) -> CmdOutput {
        let id = self.id.to_string();
        let mut full = vec!["exec", "--id", &id, host, "--"];
        full.extend_from_slice(cmd);
        run_cmd(LAB_SH, &full, CMD_TIMEOUT)
    }

    /// `virsh -c <host's unix URI> args...` (bounded by 60 s).
    pub fn virsh(&self, host: &str, args: &[&str]) -> CmdOutput {
        let uri = self.host(host).unix_uri.clone();
        let mut full = vec!["-q", "-c", &uri];
        full.extend_from_slice(args);
        run_cmd("virsh", &full, CMD_TIMEOUT)
    }

    /// [`Lab::virsh`], `Ok(stdout)` on success.
    pub fn virsh_ok(&self, host: &str, args: &[&str]) -> Result<String, String> {
        self.virsh(host, args)
            .into_result(&format!("virsh on {host}: {}", args.join(" ")))
    }

    /// `virsh -c <host's TCP URI> args...` run from the client namespace, bounded by `timeout`
    /// (libvirt has no connect timeout: an unreachable host hangs for a minute otherwise).
    pub fn virsh_from_client(&self, host: &str, args: &[&str], timeout: Duration) -> CmdOutput {
        let uri = self.host(host).tcp_uri.clone();
        let mut full = vec![
            "netns",
            "exec",
            &self.client_netns,
            "virsh",
            "-q",
            "-c",
            &uri,
        ];
        full.extend_from_slice(args);
        run_cmd("ip", &full, timeout)
    }

    /// Resources of lab `id` / `dir` that still exist (for asserting a clean teardown).
    pub fn leftovers(id: u32, dir: &Path) -> Vec<String> {
        let mut left = Vec::new();
        let netns = run_cmd("ip", &["netns", "list"], CMD_TIMEOUT).stdout;
        for line in netns.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name == format!("fl{id}-client")
                || name
                    .strip_prefix(&format!("fl{id}-h"))
                    .is_some_and(|k| k.parse::<u32>().is_ok())
            {
                left.push(format!("netns {name}"));
            }
        }
        if let Ok(entries) = fs::read_dir("/sys/class/net") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let ours = name == format!("flbr{id}")
                    || name == format!("fl{id}c")
                    || name
                        .strip_prefix(&format!("fl{id}h"))
                        .is_some_and(|k| k.parse::<u32>().is_ok());
                if ours {
                    left.push(format!("link {name}"));
                }
            }
        }
        if dir.exists() {
            left.push(format!("directory {}", dir.display()));
        }
        let needle = format!("{}/", dir.display());
        if let Ok(entries) = fs::read_dir("/proc") {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().into_owned();
                if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == std::process::id().to_string()
                {
                    continue;
                }
                let Ok(raw) = fs::read(e.path().join("cmdline")) else {
                    continue;
                };
                let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
                if cmd.contains(&needle) || cmd.ends_with(&format!("{} ", dir.display())) {
                    left.push(format!("process {pid}: {}", cmd.trim()));
                }
            }
        }
        left
    }

    /// What this machine lacks to run the lab (empty: all there).
    pub fn missing_prerequisites() -> Vec<String> {
        let mut missing = Vec::new();
        let uid = fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            })
            .unwrap_or_default();
        if uid != "0" {
            missing.push("root (effective uid 0)".to_string());
        }
        for tool in [
            "libvirtd",
            "virtlogd",
            "virtlockd",
            "virsh",
            "qemu-system-x86_64",
            "qemu-img",
            "ip",
            "unshare",
            "nsenter",
            "setsid",
            "flock",
            "busybox",
            "cpio",
            "depmod",
            "dpkg-deb",
            "xorriso",
        ] {
            if find_program(tool).is_none() {
                missing.push(format!("program {tool}"));
            }
        }
        if find_program("ip").is_some() && !run_cmd("ip", &["netns", "list"], CMD_TIMEOUT).success()
        {
            missing.push("working `ip netns`".to_string());
        }
        missing
    }

    /// Whether the lab can run here (root, libvirtd, QEMU, `ip netns`, ...).
    pub fn available() -> bool {
        Self::missing_prerequisites().is_empty()
    }

    /// For the top of a lab test: `true` to run it; `false` (with a message) to skip it on a
    /// machine without the prerequisites. Panics instead of skipping when `CI` is set, so that
    /// CI never passes by skipping.
    pub fn should_run(test: &str) -> bool {
        let missing = Self::missing_prerequisites();
        if missing.is_empty() {
            return true;
        }
        let msg = format!(
            "{test}: lab prerequisites missing: {} (scripts/setup.sh installs them; run as root)",
            missing.join(", ")
        );
        if std::env::var_os("CI").is_some() {
            panic!("{msg}; CI is set, so this is an error, not a skip");
        }
        eprintln!("SKIPPED {msg}");
        false
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("lab {}: teardown failed: {e}", self.id);
        }
    }
}

/// Take the lock of a free lab ID: the lock file is not held by anyone (thread or process), and
/// no namespace, bridge or directory of that ID exists.
pub fn claim_id() -> Result<Option<(u32, File)>, String> {
    fs::create_dir_all(LOCK_DIR).map_err(|e| format!("create {LOCK_DIR}: {e}"))?;
    let start = std::process::id()
        .wrapping_mul(31)
        .wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst).wrapping_mul(7));
    let netns = run_cmd("ip", &["netns", "list"], CMD_TIMEOUT).stdout;
    for i in 0..MAX_ID {
        let id = (start.wrapping_add(i)) % MAX_ID + 1;
        let path = format!("{LOCK_DIR}/{id}.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(e)) => return Err(format!("lock {path}: {e}")),
        }
        let prefix_h = format!("fl{id}-h");
        let client = format!("fl{id}-client");
        let ns_taken = netns.lines().any(|l| {
            let n = l.split_whitespace().next().unwrap_or_default();
            n == client || n.starts_with(&prefix_h)
        });
        let taken = ns_taken
            || Path::new(&format!("/sys/class/net/flbr{id}")).exists()
            || Path::new(&format!("/tmp/ferry-lab-{id}")).exists();
        if !taken {
            return Ok(Some((id, file)));
        }
    }
    Ok(None)
}

/// Parse a `lab.env` file: `KEY=value` lines, values shell-quoted ('...', "...", backslashes).
pub fn parse_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, raw) = line
            .split_once('=')
            .ok_or_else(|| format!("lab.env line {}: no '=': {line}", n + 1))?;
        map.insert(
            key.trim().to_string(),
            shell_unquote(raw).map_err(|e| format!("lab.env line {}: {e}", n + 1))?,
        );
    }
    Ok(map)
}

fn shell_unquote(raw: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => out.push(c),
                    None => return Err("unterminated '".into()),
                }
            },
            '"' => loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\' | '$' | '`')) => out.push(c),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                        None => return Err("unterminated \"".into()),
                    },
                    Some(c) => out.push(c),
                    None => return Err("unterminated \"".into()),
                }
            },
            '\\' => {
                if let Some(c) = chars.next() {
                    out.push(c);
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A read-only IDE CD-ROM (`hdc`) for `iso`, for the `extra_devices` of
/// [`Lab::tiny_domain_xml_with`]. (The guest kernel has no AHCI: use IDE on the default `pc`
/// machine, or a virtio-scsi controller with `bus='scsi'`.)
pub fn cdrom_xml(iso: &Path) -> String {
    format!(
        "    <disk type='file' device='cdrom'>\n      <driver name='qemu' type='raw'/>\n      \
         <source file='{}'/>\n      <target dev='hdc' bus='ide'/>\n      <readonly/>\n    </disk>\n",
        xml_escape(&iso.to_string_lossy())
    )
}

/// The console log at `path` ("" when it does not exist yet).
pub fn console_log(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Current length of a console log: pass it to [`wait_for_console_since`] to wait for output
/// that appears after this point (e.g. the markers of the next boot).
pub fn console_len(path: &Path) -> usize {
    fs::metadata(path).map(|m| m.len() as usize).unwrap_or(0)
}

/// Wait (polling every 100 ms, at most `timeout`) until a line of the console log at `path`
/// contains `needle`; returns that line. On timeout the error holds the log's tail.
pub fn wait_for_console(path: &Path, needle: &str, timeout: Duration) -> Result<String, String> {
    wait_for_console_since(path, 0, needle, timeout)
}

/// [`wait_for_console`], looking only at bytes from `offset` on.
pub fn wait_for_console_since(
    path: &Path,
    offset: usize,
    needle: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = console_log(path);
        let from = log.get(offset..).unwrap_or_else(|| {
            // offset inside a multi-byte character: step forward to a boundary.
            let mut o = offset.min(log.len());
            while !log.is_char_boundary(o) {
                o += 1;
            }
            &log[o..]
        });
        if let Some(line) = from.lines().find(|l| l.contains(needle)) {
            return Ok(line.trim_end_matches('\r').to_string());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no {needle:?} in {} after {timeout:?}; log tail:\n{}",
                path.display(),
                tail(&log, 1500)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Poll `f` every 100 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}
