//! `tender`: the command-line front end. All the work is in the library.

use std::process::ExitCode;

use tender::{cli, front};

fn main() -> ExitCode {
    match cli::parse(std::env::args().skip(1)) {
        Ok(command) => front::run(command, |_| Ok(())),
        Err(e) => front::fail(&e.to_string()),
    }
}
