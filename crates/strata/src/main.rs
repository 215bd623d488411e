//! The `strata` binary: configuration, logging, listeners and the process
//! lifecycle around the broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use strata_broker::{server, Broker, BrokerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod cli;
mod settings;

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "A Kafka-compatible streaming broker whose log is a streaming data lake"
)]
struct Cli {
    /// Log output format (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STRATA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a broker.
    Serve(ServeArgs),
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Topics, through a running broker's admin API.
    Topic {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::TopicCommand,
    },
    /// Consumer groups, through a running broker's admin API.
    Group {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::GroupCommand,
    },
    /// The cluster: brokers, controller and partition leadership, through a
    /// running broker's admin API.
    Cluster {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
    /// The object tier, through a running broker's admin API.
    Tier {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::TierCommand,
    },
    /// The lake: progress and snapshots, through a running broker's admin API.
    Lake {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::LakeCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the default configuration as TOML (every key).
    Defaults,
    /// Check a configuration file (with the environment and flags a broker
    /// would apply) and print the effective configuration.
    Check(CheckArgs),
}

/// `strata config check`: the serve flags, and whether to open the files.
#[derive(Debug, Parser)]
struct CheckArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Do not open the TLS certificate, key, users and token files the
    /// configuration names (for a configuration checked away from its Secrets).
    #[arg(long)]
    no_files: bool,
}

/// Flags override environment variables, which override the config file,
/// which overrides the defaults. Each flag's key can also be set by its
/// environment variable (`STRATA_DATA_DIR`...); see docs/configuration.md.
#[derive(Parser, Debug, Default)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "STRATA_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for logs and metadata [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Kafka listener address [default: 127.0.0.1:9092].
    #[arg(long)]
    kafka_listen: Option<String>,
    /// Address clients are told to connect to [default: the bound address].
    #[arg(long)]
    advertised_listener: Option<String>,
    /// HTTP listener address (health, metrics, admin API) [default: 127.0.0.1:9644].
    #[arg(long)]
    http_listen: Option<String>,
    /// Object tier: s3://bucket/prefix, file:///path or memory:// [default: a
    /// directory under the data directory].
    #[arg(long)]
    object_store: Option<String>,
    /// This broker's id in a cluster (cluster.broker_id) [default: the host
    /// name's ordinal, `strata-2` is 2].
    #[arg(long)]
    broker_id: Option<i32>,
    /// etcd endpoints of the cluster, comma-separated (cluster.etcd_endpoints);
    /// without them the broker runs alone.
    #[arg(long)]
    etcd_endpoints: Option<String>,
}

