//! examples/kubernetes/deployment.yaml runs the image `container/build` makes,
//! locked down, with probes on the daemon's endpoints, and a stagesync
//! command line this build accepts.

use std::path::Path;

use clap::Parser;
use serde_json::Value;
use stagesync::cli::Cli;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

fn deployment() -> Value {
    serde_saphyr::from_str(&read("examples/kubernetes/deployment.yaml")).expect("valid YAML")
}

fn container<'a>(spec: &'a Value, name: &str) -> &'a Value {
    spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// A container's `args`.
fn args(container: &Value) -> Vec<&str> {
    container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect()
}

/// The value of `--NAME=` in a container's `args`.
fn flag<'a>(container: &'a Value, name: &str) -> &'a str {
    let prefix = format!("--{name}=");
    args(container)
        .into_iter()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {prefix}"))
}

/// `128Mi` in bytes.
fn mebibytes(quantity: &Value) -> u64 {
    let q = quantity.as_str().expect("a quantity");
    q.strip_suffix("Mi").expect(q).parse::<u64>().expect(q) << 20
}

#[test]
fn the_deployment_runs_the_image_the_build_script_tags() {
    let d = deployment();
    let spec = &d["spec"]["template"]["spec"];
    let stagesync = container(spec, "stagesync");
    let image = stagesync["image"].as_str().expect("image");
    assert_eq!(
        image,
        concat!("localhost/stagesync:", env!("CARGO_PKG_VERSION"))
    );
    // The script's default name, with the version it reads from Cargo.toml.
    assert!(
        read("container/env.sh").contains("image=${STAGESYNC_IMAGE:-localhost/stagesync:$version}")
    );
}

#[test]
fn the_deployment_is_locked_down_and_probed() {
    let d = deployment();
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    for name in ["stagesync", "git-sync"] {
        let c = container(spec, name);
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
    }
    let c = container(spec, "stagesync");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    let port = c["ports"][0]["containerPort"].as_u64().expect("port");
    assert_eq!(c["ports"][0]["name"], "http");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect();
    assert!(
        args.contains(&format!("--listen=0.0.0.0:{port}").as_str()),
        "{args:?}"
    );

    // Sized from docs/performance.md: the limit holds the 62.8 MiB a pass
    // over 10,000 stages peaks at; the request, an idle daemon's 18.5 MiB.
    let resources = &c["resources"];
    assert!(mebibytes(&resources["limits"]["memory"]) >= 63 << 20);
    assert!(mebibytes(&resources["requests"]["memory"]) >= 19 << 20);
    assert!(read("docs/performance.md").contains("62.8 MiB"));
    assert!(read("docs/performance.md").contains("18.5 MiB"));

    // A read-only root: the state file lives on a volume.
    let state = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "STAGESYNC_STATE_FILE")
        .expect("STAGESYNC_STATE_FILE");
    let state = state["value"].as_str().expect("a path");
    assert!(
        c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .any(
                |m| state.starts_with(m["mountPath"].as_str().expect("path"))
                    && m["readOnly"] != true
            ),
        "{state} is on no writable volume"
    );
}

#[test]
fn the_deployment_command_line_parses_and_reads_the_git_sync_checkout() {
    let d = deployment();
    let spec = &d["spec"]["template"]["spec"];
    let c = container(spec, "stagesync");
    let mut call = vec!["stagesync"];
    call.extend(args(c));
    if let Err(err) = Cli::try_parse_from(&call) {
        panic!("{call:?}: {err}");
    }
    assert_eq!(call[1], "run");
    let git_sync = container(spec, "git-sync");
    let (root, link) = (flag(git_sync, "root"), flag(git_sync, "link"));
    let dir = call.last().expect("a directory");
    assert!(dir.starts_with(&format!("{root}/{link}/")), "{dir}");
}
