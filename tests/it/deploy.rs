//! The operations kit under `deploy/`, checked with real validators: cfn-lint (installed by
//! `scripts/test`) on the CloudFormation template, the KEDA example parsed as Kubernetes YAML,
//! and every metric and label on the Grafana dashboard checked against what conveyor exports —
//! so renaming a metric in code fails here until the dashboard follows.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn cfn_lint(path: &Path) -> std::process::Output {
    let cfn_lint = std::env::var("CONVEYOR_STACK_CFN_LINT")
        .expect("CONVEYOR_STACK_CFN_LINT: run under scripts/test, which installs cfn-lint");
    std::process::Command::new(cfn_lint)
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn the_cloudformation_template_passes_cfn_lint() {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ecs-alarms-autoscaling.yaml");
    let out = cfn_lint(&template);
    assert!(
        out.status.success(),
        "cfn-lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The linter is live: a misspelt property fails it.
    let broken =
        read("deploy/ecs-alarms-autoscaling.yaml").replace("ScaleInCooldown", "ScaleInCooldwn");
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), broken).unwrap();
    let out = cfn_lint(file.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ScaleInCooldwn"));

    // Backlog per task: messages visible divided by running tasks, the one series returned.
    let doc: serde_yaml::Value = serde_yaml::from_str(&read("deploy/ecs-alarms-autoscaling.yaml"))
        .expect("YAML (cfn-lint reads the intrinsic tags itself)");
    let metrics = &doc["Resources"]["BacklogPerTaskPolicy"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
        ["CustomizedMetricSpecification"]["Metrics"];
    let names: Vec<&str> = metrics
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|m| m["MetricStat"]["Metric"]["MetricName"].as_str())
        .collect();
    assert_eq!(
        names,
        ["ApproximateNumberOfMessagesVisible", "RunningTaskCount"]
    );
    let returned: Vec<&serde_yaml::Value> = metrics
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|m| m["ReturnData"].as_bool() == Some(true))
        .collect();
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0]["Expression"].as_str(), Some("visible / tasks"));
}

#[test]
fn the_keda_example_scales_the_deployment_on_its_queue() {
    let text = read("deploy/keda-scaledobject.yaml");
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["TriggerAuthentication", "ScaledObject"]);
    for doc in &docs {
        assert_eq!(doc["apiVersion"].as_str(), Some("keda.sh/v1alpha1"));
        assert!(doc["metadata"]["name"].as_str().is_some());
    }
    let (auth, scaled) = (&docs[0], &docs[1]);
    assert_eq!(
        auth["spec"]["podIdentity"]["provider"].as_str(),
        Some("aws")
    );
    let spec = &scaled["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"].as_str(), Some("conveyor"));
    assert!(spec["minReplicaCount"].as_u64().unwrap() <= spec["maxReplicaCount"].as_u64().unwrap());
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"].as_str(), Some("aws-sqs-queue"));
    assert_eq!(
        trigger["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let metadata = &trigger["metadata"];
    // KEDA takes trigger metadata as strings only.
    for key in ["queueURL", "awsRegion", "queueLength", "scaleOnInFlight"] {
        assert!(metadata[key].as_str().is_some(), "{key} is a string");
    }
    let url = url::Url::parse(metadata["queueURL"].as_str().unwrap()).unwrap();
    assert!(url.host_str().unwrap().starts_with("sqs."));
    assert!(
        metadata["queueLength"]
            .as_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            > 0
    );
}

/// What conveyor exports, read from the one place its metric names live: every
/// `"conveyor_…"` literal (the names) and every `"label" =>` (the labels).
fn exported(telemetry_source: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for (i, _) in telemetry_source.match_indices('"') {
        let rest = &telemetry_source[i + 1..];
        let Some(end) = rest.find('"') else { break };
        let literal = &rest[..end];
        if literal.starts_with("conveyor_") {
            names.insert(literal.to_owned());
        } else if rest[end + 1..].trim_start().starts_with("=>") {
            labels.insert(literal.to_owned());
        }
    }
    (names, labels)
}

/// Identifiers in a PromQL expression or legend that name conveyor metrics; and the labels the
/// expression groups or filters by.
fn referenced(expr: &str) -> (Vec<String>, Vec<String>) {
    let words: Vec<&str> = expr
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    let metrics = words
        .iter()
        .filter(|w| w.starts_with("conveyor_"))
        .map(|w| w.to_string())
        .collect();
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find(" by (") {
        let inside = &rest[at + 5..];
        let close = inside.find(')').expect("balanced");
        labels.extend(inside[..close].split(',').map(|l| l.trim().to_owned()));
        rest = &inside[close..];
    }
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let inside = &rest[open + 1..];
        let close = inside.find('}').expect("balanced");
        for matcher in inside[..close].split(',') {
            if let Some(label) = matcher.split(['=', '!', '~']).next() {
                labels.push(label.trim().to_owned());
            }
        }
        rest = &inside[close..];
    }
    (metrics, labels)
}