impl ServeArgs {
    fn overrides(&self) -> settings::Overrides {
        settings::Overrides {
            config: self.config.clone(),
            data_dir: self.data_dir.clone(),
            kafka_listen: self.kafka_listen.clone(),
            advertised_listener: self.advertised_listener.clone(),
            http_listen: self.http_listen.clone(),
            object_store: self.object_store.clone(),
            broker_id: self.broker_id,
            etcd_endpoints: self.etcd_endpoints.clone(),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Topic { target, command } => cli::topic(&target, command),
        Command::Group { target, command } => cli::group(&target, command),
        Command::Cluster { target, command } => cli::cluster(&target, command),
        Command::Tier { target, command } => cli::tier(&target, command),
        Command::Lake { target, command } => cli::lake(&target, command),
        Command::Config(ConfigCommand::Defaults) => {
            print!("{}", toml::to_string(&BrokerConfig::default())?);
            Ok(())
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let mut config = settings::load(&args.serve.overrides(), std::env::vars())?;
            if !args.no_files {
                strata_broker::security::check_files(&config).map_err(anyhow::Error::msg)?;
                strata_admin::auth::HttpAuth::from_config(&config.auth)
                    .map_err(anyhow::Error::msg)?;
            }
            // The effective configuration, but never a credential.
            if !config.cluster.etcd_password.is_empty() {
                config.cluster.etcd_password = "(set; not shown)".into();
            }
            print!("{}", toml::to_string(&config)?);
            Ok(())
        }
        Command::Serve(args) => {
            let config = settings::load(&args.overrides(), std::env::vars())?;
            raise_fd_limit();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("strata")
                .build()?;
            runtime.block_on(serve(config))
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as the JVM does
/// for Kafka and Go's runtime for its programs: a broker holds a file for
/// every partition's active segment and a socket for every client, far past
/// the soft limit of 1,024 most systems start processes with.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                info!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit")
            }
            Err(e) => warn!(limit = ?limit.current, error = %e, "cannot raise the open-file limit"),
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Splits `host:port`, accepting `[v6]:port`.
fn split_host_port(addr: &str) -> Result<(String, i32)> {
    let (host, port) = addr
        .rsplit_once(':')
        .with_context(|| format!("'{addr}' is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("'{addr}' has no valid port"))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port as i32,
    ))
}

/// A bound Kafka listener and where clients are told to connect.
struct Bound {
    tcp: TcpListener,
    addr: SocketAddr,
    advertised: (String, i32),
    security: strata_broker::security::Listener,
}

/// Binds every Kafka listener and loads its TLS files, so a bad address,
/// certificate or key is an error at start.
async fn bind_listeners(config: &BrokerConfig) -> Result<Vec<Bound>> {
    let mut bound = Vec::new();
    for l in config.kafka_listeners().map_err(anyhow::Error::msg)? {
        let tcp = TcpListener::bind(&l.listen)
            .await
            .with_context(|| format!("cannot listen on {} (listener '{}')", l.listen, l.name))?;
        let addr = tcp.local_addr()?;
        let advertised = match l.advertised.as_str() {
            "" if addr.ip().is_unspecified() => {
                bail!("listener '{}' binds every interface ({addr}): set its advertised address (--advertised-listener for the default one)", l.name)
            }
            "" => (addr.ip().to_string(), addr.port() as i32),
            a => split_host_port(a)?,
        };
        let security =
            strata_broker::security::Listener::new(l, &config.auth).map_err(anyhow::Error::msg)?;
        bound.push(Bound {
            tcp,
            addr,
            advertised,
            security,
        });
    }
    Ok(bound)
}

async fn serve(config: BrokerConfig) -> Result<()> {
    let listeners = bind_listeners(&config).await?;
    // Brokers reach each other on the inter-broker listener (the default
    // one, or the first, unless auth.inter_broker_listener_name names one).
    let inter_name = match config.auth.inter_broker_listener_name.as_str() {
        "" => strata_broker::security::DEFAULT_LISTENER,
        n => n,
    };
    let inter = listeners
        .iter()
        .find(|b| b.security.config.name == inter_name)
        .unwrap_or(&listeners[0]);
    let kafka_addr = inter.addr;
    let (adv_host, adv_port) = inter.advertised.clone();
    let http = TcpListener::bind(&config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (http_listen)", config.http_listen))?;
    let http_addr = http.local_addr()?;

    // HTTP first: /healthz answers and /readyz says why not ready while the
    // data directory is recovered.
    let prometheus = strata_admin::metrics::install_recorder().map_err(anyhow::Error::msg)?;
    let http_auth =
        strata_admin::auth::HttpAuth::from_config(&config.auth).map_err(anyhow::Error::msg)?;
    let admin = strata_admin::AdminState::with_auth(Some(prometheus), http_auth);
    let http_shutdown = CancellationToken::new();
    let http_task = if config.auth.http_tls_cert_file.is_empty() {
        tokio::spawn(strata_admin::serve(
            http,
            admin.clone(),
            http_shutdown.clone(),
        ))
    } else {
        let tls = strata_broker::security::tls::server_config(
            &config.auth.http_tls_cert_file,
            &config.auth.http_tls_key_file,
            "",
        )
        .map_err(|e| anyhow::anyhow!("admin API TLS: {e}"))?;
        tokio::spawn(strata_admin::serve_tls(
            http,
            tokio_rustls::TlsAcceptor::from(tls),
            admin.clone(),
            http_shutdown.clone(),
        ))
    };
    println!("http listening on {http_addr}");

    // Other brokers reach this one's HTTP API on the advertised host.
    let http_host = if http_addr.ip().is_unspecified() {
        adv_host.clone()
    } else {
        http_addr.ip().to_string()
    };
    let endpoints = strata_broker::Endpoints {
        host: adv_host.clone(),
        port: adv_port,
        http: format!("{http_host}:{}", http_addr.port()),
        // Outgoing connections leave from the listener's own address, so a
        // firewall rule on that address cuts exactly this broker off.
        bind: (!kafka_addr.ip().is_unspecified()).then(|| kafka_addr.ip()),
        listeners: listeners
            .iter()
            .map(|b| {
                let (h, p) = &b.advertised;
                let host = if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.clone()
                };
                (b.security.config.name.clone(), format!("{host}:{p}"))
            })
            .collect(),
    };
    let data_dir = config.data_dir.clone();
    let broker = Broker::start(config, endpoints)
        .await
        .with_context(|| format!("cannot start on data directory {}", data_dir.display()))?;
    admin.set_broker(broker.clone());

    let shutdown = CancellationToken::new();
    let background = tokio::spawn(server::background(broker.clone(), shutdown.clone()));
    let mut kafka_tasks = Vec::new();
    // Scripts and tests read these lines to learn the bound ports: one per
    // listener, then "kafka listening on" the default one (or the first).
    let main_addr = listeners
        .iter()
        .find(|b| b.security.config.name == strata_broker::security::DEFAULT_LISTENER)
        .unwrap_or(&listeners[0])
        .addr;
    for b in listeners {
        let name = b.security.config.name.clone();
        let protocol = b.security.config.protocol;
        println!("kafka listener {name} ({}) on {}", protocol.name(), b.addr);
        info!(listener = %name, protocol = protocol.name(), bound = %b.addr, advertised = %format!("{}:{}", b.advertised.0, b.advertised.1), "kafka listener up");
        kafka_tasks.push(tokio::spawn(server::serve(
            broker.clone(),
            b.tcp,
            Arc::new(b.security),
            shutdown.clone(),
        )));
    }
    admin.set_kafka_up(true);
    println!("kafka listening on {main_addr}");
    info!(inter_broker = %kafka_addr, advertised = %format!("{adv_host}:{adv_port}"), http = %http_addr, data_dir = %data_dir.display(), "strata is serving");

    wait_for_signal().await;
    admin.set_stopping();
    // Controlled shutdown: leaderships move to other brokers while this one
    // still serves, so clients are redirected rather than refused.
    broker.controlled_shutdown().await;
    info!("shutting down: finishing in-flight requests");
    shutdown.cancel();
    for t in kafka_tasks {
        if let Err(e) = t.await {
            warn!(error = %e, "kafka listener task failed");
        }
    }
    admin.set_kafka_up(false);
    let _ = background.await;
    let deadline =
        std::time::Duration::from_millis(broker.config().tier.shutdown_upload_timeout_ms);
    strata_broker::tiering::flush_to_tier(&broker, deadline).await;
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.close()).await?;
    broker.leave_cluster().await;
    http_shutdown.cancel();
    let _ = http_task.await;
    info!("shutdown complete");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            split_host_port("broker-0.strata:9092").unwrap(),
            ("broker-0.strata".into(), 9092)
        );
        assert_eq!(split_host_port("[::1]:9092").unwrap(), ("::1".into(), 9092));
        assert!(split_host_port("nohost").is_err());
    }
}
