//! wse-loadgen: a WebSocket load generator that outruns the servers it measures.
//!
//! Subcommands: `fanout`, `inbound`, `latency`, `handshake`, `idle` (see `--help` of each), and
//! `floor`, a minimal server that fan-out figures are measured against.
//! Every run prints one JSON report on the last line of stdout, with the generator's own CPU
//! use over the measured window, so that a run shows when the generator was the limit.
//!
//! A library as well as a binary: [`run_cli`] is the whole command, so that other programs (the
//! `wse` Python package's `wse bench`) can ship it without a separate executable.

mod auth;
mod codec;
mod conn;
mod deflate;
mod encodings;
mod fanout;
mod floor;
mod handshake;
mod idle;
mod inbound;
mod latency;
mod net;
mod report;
mod seq;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "wse-loadgen",
    version,
    about = "WebSocket load generator (fan-out, inbound, latency, handshake, idle)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers on one topic; one publish request; every delivery sequence-checked.
    Fanout(fanout::Args),
    /// C connections sending JSON messages as fast as allowed (or at a rate).
    Inbound(inbound::Args),
    /// Round trips through an echo handler at a fixed offered rate.
    Latency(latency::Args),
    /// Connect -> upgrade -> first server frame, N times with K in flight.
    Handshake(handshake::Args),
    /// Open and hold N idle connections.
    Idle(idle::Args),
    /// A server, not a client: the fan-out floor (pre-built frames written to the subscribers'
    /// sockets, nothing else), to measure the machine against.
    Floor(floor::Args),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TokenIn {
    Both,
    Header,
    Cookie,
    Query,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Json,
    Msgpack,
}

/// Options every subcommand takes.
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Server endpoint, ws://HOST:PORT/PATH
    #[arg(long)]
    pub url: String,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.K as source addresses (K > 1).
    #[arg(long, default_value_t = 1)]
    pub sources: usize,
    /// JWT sent as `Authorization: Bearer` and as the cookie (see --token-in).
    #[arg(long)]
    pub token: Option<String>,
    /// Mint an HS256 token with this secret (sub = --jwt-sub, exp = now + --jwt-ttl-s).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    #[arg(long, default_value = "loadgen")]
    pub jwt_sub: String,
    #[arg(long, default_value_t = 3600)]
    pub jwt_ttl_s: u64,
    /// Extra claims for a minted token, a JSON object (e.g. '{"aud":"wse"}').
    #[arg(long)]
    pub jwt_claims: Option<String>,
    #[arg(long, default_value = "access_token")]
    pub cookie_name: String,
    /// Where the token goes.
    #[arg(long, value_enum, default_value_t = TokenIn::Both)]
    pub token_in: TokenIn,
    /// Message format: msgpack appends ?format=msgpack and expects `M:`-prefixed frames.
    #[arg(long, value_enum, default_value_t = FormatArg::Json)]
    pub format: FormatArg,
    #[arg(long)]
    pub origin: Option<String>,
    /// Worker threads (1 = tokio current_thread runtime).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Also report the CPU seconds of these processes (the server, all its workers: PID,PID..)
    /// over each measured window.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Pretty-print the final report (default: one line).
    #[arg(long)]
    pub pretty: bool,
}

impl Common {
    pub fn target(&self) -> Result<conn::Target, String> {
        let mut t = conn::Target::parse(&self.url)?;
        t.set_sources(self.sources);
        t.cookie_name = self.cookie_name.clone();
        t.origin = self.origin.clone();
        let token = match (&self.token, &self.jwt_secret) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(secret)) => Some(auth::mint_hs256(
                secret,
                &self.jwt_sub,
                self.jwt_ttl_s,
                self.jwt_claims.as_deref(),
            )?),
            (None, None) => None,
        };
        if let Some(tok) = &token {
            match self.token_in {
                TokenIn::Both => {}
                TokenIn::Header => t.token_cookie = false,
                TokenIn::Cookie => t.token_header = false,
                TokenIn::Query => {
                    t.token_header = false;
                    t.token_cookie = false;
                    t.add_query(&format!("token={tok}"));
                }
            }
        }
        t.token = token;
        if self.format == FormatArg::Msgpack {
            t.add_query("format=msgpack");
        }
        Ok(t)
    }

    pub fn format(&self) -> seq::Format {
        match self.format {
            FormatArg::Json => seq::Format::Json,
            FormatArg::Msgpack => seq::Format::Msgpack,
        }
    }

    fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if self.threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.threads)
                .enable_all()
                .build()
        }
    }

    /// The common part of every report.
    pub fn describe(&self, scenario: &str) -> serde_json::Value {
        serde_json::json!({
            "scenario": scenario,
            "url": self.url,
            "format": format!("{:?}", self.format).to_lowercase(),
            "sources": self.sources.max(1),
            "token": self.token.is_some() || self.jwt_secret.is_some(),
            "threads": self.threads.max(1),
            "generator": format!("wse-loadgen {}", env!("CARGO_PKG_VERSION")),
        })
    }
}

type Scenario =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<serde_json::Value, String>>>>;

/// Runs the command line `argv` (its first item is the program's name, as in `std::env::args`)
/// and returns the exit code: 0 when the run was clean, 1 when it ran but found faults (see the
/// report's `ok`), 2 on a usage or setup error. The report goes to stdout, progress to stderr.
pub fn run_cli<I, T>(argv: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let (common, fut): (Common, Scenario) = match cli.cmd {
        Cmd::Fanout(a) => (a.common.clone(), Box::pin(fanout::run(a))),
        Cmd::Inbound(a) => (a.common.clone(), Box::pin(inbound::run(a))),
        Cmd::Latency(a) => (a.common.clone(), Box::pin(latency::run(a))),
        Cmd::Handshake(a) => (a.common.clone(), Box::pin(handshake::run(a))),
        Cmd::Idle(a) => (a.common.clone(), Box::pin(idle::run(a))),
        Cmd::Floor(a) => return floor::run(a),
    };
    let rt = match common.runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wse-loadgen: cannot start the runtime: {e}");
            return 2;
        }
    };
    let code = match rt.block_on(fut) {
        Ok(v) => {
            let ok = v.get("ok").and_then(|x| x.as_bool()).unwrap_or(true);
            report::emit(&v, common.pretty);
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("wse-loadgen: {e}");
            2
        }
    };
    // Don't wait for tasks still parked on sockets.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}
