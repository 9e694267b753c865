//! The deployment files under `deploy/` checked against the router itself: every flag
//! and `MCP_ROUTER_*` variable a router container uses must exist in the real CLI, the
//! container's whole command line and the TOML file in its ConfigMap must load through
//! the real loader, the probes must reach `/healthz` and `/readyz` on the admin
//! listener, and the image must run the workspace's binary.

use clap::{CommandFactory, Parser};
use mcp_router_tokio::Cli;
use serde_yaml_ng::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime-tokio sits in the workspace")
        .to_path_buf()
}

/// One YAML document and the file it came from.
struct Doc {
    file: String,
    value: Value,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            out.push(p);
        }
    }
}

/// Every YAML document under `deploy/kubernetes/`; a file that does not parse fails.
fn documents() -> Vec<Doc> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    assert!(!files.is_empty(), "no YAML under {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.strip_prefix(repo_root()).unwrap().display().to_string();
        docs.extend(parse_documents(&name, &text));
    }
    docs
}

fn parse_documents(file: &str, text: &str) -> Vec<Doc> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: invalid YAML: {e}")))
        .filter(|v| !v.is_null())
        .map(|value| Doc {
            file: file.to_string(),
            value,
        })
        .collect()
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("non-scalar command-line item {other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A router container and the pod spec around it.
struct RouterContainer<'a> {
    at: String,
    pod: &'a Value,
    container: &'a Value,
}

fn pod_spec(v: &Value) -> Option<&Value> {
    match kind(v) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&v["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&v["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        "Pod" => Some(&v["spec"]),
        _ => None,
    }
}

/// A container is the router's when its image or its name says `mcp-router`.
fn router_containers(docs: &[Doc]) -> Vec<RouterContainer<'_>> {
    let mut out = Vec::new();
    for d in docs {
        let Some(pod) = pod_spec(&d.value) else {
            continue;
        };
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_sequence().into_iter().flatten() {
                let image = c["image"].as_str().unwrap_or("");
                let image_name = image.rsplit('/').next().unwrap_or("");
                if image_name.starts_with("mcp-router") || c["name"].as_str() == Some("mcp-router")
                {
                    out.push(RouterContainer {
                        at: format!(
                            "{} {}/{} container {}",
                            d.file,
                            kind(&d.value),
                            name(&d.value),
                            c["name"].as_str().unwrap_or("?")
                        ),
                        pod,
                        container: c,
                    });
                }
            }
        }
    }
    out
}

/// The command line a router container runs, without the binary: `command` past the
/// binary (if `command` is set, its first item must be the binary), then `args`.
fn router_argv(rc: &RouterContainer<'_>) -> Vec<String> {
    let mut command = strings(&rc.container["command"]);
    if !command.is_empty() {
        let bin = command.remove(0);
        assert!(
            bin.rsplit('/').next() == Some(binary_name().as_str()),
            "{}: command runs {bin:?}, not the {} binary",
            rc.at,
            binary_name()
        );
    }
    command.extend(strings(&rc.container["args"]));
    command
}

/// The long names and environment variables of the real CLI.
struct CliNames {
    longs: BTreeSet<String>,
    envs: BTreeSet<String>,
}

fn cli_names() -> CliNames {
    let cmd = Cli::command();
    let mut longs = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            longs.insert(l.to_string());
        }
        if let Some(e) = a.get_env() {
            envs.insert(e.to_string_lossy().into_owned());
        }
    }
    // Built in by clap.
    longs.insert("help".into());
    longs.insert("version".into());
    CliNames { longs, envs }
}

/// Every `--flag` on the command line that the CLI does not have, and every short flag.
fn unknown_flags(argv: &[String], names: &CliNames) -> Vec<String> {
    let mut bad = Vec::new();
    for a in argv {
        if let Some(flag) = a.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap_or("");
            if !names.longs.contains(flag) {
                bad.push(format!("--{flag}"));
            }
        } else if a.starts_with('-')
            && a.len() > 1
            && !a[1..].starts_with(|c: char| c.is_ascii_digit())
        {
            bad.push(format!("{a} (the router has no short flags)"));
        }
    }
    bad
}

/// Every `MCP_ROUTER_*` variable among `names` that the CLI does not read.
fn unknown_envs<'a>(vars: impl IntoIterator<Item = &'a str>, names: &CliNames) -> Vec<String> {
    vars.into_iter()
        .filter(|v| v.starts_with("MCP_ROUTER_") && !names.envs.contains(*v))
        .map(str::to_string)
        .collect()
}

fn env_names(container: &Value) -> Vec<&str> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect()
}

