//! `dev-token <dir>`: a local identity provider for a shell script (CI's
//! Schemathesis run, a manual session): writes a new signing key's JWKS to
//! `<dir>/jwks.json` and prints, as shell assignments, the orders API's
//! `AUTH_JWKS_URL`, `AUTH_ISSUER` and `AUTH_AUDIENCE` for it and a `TOKEN`
//! (customer `dev-customer`, valid 12 h): `eval "$(dev-token "$dir")"`.

use std::{path::PathBuf, process::ExitCode};

use devkit::auth::{DEV_AUDIENCE, DEV_CUSTOMER, DEV_ISSUER, Issuer};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: dev-token <dir>   (writes <dir>/jwks.json, prints AUTH_* and TOKEN)");
        return ExitCode::from(64);
    };
    match Issuer::in_dir(&PathBuf::from(dir), DEV_ISSUER, DEV_AUDIENCE) {
        Ok(issuer) => {
            let token = issuer.long_lived_token(DEV_CUSTOMER);
            for (name, value) in issuer.env().iter().chain([&("TOKEN", token)]) {
                println!("{name}={}", shell_quoted(value));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dev-token: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `value` in single quotes for a POSIX shell.
fn shell_quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}
