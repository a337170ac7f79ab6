//! `cargo faults`: the fault suite outside the tests, with the release build.
//!
//! ```text
//! cargo faults                     # every scenario, CI sizes
//! cargo faults --soak              # every scenario, longer and heavier
//! cargo faults --break worker-killed relay-killed
//!                                  # with each scenario's guarantee switched off:
//!                                  # the checker must report losses
//! ```
//!
//! Prints the tally table; exits non-zero when a scenario fails (or, with
//! `--break`, when a broken scenario does not).

use std::process::ExitCode;

use devkit::faults::{Scenario, Size, table};

#[tokio::main]
async fn main() -> ExitCode {
    let mut size = Size::ci();
    let mut broken = false;
    let mut scenarios = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--soak" => size = Size::soak(),
            "--break" => broken = true,
            name => match Scenario::from_name(name) {
                Some(s) => scenarios.push(s),
                None => {
                    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    eprintln!(
                        "faults: unknown argument {name:?}; expected --soak, --break or one of: {}",
                        names.join(", ")
                    );
                    return ExitCode::from(2);
                }
            },
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    if let Err(e) = devkit::process::build_services() {
        eprintln!("faults: {e:#}");
        return ExitCode::FAILURE;
    }
    let mut tallies = Vec::new();
    for scenario in scenarios {
        eprintln!("faults: {} …", scenario.name());
        let tally = scenario.run(size, broken).await;
        eprintln!("{}", table(std::slice::from_ref(&tally)));
        tallies.push(tally);
    }
    println!("{}", table(&tallies));
    let as_expected = tallies.iter().all(|t| t.passed() != broken);
    if as_expected {
        ExitCode::SUCCESS
    } else if broken {
        eprintln!("faults: a broken scenario passed: its checker missed the loss");
        ExitCode::FAILURE
    } else {
        eprintln!("faults: a scenario failed");
        ExitCode::FAILURE
    }
}
