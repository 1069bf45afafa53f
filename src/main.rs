//! The `gatehouse` command line: parse, call the library, map errors to
//! exit codes (0 ok, 1 bad configuration or failed check, 2 start-up or
//! runtime failure).

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse::config::{Config, ConfigSource};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Mail-transport server and HTTPS client-access proxy with Exchange-grade TLS"
)]
struct Cli {
    /// Configuration file. Default: ./gatehouse.toml if it exists, else the embedded default.
    #[arg(long, global = true, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server in the foreground until SIGTERM or SIGINT.
    Serve,
    /// Validate the configuration and print every error with file:line:column.
    CheckConfig,
    /// Print the embedded default configuration (a starting point for gatehouse.toml).
    DefaultConfig,
    /// Manage the certificate store: list, new-self-signed, request, import, export, enable, remove, which.
    Cert(gatehouse::certs::cli::CertCommand),
    /// Manage SMTP AUTH users (argon2id hashes in auth.users_file): add, remove, list.
    #[command(subcommand)]
    User(gatehouse::auth::cli::UserCommand),
    /// The running server's queue: list, show, retry, delete, bounce, flush (admin API).
    #[command(subcommand)]
    Queue(gatehouse::queue::cli::QueueCommand),
    /// TLS doctor: probe a server (smtp://, smtps://, https://); decode/encode Windows protocol bitmasks.
    #[command(subcommand)]
    Tls(gatehouse::tls::doctor::cli::TlsCommand),
    /// The event catalog: list, explain, docs.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Diagnostic logging: `log level list`, `log level set Tls Expert` (on the running server).
    #[command(subcommand)]
    Log(LogCmd),
    /// Reload the running server's configuration and certificates (admin API; SIGHUP does the same).
    Reload,
}

#[derive(Subcommand)]
enum EventsCmd {
    /// One line per catalog entry.
    List {
        /// Only this category (Certificates, Tls, SmtpReceive, ...).
        #[arg(long)]
        category: Option<String>,
    },
    /// The full entry for an event ID, name or Exchange event ID.
    Explain { query: String },
    /// The catalog as Markdown (`gatehouse events docs > docs/events.md`).
    Docs,
}

#[derive(Subcommand)]
enum LogCmd {
    /// Diagnostic levels per category.
    #[command(subcommand)]
    Level(LevelCmd),
}