/// Everything on the dashboard that conveyor does not export, and everything it exports that
/// no panel shows.
fn check_dashboard(dashboard: &Value, telemetry_source: &str) -> Vec<String> {
    let (names, labels) = exported(telemetry_source);
    let mut problems = Vec::new();
    let mut shown = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("?");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let (metrics, used) = referenced(expr);
            for metric in metrics {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric.strip_suffix(s).filter(|b| names.contains(*b)))
                    .unwrap_or(&metric);
                if names.contains(base) {
                    shown.insert(base.to_owned());
                } else {
                    problems.push(format!(
                        "{title:?}: {metric} is not a metric conveyor exports"
                    ));
                }
            }
            for label in used {
                if label != "le" && !labels.contains(&label) {
                    problems.push(format!(
                        "{title:?}: label {label:?} is not one conveyor sets"
                    ));
                }
            }
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            for piece in legend.split("{{").skip(1) {
                let label = piece.split("}}").next().unwrap().trim();
                if !labels.contains(label) {
                    problems.push(format!(
                        "{title:?}: legend label {label:?} is not one conveyor sets"
                    ));
                }
            }
        }
    }
    for name in names.difference(&shown) {
        problems.push(format!("{name} is on no panel"));
    }
    problems
}

#[test]
fn every_metric_and_label_on_the_dashboard_is_one_conveyor_exports() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana-dashboard.json")).unwrap();
    let source = read("src/telemetry/mod.rs");
    let problems = check_dashboard(&dashboard, &source);
    assert!(problems.is_empty(), "{problems:#?}");

    // Renaming a metric in code (or a label) fails the check, naming what the dashboard lost.
    let renamed = source.replace("\"conveyor_in_flight\"", "\"conveyor_messages_in_flight\"");
    let problems = check_dashboard(&dashboard, &renamed);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("conveyor_in_flight is not a metric")),
        "{problems:#?}"
    );
    let relabelled = source.replace("\"channel\" =>", "\"medium\" =>");
    assert!(
        check_dashboard(&dashboard, &relabelled)
            .iter()
            .any(|p| p.contains("\"channel\"")),
    );
}

#[test]
fn the_dashboard_is_a_well_formed_grafana_model() {
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana-dashboard.json")).unwrap();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(
        dashboard["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u.len() <= 40)
    );
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(variables, ["datasource", "queue"]);
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} used twice");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().unwrap());
        assert!(x + w <= 24, "{panel:#?} is wider than the grid");
        for row in y..y + h {
            for column in x..x + w {
                assert!(
                    cells.insert((row, column)),
                    "{:?} overlaps another panel",
                    panel["title"]
                );
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{:?} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let depth = expr.chars().try_fold(0i32, |depth, c| {
                let depth = match c {
                    '(' | '{' | '[' => depth + 1,
                    ')' | '}' | ']' => depth - 1,
                    _ => depth,
                };
                (depth >= 0).then_some(depth)
            });
            assert_eq!(depth, Some(0), "unbalanced: {expr}");
        }
    }
}
