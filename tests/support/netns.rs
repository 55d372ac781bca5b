//! e2e support: run a process inside a network namespace (a lab's client namespace) and still
//! reach it and let it reach the API server.
//!
//! A thread that `setns`es into a namespace creates sockets there; the sockets stay in that
//! namespace whichever thread uses them. [`Forwarder`] uses this to offer a loopback port inside
//! the namespace that is relayed to an address of the root namespace (the API server), and
//! [`connect`] opens a connection to a port inside the namespace from here.
#![allow(dead_code)]

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Run `f` on a thread that has entered network namespace `netns` (`/run/netns/<netns>`).
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
    std::thread::spawn(move || {
        // SAFETY: a valid namespace file descriptor; only this thread changes namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// A TCP connection to `addr` as seen from inside `netns`.
pub fn connect(netns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(netns, move || TcpStream::connect_timeout(&addr, timeout))
}

/// A loopback port inside a namespace relayed to an address of the root namespace; stops
/// accepting on drop (open relays end when either side closes).
pub struct Forwarder {
    /// The port on 127.0.0.1 inside the namespace.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Listen on 127.0.0.1 (any port) inside `netns` and relay every connection to `upstream`.
    pub fn start(netns: &str, upstream: &str) -> io::Result<Forwarder> {
        let upstream: SocketAddr = upstream
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("{upstream} resolves to nothing")))?;
        let listener = in_netns(netns, || TcpListener::bind("127.0.0.1:0"))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let _ = relay(inside, upstream);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Ok(Forwarder { port, stop })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copy both ways between `inside` and a new connection to `upstream`, on two threads. Returns
/// handles on both sockets, for a caller that may have to close them.
pub(super) fn relay(inside: TcpStream, upstream: SocketAddr) -> io::Result<[TcpStream; 2]> {
    inside.set_nonblocking(false)?;
    let outside = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    let ends = [inside.try_clone()?, outside.try_clone()?];
    for (mut from, mut to) in [
        (inside.try_clone()?, outside.try_clone()?),
        (outside, inside),
    ] {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
    Ok(ends)
}
