//! `/etc/pikube/config.yaml`: a file whose keys are the flag names of a command (as k3s's
//! config file). Its values come first on the command line, so flags given by hand win;
//! list values repeat the flag.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_yaml::Value;

/// Turns the file's `key: value` pairs into flags, checking every key against `known`
/// (the command's long flag names).
pub fn to_args(path: &Path, text: &str, known: &[String]) -> Result<Vec<OsString>> {
    let doc: Value = serde_yaml::from_str(text)
        .with_context(|| format!("{} is not valid YAML", path.display()))?;
    let map = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        _ => bail!(
            "{} must be a mapping of flag names to values",
            path.display()
        ),
    };
    let mut args = Vec::new();
    for (k, v) in map {
        let Value::String(key) = k else {
            bail!("{}: keys must be flag names", path.display())
        };
        if !known.contains(&key) {
            bail!(
                "{}: unknown key {key:?} (keys are the flag names, e.g. data-dir)",
                path.display()
            );
        }
        let flag = format!("--{key}");
        let scalar = |v: &Value| -> Result<String> {
            Ok(match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => bail!(
                    "{}: {key} must be a string, number or boolean",
                    path.display()
                ),
            })
        };
        match &v {
            Value::Bool(true) => args.push(flag.into()),
            Value::Bool(false) | Value::Null => {}
            Value::Sequence(items) => {
                for item in items {
                    args.push(flag.clone().into());
                    args.push(scalar(item)?.into());
                }
            }
            other => {
                args.push(flag.into());
                args.push(scalar(other)?.into());
            }
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags() {
        let known: Vec<String> = [
            "data-dir",
            "https-listen-port",
            "disable-agent",
            "node-ip",
            "cluster-init",
        ]
        .map(String::from)
        .to_vec();
        let args = to_args(
            Path::new("c.yaml"),
            "data-dir: /srv/pikube\nhttps-listen-port: 7443\ndisable-agent: true\ncluster-init: false\nnode-ip: [10.0.0.2, 10.0.0.3]\n",
            &known,
        )
        .unwrap();
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--data-dir",
                "/srv/pikube",
                "--https-listen-port",
                "7443",
                "--disable-agent",
                "--node-ip",
                "10.0.0.2",
                "--node-ip",
                "10.0.0.3"
            ]
        );
        let err = to_args(Path::new("c.yaml"), "data_dir: /x\n", &known)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"data_dir\""), "{err}");
        assert!(to_args(Path::new("c.yaml"), "- a\n", &known).is_err());
        assert!(to_args(Path::new("c.yaml"), "data-dir: {a: 1}\n", &known).is_err());
        assert!(to_args(Path::new("c.yaml"), "", &known).unwrap().is_empty());
    }
}
