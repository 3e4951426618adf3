//! `keygate token`: print a valid access token, taken only from the
//! environment (see `keygate_auth::client` for the sources and the cache),
//! or run a command with it in `ACCESS_TOKEN` (`--exec -- CMD…`).

use clap::{Arg, ArgAction, ArgMatches, Command};
use keygate_auth::client::{Source, obtain};
use keygate_core::Secret;
use serde_json::json;
use std::ffi::OsString;
use std::process::ExitCode;

/// The `token` subcommand.
pub fn command() -> Command {
    Command::new("token")
        .about("Print an access token from KEYGATE_URL+KEYGATE_API_KEY or OIDC_ISSUER+OIDC_CLIENT_ID+OIDC_CLIENT_SECRET")
        .long_about(
            "Print a valid access token (only the token, one line) to stdout.\n\n\
             Credentials come only from the environment, first complete set wins:\n  \
             1. KEYGATE_URL and KEYGATE_API_KEY: a keygate gateway and an API key for it\n  \
             2. OIDC_ISSUER, OIDC_CLIENT_ID and OIDC_CLIENT_SECRET (optional OIDC_SCOPE): \
             the client-credentials grant at the provider\n\n\
             The token is cached until shortly before it expires in \
             $KEYGATE_TOKEN_CACHE, $XDG_CACHE_HOME/keygate or ~/.cache/keygate \
             (directory 0700, files 0600).",
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .conflicts_with("exec")
                .help("print {\"access_token\": …, \"expires_in\": …} instead"),
        )
        .arg(
            Arg::new("no-cache")
                .long("no-cache")
                .action(ArgAction::SetTrue)
                .help("always ask for a new token; neither read nor write the cache"),
        )
        .arg(
            Arg::new("exec")
                .long("exec")
                .action(ArgAction::SetTrue)
                .requires("command")
                .help("run the command after `--` with ACCESS_TOKEN set; exit with its exit code"),
        )
        .arg(
            Arg::new("command")
                .value_name("CMD")
                .num_args(1..)
                .last(true)
                .requires("exec")
                .value_parser(clap::value_parser!(OsString))
                .help("with --exec: the command and its arguments"),
        )
}

/// Runs `keygate token`.
pub fn run(m: &ArgMatches) -> ExitCode {
    let source = match Source::from_env(|name| std::env::var(name).ok()) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let use_cache = !m.get_flag("no-cache");
    let token = match obtain(&source, use_cache) {
        Ok(t) => t,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    if m.get_flag("exec") {
        let mut args = m
            .get_many::<OsString>("command")
            .into_iter()
            .flatten()
            .cloned();
        let Some(program) = args.next() else {
            eprintln!("error: --exec needs a command after `--`");
            return ExitCode::FAILURE;
        };
        return exec(program, args.collect(), &token.access_token);
    }
    if m.get_flag("json") {
        let expires_in = token
            .expires_at
            .map(|at| at.saturating_sub(keygate_core::unix_now()));
        println!(
            "{}",
            json!({ "access_token": token.access_token.expose(), "expires_in": expires_in })
        );
    } else {
        println!("{}", token.access_token.expose());
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------- --exec

#[cfg(unix)]
fn exec(program: OsString, args: Vec<OsString>, token: &Secret) -> ExitCode {
    use std::os::unix::process::CommandExt;
    // Replaces this process: CMD's exit code and signals are its own.
    let err = std::process::Command::new(&program)
        .args(args)
        .env("ACCESS_TOKEN", token.expose())
        .exec();
    eprintln!("error: cannot run {}: {err}", program.to_string_lossy());
    ExitCode::from(127)
}

#[cfg(not(unix))]
fn exec(program: OsString, args: Vec<OsString>, token: &Secret) -> ExitCode {
    match std::process::Command::new(&program)
        .args(args)
        .env("ACCESS_TOKEN", token.expose())
        .status()
    {
        Ok(status) => match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1).max(1)),
            None => ExitCode::FAILURE,
        },
        Err(err) => {
            eprintln!("error: cannot run {}: {err}", program.to_string_lossy());
            ExitCode::from(127)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_well_formed() {
        command().debug_assert();
    }
}
