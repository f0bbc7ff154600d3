//! TLS for tests: stunnel in front of a plain-text server (a tansu process of the test's own,
//! or a worker's endpoint), accepting TLS (optionally requiring a client certificate); and the
//! certificates, made with the `openssl` command in a temporary directory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::own_tansu::{free_port, wait_listening, OwnTansu};

/// A certificate authority, a server certificate for 127.0.0.1 signed by it, a client
/// certificate signed by it, and an unrelated CA.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// Makes the keys and certificates.
    pub fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=weir test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write ext");
        for (name, cn) in [("server", "127.0.0.1"), ("client", "weir-worker")] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        Self { dir }
    }

    /// A file of the PKI: `ca.pem`, `other-ca.pem`, `server.pem`, `client.pem`, `client.key`.
    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// stunnel in front of a plain-text server: clients speak TLS to [`addr`](Self::addr), with
/// the PKI's server certificate.
#[derive(Debug)]
pub struct Stunnel {
    child: Child,
    addr: SocketAddr,
    _conf: tempfile::TempDir,
}

impl Stunnel {
    /// Listens on `tls` and forwards to `plain`; with `require_client_cert`, refuses clients
    /// without a certificate signed by the PKI's CA.
    pub fn start(pki: &Pki, tls: SocketAddr, plain: SocketAddr, require_client_cert: bool) -> Self {
        let stunnel_bin = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|b| {
                Command::new("which")
                    .arg(b)
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("stunnel is missing: run scripts/test.sh (it installs stunnel4)");
        let conf = tempfile::tempdir().expect("tempdir");
        let verify = if require_client_cert {
            format!(
                "verifyChain = yes\nrequireCert = yes\nCAfile = {}\n",
                pki.file("ca.pem")
            )
        } else {
            String::new()
        };
        let path = conf.path().join("stunnel.conf");
        std::fs::write(
            &path,
            format!(
                "foreground = yes\npid =\ndebug = warning\n[tls]\naccept = {tls}\n\
                 connect = {plain}\ncert = {}\nkey = {}\n{verify}",
                pki.file("server.pem"),
                pki.file("server.key"),
            ),
        )
        .expect("write stunnel.conf");
        let child = Command::new(stunnel_bin)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel");
        wait_listening(tls, "stunnel");
        Self {
            child,
            addr: tls,
            _conf: conf,
        }
    }

    /// Where clients speak TLS.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tansu behind stunnel: clients speak TLS to [`bootstrap`](Self::bootstrap).
#[derive(Debug)]
pub struct TlsTansu {
    _tansu: OwnTansu,
    stunnel: Stunnel,
}

impl TlsTansu {
    /// Starts both; with `require_client_cert`, stunnel refuses clients without a
    /// certificate signed by the PKI's CA.
    pub fn start(pki: &Pki, require_client_cert: bool) -> Self {
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let tansu = OwnTansu::start(&tls.to_string());
        let stunnel = Stunnel::start(pki, tls, tansu.addr(), require_client_cert);
        Self {
            _tansu: tansu,
            stunnel,
        }
    }

    /// The TLS bootstrap address.
    pub fn bootstrap(&self) -> String {
        self.stunnel.addr().to_string()
    }
}