#[derive(Subcommand)]
enum LevelCmd {
    /// Show the running server's level per category.
    List,
    /// Change one category's level at runtime (Lowest, Low, Medium, High, Expert).
    Set { category: String, level: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig => check_config(cli.config),
        Cmd::DefaultConfig => {
            print!("{}", gatehouse::config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Cmd::Cert(cmd) => match cmd.run(cli.config.as_deref(), &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::User(cmd) => match cmd.run(cli.config.as_deref(), &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse: {e}");
                ExitCode::from(1)
            }
        },
        Cmd::Queue(cmd) => match cmd.run(cli.config.as_deref(), &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse: {e}");
                ExitCode::from(e.exit_code())
            }
        },
        Cmd::Tls(cmd) => ExitCode::from(cmd.run(&mut std::io::stdout())),
        Cmd::Events(cmd) => events(cmd),
        Cmd::Log(LogCmd::Level(LevelCmd::List)) => admin_call(cli.config, "GET", "/log-level"),
        Cmd::Log(LogCmd::Level(LevelCmd::Set { category, level })) => {
            let Some(c) = gatehouse::events::Category::parse(&category) else {
                eprintln!(
                    "gatehouse: unknown category `{category}`; categories: {}",
                    gatehouse::events::Category::ALL
                        .map(|c| c.name())
                        .join(", ")
                );
                return ExitCode::from(1);
            };
            let Some(l) = gatehouse::events::Verbosity::parse(&level) else {
                eprintln!(
                    "gatehouse: unknown level `{level}`; levels: Lowest, Low, Medium, High, Expert"
                );
                return ExitCode::from(1);
            };
            admin_call(
                cli.config,
                "PUT",
                &format!("/log-level/{}/{}", c.name(), l.name()),
            )
        }
        Cmd::Reload => admin_call(cli.config, "POST", "/reload"),
        Cmd::Serve => match serve(cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gatehouse: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn events(cmd: EventsCmd) -> ExitCode {
    use gatehouse::events::{Category, docs, lookup};
    match cmd {
        EventsCmd::List { category } => {
            let c = match category.as_deref().map(|c| (c, Category::parse(c))) {
                None => None,
                Some((_, Some(c))) => Some(c),
                Some((c, None)) => {
                    eprintln!(
                        "gatehouse: unknown category `{c}`; categories: {}",
                        Category::ALL.map(|c| c.name()).join(", ")
                    );
                    return ExitCode::from(1);
                }
            };
            print!("{}", docs::list(c));
        }
        EventsCmd::Explain { query } => {
            let found = lookup(&query);
            if found.is_empty() {
                eprintln!(
                    "gatehouse: no event with ID, name or Exchange ID `{query}`; `gatehouse events list` shows them all"
                );
                return ExitCode::from(1);
            }
            for (i, d) in found.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", docs::explain(d));
            }
        }
        EventsCmd::Docs => print!("{}", docs::markdown()),
    }
    ExitCode::SUCCESS
}

/// Calls the running server's admin API; prints the reply body.
fn admin_call(path: Option<PathBuf>, method: &str, route: &str) -> ExitCode {
    let cfg = match Config::load(path.as_deref()) {
        Ok((cfg, _)) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            if route == "/reload" {
                eprintln!(
                    "gatehouse: not reloaded; the running server keeps its current configuration"
                );
            }
            return ExitCode::from(1);
        }
    };
    match gatehouse::admin::client::call(&cfg, method, route) {
        Ok(r) if (200..300).contains(&r.status) => {
            // Levels print as a table (`Tls  Expert`), like Get-EventLogLevel.
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&r.body) {
                Ok(map) if route.starts_with("/log-level") => {
                    for (category, level) in map {
                        println!("{category:<14} {}", level.as_str().unwrap_or("?"));
                    }
                }
                _ => print!("{}", r.body),
            }
            ExitCode::SUCCESS
        }
        Ok(r) => {
            // A refused reload: print the configuration errors as text.
            let shown = serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v.get("errors").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or(r.body);
            eprintln!("gatehouse: the server answered {}:\n{shown}", r.status);
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("gatehouse: {e}");
            ExitCode::from(2)
        }
    }
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    match Config::load(path.as_deref()) {
        Ok((cfg, source)) => {
            println!(
                "{}: OK ({} receive connector(s), {} accepted domain(s), {} mailbox(es))",
                source.name,
                cfg.receive_connector.len(),
                cfg.accepted_domain.len(),
                cfg.mailbox.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(1)
        }
    }
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let (cfg, source) = match Config::load(path.as_deref()) {
        Ok(x) => x,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(1));
        }
    };
    let origin = gatehouse::server::ConfigOrigin::Load(path);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a SIGTERM that arrives as soon as we announce the
        // listeners must still get a graceful stop.
        let signals = Signals::install()?;
        let server = gatehouse::server::start_from(cfg.clone(), origin).await?;
        announce(&source, &cfg, &server);
        signals.wait(&server.live).await;
        tracing::info!("shutting down: new sessions get 421, open transactions may finish");
        server.shutdown().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn announce(source: &ConfigSource, cfg: &Config, server: &gatehouse::server::RunningServer) {
    println!("gatehouse {} using {}", gatehouse::VERSION, source.name);
    println!("data directory: {}", cfg.server.data_dir.display());
    for (name, addr) in &server.listeners {
        let what = cfg
            .receive_connector
            .iter()
            .find(|c| c.name.get_ref() == name)
            .map(|c| {
                let tls = match c.role.get_ref() {
                    gatehouse::config::ConnectorRole::Smtps => "implicit TLS",
                    _ if c.tls && c.require_tls => "STARTTLS required",
                    _ if c.tls => "STARTTLS",
                    _ => "no TLS",
                };
                let auth = if c.offers_auth() {
                    ", AUTH after TLS"
                } else {
                    ""
                };
                format!("{:?}, {tls}{auth}", c.role.get_ref()).to_lowercase()
            });
        println!(
            "listening: smtp {addr} (receive connector \"{name}\": {})",
            what.unwrap_or_default()
        );
    }
    for (name, addr) in &server.proxy_listeners {
        let routes = cfg
            .proxy
            .iter()
            .find(|p| p.name.get_ref() == name)
            .map_or(0, |p| p.routes.len());
        println!(
            "listening: https {addr} (proxy \"{name}\": HTTP/2 and HTTP/1.1, {routes} route(s); try: curl -k https://{addr}/owa/)"
        );
    }
    if let Some(addr) = server.admin {
        println!(
            "admin API: http://{addr}/ (bearer token in {})",
            cfg.admin_token_file().display()
        );
    }
    if let Some((_, addr)) = server.listeners.first() {
        let to = cfg
            .mailbox
            .first()
            .and_then(|m| m.addresses.first())
            .map(|a| {
                let a = a.get_ref();
                if a.starts_with('@') {
                    format!("test{a}")
                } else {
                    a.clone()
                }
            })
            .unwrap_or_else(|| "postmaster@localhost".into());
        println!(
            "send a test message: swaks --server {} --port {} --to {to}",
            addr.ip(),
            addr.port()
        );
        println!(
            "mail is delivered to: {}/<mailbox>/new/",
            cfg.mail_dir().display()
        );
    }
}

/// SIGTERM and SIGINT (stop), SIGHUP (reload), installed before the
/// server starts.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for a stop signal, reloading on every SIGHUP meanwhile (the
    /// outcome is an event: ConfigReloaded or ConfigReloadRefused).
    async fn wait(mut self, live: &std::sync::Arc<gatehouse::server::Live>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    let live = live.clone();
                    let _ = tokio::task::spawn_blocking(move || live.reload()).await;
                }
            }
        }
    }
}
