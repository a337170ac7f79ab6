//! The real service binaries as child processes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
};

/// Path of a workspace binary built next to the running test (or launcher).
///
/// # Panics
/// When the binary has not been built; the message says how to build it.
#[must_use]
pub fn binary_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/test-xxxx or target/<profile>/launcher
    let mut dir = exe.parent().unwrap().to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Builds the three services with the same profile as the running launcher
/// (`cargo pipeline`, `cargo faults`), so that [`binary_path`] finds them.
///
/// # Errors
/// When cargo cannot be run or the build fails.
pub fn build_services() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    // Drop what `cargo run` added to our environment (package variables, library
    // path): build scripts that watch the environment would otherwise see a change
    // and rebuild their crates.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
            || key == "LD_LIBRARY_PATH"
        {
            command.env_remove(key.as_ref());
        }
    }
    // Not `--quiet`: on a fresh clone this build takes minutes, and cargo's own
    // progress (on the inherited stderr) shows that something is happening.
    command.arg("build");
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    // The same package selection and features as the launcher (devkit depends
    // on the services), so features resolve identically and nothing is rebuilt:
    // `cargo pipeline` leaves out fault injection, `cargo faults` needs it.
    command.args(["-p", "devkit"]);
    if !cfg!(feature = "fault-injection") {
        command.arg("--no-default-features");
    }
    for service in ["orders-api", "outbox-relay", "invoices-worker"] {
        command.args(["-p", service]);
    }
    let status = command.status()?;
    anyhow::ensure!(status.success(), "building the services failed ({status})");
    Ok(())
}

/// A running service process; killed when dropped.
pub struct Service {
    /// Binary name.
    pub name: String,
    /// Address its HTTP endpoint listens on.
    pub addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Service {
    /// Starts `name` with `env` (on top of this process's environment less `PORT`,
    /// with the default log filter unless `RUST_LOG` is set, and JSON logs unless
    /// `env` sets `LOG_FORMAT`) and waits until it logs `listening`.
    ///
    /// # Panics
    /// When it cannot start or does not listen within 60 s; its output is printed.
    pub async fn spawn(name: &str, env: &[(&str, String)], echo: bool) -> Self {
        let mut command = Command::new(binary_path(name));
        // The `listening` line must get through whatever RUST_LOG says.
        let filter = match std::env::var("RUST_LOG") {
            Ok(filter) if !filter.is_empty() => format!("{filter},plumbing::http=info"),
            _ => "info,refinery_core=warn,tokio_postgres=warn".to_owned(),
        };
        command
            .env_remove("PORT")
            .env("RUST_LOG", filter)
            // Callers read the logs as JSON, whatever the developer's shell says.
            .env("LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel();
        let stdout = child.stdout.take().unwrap();
        {
            let logs = logs.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut tx = Some(tx);
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        println!("[{name}] {line}");
                    }
                    if let Some(addr) = listening_addr(&line) {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let addr = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let output = logs.lock().unwrap().join("\n");
                panic!("{name} did not start listening; its output:\n{output}");
            }
        };
        Self {
            name: name.to_owned(),
            addr,
            child,
            logs,
        }
    }

    /// `http://127.0.0.1:<port>`.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// Its `GET /metrics` body (which must answer 200).
    pub async fn scrape(&self) -> String {
        let res = crate::http_client()
            .get(format!("{}/metrics", self.base_url()))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(res.status(), 200, "GET /metrics");
        res.text().await.expect("the /metrics body")
    }

    /// Its process id (while it runs).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything it printed so far.
    #[must_use]
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGSTOP: the process is frozen (its sockets stay open, it does
    /// nothing) until [`Self::resume`] or a kill.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Sends SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([signal, &pid.to_string()])
                .status();
        }
    }

    /// Sends SIGKILL (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Waits for the process to exit.
    ///
    /// # Panics
    /// When it does not exit within `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.exited_within(timeout)
            .await
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.name))
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .map(Result::unwrap)
    }
}

