//! The `agent-warden` binary: parse the command line and hand over to the library.
fn main() {
    std::process::exit(agent_warden::cli::run());
}