/// The value of `--flag v` or `--flag=v`.
fn flag_value(argv: &[String], flag: &str) -> Option<String> {
    let long = format!("--{flag}");
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        if *a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_string());
        }
    }
    None
}

/// The workspace's binary, as `runtime-tokio/Cargo.toml` names it.
fn binary_name() -> String {
    let text = std::fs::read_to_string(repo_root().join("runtime-tokio/Cargo.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&text).unwrap();
    let bins = manifest["bin"]
        .as_array()
        .expect("[[bin]] in runtime-tokio");
    assert_eq!(bins.len(), 1, "one binary expected");
    bins[0]["name"].as_str().unwrap().to_string()
}

/// A container port by number or by name.
fn container_port(container: &Value, port: &Value) -> Option<u64> {
    match port {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => container["ports"]
            .as_sequence()?
            .iter()
            .find(|p| p["name"].as_str() == Some(s.as_str()))?["containerPort"]
            .as_u64(),
        _ => None,
    }
}

/// The router TOML a router container reads: `--config` must name a file inside a
/// mounted ConfigMap of the same pod. Returns (ConfigMap name, key, file text).
fn router_toml(docs: &[Doc], rc: &RouterContainer<'_>, config: &str) -> (String, String, String) {
    let config = Path::new(config);
    for m in rc.container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let mount = Path::new(m["mountPath"].as_str().unwrap_or(""));
        let key = match m["subPath"].as_str() {
            Some(sub) if mount == config => sub.to_string(),
            Some(_) => continue,
            None => match config.strip_prefix(mount) {
                Ok(rest) => rest.display().to_string(),
                Err(_) => continue,
            },
        };
        let vol = m["name"].as_str().unwrap_or("");
        let volume = rc.pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"].as_str() == Some(vol))
            .unwrap_or_else(|| panic!("{}: volume {vol:?} is mounted but not declared", rc.at));
        let cm = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: --config is on volume {vol:?}, not a ConfigMap", rc.at));
        let doc = docs
            .iter()
            .find(|d| kind(&d.value) == "ConfigMap" && name(&d.value) == cm)
            .unwrap_or_else(|| panic!("{}: ConfigMap {cm:?} is not in deploy/kubernetes", rc.at));
        let text = doc.value["data"][key.as_str()]
            .as_str()
            .unwrap_or_else(|| panic!("{}: ConfigMap {cm:?} has no key {key:?}", doc.file));
        return (cm.to_string(), key, text.to_string());
    }
    panic!(
        "{}: --config {} is not inside any volume mount",
        rc.at,
        config.display()
    );
}

fn temp_file(tag: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-router-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(tag);
    std::fs::write(&p, text).unwrap();
    p
}

fn the_router_containers(docs: &[Doc]) -> Vec<RouterContainer<'_>> {
    let rcs = router_containers(docs);
    assert!(!rcs.is_empty(), "no router container in deploy/kubernetes");
    rcs
}

