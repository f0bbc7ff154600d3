//! A tansu process of a test's own (for a broker behind a proxy, stunnel or a SASL gateway),
//! installed by `scripts/broker.sh`, listening in plain text on a free port of 127.0.0.1.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    l.local_addr().expect("addr").port()
}

/// Waits until something listens on `addr`.
pub fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The tansu process; killed when dropped.
#[derive(Debug)]
pub struct OwnTansu {
    child: Child,
    addr: SocketAddr,
}

impl OwnTansu {
    /// Starts tansu on a free port, telling clients to connect to `advertised` (the front
    /// that leads to it), and waits until it listens.
    pub fn start(advertised: &str) -> Self {
        Self::start_on(free_port(), advertised)
    }

    /// [`start`](Self::start) on `port`.
    pub fn start_on(port: u16, advertised: &str) -> Self {
        let bin = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.tansu/bin/tansu"));
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test.sh (it installs tansu)",
            bin.display()
        );
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{addr}"),
                "--advertised-listener-url",
                &format!("tcp://{advertised}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_listening(addr, "tansu");
        Self { child, addr }
    }

    /// Where tansu itself listens (plain text).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
