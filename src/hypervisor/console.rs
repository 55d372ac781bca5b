//! Byte streams to a domain's consoles: its serial console (libvirt's console stream,
//! `virDomainOpenConsole`) and its VNC display (the socket libvirt hands over with
//! `virDomainOpenGraphicsFD`). Both reach the guest through the libvirt connection, never
//! through a port on the host.

use tokio::sync::mpsc;

/// Which of a domain's consoles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleKind {
    /// The serial console (the domain's `<console>`, its first serial port).
    Serial,
    /// The VNC display (raw RFB).
    Vnc,
}

impl ConsoleKind {
    /// `console` or `vnc`: the name users and RBAC know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleKind::Serial => "console",
            ConsoleKind::Vnc => "vnc",
        }
    }
}

/// Chunks in queue in each direction, at most; a slow reader slows the guest side down.
pub const CONSOLE_QUEUE: usize = 64;

/// An open console: what the guest side sends arrives on `from_guest` (which ends when the
/// guest side closes: domain stopped, session taken over, connection lost); what is sent on
/// `to_guest` goes to the guest. Dropping `to_guest` ends the session.
#[derive(Debug)]
pub struct ConsoleStream {
    /// Bytes from the guest side.
    pub from_guest: mpsc::Receiver<Vec<u8>>,
    /// Bytes to the guest side.
    pub to_guest: mpsc::Sender<Vec<u8>>,
}
