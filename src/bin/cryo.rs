//! The `cryo` binary. Called as `criu` (a link made by `cryo install`, or
//! any file of that name) it speaks CRIU's command-line dialect and RPC,
//! so that runc, podman, crun, CRI-O and containerd can use it unchanged.

use std::path::Path;

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0).file_name().and_then(|n| n.to_str()).unwrap_or("");
    let code = if name == "criu" {
        cryo::criu_cli::main()
    } else {
        cryo::cli::main()
    };
    std::process::exit(code);
}
