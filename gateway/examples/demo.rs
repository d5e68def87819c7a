//! The README's first command: the gateway on `examples/demo` together with
//! the demo's upstreams, no cluster needed.
//!
//! ```sh
//! cargo run --release -p vestibule-gateway --example demo
//! curl -H 'Host: acme.example.com' http://127.0.0.1:8080/
//! ```
//!
//! Upstreams (127.0.0.1): 9101/9102 the shared app, 9103 its canary, 9104
//! globex's API, 9105 globex's web app, 9106 globex's docs (reached through
//! an ExternalName Service for `localhost`). Each answers with its name and
//! the request headers it received. Extra arguments go to the gateway
//! (e.g. `-- --http 127.0.0.1:18080`).

use std::convert::Infallible;
use std::path::Path;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use vestibule_gateway::cli::Cli;
use vestibule_gateway::serve;

const UPSTREAMS: &[(u16, &str)] = &[
    (9101, "saas/app #1"),
    (9102, "saas/app #2"),
    (9103, "saas/app-canary"),
    (9104, "globex/api"),
    (9105, "globex/web"),
    (9106, "docs (ExternalName localhost)"),
];

async fn answer(
    name: &'static str,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = format!("{name}: {} {}\n", req.method(), req.uri());
    for (k, v) in req.headers() {
        body.push_str(&format!(
            "  {k}: {}\n",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}

fn start_upstreams() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut listeners = Vec::new();
    for (port, name) in UPSTREAMS {
        let l = runtime
            .block_on(TcpListener::bind(("127.0.0.1", *port)))
            .map_err(|e| format!("demo upstream {name} on 127.0.0.1:{port}: {e}"))?;
        listeners.push((l, *name));
    }
    std::thread::spawn(move || {
        runtime.block_on(async move {
            for (listener, name) in listeners {
                tokio::spawn(async move {
                    while let Ok((sock, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| answer(name, req));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(sock), svc)
                                .await;
                        });
                    }
                });
            }
            std::future::pending::<()>().await;
        })
    });
    Ok(())
}

fn main() -> ExitCode {
    let user: Vec<String> = std::env::args().skip(1).collect();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo");
    let mut args = vec!["vestibule-gateway".to_string()];
    for (flag, value) in [
        ("--manifests", demo.to_string_lossy().into_owned()),
        ("--http", "127.0.0.1:8080".into()),
        ("--https", "127.0.0.1:8443".into()),
        ("--admin", "127.0.0.1:9901".into()),
    ] {
        if !user
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        {
            args.extend([flag.to_string(), value]);
        }
    }
    args.extend(user);
    let cli = Cli::parse_from(args);
    serve::init_logging(cli.log_format);
    if let Err(e) = start_upstreams() {
        eprintln!("demo: {e}");
        return ExitCode::from(1);
    }
    eprintln!(
        "demo upstreams on 127.0.0.1:9101-9106; gateway http://{} https://{} admin http://{}\n\
         try:\n  curl -i -H 'Host: acme.example.com' http://{}/   # 308 to https\n  curl --cacert examples/demo-ca.crt --resolve acme.example.com:{p}:127.0.0.1 https://acme.example.com:{p}/\n  curl --cacert examples/demo-ca.crt --resolve globex.example.com:{p}:127.0.0.1 https://globex.example.com:{p}/api/orders",
        cli.http, cli.https, cli.admin, cli.http, p = cli.https.port()
    );
    match serve::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
