//! `collector`: args → config → logging → command → exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use collector::config;
use collector::{app, exit, logging};

/// Records Polymarket's public market data into PostgreSQL.
#[derive(FromArgs)]
struct Cli {
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Collect(Collect),
    Migrate(Migrate),
    CheckConfig(CheckConfig),
    Status(Status),
    Archive(Archive),
}

/// run the daemon until SIGTERM or SIGINT
#[derive(FromArgs)]
#[argh(subcommand, name = "collect")]
struct Collect {
    /// configuration file (default /etc/collector/collector.toml)
    #[argh(option, default = "PathBuf::from(config::DEFAULT_PATH)")]
    config: PathBuf,
}

/// apply pending database migrations, print what was applied, exit
#[derive(FromArgs)]
#[argh(subcommand, name = "migrate")]
struct Migrate {
    /// configuration file (default /etc/collector/collector.toml)
    #[argh(option, default = "PathBuf::from(config::DEFAULT_PATH)")]
    config: PathBuf,
}

/// validate the configuration and print it with secrets redacted
#[derive(FromArgs)]
#[argh(subcommand, name = "check-config")]
struct CheckConfig {
    /// configuration file (default /etc/collector/collector.toml)
    #[argh(option, default = "PathBuf::from(config::DEFAULT_PATH)")]
    config: PathBuf,
}

/// archive every closed hour up to a bound now (one pass), then exit
#[derive(FromArgs)]
#[argh(subcommand, name = "archive")]
struct Archive {
    /// configuration file (default /etc/collector/collector.toml)
    #[argh(option, default = "PathBuf::from(config::DEFAULT_PATH)")]
    config: PathBuf,
    /// archive rows with a source time before this RFC 3339 time (default: archive.after_hours
    /// ago, down to the hour); a bound inside an hour archives that hour so far
    #[argh(option)]
    until: Option<String>,
    /// print one JSON object: per table, files, rows and bytes written
    #[argh(switch)]
    json: bool,
}

/// print the running daemon's live health
#[derive(FromArgs)]
#[argh(subcommand, name = "status")]
struct Status {
    /// print the health snapshot as JSON
    #[argh(switch)]
    json: bool,
    /// the daemon's status socket (default: daemon.status_socket of the configuration)
    #[argh(option)]
    socket: Option<PathBuf>,
    /// configuration file naming the socket (default /etc/collector/collector.toml when it
    /// exists, else $RUNTIME_DIRECTORY/status.sock or /run/collector/status.sock)
    #[argh(option)]
    config: Option<PathBuf>,
}

/// `collector status`: exit 0 with the health, 69 when no daemon answers, 78 when the
/// configuration named cannot be read.
fn status(args: Status) -> ExitCode {
    let socket = match (args.socket, args.config) {
        (Some(socket), _) => socket,
        (None, Some(path)) => match app::load_config(&path) {
            Ok(cfg) => cfg.daemon.status_socket,
            Err(e) => {
                eprintln!("collector: {e}");
                return ExitCode::from(exit::CONFIG);
            }
        },
        // The packaged configuration when present (and readable), else the default place.
        (None, None) => match app::load_config(std::path::Path::new(config::DEFAULT_PATH)) {
            Ok(cfg) => cfg.daemon.status_socket,
            // The default the daemon itself would use (one place: the configuration reader).
            Err(_) => config::Config::parse("", &config::Env::from_process())
                .map(|c| c.daemon.status_socket)
                .unwrap_or_else(|_| PathBuf::from("/run/collector/status.sock")),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match runtime.block_on(collector::daemon::status::fetch(&socket)) {
        Ok(h) if args.json => {
            println!("{}", serde_json::to_string_pretty(&h).expect("serialises"));
            ExitCode::SUCCESS
        }
        Ok(h) => {
            print!("{}", collector::daemon::status::render(&h));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("collector: {e}");
            ExitCode::from(exit::UNAVAILABLE)
        }
    }
}

fn main() -> ExitCode {
    collector::allocator::tune();
    let args: Vec<String> = std::env::args().collect();
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&strs[..1], &strs[1..]) {
        Ok(cli) => cli,
        Err(early) => {
            // --help prints to stdout and succeeds; a usage error is exit 64.
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    ExitCode::from(exit::USAGE)
                }
            };
        }
    };
    if cli.version {
        println!("collector {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("a command is required: collect, migrate or check-config (see --help)");
        return ExitCode::from(exit::USAGE);
    };
    let command = match command {
        Command::Status(args) => return status(args),
        other => other,
    };
    let path = match &command {
        Command::Collect(c) => &c.config,
        Command::Migrate(c) => &c.config,
        Command::CheckConfig(c) => &c.config,
        Command::Archive(c) => &c.config,
        Command::Status(_) => unreachable!("handled above"),
    };
    let cfg = match app::load_config(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("collector: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    if let Command::CheckConfig(_) = command {
        print!("{}", app::check_config(&cfg));
        eprintln!("configuration OK: {}", path.display());
        return ExitCode::SUCCESS;
    }
    logging::init(&cfg.log.level);
    // Both reqwest and the PostgreSQL TLS connector use rustls; name its crypto provider once.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("collector: cannot start the async runtime: {e}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Collect(c) => app::collect(cfg, &c.config).await,
            Command::Migrate(_) => app::migrate(cfg).await,
            Command::Archive(a) => app::archive(cfg, a.until.as_deref(), a.json).await,
            Command::CheckConfig(_) | Command::Status(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            app::report(&e);
            ExitCode::from(e.exit_code())
        }
    }
}
