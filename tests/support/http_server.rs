//! Python's `http.server` on a free loopback port, for the image-import tests and the import
//! benchmark: a static server for a directory's files, or a script of the caller's. Killed on
//! drop. Include it with `#[path = "support/http_server.rs"] mod http_server;` where the whole of
//! `support` is not wanted.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

/// A `python3` HTTP server on a free loopback port; killed on drop.
pub struct PythonServer {
    child: std::process::Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl PythonServer {
    /// `python3 <args> <port> <extra>` in `dir`, once it accepts connections on the port.
    pub fn start(what: &str, dir: &Path, args: &[&str], extra: &[&str]) -> PythonServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = std::process::Command::new("/usr/bin/python3")
            .args(args)
            .arg(port.to_string())
            .args(extra)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the {what}: {e}"));
        let server = PythonServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{what} did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// A static server (`python3 -m http.server`) for the files in `dir`.
    pub fn serving(dir: &Path) -> PythonServer {
        let args = ["-m", "http.server", "--bind", "127.0.0.1"];
        PythonServer::start("HTTP server", dir, &args, &[])
    }

    /// The URL of `file` on this server.
    pub fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
