//! A throwaway certificate authority for TLS tests: a CA and a server certificate it
//! signed, for `localhost` and `127.0.0.1`, made with the `openssl` command (ECDSA P-256,
//! valid two days) in a temp dir deleted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tempfile::TempDir;

use crate::TestkitError;

/// A CA and one server certificate signed by it.
pub struct TestCa {
    dir: TempDir,
}

/// The names the server certificate is valid for.
pub const SERVER_NAMES: &str = "DNS:localhost,IP:127.0.0.1";

impl TestCa {
    /// Make the CA and the server certificate.
    pub fn new() -> Result<TestCa, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("pgprism-ca-")
            .tempdir()
            .map_err(TestkitError::io("creating a temp dir for certificates"))?;
        let ca = TestCa { dir };
        let d = ca.dir.path();
        std::fs::write(
            d.join("server.ext"),
            format!(
                "subjectAltName={SERVER_NAMES}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .map_err(TestkitError::io("writing server.ext"))?;
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=pgprism test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        )?;
        Ok(ca)
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// The server certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    /// The server's private key (PEM).
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    pub(crate) fn read(&self, name: &str) -> Result<String, TestkitError> {
        let path = self.dir.path().join(name);
        std::fs::read_to_string(&path)
            .map_err(TestkitError::io(format!("reading {}", path.display())))
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), TestkitError> {
    let command = format!("openssl {}", args.join(" "));
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TestkitError::Missing {
                what: "openssl".to_owned(),
            },
            _ => TestkitError::io(format!("running {command}"))(e),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestkitError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            log: String::new(),
        })
    }
}
