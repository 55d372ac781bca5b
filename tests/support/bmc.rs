//! Real BMC emulators on 127.0.0.1 for fencing tests: sushy-emulator (Redfish, fake driver, TLS
//! with a test CA, basic auth) and OpenIPMI's ipmi_sim (IPMI v2.0 LAN) with a chassis-control
//! script that keeps the power state in a file and can run a command on power-off (to kill a lab
//! host's processes). Each emulator is stopped and its directory removed on drop.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python venv that holds sushy-tools (scripts/setup.sh).
pub fn venv() -> PathBuf {
    PathBuf::from(std::env::var("FERRY_VENV").unwrap_or_else(|_| "/opt/ferry-venv".into()))
}

/// What this machine lacks to run the BMC emulators.
pub fn missing() -> Vec<String> {
    let mut m = Vec::new();
    if !venv().join("bin/sushy-emulator").exists() {
        m.push("sushy-emulator (PyPI sushy-tools in the venv)".into());
    }
    for p in ["ipmi_sim", "openssl"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            m.push(p.into());
        }
    }
    m
}

/// `true` to run; `false` to skip on a machine without the emulators (panics when `CI` is set).
pub fn should_run(test: &str) -> bool {
    let m = missing();
    if m.is_empty() {
        return true;
    }
    let msg = format!(
        "{test}: BMC emulators missing: {} (scripts/setup.sh installs them)",
        m.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}; CI is set, so this is an error, not a skip");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// A free TCP/UDP port on 127.0.0.1 (a race with other processes is possible but unlikely).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (rustls wants CA:FALSE).
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let p = |f: &str| d.join(f).display().to_string();
        run(Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ferry test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        run(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ]));
        std::fs::write(
            d.join("ext.cnf"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .expect("ext");
        run(Command::new("openssl").args([
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &p("server.crt"),
            "-extfile",
            &p("ext.cnf"),
        ]));
        TestPki { dir }
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.path("ca.crt")).expect("ca")
    }
}

/// One system of a [`Sushy`] emulator.
#[derive(Debug, Clone)]
pub struct SushySystem {
    /// Its Redfish id (`/redfish/v1/Systems/<name>`).
    pub name: String,
    /// Its `UUID`.
    pub uuid: String,
    /// Powered on at start.
    pub on: bool,
}

/// sushy-emulator with the fake driver: one system per name, powered On.
pub struct Sushy {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
}

impl Sushy {
    /// Start it with basic auth (`user`/`password`), TLS from a fresh test CA, and the fake
    /// driver applying power changes after `apply_delay_secs` (sushy's own 1–11 s random delay
    /// is replaced so tests are deterministic; a long delay models a BMC that accepts the
    /// power-off but never reports Off).
    pub fn start(systems: &[&str], user: &str, password: &str, apply_delay_secs: u32) -> Sushy {
        let systems: Vec<SushySystem> = systems
            .iter()
            .enumerate()
            .map(|(i, name)| SushySystem {
                name: name.to_string(),
                uuid: format!("00000000-0000-4000-8000-{i:012}"),
                on: true,
            })
            .collect();
        Self::start_with(&systems, user, password, apply_delay_secs)
    }