/// Checks the command line of service `S`'s binary at `binary`: `--version` and
/// `--help` name it `name` with its version, the help says what it does and
/// lists, each with a meaning, every environment variable its configuration
/// reads, `variable` among them.
///
/// # Panics
/// When one of these is missing; the message shows the output.
pub fn assert_describes<S: plumbing::service::Service>(binary: &str, name: &str, variable: &str) {
    use plumbing::config::Settings as _;
    let run = |arg: &str| {
        let output = std::process::Command::new(binary)
            .arg(arg)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
        assert!(output.status.success(), "{name} {arg}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let about = S::ABOUT;
    let version = run("--version");
    assert_eq!(version.trim(), format!("{name} {}", about.version));
    let help = run("--help");
    assert!(
        help.starts_with(&format!(
            "{name} {}\n{}\n",
            about.version, about.description
        )),
        "--help must start with the name, version and description:\n{help}"
    );
    // What the configuration reads, as the deployment test collects it.
    let _ = plumbing::config::take_variables_read();
    S::Config::from_env().unwrap();
    let read = plumbing::config::take_variables_read();
    assert!(read.contains(variable), "{name} reads {read:?}");
    let (_, environment) = help
        .split_once("\nEnvironment:\n")
        .unwrap_or_else(|| panic!("--help lists no environment:\n{help}"));
    for variable in &read {
        let described = environment.lines().any(|line| {
            line.trim_start()
                .strip_prefix(variable.as_str())
                .is_some_and(|meaning| meaning.starts_with(' ') && !meaning.trim().is_empty())
        });
        assert!(described, "--help does not describe {variable}:\n{help}");
    }
}

/// The environment of a service started only to see how it starts: loopback, a
/// free port, nothing migrated, and a database and broker that cannot be reached
/// (port 1), so that nothing outside the test is touched. Entries added after
/// these win.
#[must_use]
pub fn isolated_env() -> Vec<(&'static str, String)> {
    vec![
        ("HOST", "127.0.0.1".into()),
        ("PORT", "0".into()),
        ("MIGRATE_ON_START", "false".into()),
        (
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/none".into(),
        ),
        ("BROKER_URL", "amqp://guest:guest@127.0.0.1:1/%2f".into()),
        ("OTEL_SDK_DISABLED", "true".into()),
        // The orders API's authentication, complete but with no keys behind it
        // (the others ignore these): a start is refused for what a test sets,
        // not for a missing setting.
        ("AUTH_JWKS_URL", "file:///nonexistent/jwks.json".into()),
        ("AUTH_ISSUER", crate::auth::TEST_ISSUER.into()),
        ("AUTH_AUDIENCE", crate::auth::TEST_AUDIENCE.into()),
    ]
}

/// Checks a fault-injection switch of service `name` (the binary at `binary`)
/// against `compiled_in`, whether the service was built with its
/// `fault-injection` feature: with it, `--help` lists `variable` and a start with
/// it set says that the guarantee is off; without it (the shipped build), `--help`
/// does not list it and the same start only warns, once, that it is ignored.
///
/// # Panics
/// When the binary behaves otherwise.
pub async fn assert_fault_switch(binary: &str, name: &str, variable: &str, compiled_in: bool) {
    let help = std::process::Command::new(binary)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    let help = String::from_utf8(help.stdout).unwrap();
    assert_eq!(
        help.contains(variable),
        compiled_in,
        "{name} --help lists {variable} only with fault injection (compiled in: {compiled_in}):\n{help}"
    );
    let mut env = isolated_env();
    env.push((variable, "true".into()));
    let mut service = Service::spawn(name, &env, false).await;
    let logs = service.logs();
    service.kill();
    let with = |text: &str, level: &str| {
        logs.iter()
            .filter(|line| line.contains(variable) && line.contains(text))
            .filter(|line| line.contains(&format!(r#""level":"{level}""#)))
            .count()
    };
    let switched_off = with("CAN BE LOST", "ERROR");
    let ignored = with("is ignored: this build has no fault injection", "WARN");
    let expected = if compiled_in { (1, 0) } else { (0, 1) };
    assert_eq!(
        (switched_off, ignored),
        expected,
        "{name} started with {variable}=true (fault injection compiled in: {compiled_in}) must \
         log (guarantee off, ignored) {expected:?} times; its output:\n{}",
        logs.join("\n")
    );
}

/// A password the malformed URLs of [`assert_refuses_malformed_urls`] hold.
const URL_PASSWORD: &str = "Pa55-w0rd-s3cret";

/// [`assert_refuses_config`] for malformed URLs holding a password: a
/// `DATABASE_URL` without `//`, with a bad port, and as `key=value` text; with
/// `broker`, a `BROKER_URL` without `//` (`amqps:user:password@host`), with a bad
/// port, and of another scheme.
///
/// # Panics
/// When the binary starts, is slow to stop, exits otherwise or shows the password.
pub async fn assert_refuses_malformed_urls(binary: &str, broker: bool) {
    let p = URL_PASSWORD;
    let mut cases = vec![
        (
            "DATABASE_URL",
            format!("postgres:app:{p}@db.internal/orders"),
        ),
        (
            "DATABASE_URL",
            format!("postgres://app:{p}@db.internal:notaport/orders"),
        ),
        (
            "DATABASE_URL",
            format!("host=db.internal user=app password={p} port=notaport"),
        ),
    ];
    if broker {
        cases.extend([
            ("BROKER_URL", format!("amqps:app:{p}@mq.internal")),
            (
                "BROKER_URL",
                format!("amqps://app:{p}@mq.internal:notaport/%2f"),
            ),
            ("BROKER_URL", format!("http://app:{p}@mq.internal/")),
        ]);
    }
    for (name, url) in &cases {
        assert_refuses_config(binary, &[(name, url)], p).await;
    }
}

/// Starts the binary at `binary` (the `run` command) with `env` on top of
/// [`isolated_env`], a configuration it must refuse, which holds `password`:
/// asserts that it exits within 3 s (a configuration error is found before
/// anything is connected; it takes milliseconds) with
/// [`plumbing::cli::EXIT_CONFIG`], and that `password` appears nowhere in
/// anything it printed, stdout or stderr, at every log level.
///
/// # Panics
/// When it does not.
pub async fn assert_refuses_config(binary: &str, env: &[(&str, &str)], password: &str) {
    use tokio::io::AsyncReadExt as _;
    let mut child = Command::new(binary)
        .envs(isolated_env())
        .env("RUST_LOG", "trace")
        .env("LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    let read = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text).await;
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let status = tokio::time::timeout(Duration::from_secs(3), child.wait()).await;
    if status.is_err() {
        let _ = child.kill().await;
    }
    let output = format!("{}{}", stdout.await.unwrap(), stderr.await.unwrap());
    let code = status.ok().map(|status| status.unwrap().code());
    let leaked = output.contains(password);
    assert!(
        code == Some(Some(i32::from(plumbing::cli::EXIT_CONFIG))) && !leaked,
        "{binary} with {env:?} must exit within 3 s with code {} and never print the \
         password (exit code: {code:?}, None = still running; password printed: {leaked}); \
         its output:\n{output}",
        plumbing::cli::EXIT_CONFIG
    );
}

/// The `addr` of the log line whose message is `listening`: a JSON line, or a
/// text line (`… plumbing::http: listening addr=0.0.0.0:3333`) when the launcher
/// asked for text logs.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let addr: SocketAddr = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) => {
            if value.get("message")?.as_str()? != "listening" {
                return None;
            }
            value.get("addr")?.as_str()?.parse().ok()?
        }
        Err(_) => {
            let mut words = line.split_whitespace();
            words.find(|word| *word == "listening")?;
            words.next()?.strip_prefix("addr=")?.parse().ok()?
        }
    };
    Some(if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let line =
            r#"{"timestamp":"t","level":"INFO","message":"listening","addr":"0.0.0.0:3333"}"#;
        assert_eq!(
            listening_addr(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 3333)))
        );
        assert_eq!(listening_addr(r#"{"message":"starting"}"#), None);
        assert_eq!(listening_addr("not json"), None);
        let text =
            "2026-11-27T21:04:11.963112Z  INFO plumbing::http: listening addr=127.0.0.1:3335";
        assert_eq!(
            listening_addr(text),
            Some(SocketAddr::from(([127, 0, 0, 1], 3335)))
        );
        assert_eq!(
            listening_addr("2026-11-27T21:04:11Z  INFO orders_api: not listening yet"),
            None
        );
    }
}
