//! Bearer-token authentication from a static token file, in kube-apiserver's
//! `--token-auth-file` format: one `token,user,uid[,"group1,group2"]` per line.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::router::Identity;

/// The tokens a server accepts, each mapped to who presents it.
#[derive(Clone, Debug, Default)]
pub struct Tokens(HashMap<String, Identity>);

impl Tokens {
    /// Reads a token file; a malformed line is an error naming the line.
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses the token file format.
    pub fn parse(text: &str) -> Result<Tokens> {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(4, ',');
            let (Some(token), Some(user), Some(_uid)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("line {}: expected token,user,uid[,groups]", n + 1);
            };
            if token.is_empty() || user.is_empty() {
                bail!("line {}: token and user must not be empty", n + 1);
            }
            let groups = parts
                .next()
                .map(|g| {
                    g.trim()
                        .trim_matches('"')
                        .split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            if tokens
                .insert(
                    token.to_string(),
                    Identity {
                        user: user.to_string(),
                        groups,
                    },
                )
                .is_some()
            {
                bail!("line {}: duplicate token", n + 1);
            }
        }
        Ok(Tokens(tokens))
    }

    /// Who an `Authorization` header value (`Bearer <token>`) identifies.
    pub fn authenticate(&self, authorization: &str) -> Option<Identity> {
        let token = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))?;
        self.0.get(token.trim()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let t =
            Tokens::parse("# comment\nabc,alice,1,\"system:masters,devs\"\nxyz,bob,2\n").unwrap();
        let alice = t.authenticate("Bearer abc").unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["system:masters", "devs"]);
        assert_eq!(
            t.authenticate("Bearer xyz").unwrap().groups,
            Vec::<String>::new()
        );
        assert!(t.authenticate("Bearer nope").is_none());
        assert!(t.authenticate("Basic abc").is_none());
        assert!(Tokens::parse("onlytoken\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(Tokens::parse("a,b,1\na,c,2\n")
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
    }
}
