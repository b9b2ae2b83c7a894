//! A TCP relay between the runtime and the gateway that can cut the link the way a network
//! partition does: bytes stop crossing in either direction, connections stay open and new
//! ones are taken, nothing is refused or reset. Healed, held bytes go on.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::BenchError;

/// Whether the link is cut, and a way to wait for it to heal.
#[derive(Debug, Default)]
struct Link {
    cut: Mutex<bool>,
    healed: Condvar,
}

impl Link {
    /// Returns once the link is whole.
    fn pass(&self) {
        let mut cut = self
            .cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *cut {
            cut = self
                .healed
                .wait(cut)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn set(&self, cut: bool) {
        *self
            .cut
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cut;
        self.healed.notify_all();
    }
}

/// The relay; it runs until the process ends.
#[derive(Debug, Clone)]
pub struct Partition {
    addr: SocketAddr,
    link: Arc<Link>,
}

impl Partition {
    /// Listens on a free local port and relays every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Partition, BenchError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(BenchError::io("binding the partition relay"))?;
        let addr = listener
            .local_addr()
            .map_err(BenchError::io("reading the relay's address"))?;
        let link = Arc::new(Link::default());
        let accepting = Arc::clone(&link);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let link = Arc::clone(&accepting);
                std::thread::spawn(move || relay(client, upstream, &link));
            }
        });
        Ok(Partition { addr, link })
    }

    /// Where clients connect instead of `upstream`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops every byte in both directions.
    pub fn cut(&self) {
        self.link.set(true);
    }

    /// Lets bytes cross again.
    pub fn heal(&self) {
        self.link.set(false);
    }
}

/// Connects to `upstream` (once the link is whole) and copies both ways until either side
/// closes.
fn relay(client: TcpStream, upstream: SocketAddr, link: &Arc<Link>) {
    link.pass();
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return;
    };
    let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let back = Arc::clone(link);
    std::thread::spawn(move || copy(server_reader, client, &back));
    copy(client_reader, server, link);
}

/// Copies `from` to `to`, holding what it read while the link is cut.
fn copy(mut from: TcpStream, mut to: TcpStream, link: &Link) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        link.pass();
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bytes_are_held_while_cut_and_delivered_when_healed() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let upstream = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buffer) {
                        if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let partition = Partition::start(upstream).unwrap();
        let mut stream = TcpStream::connect(partition.addr()).unwrap();
        stream.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"ping");

        partition.cut();
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        stream.write_all(b"pong").unwrap();
        assert!(
            stream.read(&mut answer).is_err(),
            "nothing crosses a cut link"
        );
        partition.heal();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"pong");
    }
}
