//! e2e support: a TCP relay on loopback that a test can cut, as a partition between a controller
//! and the API server would be: once cut, every open connection is closed and new ones are closed
//! as soon as they are accepted, so each request fails at once (rather than hanging until a
//! client timeout, which would only delay what the cut-off process does). Healing relays new
//! connections again. Everything stops on drop.
#![allow(dead_code)]

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::netns;

/// A relay from a loopback port to `upstream`.
pub struct CuttableProxy {
    /// The port on 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    /// Every socket of an open relay, to close on a cut and on drop.
    sockets: Mutex<Vec<TcpStream>>,
}

impl CuttableProxy {
    /// Listen on 127.0.0.1 (any port) and relay every connection to `upstream`.
    pub fn start(upstream: &str) -> io::Result<CuttableProxy> {
        let upstream = upstream
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("{upstream} resolves to nothing")))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inside, _)) if s.cut.load(Ordering::SeqCst) => {
                        let _ = inside.shutdown(Shutdown::Both);
                    }
                    Ok((inside, _)) => {
                        if let Ok(ends) = netns::relay(inside, s.upstream) {
                            let mut socks = s.sockets.lock().unwrap_or_else(|p| p.into_inner());
                            socks.extend(ends);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Ok(CuttableProxy { port, shared })
    }

    /// Cut: open connections are closed, new ones refused, until [`CuttableProxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        close_all(&self.shared);
    }

    /// Heal: new connections are relayed again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        close_all(&self.shared);
    }
}

fn close_all(s: &Shared) {
    let mut socks = s.sockets.lock().unwrap_or_else(|p| p.into_inner());
    for sock in socks.drain(..) {
        let _ = sock.shutdown(Shutdown::Both);
    }
}
