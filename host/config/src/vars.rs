//! `${VAR}` expansion from the environment, in the keys that hold addresses, paths, tokens,
//! secrets, URLs and plugin config (`Config::expand` lists them). It must never pass over an
//! unset variable: that is an error naming the key and the variable.

use crate::error::{invalid, ConfigError};
use crate::Config;

impl Config {
    pub(crate) fn expand(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let x = |key: String, value: &mut String| expand_vars(&key, value, env);
        x("server.listen".into(), &mut self.server.listen)?;
        x("store.path".into(), &mut self.store.path)?;
        if let Some(url) = &mut self.store.url {
            x("store.url".into(), url)?;
        }
        if let Some(admin) = &mut self.admin {
            x("admin.listen".into(), &mut admin.listen)?;
            x("admin.token".into(), &mut admin.token)?;
        }
        for (i, m) in self.merchant.iter_mut().enumerate() {
            if let Some(token) = &mut m.token {
                x(format!("merchant[{i}].token"), token)?;
            }
        }
        for (i, e) in self.endpoint.iter_mut().enumerate() {
            x(format!("endpoint[{i}].path"), &mut e.path)?;
            for (j, s) in e.secrets.iter_mut().enumerate() {
                x(format!("endpoint[{i}].secrets[{j}]"), s.value_mut())?;
            }
        }
        for (i, p) in self.plugin.iter_mut().enumerate() {
            for (k, v) in p.config.iter_mut() {
                x(format!("plugin[{i}].config.{k}"), v)?;
            }
        }
        for (i, u) in self.upstream.iter_mut().enumerate() {
            x(format!("upstream[{i}].url"), &mut u.url)?;
            if let Some(s) = &mut u.sign_secret {
                x(format!("upstream[{i}].sign_secret"), s)?;
            }
        }
        Ok(())
    }
}

/// Replaces each `${NAME}` with the variable's value; an unset variable is an error naming
/// both the key and the variable. `$$` is no escape: values with `${` are rare in secrets.
fn expand_vars(
    key: &str,
    value: &mut String,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if !value.contains("${") {
        return Ok(());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| invalid(key, "has an unterminated ${"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(key, format!("${{{name}}} is not a valid environment variable name")));
        }
        let var = env(name).ok_or_else(|| invalid(key, format!("environment variable {name} is not set")))?;
        out.push_str(&var);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    *value = out;
    Ok(())
}
