//! The `pylon` command: parses the command line, sets up logging and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pylon::config::{Config, Overrides};
use pylon::metrics::Metrics;
use pylon::problem::Severity;
use pylon::snapshot::Published;

/// mimalloc instead of the system allocator: pingora allocates and frees many small buffers per
/// request, and glibc's malloc took about 15 % of the CPU of a proxied request (see
/// docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pylon", about = "Ingress reverse proxy for Kubernetes", version = pylon::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Ingresses found in the manifest directories.
    Run(RunArgs),
    /// Validate the configuration and manifests; print the route table or every error.
    Check(CheckArgs),
    /// Print the version.
    Version,
}

#[derive(Args)]
struct CommonArgs {
    /// Configuration file (TOML); see config/pylon.toml for every key and default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of YAML manifests, read recursively; repeatable. Replaces `manifests.dirs`.
    #[arg(long = "manifests", value_name = "DIR")]
    manifests: Vec<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where pylon keeps what it creates (replaces `manifests.state-dir`).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Plain HTTP listener, e.g. 0.0.0.0:80.
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
    /// HTTPS listener, e.g. 0.0.0.0:443.
    #[arg(long, value_name = "ADDR")]
    https_listen: Option<String>,
    /// Admin listener (/metrics, /healthz, /readyz), e.g. 0.0.0.0:10254.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Read objects from the Kubernetes API server instead of manifest directories.
    #[arg(long)]
    kubernetes: bool,
    /// kubeconfig file (default: the in-cluster service account, else $KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Namespace to watch; repeatable (default: all namespaces).
    #[arg(long = "watch-namespace", value_name = "NS")]
    watch_namespaces: Vec<String>,
    /// namespace/name of the Service whose load-balancer addresses go to Ingress status.
    #[arg(long, value_name = "NS/NAME")]
    publish_service: Option<String>,
    /// Address written to Ingress status (instead of a published Service); repeatable.
    #[arg(long = "publish-status-address", value_name = "ADDR")]
    publish_status_addresses: Vec<String>,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    // One crypto provider for the whole process, before anything builds a rustls config.
    let _ = pylon::tls::provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(args),
        Command::Version => {
            println!("pylon {}", pylon::VERSION);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pylon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        manifests: args.common.manifests,
        state_dir: args.state_dir,
        http_listen: args.http_listen,
        https_listen: args.https_listen,
        admin_listen: args.admin_listen,
        kubernetes: args.kubernetes,
        kubeconfig: args.kubeconfig,
        watch_namespaces: args.watch_namespaces,
        publish_service: args.publish_service,
        publish_status_addresses: args.publish_status_addresses,
    };
    let config = Config::load(args.common.config.as_deref(), &overrides)?;
    let published = Published::default();
    let metrics = Metrics::new(published.clone());
    pylon::logging::init(&config.log);
    pylon::server::run(config, published, metrics).context("cannot start")?;
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        manifests: args.common.manifests,
        ..Overrides::default()
    };
    let config = match Config::load(args.common.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let report = pylon::check::check(&config)?;
    print!("{}", report.text);
    Ok(if report.problems.iter().any(|p| p.severity == Severity::Error) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
