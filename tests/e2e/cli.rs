//! The command line: `pylon check`, `pylon version`, and clear errors for bad configuration.

use std::process::Command;

fn pylon(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(args)
        .output()
        .expect("run pylon");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_route_table_of_the_examples() {
    // local.toml's paths are relative to the repository root.
    let out = Command::new(env!("CARGO_BIN_EXE_pylon"))
        .args(["check", "--config", "config/local.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run pylon");
    let (code, out, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("app.localhost"), "{out}");
    assert!(out.contains("*.apps.localhost"), "{out}");
    assert!(out.contains("https-redirect"), "{out}");
    assert!(out.contains("no problems"), "{out}");
    assert!(
        out.contains("default/app-localhost-tls"),
        "certificates to issue are listed: {out}"
    );
    assert!(out.contains("ClusterIssuer example-ca"), "{out}");
}

#[test]
fn check_reports_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: other}\nspec: {ingressClassName: traefik}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: bad}\nspec:\n  ingressClassName: nginx\n  rules:\n  - host: Bad.Host\n    http: {paths: [{path: x, pathType: Prefix, backend: {service: {name: s, port: {number: 80}}}}]}\n---\nkind: Service\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.yml"), "a: [").unwrap();
    let config = dir.path().join("pylon.toml");
    std::fs::write(&config, "[ingress]\nclasses = [\"nginx\"]\n").unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    for f in ["bad.yaml", "broken.yml"] {
        std::fs::rename(dir.path().join(f), manifests.join(f)).unwrap();
    }
    let (code, out, _) = pylon(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        "--manifests",
        manifests.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Ingress default/bad"), "{out}");
    assert!(out.contains("spec.rules[0].host"), "{out}");
    assert!(
        out.contains("path \\\"x\\\"") || out.contains("path \"x\""),
        "{out}"
    );
    assert!(out.contains("broken.yml"), "{out}");
    assert!(out.contains("not valid YAML"), "{out}");
    assert!(out.contains("default/other (class \"traefik\")"), "{out}");
}

#[test]
fn bad_configuration_is_reported_with_field_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pylon.toml");
    std::fs::write(
        &config,
        "[listen]\nhttp = \"nope\"\n[proxy]\nread-timeout = \"soon\"\n",
    )
    .unwrap();
    let (code, _, err) = pylon(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("listen.http"), "{err}");
    assert!(err.contains("proxy.read-timeout"), "{err}");

    std::fs::write(&config, "[proxy]\nunknown-key = 1\n").unwrap();
    let (code, _, err) = pylon(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown-key"), "{err}");

    let (code, _, err) = pylon(&[
        "run",
        "--manifests",
        "/nonexistent/dir",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/dir"), "{err}");
}

#[test]
fn a_taken_port_stops_pylon_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let free = || {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let (http, admin) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pylon.toml");
    std::fs::write(
        &config,
        format!("[listen]\nhttp = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:{admin}\"\n"),
    )
    .unwrap();
    let (code, _, err) = pylon(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "--manifests",
        dir.path().to_str().unwrap(),
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (https)")),
        "{err}"
    );
}

#[test]
fn version_is_printed() {
    let (code, out, _) = pylon(&["version"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), format!("pylon {}", env!("CARGO_PKG_VERSION")));
}
