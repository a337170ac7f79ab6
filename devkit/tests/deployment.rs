//! The deployment files against the code: the compose stack's environment and
//! ports, the Dockerfile's targets, Prometheus' scrape targets and the Kong
//! gateway's routes must match what the binaries really read and serve.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use devkit::read_workspace_file as read;
use plumbing::config::Settings as _;
use yaml_rust2::{Yaml, YamlLoader};

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

fn text(value: &Yaml) -> String {
    match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A mapping as strings, with `<<` merge keys resolved.
fn mapping(value: &Yaml) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in value
        .as_hash()
        .unwrap_or_else(|| panic!("not a mapping: {value:?}"))
    {
        if k.as_str() == Some("<<") {
            out.extend(mapping(v));
        } else {
            out.insert(text(k), text(v));
        }
    }
    out
}

/// Reading configurations records the variables process-wide: one at a time.
static CONFIG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The variables each service's configuration reads, and its default port.
fn services() -> Vec<(&'static str, BTreeSet<String>, u16)> {
    let _serial = CONFIG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = plumbing::config::take_variables_read();
    let api = orders_api::config::Config::from_env().unwrap();
    let api_vars = plumbing::config::take_variables_read();
    let relay = outbox_relay::config::Config::from_env().unwrap();
    let relay_vars = plumbing::config::take_variables_read();
    let worker = invoices_worker::config::Config::from_env().unwrap();
    let worker_vars = plumbing::config::take_variables_read();
    assert!(
        std::env::var_os("PORT").is_none(),
        "run without PORT set: the defaults are compared"
    );
    vec![
        ("orders-api", api_vars, api.service.port),
        ("outbox-relay", relay_vars, relay.service.port),
        ("invoices-worker", worker_vars, worker.service.port),
    ]
}

/// Variables read by libraries rather than by the services' configuration.
fn standard(name: &str) -> bool {
    name == "RUST_LOG" || name.starts_with("OTEL_") || name == "SSL_CERT_FILE"
}

