//! What ships: the Dockerfile, docker-compose.yml and the deploy examples, checked as far as a
//! machine without a Docker engine allows (every path, stage, port, signal and timeout they
//! name), and `conveyor health`, which the image's HEALTHCHECK runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `config/production.toml`'s grace period and ops port: what the platforms must respect.
fn production() -> (u64, u16) {
    let config: toml::Value = toml::from_str(&read("config/production.toml")).unwrap();
    let grace = config["shutdown"]["grace_secs"].as_integer().unwrap() as u64;
    let addr: std::net::SocketAddr = config["ops"]["listen_addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (grace, addr.port())
}

/// (instruction, arguments), e.g. ("COPY", "src ./src").
type Instruction = (String, String);

/// (stage name, base image, instructions).
type Stage = (String, String, Vec<Instruction>);

/// The Dockerfile's instructions (continuations joined, comments dropped), by stage.
struct Dockerfile {
    args: BTreeMap<String, String>,
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn parse(text: &str) -> Self {
        let mut logical = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => current.push_str(&format!("{} ", part.trim())),
                None => {
                    current.push_str(trimmed);
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
        let mut args = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for line in logical {
            let (instruction, rest) = line.split_once(' ').unwrap_or((&line, ""));
            let (instruction, rest) = (instruction.to_uppercase(), rest.trim().to_owned());
            match instruction.as_str() {
                "ARG" if stages.is_empty() => {
                    let (k, v) = rest.split_once('=').expect("ARG with a default");
                    args.insert(k.to_owned(), v.to_owned());
                }
                "FROM" => {
                    let parts: Vec<&str> = rest.split_whitespace().collect();
                    let mut image = parts[0].to_owned();
                    for (k, v) in &args {
                        image = image.replace(&format!("${{{k}}}"), v);
                    }
                    let name = match parts.as_slice() {
                        [_, as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_owned(),
                        _ => format!("stage{}", stages.len()),
                    };
                    stages.push((name, image, Vec::new()));
                }
                _ => stages
                    .last_mut()
                    .expect("an instruction before FROM")
                    .2
                    .push((instruction, rest)),
            }
        }
        Self { args, stages }
    }

    fn stage(&self, name: &str) -> &[Instruction] {
        &self
            .stages
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no stage {name}"))
            .2
    }
}

#[test]
fn every_path_stage_port_and_signal_in_the_dockerfile_is_real() {
    let file = Dockerfile::parse(&read("Dockerfile"));
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    let (_, port) = production();

    // Base images are pinned to a version, never `latest`.
    for (_, image, _) in &file.stages {
        if file.stages.iter().any(|(name, _, _)| name == image) {
            continue; // an earlier stage
        }
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        assert!(
            tag != "latest" && !tag.is_empty(),
            "{image} is not pinned to a version"
        );
    }
    assert!(
        file.args["RUST_IMAGE"].contains("1.95"),
        "the toolchain meets rust-version: {}",
        file.args["RUST_IMAGE"]
    );

    let mut stages_so_far = Vec::new();
    for (name, _, instructions) in &file.stages {
        for (instruction, rest) in instructions {
            if instruction != "COPY" {
                continue;
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let Some(from) = words[0].strip_prefix("--from=") {
                assert!(
                    stages_so_far.contains(&from.to_owned()),
                    "COPY --from={from} in {name}: no earlier stage of that name"
                );
                continue;
            }
            for source in &words[..words.len() - 1] {
                assert!(
                    repo().join(source).exists(),
                    "COPY {source} in stage {name}: no such path in the repository"
                );
                assert!(
                    !ignored.iter().any(|i| source.starts_with(i.as_str())),
                    "COPY {source}: excluded by .dockerignore"
                );
            }
        }
        stages_so_far.push(name.clone());
    }

    // The build stage copies every source file Cargo.toml names, and migrations/ (sqlx embeds it).
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let build_copies: Vec<String> = file
        .stage("build")
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, r)| r.clone())
        .collect();
    let mut named = vec!["migrations".to_owned(), "Cargo.lock".to_owned()];
    for section in ["lib", "bin", "example"] {
        let targets = match &manifest[section] {
            toml::Value::Array(targets) => targets.clone(),
            table => vec![table.clone()],
        };
        for t in targets {
            named.push(t["path"].as_str().unwrap().to_owned());
        }
    }
    for path in named {
        assert!(
            build_copies
                .iter()
                .any(|c| c.split_whitespace().any(|w| path.starts_with(w))),
            "{path} is needed to build but the build stage does not copy it"
        );
    }

    let runtime = file.stage("runtime");
    let one = |what: &str| -> String {
        let found: Vec<&String> = runtime
            .iter()
            .filter(|(i, _)| i == what)
            .map(|(_, r)| r)
            .collect();
        assert_eq!(found.len(), 1, "one {what} in the runtime stage");
        found[0].clone()
    };
    let binary = runtime
        .iter()
        .find(|(i, r)| i == "COPY" && r.contains("target/release/conveyor"))
        .map(|(_, r)| r.split_whitespace().last().unwrap().to_owned())
        .expect("the runtime stage copies the binary");
    let user = one("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0, "runs as non-root");
    assert_eq!(one("EXPOSE"), port.to_string(), "EXPOSE is the ops port");
    assert_eq!(one("STOPSIGNAL"), "SIGTERM");
    let health = one("HEALTHCHECK");
    assert!(
        health.contains(&format!("CMD [\"{binary}\", \"health\"]")),
        "HEALTHCHECK runs `{binary} health`: {health}"
    );
    assert_eq!(one("ENTRYPOINT"), format!("[\"{binary}\"]"));
    let env = one("ENV");
    assert!(env.contains("CONVEYOR_ENV=production"), "{env}");
    let workdir = one("WORKDIR");
    assert!(
        env.contains(&format!("CONVEYOR_CONFIG_DIR={workdir}/config")),
        "the config dir is where config/ is copied: {env}"
    );
    assert!(
        runtime
            .iter()
            .any(|(i, r)| i == "COPY" && r == "config ./config"),
        "config/ ships"
    );
    assert!(
        runtime
            .iter()
            .any(|(i, r)| i == "COPY" && r == "migrations ./migrations"),
        "migrations/ ships"
    );
}

#[test]
fn compose_pins_localstack_and_wires_init_steps_health_and_stop_grace() {
    let compose: serde_yaml::Value = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    let services = &compose["services"];
    let (grace, _) = production();

    let image = services["localstack"]["image"].as_str().unwrap();
    let (reference, digest) = image.split_once("@sha256:").expect("pinned by digest");
    assert_eq!(digest.len(), 64, "a sha256 digest: {image}");
    assert!(digest.chars().all(|c| c.is_ascii_hexdigit()));
    let tag = reference.strip_prefix("localstack/localstack:").unwrap();
    let major: u32 = tag.split('.').next().unwrap().parse().unwrap();
    assert!(
        major < 2026 && tag.split('.').count() == 3,
        "an exact pre-2026 LocalStack release (later images need an auth token): {tag}"
    );
    assert_eq!(
        services["localstack"]["environment"]["SERVICES"].as_str(),
        Some("sqs,events,sts,s3,sns,ses"),
        "S3 for the notification drops bucket `infra up` provisions, SNS and SES (v1) for delivery"
    );

    let command = |service: &str| -> Vec<String> {
        services[service]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(command("infra"), ["infra", "up"]);
    assert_eq!(command("migrate"), ["migrate"]);
    assert_eq!(command("conveyor"), ["run"]);
    let depends = &services["conveyor"]["depends_on"];
    for (service, condition) in [
        ("infra", "service_completed_successfully"),
        ("migrate", "service_completed_successfully"),
        ("neo4j", "service_healthy"),
    ] {
        assert_eq!(
            depends[service]["condition"].as_str(),
            Some(condition),
            "conveyor waits for {service}"
        );
    }
    for service in ["localstack", "postgres", "neo4j", "conveyor"] {
        assert!(
            services[service]["healthcheck"]["test"].is_sequence(),
            "{service} has a health check"
        );
    }
    let env = &services["conveyor"]["environment"];
    assert_eq!(env["CONVEYOR_ENV"].as_str(), Some("local"));
    assert!(
        read("config/local.toml").contains("extractor = \"patterns\""),
        "compose runs offline"
    );
    let stop: u64 = services["conveyor"]["stop_grace_period"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(stop > grace, "stop_grace_period {stop}s > grace {grace}s");
}

#[test]
fn the_ecs_task_definition_respects_the_grace_period_and_takes_secrets_by_reference() {
    let task: Value = serde_json::from_str(&read("deploy/ecs-task-definition.json")).unwrap();
    let (grace, port) = production();
    let c = &task["containerDefinitions"][0];
    let stop = c["stopTimeout"].as_u64().unwrap();
    assert!(
        stop > grace && stop <= 120,
        "stopTimeout {stop} must exceed grace_secs {grace} (Fargate allows ≤ 120)"
    );
    assert_eq!(
        c["healthCheck"]["command"],
        serde_json::json!(["CMD", "/usr/local/bin/conveyor", "health"])
    );
    assert_eq!(
        c["portMappings"][0]["containerPort"].as_u64(),
        Some(u64::from(port))
    );
    assert_eq!(c["logConfiguration"]["logDriver"], "awslogs");
    assert!(
        task["taskRoleArn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:iam::")
    );
    let secret_names = [
        "DATABASE_URL",
        "NEO4J_PASSWORD",
        "OPENAI_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
    ];
    for s in c["secrets"].as_array().unwrap() {
        let from = s["valueFrom"].as_str().unwrap();
        assert!(
            from.starts_with("arn:aws:secretsmanager:") || from.starts_with("arn:aws:ssm:"),
            "{from}"
        );
    }
    for e in c["environment"].as_array().unwrap() {
        assert!(
            !secret_names.contains(&e["name"].as_str().unwrap()),
            "{} is a secret: pass it in `secrets`",
            e["name"]
        );
    }
    let env: BTreeMap<&str, &str> = c["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert_eq!(env["CONVEYOR_ENV"], "production");
    assert!(env.contains_key("CONVEYOR_QUEUES__MAIN__URL"));
}

#[test]
fn the_fly_config_waits_out_the_drain_and_checks_healthz() {
    let fly: toml::Value = toml::from_str(&read("deploy/fly.toml")).unwrap();
    let (grace, port) = production();
    assert_eq!(fly["kill_signal"].as_str(), Some("SIGTERM"));
    let kill = fly["kill_timeout"].as_integer().unwrap() as u64;
    assert!(kill > grace, "kill_timeout {kill} > grace_secs {grace}");
    let alive = &fly["checks"]["alive"];
    assert_eq!(alive["path"].as_str(), Some("/healthz"));
    assert_eq!(alive["port"].as_integer(), Some(i64::from(port)));
    for key in fly["env"].as_table().unwrap().keys() {
        assert!(
            ![
                "DATABASE_URL",
                "NEO4J_PASSWORD",
                "OPENAI_API_KEY",
                "AWS_SECRET_ACCESS_KEY"
            ]
            .contains(&key.as_str()),
            "{key} belongs in `fly secrets set`"
        );
    }
}

#[test]
fn conveyor_health_answers_for_the_running_daemon_and_fails_without_one() {
    let port = closed_port();
    let toml = format!("[ops]\nlisten_addr = \"0.0.0.0:{port}\"\n");
    let down = Conveyor::new(&toml).output(&["health"]);
    assert_eq!(down.code, Some(1), "{}", down.all());
    assert!(
        down.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        down.all()
    );

    let mut daemon = Conveyor::new(&toml).spawn_daemon();
    let up = Conveyor::new(&toml).output(&["health"]);
    assert_eq!(up.code, Some(0), "{}", up.all());
    assert_eq!(up.stdout.trim(), "ok");
    let ready = Conveyor::new(&toml).output(&["health", "--ready"]);
    assert_eq!(ready.code, Some(0), "{}", ready.all());
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, Some(0));
}
