//! A private PostgreSQL server that accepts only TLS, with certificates made by a
//! throwaway CA, for the TLS tests and the benchmarks.
//!
//! The server certificate names `localhost` only, so `sslmode=verify-full` works
//! through `localhost` and must fail through `127.0.0.1`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::{free_port, unique_suffix};

/// Writes the test CA (`ca.pem`), another CA (`other-ca.pem`) and the server's
/// certificate and key (`server.crt`, `server.key`, mode 600) into `dir`.
///
/// # Errors
/// When the certificates cannot be made or written.
pub fn write_certificates(dir: &Path) -> anyhow::Result<()> {
    let (ca, cert, key) = make_certificates()?;
    std::fs::write(dir.join("ca.pem"), ca)?;
    std::fs::write(dir.join("other-ca.pem"), another_ca()?)?;
    std::fs::write(dir.join("server.crt"), cert)?;
    std::fs::write(dir.join("server.key"), key)?;
    // Servers refuse a private key that others can read.
    let status = Command::new("chmod")
        .arg("600")
        .arg(dir.join("server.key"))
        .status()?;
    ensure!(
        status.success(),
        "chmod of the server key failed ({status})"
    );
    Ok(())
}

/// A PostgreSQL server of its own in a temporary directory, TLS only
/// (`hostnossl … reject`), stopped and deleted on drop.
pub struct TlsPostgres {
    dir: PathBuf,
    bin: PathBuf,
    /// The port it listens on (127.0.0.1 only).
    pub port: u16,
}

/// The newest installed server's binaries (`PG_BINDIR` overrides).
fn pg_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Ok(dir.into());
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions
        .pop()
        .context("no PostgreSQL server binaries under /usr/lib/postgresql; set PG_BINDIR")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a server binary; as `postgres` when this is root (the server refuses root).
fn run_server_tool(bin: &Path, tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let program = bin.join(tool);
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    if !output.status.success() {
        bail!(
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The test CA's certificate (PEM), and the server's certificate and key for
/// the name `localhost` only (so `verify-full` to `127.0.0.1` must fail).
fn make_certificates() -> anyhow::Result<(String, String, String)> {
    certificates_for(&["localhost"])
}

/// A throwaway CA, and a server certificate it signed for `names` (host names
/// or IP addresses) with the server's key: `(ca, certificate, key)` as PEM.
///
/// # Errors
/// When the certificates cannot be made.
pub fn certificates_for(names: &[&str]) -> anyhow::Result<(String, String, String)> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pipeline test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let server = CertificateParams::new(names)?.signed_by(&server_key, &ca)?;
    Ok((ca.pem(), server.pem(), server_key.serialize_pem()))
}

/// A CA that signed nothing: trusting only it must refuse the server.
fn another_ca() -> anyhow::Result<String> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?.pem())
}

/// A path as a `&str`, for command lines.
fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

impl TlsPostgres {
    /// Creates, configures and starts the server (`fsync=off`: its data is
    /// thrown away), and waits until it accepts connections.
    ///
    /// # Errors
    /// When the server binaries are missing or a step of the set-up fails.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// [`Self::start`] with more server settings (`name`, `value`), applied after
    /// the defaults above and so overriding them: a benchmark that compares this
    /// server with another sets what would otherwise differ.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = pg_bindir()?;
        let dir = std::env::temp_dir().join(format!("pipeline-tls-pg-{}", unique_suffix()));
        std::fs::create_dir_all(&dir)?;
        write_certificates(&dir)?;
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()?;
            ensure!(status.success(), "chown of {} failed", dir.display());
        }
        let data = dir.join("data");
        run_server_tool(
            &bin,
            "initdb",
            &[
                "-D",
                utf8(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )?;
        let port = free_port();
        let mut options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c ssl=on \
             -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key -c fsync=off",
            dir = dir.display()
        );
        for (name, value) in settings {
            options.push_str(&format!(" -c {name}={value}"));
        }
        let server = Self { dir, bin, port };
        run_server_tool(
            &server.bin,
            "pg_ctl",
            &[
                "-D",
                utf8(&data)?,
                "-l",
                utf8(&server.dir.join("server.log"))?,
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database><params>`; `params` is
    /// the query string with its `?`, or empty.
    #[must_use]
    pub fn url(&self, database: &str, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}{params}",
            self.port
        )
    }

    /// As [`Self::url`] through the name `localhost`, the only one the server's
    /// certificate holds: what `sslmode=verify-full` needs.
    #[must_use]
    pub fn localhost_url(&self, database: &str, params: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}{params}",
            self.port
        )
    }

    /// The path of `name` in the server's directory (`ca.pem`, `other-ca.pem`,
    /// `server.crt`, `server.log`, …).
    #[must_use]
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The postmaster's process id (the first line of `postmaster.pid`): the
    /// parent of every backend and auxiliary process of this server.
    ///
    /// # Errors
    /// When the file cannot be read, as before the server started.
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let path = self.dir.join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let first = text.lines().next().unwrap_or_default().trim();
        first
            .parse()
            .with_context(|| format!("no pid in {}: {first:?}", path.display()))
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let stopped = utf8(&data).and_then(|data| {
            run_server_tool(
                &self.bin,
                "pg_ctl",
                &["-D", data, "-m", "immediate", "stop"],
            )
        });
        match stopped {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
            // Drop must not panic (it may run while unwinding); the directory
            // stays for a look at the server's log.
            Err(e) => eprintln!(
                "could not stop the TLS PostgreSQL server in {}: {e:#}",
                self.dir.display()
            ),
        }
    }
}