    /// [`Sushy::start`] with each system's UUID and power state given.
    pub fn start_with(
        systems: &[SushySystem],
        user: &str,
        password: &str,
        apply_delay_secs: u32,
    ) -> Sushy {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::new();
        let port = free_port();
        let py = venv().join("bin/python");
        let hash = Command::new(&py)
            .args([
                "-c",
                "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                password,
            ])
            .output()
            .expect("bcrypt");
        assert!(
            hash.status.success(),
            "bcrypt: {}",
            String::from_utf8_lossy(&hash.stderr)
        );
        let htpasswd = format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim());
        std::fs::write(dir.path().join("htpasswd"), htpasswd).expect("htpasswd");
        let systems_py: Vec<String> = systems
            .iter()
            .map(|s| {
                format!(
                    "{{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'external_notifier': False, 'nics': []}}",
                    s.uuid,
                    s.name,
                    if s.on { "On" } else { "Off" }
                )
            })
            .collect();
        let conf = format!(
            "import random\n\
             random.randint = lambda a, b: {apply_delay_secs}\n\
             SUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n\
             SUSHY_EMULATOR_STATE_DIR = '{}'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
             SUSHY_EMULATOR_SSL_CERT = '{}'\n\
             SUSHY_EMULATOR_SSL_KEY = '{}'\n",
            systems_py.join(", "),
            dir.path().join("state").display(),
            dir.path().join("htpasswd").display(),
            pki.path("server.crt").display(),
            pki.path("server.key").display(),
        );
        std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
        std::fs::write(dir.path().join("sushy.conf"), conf).expect("conf");
        let log = std::fs::File::create(dir.path().join("sushy.log")).expect("log");
        let child = Command::new(venv().join("bin/sushy-emulator"))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "--config"])
            .arg(dir.path().join("sushy.conf"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sushy-emulator");
        let s = Sushy {
            child: Some(child),
            port,
            dir,
            pki,
        };
        assert!(
            wait_port(port, Duration::from_secs(30)),
            "sushy-emulator did not listen: {}",
            s.log()
        );
        s
    }

    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGSTOP / SIGCONT: a BMC that hangs.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { "-STOP" } else { "-CONT" };
        run(Command::new("kill").args([sig, &self.pid().to_string()]));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// ipmi_sim with one admin user; power kept in `dir/power` (1 on, 0 off).
pub struct IpmiSim {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl IpmiSim {
    /// Start it. `on_power_off`: a shell command run when the BMC powers the host off (e.g. kill
    /// a lab host's processes). `ignore_power_off`: accept the command but keep the power On.
    pub fn start(
        user: &str,
        password: &str,
        on_power_off: &str,
        ignore_power_off: bool,
    ) -> IpmiSim {
        Self::start_with_power_on(user, password, on_power_off, ignore_power_off, "")
    }

    /// [`IpmiSim::start`] with `on_power_on`, a shell command run when the BMC powers the host
    /// on (e.g. start a lab host's libvirtd); empty for none. Power is reported On once it ran.
    pub fn start_with_power_on(
        user: &str,
        password: &str,
        on_power_off: &str,
        ignore_power_off: bool,
        on_power_on: &str,
    ) -> IpmiSim {
        let on_power_on = if on_power_on.trim().is_empty() {
            ":"
        } else {
            on_power_on
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let port = free_udp_port();
        let lan = format!(
            "name \"ferrytest\"\nset_working_mc 0x20\n  startlan 1\n    addr 127.0.0.1 {port}\n    priv_limit admin\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  chassis_control \"{}/chassis.sh 0x20\"\n  user 2 true \"{user}\" \"{password}\" admin 10 none md2 md5 straight\n",
            d.display()
        );
        std::fs::write(d.join("lan.conf"), lan).expect("lan.conf");
        std::fs::write(
            d.join("host.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )
        .expect("emu");
        std::fs::write(d.join("power"), "1\n").expect("power");
        let set = if ignore_power_off {
            "power) : ;;".to_string()
        } else {
            // Off is reported once the host's processes are gone, as a real BMC reports it once
            // the power is cut.
            format!(
                "power) if [ \"$2\" = 0 ]; then {{ {on_power_off} ; }}; else {{ {on_power_on} ; }}; fi; echo $2 > \"$S\" ;;"
            )
        };
        let script = format!(
            "#!/bin/sh\nS='{}/power'\nshift; op=$1; shift\ncase $op in\n  get) for p in \"$@\"; do [ \"$p\" = power ] && echo \"power:$(cat \"$S\")\"; done ;;\n  set) while [ $# -ge 2 ]; do case $1 in {set} esac; shift 2; done ;;\nesac\nexit 0\n",
            d.display()
        );
        std::fs::write(d.join("chassis.sh"), script).expect("script");
        run(Command::new("chmod").arg("+x").arg(d.join("chassis.sh")));
        std::fs::create_dir_all(d.join("state")).expect("state");
        let log = std::fs::File::create(d.join("sim.log")).expect("log");
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(d.join("host.emu"))
            .arg("-s")
            .arg(d.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start ipmi_sim");
        std::thread::sleep(Duration::from_millis(500));
        IpmiSim {
            child: Some(child),
            port,
            dir,
        }
    }

    pub fn address(&self) -> String {
        format!("ipmi://127.0.0.1:{}", self.port)
    }

    /// The power state the emulator holds: true = on.
    pub fn power_on(&self) -> bool {
        std::fs::read_to_string(self.dir.path().join("power"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
    }

    pub fn set_power(&self, on: bool) {
        std::fs::write(
            self.dir.path().join("power"),
            if on { "1\n" } else { "0\n" },
        )
        .expect("power");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// SIGSTOP / SIGCONT: a BMC that hangs.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { "-STOP" } else { "-CONT" };
        if let Some(c) = &self.child {
            run(Command::new("kill").args([sig, &c.id().to_string()]));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}
