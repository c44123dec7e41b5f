//! `notify prefs get|set|import`: users' preferences read, written from flags, or imported
//! from a JSON-lines file; errors name the line and the field, never the value.

use super::{PrefsCommand, SetArgs};
use crate::config::Config;
use crate::notify::prefs::{PreferenceStore, Preferences};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::process::ExitCode;

pub(super) async fn prefs(config: &Config, command: PrefsCommand) -> anyhow::Result<ExitCode> {
    let url = config.secrets.database_url.as_ref().ok_or_else(|| {
        anyhow::anyhow!("DATABASE_URL is not set: preferences live in PostgreSQL; export it")
    })?;
    let pool = crate::postgres::connect(&config.database, url).await?;
    // The daemon applies migrations at startup; an operator may import before its first start.
    crate::postgres::migrate(&pool).await?;
    let store = PreferenceStore::new(pool);
    match command {
        PrefsCommand::Get { tenant_id, user_id } => {
            let tenant = uuid::Uuid::parse_str(&tenant_id)
                .map_err(|_| anyhow::anyhow!("--tenant-id {tenant_id:?} is not a UUID"))?;
            match store.get(tenant, &user_id).await? {
                Some(p) => {
                    println!("{}", serde_json::to_string_pretty(&p)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no preferences stored for this user in tenant {tenant}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PrefsCommand::Set(args) => {
            let document = set_document(&args);
            let p = Preferences::parse(&document, "preferences")
                .map_err(|e| anyhow::anyhow!("{}", flag_error(&e.to_string())))?;
            store.put(std::slice::from_ref(&p)).await?;
            println!(
                "{}",
                json!({"stored": 1, "tenant_id": p.tenant_id, "user_id": p.user_id, "channels": p.channels.keys().collect::<Vec<_>>()})
            );
            Ok(ExitCode::SUCCESS)
        }
        PrefsCommand::Import { file } => {
            let origin = file.display().to_string();
            let text =
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            let mut valid = Vec::new();
            let mut invalid = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let parsed = match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(map)) => {
                        Preferences::parse(&map, "line").map_err(|e| e.to_string())
                    }
                    Ok(_) => Err("expected a JSON object".to_owned()),
                    Err(e) => Err(format!("not JSON: {}", crate::safe::json_error(&e))),
                };
                match parsed {
                    Ok(p) => valid.push(p),
                    Err(e) => invalid.push(format!("{origin}:{}: {e}", i + 1)),
                }
            }
            if !invalid.is_empty() {
                for line in &invalid {
                    eprintln!("{line}");
                }
                anyhow::bail!(
                    "{} invalid line(s): nothing imported; fix them and import again",
                    invalid.len()
                );
            }
            store.put(&valid).await?;
            println!("{}", json!({"stored": valid.len()}));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The preferences document `prefs set` builds from its flags.
pub(super) fn set_document(args: &SetArgs) -> Map<String, Value> {
    let mut channels = BTreeMap::new();
    for (name, value) in [
        ("email", &args.email),
        ("sms", &args.sms),
        ("push", &args.push),
        ("webhook", &args.webhook),
    ] {
        if let Some(v) = value {
            channels.insert(name, v.clone());
        }
    }
    let mut doc = json!({
        "tenantId": args.tenant_id, "userId": args.user_id, "channels": channels,
        "optOut": args.opt_out, "failoverOrder": args.failover_order,
    });
    if let Some(segment) = &args.segment {
        doc["segment"] = json!(segment);
    }
    if let (Some(hours), Some(zone)) = (&args.quiet_hours, &args.time_zone) {
        let (start, end) = hours.split_once('-').unwrap_or((hours.as_str(), ""));
        doc["quietHours"] = json!({"start": start, "end": end, "timeZone": zone});
    }
    doc.as_object().cloned().unwrap_or_default()
}

/// A document error in the words of `prefs set`'s flags.
pub(super) fn flag_error(error: &str) -> String {
    let flags = [
        ("preferences.channels.email", "--email"),
        ("preferences.channels.sms", "--sms"),
        ("preferences.channels.push", "--push"),
        ("preferences.channels.webhook", "--webhook"),
        ("preferences.quietHours.timeZone", "--time-zone"),
        ("preferences.quietHours", "--quiet-hours"),
        ("preferences.optOut", "--opt-out"),
        ("preferences.failoverOrder", "--failover-order"),
        ("preferences.tenantId", "--tenant-id"),
        ("preferences.userId", "--user-id"),
        ("preferences.segment", "--segment"),
    ];
    for (path, flag) in flags {
        if let Some(rest) = error.strip_prefix(path) {
            return format!("{flag}{rest}");
        }
    }
    error.to_owned()
}
