//! Bootstrap tokens, as k3s and kubeadm have them: `<id>.<secret>` join tokens kept as
//! Secrets `bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` in kube-system,
//! with an optional expiration. The join endpoint accepts them besides the server's own
//! token, so a token handed to one new machine can expire or be deleted without changing
//! the server's. `pikube token create|list|delete` manages them through the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;

/// The Secret type of bootstrap tokens.
pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
/// Where bootstrap token Secrets live.
pub const NAMESPACE: &str = "kube-system";
/// Name prefix of bootstrap token Secrets (`bootstrap-token-<id>`).
pub const NAME_PREFIX: &str = "bootstrap-token-";
/// The group of nodes that joined with a bootstrap token (k3s names it the same way).
pub const EXTRA_GROUPS: &str = "system:bootstrappers:pikube:default-node-token";

/// A bootstrap token: a public id and a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapToken {
    /// Six lower-case letters or digits; names the Secret.
    pub id: String,
    /// Sixteen lower-case letters or digits.
    pub secret: String,
}

fn token_chars(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl BootstrapToken {
    /// Parses `<id>.<secret>` (six and sixteen characters of `[a-z0-9]`).
    pub fn parse(text: &str) -> Option<BootstrapToken> {
        let (id, secret) = text.trim().split_once('.')?;
        (token_chars(id, 6) && token_chars(secret, 16)).then(|| BootstrapToken {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// A new random token.
    pub fn generate() -> BootstrapToken {
        use rand::Rng;
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let mut pick = |n: usize| -> String {
            (0..n)
                .map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char)
                .collect()
        };
        BootstrapToken {
            id: pick(6),
            secret: pick(16),
        }
    }

    /// `<id>.<secret>`.
    pub fn text(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The Secret that stores this token.
    pub fn to_secret(&self, expires: Option<DateTime<Utc>>, description: &str) -> Secret {
        let mut data: BTreeMap<String, ByteString> = [
            ("token-id", self.id.as_str()),
            ("token-secret", self.secret.as_str()),
            ("usage-bootstrap-authentication", "true"),
            ("usage-bootstrap-signing", "true"),
            ("auth-extra-groups", EXTRA_GROUPS),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        if let Some(at) = expires {
            data.insert(
                "expiration".into(),
                ByteString(at.to_rfc3339_opts(SecondsFormat::Secs, true).into_bytes()),
            );
        }
        if !description.is_empty() {
            data.insert(
                "description".into(),
                ByteString(description.as_bytes().to_vec()),
            );
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(format!("{NAME_PREFIX}{}", self.id)),
                namespace: Some(NAMESPACE.into()),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// One field of a bootstrap token Secret, as text.
fn field(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// When the token of `secret` expires (None: never; Err: unreadable).
fn expiration(secret: &Secret) -> Result<Option<DateTime<Utc>>, String> {
    match field(secret, "expiration") {
        None => Ok(None),
        Some(text) => DateTime::parse_from_rfc3339(text.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| format!("has an unreadable expiration {text:?}")),
    }
}

/// Why a presented bootstrap token is not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The token is unknown, wrong, expired or not for authentication (a 401, one line).
    Invalid(String),
    /// The API could not be asked (a 503).
    Unavailable(String),
}

/// Checks `token` against its Secret in kube-system at `now`.
pub async fn check(
    client: &kube::Client,
    token: &BootstrapToken,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let name = format!("{NAME_PREFIX}{}", token.id);
    let secret = match api.get_opt(&name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(Refusal::Invalid(format!(
                "bootstrap token {} does not exist (deleted, or never created)",
                token.id
            )))
        }
        Err(e) => return Err(Refusal::Unavailable(e.to_string())),
    };
    verify(&secret, token, now).map_err(Refusal::Invalid)
}

/// The checks of [`check`] on a Secret already read.
fn verify(secret: &Secret, token: &BootstrapToken, now: DateTime<Utc>) -> Result<(), String> {
    let invalid = |why: &str| format!("bootstrap token {} {why}", token.id);
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return Err(invalid("does not exist (its Secret has another type)"));
    }
    let stored = field(secret, "token-secret").unwrap_or_default();
    if !crate::join::same(stored.as_bytes(), token.secret.as_bytes())
        || field(secret, "token-id").as_deref() != Some(token.id.as_str())
    {
        return Err(invalid("is not valid (wrong secret)"));
    }
    if field(secret, "usage-bootstrap-authentication").as_deref() != Some("true") {
        return Err(invalid("is not for authentication"));
    }
    match expiration(secret).map_err(|e| invalid(&e))? {
        Some(at) if at <= now => Err(invalid(&format!(
            "expired at {}",
            at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ))),
        _ => Ok(()),
    }
}

/// Parses a Go-style duration (`24h`, `90m`, `1h30m`, `45s`; `0` for none).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 24h, 90m or 1h30m (0: never)");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0u64;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
        any = true;
    }
    if !any || !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// `pikube token`: bootstrap tokens that new nodes join with.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The admin kubeconfig of the server.
    #[arg(long, global = true, env = "KUBECONFIG", default_value = crate::config::DEFAULT_KUBECONFIG)]
    kubeconfig: PathBuf,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it in the form agents join with (K10<ca-hash>::<id>.<secret>).
    Create {
        /// How long the token is valid, e.g. 24h, 90m, 1h30m (0: it never expires).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// A description shown by `pikube token list`.
        #[arg(long)]
        description: Option<String>,
        /// The token to create (`<id>.<secret>`: 6 and 16 of a-z, 0-9); default: random.
        #[arg(long, value_parser = parse_token)]
        token: Option<String>,
    },
    /// List the tokens: id, time left, expiry, usages, description.
    List,
    /// Delete tokens (by id, `<id>.<secret>` or the K10 form): nodes can no longer join with them.
    Delete {
        /// The tokens.
        #[arg(required = true)]
        tokens: Vec<String>,
    },
}

fn parse_token(s: &str) -> Result<String, String> {
    BootstrapToken::parse(s)
        .map(|t| t.text())
        .ok_or_else(|| format!("{s:?} is not a token such as abcdef.0123456789abcdef"))
}

/// The id in `text`: an id, `<id>.<secret>` or `K10<hash>::<id>.<secret>`.
fn token_id(text: &str) -> Result<String, String> {
    let tail = text.rsplit("::").next().unwrap_or(text);
    let id = tail.split('.').next().unwrap_or(tail);
    if token_chars(id, 6) {
        Ok(id.to_string())
    } else {
        Err(format!("{text:?} is not a token id (6 of a-z, 0-9)"))
    }
}

/// Runs `pikube token …`; the process exit code (errors are printed as one line).
pub fn run_cli(args: TokenArgs) -> i32 {
    crate::cli::run(crate::cli::Runtime::Single, cli(args))
}

/// Time left until `at`, as kubeadm prints it.
fn ttl_text(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(at) = at else {
        return "<forever>".into();
    };
    let left = (at - now).num_seconds();
    if left <= 0 {
        return "<invalid>".into();
    }
    match left {
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn cli(args: TokenArgs) -> Result<()> {
    let client = crate::cli::kube_client(&args.kubeconfig).await?;
    let api: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let unreachable = |e: kube::Error| anyhow::anyhow!("the API server refused or failed: {e}");
    match args.command {
        TokenCommand::Create {
            ttl,
            description,
            token,
        } => {
            let token = match token {
                Some(t) => BootstrapToken::parse(&t).context("--token")?,
                None => BootstrapToken::generate(),
            };
            let expires = (!ttl.is_zero())
                .then(|| chrono::Duration::from_std(ttl).ok().map(|d| Utc::now() + d))
                .flatten();
            match api
                .create(
                    &PostParams::default(),
                    &token.to_secret(expires, description.as_deref().unwrap_or_default()),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    bail!("token {} exists already", token.id)
                }
                Err(e) => return Err(unreachable(e)),
            }
            let request = http::Request::get(crate::join::CACERTS_PATH)
                .body(Vec::new())
                .context("request")?;
            let ca = client.request_text(request).await.map_err(unreachable)?;
            println!("K10{}::{}", crate::join::ca_hash(&ca), token.text());
        }
        TokenCommand::List => {
            let now = Utc::now();
            let list = api
                .list(&ListParams::default())
                .await
                .map_err(unreachable)?;
            let mut rows = vec![[
                "ID".to_string(),
                "TTL".into(),
                "EXPIRES".into(),
                "USAGES".into(),
                "DESCRIPTION".into(),
            ]];
            for s in &list.items {
                let Some(id) =
                    field(s, "token-id").filter(|_| s.type_.as_deref() == Some(SECRET_TYPE))
                else {
                    continue;
                };
                let expires = expiration(s).ok().flatten();
                let usages: Vec<&str> = ["authentication", "signing"]
                    .into_iter()
                    .filter(|u| {
                        field(s, &format!("usage-bootstrap-{u}")).as_deref() == Some("true")
                    })
                    .collect();
                rows.push([
                    id,
                    ttl_text(expires, now),
                    expires.map_or("<never>".into(), |t| {
                        t.to_rfc3339_opts(SecondsFormat::Secs, true)
                    }),
                    usages.join(","),
                    field(s, "description").unwrap_or_else(|| "<none>".into()),
                ]);
            }
            print!("{}", table(&rows));
        }
        TokenCommand::Delete { tokens } => {
            for t in tokens {
                let id = token_id(&t).map_err(anyhow::Error::msg)?;
                match api
                    .delete(&format!("{NAME_PREFIX}{id}"), &DeleteParams::default())
                    .await
                {
                    Ok(_) => println!("bootstrap token {id:?} deleted"),
                    Err(kube::Error::Api(s)) if s.code == 404 => {
                        bail!("bootstrap token {id:?} not found")
                    }
                    Err(e) => return Err(unreachable(e)),
                }
            }
        }
    }
    Ok(())
}

/// Rows as columns padded to their widest cell (as kubectl prints tables).
fn table(rows: &[[String; 5]]) -> String {
    let mut widths = [0usize; 5];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_generate() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(
            (t.id.as_str(), t.secret.as_str()),
            ("abcdef", "0123456789abcdef")
        );
        for bad in [
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123",
        ] {
            assert!(BootstrapToken::parse(bad).is_none(), "{bad}");
        }
        let g = BootstrapToken::generate();
        assert_eq!(BootstrapToken::parse(&g.text()), Some(g.clone()));
        assert_ne!(g, BootstrapToken::generate());
        assert_eq!(
            token_id("K10aa::abcdef.0123456789abcdef").unwrap(),
            "abcdef"
        );
        assert_eq!(token_id("abcdef").unwrap(), "abcdef");
        assert!(token_id("abc").is_err());
    }

    #[test]
    fn durations_are_go_style() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "h", "10", "1d", "-1h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_checked_for_secret_usage_and_expiry() {
        let t = BootstrapToken::parse("abcdef.0123456789abcdef").unwrap();
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert_eq!(verify(&t.to_secret(Some(now + hour), ""), &t, now), Ok(()));
        assert_eq!(verify(&t.to_secret(None, ""), &t, now), Ok(()));
        let err = verify(&t.to_secret(Some(now - hour), ""), &t, now).unwrap_err();
        assert!(err.contains("expired at"), "{err}");
        let wrong = BootstrapToken::parse("abcdef.aaaaaaaaaaaaaaaa").unwrap();
        assert!(verify(&t.to_secret(None, ""), &wrong, now).is_err());
        let mut other = t.to_secret(None, "");
        other.type_ = Some("Opaque".into());
        assert!(verify(&other, &t, now).is_err());
        let s = t.to_secret(Some(now + hour), "for pi-2");
        assert_eq!(field(&s, "description").as_deref(), Some("for pi-2"));
        assert_eq!(
            ttl_text(Some(now + hour + chrono::Duration::seconds(5)), now),
            "1h"
        );
        assert_eq!(ttl_text(Some(now - hour), now), "<invalid>");
        assert_eq!(ttl_text(None, now), "<forever>");
    }
}
