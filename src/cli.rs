//! The command line (SPEC §2). Flags beat environment variables, which beat
//! the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::tls::LocalCa;

/// Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
const EXIT_FAILURE: i32 = 1;
const EXIT_CONFIG: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "ezthrottle",
    version,
    about = "Forward HTTP proxy that paces, de-duplicates and retries outbound API calls"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the proxy and the control server.
    Run(RunArgs),
    /// Work with the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the local CA that signs intercepted hosts' certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// List the built-in presets: well-known API hosts with their dialect,
    /// published limits and budget key (docs/dialects.md).
    Presets {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
struct ConfigArgs {
    /// Config file (TOML); built-in defaults when absent.
    #[arg(long, env = "EZTHROTTLE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the CA and the embedded store.
    #[arg(long, env = "EZTHROTTLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Proxy listen address (default 127.0.0.1:4000).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Control listen address (default 127.0.0.1:4001).
    #[arg(long)]
    control_listen: Option<SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the config and print the effective configuration.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    common: ConfigArgs,
    /// Do not check that the files the config names (`[tls] ca_cert`,
    /// `ca_key`, `upstream_ca_file`) exist on this machine: for a config
    /// made for another one, e.g. rendered by the Helm chart for a pod.
    #[arg(long)]
    skip_file_checks: bool,
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create the local CA if it does not exist yet.
    Init(ConfigArgs),
    /// Print the path of the CA certificate (PEM).
    Path(ConfigArgs),
    /// Write the CA certificate (PEM) to --out, or to standard output.
    Export {
        #[command(flatten)]
        common: ConfigArgs,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn load(
    args: &ConfigArgs,
    listen: Option<SocketAddr>,
    control_listen: Option<SocketAddr>,
) -> Result<Config, i32> {
    load_with(
        args,
        Overrides {
            listen,
            control_listen,
            data_dir: args.data_dir.clone(),
            skip_file_checks: false,
        },
    )
}

fn load_with(args: &ConfigArgs, overrides: Overrides) -> Result<Config, i32> {
    Config::load(args.config.as_deref(), &overrides).map_err(|e| {
        eprintln!("ezthrottle: config error: {e}");
        EXIT_CONFIG
    })
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            crate::allocator::configure();
            if let Err(e) = crate::logging::init() {
                eprintln!("ezthrottle: {e}");
                return EXIT_CONFIG;
            }
            crate::allocator::spawn_collector();
            let config = match load(&args.common, args.listen, args.control_listen) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::server::run(config) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("ezthrottle: {e}");
                    tracing::error!(error = %e, "start-up failed");
                    EXIT_FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Check(check)) => match load_with(
            &check.common,
            Overrides {
                data_dir: check.common.data_dir.clone(),
                skip_file_checks: check.skip_file_checks,
                ..Overrides::default()
            },
        ) {
            Ok(config) => {
                print!("{}", config.to_effective_toml());
                let source = config
                    .source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "<defaults>".into());
                eprintln!("ezthrottle: config ok ({source})");
                0
            }
            Err(code) => code,
        },
        Command::Ca(cmd) => ca(cmd),
        Command::Presets { json } => {
            print!("{}", presets(json));
            0
        }
    }
}

/// `ezthrottle presets`: the table for people, or JSON for scripts (full
/// precision there; the table rounds rates to what a reader needs).
fn presets(json: bool) -> String {
    use crate::config::presets::PRESETS;
    if json {
        let rows: Vec<serde_json::Value> = PRESETS
            .iter()
            .map(|p| {
                serde_json::json!({
                    "host": p.host,
                    "dialect": p.dialect,
                    "rps": p.rps,
                    "max_concurrent": p.max_concurrent,
                    "budget_key": p.budget_key,
                    "note": p.note,
                })
            })
            .collect();
        let mut out = serde_json::to_string_pretty(&rows).unwrap_or_default();
        out.push('\n');
        return out;
    }
    let rate = |r: Option<f64>| match r {
        None => "-".to_string(),
        Some(r) => {
            let s = format!("{r:.3}");
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        }
    };
    let mut rows = vec![[
        "HOST".to_string(),
        "DIALECT".to_string(),
        "RPS".to_string(),
        "MAX_CONCURRENT".to_string(),
        "BUDGET_KEY".to_string(),
        "NOTE".to_string(),
    ]];
    rows.extend(PRESETS.iter().map(|p| {
        [
            p.host.to_string(),
            p.dialect.to_string(),
            rate(p.rps),
            p.max_concurrent.map_or("-".to_string(), |m| m.to_string()),
            if p.budget_key.is_empty() {
                "(per host)".to_string()
            } else {
                p.budget_key.join(",")
            },
            p.note.to_string(),
        ]
    }));
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (w, cell) in widths.iter().zip(row.iter()) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(&row[5]);
        out.push('\n');
    }
    out
}

/// Says where we looked (the data dir, absolute: a relative default
/// `./ezthrottle-data` depends on the directory the command ran in) and how
/// to get the CA the proxy really uses.
fn no_ca_message(config: &Config, cert: &std::path::Path) -> String {
    let dir = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    format!(
        "no CA in data dir {} (looked for {}); nothing was created. \
         Point at the proxy's data dir (--data-dir, EZTHROTTLE_DATA_DIR or `data_dir` in the config), \
         fetch it from a running proxy (curl http://<control>/ca.pem), \
         or create one with `ezthrottle ca init`",
        dir.display(),
        cert.display()
    )
}

fn ca(cmd: CaCommand) -> i32 {
    let (args, out) = match &cmd {
        CaCommand::Init(a) | CaCommand::Path(a) => (a, None),
        CaCommand::Export { common, out } => (common, out.clone()),
    };
    let config = match load(args, None, None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let path = LocalCa::cert_path(&config);
    if matches!(cmd, CaCommand::Path(_)) {
        println!("{}", path.display());
        return if path.exists() {
            0
        } else {
            eprintln!("ezthrottle: {}", no_ca_message(&config, &path));
            EXIT_FAILURE
        };
    }
    // Only `ca init` creates: an export that made a CA of its own (say, run
    // from another directory, so another `./ezthrottle-data`) would hand the
    // user a CA the running proxy does not use.
    let ca = if matches!(cmd, CaCommand::Init(_)) {
        LocalCa::load_or_create(&config).map(Some)
    } else {
        LocalCa::load_existing(&config)
    };
    let ca = match ca {
        Ok(Some(ca)) => ca,
        Ok(None) => {
            eprintln!("ezthrottle: {}", no_ca_message(&config, &path));
            return EXIT_FAILURE;
        }
        Err(e) => {
            eprintln!("ezthrottle: {e}");
            return EXIT_FAILURE;
        }
    };
    match (cmd, out) {
        (CaCommand::Init(_), _) => {
            println!("{}", path.display());
            0
        }
        (_, Some(out)) => match std::fs::write(&out, ca.cert_pem()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ezthrottle: {}: {e}", out.display());
                EXIT_FAILURE
            }
        },
        (_, None) => {
            print!("{}", ca.cert_pem());
            0
        }
    }
}
