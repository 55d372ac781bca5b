//! What the lab hosts show of ferry's work: domains defined and running (virsh), volumes in the
//! shared pool, and the tiny guest's console (boots, ticks).

use super::lab;

/// The console log of VM `vm` in namespace `ns` (the pool logs to the lab's console directory).
pub fn console(lab: &lab::Lab, ns: &str, vm: &str) -> std::path::PathBuf {
    std::path::Path::new(&lab.console_dir).join(format!("{ns}_{vm}.console.log"))
}

/// Names of the domains defined on the lab host.
pub fn domains(lab: &lab::Lab) -> Vec<String> {
    lab.virsh(&lab.hosts[0].name, &["list", "--all", "--name"])
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Names of the files in the lab's shared storage pool.
pub fn volumes(lab: &lab::Lab) -> Vec<String> {
    std::fs::read_dir(&lab.pool_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Domains running on a lab host.
pub fn running(lab: &lab::Lab, host: &str) -> Vec<String> {
    lab.virsh(host, &["list", "--name"])
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// How many times the guest booted, by its console.
pub fn boots(text: &str) -> usize {
    text.lines().filter(|l| l.contains("FERRY-BOOT ")).count()
}

/// The lab host name (`h1`) of a Node name (`<ns>-h1`).
pub fn lab_host(node: &str) -> String {
    node.rsplit('-').next().unwrap_or_default().to_string()
}

/// Whether `host` has the domain, and whether it runs there.
pub fn domain_on(lab: &lab::Lab, host: &str, domain: &str) -> (bool, bool) {
    let out = lab.virsh(host, &["domstate", domain]);
    (out.success(), out.stdout.trim() == "running")
}

/// Highest `FERRY-TICK n` of a console log.
pub fn highest_tick(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("FERRY-TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Kill the QEMU process of the lab domain `domain` (a crash, as libvirt sees it).
pub fn kill_qemu(domain: &str) {
    let out = lab::run_cmd(
        "pkill",
        &["-KILL", "-f", &format!("guest={domain},")],
        std::time::Duration::from_secs(10),
    );
    assert!(out.success(), "no QEMU process of {domain} to kill");
}

/// When the QEMU process of the lab domain `domain` started, in clock ticks since boot
/// (`/proc/<pid>/stat`, field 22): the order in which domains were started.
pub fn qemu_started(domain: &str) -> Option<u64> {
    let needle = format!("guest={domain},");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let dir = e.ok()?.path();
        let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains(&needle) {
            return None;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // After the command name in parentheses: field 3 onwards; start time is field 22.
        let rest = stat.rsplit_once(')')?.1;
        rest.split_whitespace().nth(19)?.parse().ok()
    })
}
