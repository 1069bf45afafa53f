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
        Cmd::Serve => match serve(cli.config) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("gatehouse: {e:#}");
                ExitCode::from(2)
            }
        },
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a SIGTERM that arrives as soon as we announce the
        // listeners must still get a graceful stop.
        let signals = Signals::install()?;
        let server = gatehouse::server::start(cfg.clone()).await?;
        announce(&source, &cfg, &server);
        signals.wait().await;
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

/// SIGTERM and SIGINT, installed before the server starts.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