#[test]
fn compose_dockerfile_and_prometheus_match_the_binaries() {
    let compose = yaml("docker-compose.yml");
    let dockerfile = read("Dockerfile");
    let prometheus = read("docker/prometheus/prometheus.yml");
    let init_sql = read("docker/postgres/init.sql");
    for (name, read_vars, port) in services() {
        assert!(read_vars.contains("DATABASE_URL") && read_vars.contains("PORT"));
        let service = &compose["services"][name];
        assert!(!service.is_badvalue(), "compose has no service {name}");
        let env = mapping(&service["environment"]);
        let unknown: Vec<&String> = env
            .keys()
            .filter(|k| !read_vars.contains(*k) && !standard(k))
            .collect();
        assert!(
            unknown.is_empty(),
            "{name}: compose sets variables the binary never reads: {unknown:?} (it reads {read_vars:?})"
        );
        assert_eq!(env["PORT"], port.to_string(), "{name}: PORT");
        let database = env["DATABASE_URL"].rsplit('/').next().unwrap().to_owned();
        let expected = if name == "invoices-worker" {
            "invoices"
        } else {
            "orders"
        };
        assert_eq!(
            database, expected,
            "{name}: DATABASE_URL names the wrong database"
        );
        assert!(
            init_sql.contains(&format!("CREATE DATABASE {expected};")),
            "init.sql creates {expected}"
        );
        if name != "orders-api" {
            assert!(env.contains_key("BROKER_URL"), "{name}: BROKER_URL");
        }
        // Health check through the binary itself, and dependencies that wait for health.
        let check: Vec<String> = service["healthcheck"]["test"]
            .as_vec()
            .unwrap()
            .iter()
            .map(text)
            .collect();
        assert_eq!(
            check,
            ["CMD", &format!("/usr/local/bin/{name}"), "healthcheck"],
            "{name}: healthcheck"
        );
        for (dependency, condition) in service["depends_on"].as_hash().unwrap() {
            let condition = text(&condition["condition"]);
            let has_check =
                !compose["services"][text(dependency).as_str()]["healthcheck"].is_badvalue();
            if has_check {
                assert_eq!(condition, "service_healthy", "{name} → {dependency:?}");
            }
        }
        if let Some(ports) = service["ports"].as_vec() {
            let ports: Vec<String> = ports.iter().map(text).collect();
            assert!(
                ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
                "{name}: ports {ports:?}"
            );
        }
        assert_eq!(text(&service["build"]["target"]), name);
        // The image: a stage of that name with the same port and health check.
        let stage = dockerfile
            .split("\nFROM ")
            .find(|s| s.starts_with(&format!("runtime AS {name}\n")))
            .unwrap_or_else(|| panic!("Dockerfile has no {name} stage"));
        assert!(
            stage.contains(&format!("ENV PORT={port}")),
            "{name}: ENV PORT"
        );
        assert!(stage.contains(&format!("EXPOSE {port}")), "{name}: EXPOSE");
        assert!(
            stage.contains(&format!(r#"CMD ["/usr/local/bin/{name}", "healthcheck"]"#)),
            "{name}: HEALTHCHECK"
        );
        // Prometheus scrapes it where it listens.
        assert!(
            prometheus.contains(&format!(r#"targets: ["{name}:{port}"]"#)),
            "prometheus.yml scrapes {name}:{port}"
        );
    }
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "images run as a non-root user"
    );
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
}

/// The compose stack's API authenticates against the JWKS that `dev-token
/// .dev-auth` writes, with the issuer and audience of its tokens.
#[test]
fn compose_runs_the_api_with_authentication_against_the_dev_token_keys() {
    let compose = yaml("docker-compose.yml");
    let api = &compose["services"]["orders-api"];
    let env = mapping(&api["environment"]);
    assert!(!env.contains_key("AUTH_DISABLED"));
    assert_eq!(env["AUTH_ISSUER"], devkit::auth::DEV_ISSUER);
    assert_eq!(env["AUTH_AUDIENCE"], devkit::auth::DEV_AUDIENCE);
    let volumes: Vec<String> = api["volumes"].as_vec().unwrap().iter().map(text).collect();
    assert_eq!(volumes, ["./.dev-auth:/run/dev-auth:ro"]);
    assert_eq!(env["AUTH_JWKS_URL"], "file:///run/dev-auth/jwks.json");
    assert!(read(".gitignore").lines().any(|l| l == "/.dev-auth"));
}

#[test]
fn compose_publishes_on_loopback_only_and_hides_kongs_admin_api() {
    let compose = yaml("docker-compose.yml");
    let mut published = 0;
    for (name, service) in compose["services"].as_hash().unwrap() {
        let name = text(name);
        for port in service["ports"].as_vec().into_iter().flatten() {
            let port = text(port);
            // host address : host port (a variable with the usual default) : container port
            let parts: Vec<&str> = port.splitn(2, ':').collect();
            assert_eq!(
                parts[0], "127.0.0.1",
                "{name} publishes {port} beyond loopback"
            );
            let container = port.rsplit(':').next().unwrap();
            let host = &parts[1][..parts[1].len() - container.len() - 1];
            assert!(
                host.starts_with("${") && host.ends_with(&format!(":-{container}}}")),
                "{name}: host port of {port} is not a variable defaulting to {container}"
            );
            assert_ne!(container, "8001", "{name} publishes Kong's admin API");
            published += 1;
        }
    }
    assert!(
        published >= 5,
        "the premise: compose publishes ports ({published})"
    );
    let kong = mapping(&compose["services"]["kong"]["environment"]);
    assert!(
        kong["KONG_ADMIN_LISTEN"].starts_with("127.0.0.1:"),
        "Kong's admin API listens inside its container only: {}",
        kong["KONG_ADMIN_LISTEN"]
    );
}

#[test]
fn kong_routes_the_public_api_to_orders_api() {
    let kong = yaml("docker/kong/kong.yml");
    let compose = yaml("docker-compose.yml");
    let api_port = mapping(&compose["services"]["orders-api"]["environment"])["PORT"].clone();
    let services = kong["services"].as_vec().unwrap();
    assert_eq!(services.len(), 1);
    let api = &services[0];
    assert_eq!(text(&api["url"]), format!("http://orders-api:{api_port}"));
    assert_eq!(
        text(&api["retries"]),
        "0",
        "no blind retries of POST /orders"
    );

    // Which route (if any) takes a request, by method and path.
    let routes: Vec<(Vec<String>, Vec<regex::Regex>)> = api["routes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| {
            let methods = r["methods"].as_vec().unwrap().iter().map(text).collect();
            let paths = r["paths"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|p| {
                    let p = text(p);
                    let pattern = p
                        .strip_prefix('~')
                        .map_or_else(|| format!("^{}", regex::escape(&p)), |re| format!("^{re}"));
                    regex::Regex::new(&pattern).unwrap()
                })
                .collect();
            (methods, paths)
        })
        .collect();
    let routed = |method: &str, path: &str| {
        routes.iter().any(|(methods, paths)| {
            methods.iter().any(|m| m == method) && paths.iter().any(|p| p.is_match(path))
        })
    };
    for (method, path) in [
        ("POST", "/orders"),
        ("GET", "/orders"),
        ("GET", "/orders/0190a3f2-7c1e-7d3b-9f7a-1b2c3d4e5f60"),
        ("GET", "/health"),
        ("GET", "/ready"),
    ] {
        assert!(routed(method, path), "{method} {path} is routed");
    }
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("DELETE", "/orders/1"),
        ("POST", "/orders/1"),
    ] {
        assert!(!routed(method, path), "{method} {path} is not exposed");
    }

    let plugins: BTreeMap<String, &Yaml> = api["plugins"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| (text(&p["name"]), &p["config"]))
        .collect();
    assert!(plugins.contains_key("rate-limiting"));
    let size = plugins["request-size-limiting"];
    assert_eq!(text(&size["size_unit"]), "kilobytes");
    let kib: usize = text(&size["allowed_payload_size"]).parse().unwrap();
    let max_body = {
        let _serial = CONFIG
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        orders_api::config::Config::from_env()
            .unwrap()
            .max_body_bytes
    };
    assert!(
        kib * 1024 <= max_body,
        "Kong's limit ({kib} KiB) must not exceed the API's MAX_BODY_BYTES ({max_body})"
    );
    // The API authenticates every request by its bearer token: Kong must pass
    // the Authorization header through, so no plugin (on the service, a route,
    // or global) may strip, rename or hide it.
    let mut all_plugins: Vec<&Yaml> = api["plugins"].as_vec().unwrap().iter().collect();
    for route in api["routes"].as_vec().unwrap() {
        all_plugins.extend(route["plugins"].as_vec().into_iter().flatten());
    }
    all_plugins.extend(kong["plugins"].as_vec().into_iter().flatten());
    assert!(all_plugins.len() >= 3, "the premise: plugins are found");
    for plugin in all_plugins {
        let name = text(&plugin["name"]);
        let config = &plugin["config"];
        assert!(
            !matches!(config["hide_credentials"].as_bool(), Some(true)),
            "{name} hides the Authorization header from the API"
        );
        for action in ["remove", "rename", "replace"] {
            let headers = config[action]["headers"].as_vec().into_iter().flatten();
            for header in headers {
                assert!(
                    !text(header)
                        .to_ascii_lowercase()
                        .starts_with("authorization"),
                    "{name} {action}s the Authorization header"
                );
            }
        }
    }
    let correlation = plugins["correlation-id"];
    assert_eq!(
        text(&correlation["header_name"]),
        orders_api::routes::REQUEST_ID.as_str(),
        "Kong's correlation id is the API's request id"
    );
}

#[test]
fn the_images_are_built_without_fault_injection() {
    // The services alone: selecting devkit (or bench, or the workspace) would turn
    // on devkit's default feature and compile in the fault suite's switches.
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let builds: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.contains("cargo build") || line.contains("cargo chef cook"))
        .collect();
    assert_eq!(builds.len(), 2, "{builds:?}");
    for line in builds {
        for service in ["orders-api", "outbox-relay", "invoices-worker"] {
            assert!(line.contains(&format!("-p {service}")), "{line}");
        }
        for flag in [
            "--workspace",
            "--all",
            "--features",
            "-F ",
            "devkit",
            "bench",
        ] {
            assert!(!line.contains(flag), "{flag} in {line}");
        }
    }
}

/// The Pulumi program raises `net.core.somaxconn` in the tasks to the backlog
/// the binaries ask for: lower, the kernel would cap the backlog below it.
#[test]
fn the_tasks_somaxconn_is_the_binaries_listen_backlog() {
    let app = read("infra/src/app.ts");
    let declared = regex::Regex::new(r"export const LISTEN_BACKLOG = (\d+);")
        .unwrap()
        .captures(&app)
        .expect("infra/src/app.ts declares LISTEN_BACKLOG")[1]
        .parse::<u32>()
        .unwrap();
    assert_eq!(declared, plumbing::http::LISTEN_BACKLOG);
}
