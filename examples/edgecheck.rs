//! Sends the hostile requests of `tests/common/hostile.rs` to any HTTP/1.1
//! server and prints what it answered, one row per case: the status line
//! of every response read before the server closed the connection, or
//! `closed`, `reset`, `timeout` when there was none.
//!
//! ```text
//! cargo run --release --example edgecheck -- --addr 127.0.0.1:8080 [--json] [--timeout 5]
//! ```
//!
//! Each case goes on a fresh connection, its bytes written at once while
//! the answer is read, until the server closes or `--timeout` passes.
//! `scripts/edge-compare.sh` runs it against nginx and the gateway side by
//! side. `--json` prints one object per line instead of a table row:
//! `{"case": .., "attack": .., "statuses": [..], "end": "closed"|"reset"|"timeout"}`.

#[path = "../tests/common/hostile.rs"]
mod hostile;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hostile::End;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "edgecheck",
    about = "Send hostile HTTP/1.1 requests to a server and print its answers"
)]
struct Cli {
    /// The server to probe (loopback in the scripts).
    #[arg(long, value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// One JSON object per case instead of a markdown table row.
    #[arg(long)]
    json: bool,
    /// How long one exchange may take before it is cut, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    timeout: f64,
}

/// The table cell: every status line, or how it ended without one.
fn cell(statuses: &[String], end: End) -> String {
    if statuses.is_empty() {
        end.as_str().to_owned()
    } else {
        statuses.join(" + ")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(bound) = Duration::try_from_secs_f64(cli.timeout) else {
        eprintln!("--timeout must be a positive number of seconds");
        return ExitCode::from(2);
    };
    for case in hostile::cases() {
        let (out, end) = match hostile::exchange(cli.addr, case.raw, bound).await {
            Ok(done) => done,
            Err(e) => {
                eprintln!("connect to {}: {e}", cli.addr);
                return ExitCode::FAILURE;
            }
        };
        let (responses, _) = hostile::responses(&out);
        let statuses: Vec<String> = responses.into_iter().map(|r| r.status_line).collect();
        if cli.json {
            let row = serde_json::json!({
                "case": case.name,
                "attack": case.attack,
                "statuses": statuses,
                "end": end.as_str(),
            });
            println!("{row}");
        } else {
            println!("| {} | {} |", case.name, cell(&statuses, end));
        }
    }
    ExitCode::SUCCESS
}
