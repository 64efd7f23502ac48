//! The `cryo` binary. Called as `criu` (a link made by `cryo install`, or
//! any file of that name) it speaks CRIU's command-line dialect and RPC,
//! so that runc, podman, crun, CRI-O and containerd can use it unchanged.
//! Called as `cryo-runtime` (or `cryo runtime ...`) it is an OCI runtime
//! wrapper for podman's --runtime.

use std::path::Path;

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0).file_name().and_then(|n| n.to_str()).unwrap_or("");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = if name == "criu" {
        cryo::criu_cli::main()
    } else if name.starts_with("cryo-runtime") {
        // An OCI runtime for podman --runtime (see cryo::runtime).
        cryo::runtime::main_with(name, &args)
    } else if args.first().map(String::as_str) == Some("runtime") {
        cryo::runtime::main_with(name, &args[1..])
    } else {
        cryo::cli::main()
    };
    std::process::exit(code);
}
