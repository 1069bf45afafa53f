//! `gatehouse user add|remove|list`: manage the SMTP AUTH users file named
//! by the configuration (`auth.users_file`, default `<data_dir>/users`).
//! The server picks changes up at the next AUTH, without a restart.

use super::{UserDb, UserError};
use crate::config::{Config, ConfigErrors};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a user or set a new password. The password is read from
    /// --password-file, else from the first line of standard input.
    Add {
        name: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Remove a user.
    Remove { name: String },
    /// List user names.
    List,
}

#[derive(Debug, thiserror::Error)]
pub enum UserCliError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("{0}")]
    Users(#[from] UserError),
    #[error(
        "cannot read the password from {what}: {source}\n  = hint: put the password alone on the first line"
    )]
    Password {
        what: String,
        source: std::io::Error,
    },
}

impl UserCommand {
    pub fn run(self, config: Option<&Path>, out: &mut impl Write) -> Result<(), UserCliError> {
        let (cfg, _) = Config::load(config).map_err(UserCliError::Config)?;
        let path = cfg.users_file();
        let mut db = UserDb::load(&path)?;
        match self {
            UserCommand::Add {
                name,
                password_file,
            } => {
                let (what, line) = match &password_file {
                    Some(f) => (
                        f.display().to_string(),
                        std::fs::read_to_string(f)
                            .map(|t| t.lines().next().unwrap_or("").to_string()),
                    ),
                    None => {
                        let mut l = String::new();
                        (
                            "standard input".to_string(),
                            std::io::stdin()
                                .lock()
                                .read_line(&mut l)
                                .map(|_| l.trim_end_matches(['\r', '\n']).to_string()),
                        )
                    }
                };
                let password = line.map_err(|source| UserCliError::Password { what, source })?;
                db.set_password(&name, &password)?;
                let _ = writeln!(out, "user {name} saved in {}", path.display());
            }
            UserCommand::Remove { name } => {
                db.remove(&name)?;
                let _ = writeln!(out, "user {name} removed from {}", path.display());
            }
            UserCommand::List => {
                for n in db.names() {
                    let _ = writeln!(out, "{n}");
                }
            }
        }
        Ok(())
    }
}