#[test]
fn manifests_parse_and_deploy_the_router_with_redis_and_a_headless_backend_service() {
    let docs = documents();
    for d in &docs {
        assert!(
            d.value["apiVersion"].is_string() && !kind(&d.value).is_empty(),
            "{}: a document without apiVersion/kind",
            d.file
        );
    }
    let rcs = the_router_containers(&docs);
    let deployment = docs
        .iter()
        .find(|d| {
            kind(&d.value) == "Deployment"
                && pod_spec(&d.value).is_some_and(|p| std::ptr::eq(p, rcs[0].pod))
        })
        .expect("the router runs as a Deployment");
    assert!(
        deployment.value["spec"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "{}: the router Deployment should run several replicas",
        deployment.file
    );
    let headless = docs
        .iter()
        .find(|d| kind(&d.value) == "Service" && name(&d.value) == "mcp-headless")
        .expect("a Service named mcp-headless");
    assert_eq!(
        headless.value["spec"]["clusterIP"].as_str(),
        Some("None"),
        "{}: mcp-headless must be headless (clusterIP: None)",
        headless.file
    );
    assert!(
        docs.iter().any(|d| kind(&d.value) == "StatefulSet"
            && d.value["spec"]["serviceName"].as_str() == Some("mcp-headless")),
        "a StatefulSet governed by mcp-headless"
    );
    // A kustomization must list every other file, or `kubectl apply -k` misses it;
    // an opt-in kustomize Component (deploy/kubernetes/sentinel/) is named under
    // `components` when it is switched on, and is not a resource.
    if let Some(k) = docs.iter().find(|d| kind(&d.value) == "Kustomization") {
        let listed: BTreeSet<String> = strings(&k.value["resources"]).into_iter().collect();
        let dir = Path::new(&k.file).parent().unwrap();
        let files: BTreeSet<String> = docs
            .iter()
            .filter(|d| d.file != k.file && kind(&d.value) != "Component")
            .map(|d| {
                Path::new(&d.file)
                    .strip_prefix(dir)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        let missing: Vec<_> = files.difference(&listed).collect();
        assert!(missing.is_empty(), "{}: resources miss {missing:?}", k.file);
    }
}

#[test]
fn router_flags_and_environment_exist_in_the_cli() {
    let docs = documents();
    let names = cli_names();
    let mut problems = Vec::new();
    for rc in the_router_containers(&docs) {
        let argv = router_argv(&rc);
        let bad = unknown_flags(&argv, &names);
        if !bad.is_empty() {
            problems.push(format!(
                "{}: flags the router does not have: {bad:?}",
                rc.at
            ));
        }
        let bad = unknown_envs(env_names(rc.container), &names);
        if !bad.is_empty() {
            problems.push(format!(
                "{}: variables the router does not read: {bad:?}",
                rc.at
            ));
        }
        for from in rc.container["envFrom"].as_sequence().into_iter().flatten() {
            let prefix = from["prefix"].as_str().unwrap_or("");
            if prefix.starts_with("MCP_ROUTER_") {
                problems.push(format!(
                    "{}: envFrom with prefix {prefix:?} cannot be checked; list the variables",
                    rc.at
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn router_command_line_loads_through_the_real_loader() {
    let docs = documents();
    for rc in the_router_containers(&docs) {
        let mut argv = router_argv(&rc);
        // Read the ConfigMap's file where the pod would, but from a temp file.
        if let Some(config) = flag_value(&argv, "config") {
            let (_, key, text) = router_toml(&docs, &rc, &config);
            let local = temp_file(&format!("cmdline-{key}"), &text);
            let local = local.to_str().unwrap().to_string();
            for a in argv.iter_mut() {
                if *a == config {
                    a.clone_from(&local);
                } else if *a == format!("--config={config}") {
                    *a = format!("--config={local}");
                }
            }
        }
        let mut full = vec!["mcp-router".to_string()];
        full.extend(argv);
        let cli = Cli::try_parse_from(&full)
            .unwrap_or_else(|e| panic!("{}: the command line does not parse: {e}", rc.at));
        cli.settings()
            .unwrap_or_else(|e| panic!("{}: the router would refuse to start: {e}", rc.at));
    }
}

#[test]
fn configmap_toml_loads_through_the_real_loader_on_its_own() {
    // The file alone (no flags): this is what a SIGHUP reload re-reads, and it must
    // name the backends itself.
    let docs = documents();
    let mut seen = 0;
    for rc in the_router_containers(&docs) {
        let argv = router_argv(&rc);
        let Some(config) = flag_value(&argv, "config") else {
            continue;
        };
        let (cm, key, text) = router_toml(&docs, &rc, &config);
        let p = temp_file(&format!("alone-{key}"), &text);
        let cli = Cli {
            config: Some(p),
            ..Default::default()
        };
        cli.settings().unwrap_or_else(|e| {
            panic!("ConfigMap {cm} key {key}: the real loader refuses it: {e}")
        });
        seen += 1;
    }
    assert!(
        seen > 0,
        "no router container uses --config with a ConfigMap"
    );
}

#[test]
fn probes_and_scraping_use_the_admin_listener() {
    let docs = documents();
    for rc in the_router_containers(&docs) {
        let argv = router_argv(&rc);
        let admin: SocketAddr = flag_value(&argv, "admin-listen")
            .unwrap_or_else(|| panic!("{}: no --admin-listen", rc.at))
            .parse()
            .unwrap_or_else(|e| panic!("{}: --admin-listen: {e}", rc.at));
        assert!(
            admin.ip().is_unspecified(),
            "{}: --admin-listen {admin} is unreachable by the kubelet; listen on 0.0.0.0",
            rc.at
        );
        if let Some(listen) = flag_value(&argv, "listen") {
            let listen: SocketAddr = listen.parse().unwrap();
            assert_ne!(
                listen.port(),
                admin.port(),
                "{}: one port for both listeners",
                rc.at
            );
        }
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &rc.container[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{}: {probe} path", rc.at);
            assert_eq!(
                container_port(rc.container, &get["port"]),
                Some(u64::from(admin.port())),
                "{}: {probe} must target the admin port {}",
                rc.at,
                admin.port()
            );
        }
        assert!(
            rc.container["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|p| p["containerPort"].as_u64() == Some(u64::from(admin.port()))),
            "{}: the admin port is not declared",
            rc.at
        );
    }
    // Scrape annotations on the router pods point at the admin port's /metrics.
    for d in docs.iter().filter(|d| kind(&d.value) == "Deployment") {
        let ann = &d.value["spec"]["template"]["metadata"]["annotations"];
        if ann["prometheus.io/scrape"].as_str() != Some("true") {
            continue;
        }
        let rcs = router_containers(std::slice::from_ref(d));
        assert!(
            !rcs.is_empty(),
            "{}: scrape annotations on a non-router pod",
            d.file
        );
        let admin = flag_value(&router_argv(&rcs[0]), "admin-listen").unwrap();
        let port = admin.rsplit(':').next().unwrap();
        assert_eq!(ann["prometheus.io/port"].as_str(), Some(port), "{}", d.file);
        assert_eq!(
            ann["prometheus.io/path"].as_str(),
            Some("/metrics"),
            "{}",
            d.file
        );
    }
}

#[test]
fn router_service_targets_the_client_listener() {
    let docs = documents();
    let rcs = the_router_containers(&docs);
    let rc = &rcs[0];
    let argv = router_argv(rc);
    let listen: SocketAddr = flag_value(&argv, "listen")
        .expect("--listen")
        .parse()
        .expect("--listen is an address");
    let svc = docs
        .iter()
        .find(|d| kind(&d.value) == "Service" && name(&d.value) == "mcp-router")
        .expect("a Service named mcp-router");
    for p in svc.value["spec"]["ports"].as_sequence().unwrap() {
        let target = if p["targetPort"].is_null() {
            &p["port"]
        } else {
            &p["targetPort"]
        };
        assert_eq!(
            container_port(rc.container, target),
            Some(u64::from(listen.port())),
            "{}: port {:?} does not reach --listen",
            svc.file,
            p["name"]
        );
    }
}

/// The instruction lines of a Dockerfile, continuation lines joined.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_builds_and_runs_the_workspace_binary() {
    let text = std::fs::read_to_string(repo_root().join("deploy/Dockerfile")).unwrap();
    let bin = binary_name();
    let ins = dockerfile_instructions(&text);
    let entry: Vec<_> = ins
        .iter()
        .filter(|l| l.starts_with("ENTRYPOINT "))
        .collect();
    assert_eq!(entry.len(), 1, "one ENTRYPOINT");
    let exec: Vec<String> = serde_json::from_str(entry[0]["ENTRYPOINT ".len()..].trim())
        .expect("ENTRYPOINT in exec (JSON array) form, so the router is PID 1 and gets signals");
    assert_eq!(exec[0], format!("/usr/local/bin/{bin}"), "ENTRYPOINT");
    assert!(
        ins.iter().any(|l| l.starts_with("RUN ")
            && l.contains("cargo build")
            && l.contains("--release")
            && l.contains(&format!("--bin {bin}"))),
        "no `cargo build --release --bin {bin}`"
    );
    assert!(
        ins.iter().any(
            |l| l.starts_with("COPY --from=") && l.ends_with(&format!(" /usr/local/bin/{bin}"))
        ),
        "the binary is not copied to /usr/local/bin/{bin}"
    );
    let user = ins
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER");
    assert!(
        !user.contains("root") && !user.split_whitespace().nth(1).unwrap().starts_with("0"),
        "{user}"
    );
    let names = cli_names();
    let vars = ins
        .iter()
        .filter_map(|l| l.strip_prefix("ENV "))
        .flat_map(|l| l.split_whitespace().filter_map(|kv| kv.split('=').next()));
    let bad = unknown_envs(vars, &names);
    assert!(
        bad.is_empty(),
        "deploy/Dockerfile sets variables the router does not read: {bad:?}"
    );
}

/// The checks catch mistakes: a misspelled flag, an unknown variable, a missing
/// router container.
#[test]
fn the_checks_can_fail() {
    let names = cli_names();
    let argv: Vec<String> = [
        "--listen",
        "0.0.0.0:8080",
        "--sesion-ttl=5m",
        "-v",
        "--store",
        "memory",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        unknown_flags(&argv, &names),
        vec![
            "--sesion-ttl".to_string(),
            "-v (the router has no short flags)".to_string()
        ]
    );
    assert_eq!(
        unknown_envs(
            ["MCP_ROUTER_STORE_PASWORD", "MCP_ROUTER_STORE", "RUST_LOG"],
            &names
        ),
        vec!["MCP_ROUTER_STORE_PASWORD".to_string()]
    );
    let docs = parse_documents(
        "inline",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers:\n        - {name: app, image: 'registry.example/mcp-router:1', args: ['--listn', '0.0.0.0:1']}\n---\n",
    );
    let rcs = router_containers(&docs);
    assert_eq!(rcs.len(), 1);
    assert_eq!(
        unknown_flags(&router_argv(&rcs[0]), &names),
        vec!["--listn".to_string()]
    );
}
