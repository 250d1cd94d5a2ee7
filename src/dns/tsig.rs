//! TSIG keys: the secret (never printed) and the BIND key-file format.

use super::error::DnsError;
use base64::Engine;
use std::fmt;

/// Key material; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    /// Decode a base64 secret (whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if clean.is_empty() {
            return Err("the secret is empty".into());
        }
        base64::engine::general_purpose::STANDARD
            .decode(clean.as_bytes())
            .map(Secret)
            .map_err(|e| format!("the secret is not valid base64 ({e})"))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted>")
    }
}

/// TSIG MAC algorithms pgdeploy supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl Algorithm {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(Algorithm::HmacSha256),
            "hmac-sha384" => Ok(Algorithm::HmacSha384),
            "hmac-sha512" => Ok(Algorithm::HmacSha512),
            other => Err(format!(
                "unsupported TSIG algorithm `{other}` (use hmac-sha256, hmac-sha384 or hmac-sha512)"
            )),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha384 => "hmac-sha384",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }
    pub(crate) fn to_hickory(self) -> hickory_proto::rr::rdata::tsig::TsigAlgorithm {
        use hickory_proto::rr::rdata::tsig::TsigAlgorithm as T;
        match self {
            Algorithm::HmacSha256 => T::HmacSha256,
            Algorithm::HmacSha384 => T::HmacSha384,
            Algorithm::HmacSha512 => T::HmacSha512,
        }
    }
}

/// A TSIG key: name, algorithm, secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: Algorithm,
    pub secret: Secret,
}

/// One `key "NAME" { algorithm ALG; secret "B64"; };` block of a BIND key file.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFileEntry {
    pub name: String,
    pub algorithm: Option<String>,
    /// The base64 secret (redacted in `Debug`).
    pub secret: String,
}

impl fmt::Debug for KeyFileEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFileEntry")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What a secret file holds.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyFile {
    /// Just the base64 secret.
    Bare(String),
    /// BIND `key` statements.
    Bind(Vec<KeyFileEntry>),
}

/// Parse a secret file: a bare base64 secret or BIND `key` statements (comments `#`, `//`,
/// `/* */` allowed).
pub fn parse_key_file(text: &str) -> Result<KeyFile, String> {
    let stripped = strip_comments(text);
    let toks = tokenize(&stripped)?;
    if !toks.iter().any(|t| t == "key") {
        let t = stripped.trim();
        if t.is_empty() {
            return Err("the file is empty".into());
        }
        return Ok(KeyFile::Bare(t.to_string()));
    }
    let mut entries = Vec::new();
    let mut i = 0;
    let next = |i: &mut usize| -> Result<String, String> {
        let t = toks
            .get(*i)
            .cloned()
            .ok_or_else(|| "unexpected end of the key file".to_string())?;
        *i += 1;
        Ok(t)
    };
    while i < toks.len() {
        let kw = next(&mut i)?;
        if kw != "key" {
            return Err(format!("expected `key`, found `{kw}`"));
        }
        let name = next(&mut i)?;
        if next(&mut i)? != "{" {
            return Err(format!("expected `{{` after key \"{name}\""));
        }
        let mut algorithm = None;
        let mut secret = None;
        loop {
            let field = next(&mut i)?;
            if field == "}" {
                break;
            }
            let value = next(&mut i)?;
            if next(&mut i)? != ";" {
                return Err(format!(
                    "expected `;` after `{field} {}` in key \"{name}\"",
                    if field == "secret" {
                        "\"...\""
                    } else {
                        value.as_str()
                    }
                ));
            }
            match field.as_str() {
                "algorithm" => algorithm = Some(value),
                "secret" => secret = Some(value),
                other => return Err(format!("unknown field `{other}` in key \"{name}\"")),
            }
        }
        if toks.get(i).map(String::as_str) == Some(";") {
            i += 1;
        }
        let secret = secret.ok_or_else(|| format!("key \"{name}\" has no `secret`"))?;
        entries.push(KeyFileEntry {
            name: name.trim_end_matches('.').to_string(),
            algorithm,
            secret,
        });
    }
    Ok(KeyFile::Bind(entries))
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFile::Bare(_) => write!(f, "Bare(<redacted>)"),
            KeyFile::Bind(e) => f.debug_tuple("Bind").field(e).finish(),
        }
    }
}

fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out
}

fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '{' || c == '}' || c == ';' {
            toks.push(c.to_string());
            chars.next();
        } else if c == '"' {
            chars.next();
            let mut s = String::new();
            let mut closed = false;
            for d in chars.by_ref() {
                if d == '"' {
                    closed = true;
                    break;
                }
                s.push(d);
            }
            if !closed {
                return Err("unterminated string (missing `\"`)".into());
            }
            toks.push(s);
        } else {
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() || d == '{' || d == '}' || d == ';' || d == '"' {
                    break;
                }
                s.push(d);
                chars.next();
            }
            toks.push(s);
        }
    }
    Ok(toks)
}

/// Build the key from the inventory's `tsig` section: the secret from `secret_file` (relative
/// paths already resolved by the caller) or `secret_env`.
pub fn load_key(
    key_name: &str,
    algorithm: &str,
    secret_file: Option<&std::path::Path>,
    secret_env: Option<&str>,
) -> Result<TsigKey, DnsError> {
    let err = |msg: String| DnsError::Secret {
        key: key_name.to_string(),
        msg,
    };
    let want = key_name.trim_end_matches('.');
    let mut alg = Algorithm::parse(algorithm).map_err(err)?;
    let secret = if let Some(path) = secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        match parse_key_file(&text).map_err(|e| err(format!("{}: {e}", path.display())))? {
            KeyFile::Bare(b64) => {
                Secret::from_base64(&b64).map_err(|e| err(format!("{}: {e}", path.display())))?
            }
            KeyFile::Bind(entries) => {
                let entry = entries
                    .iter()
                    .find(|e| e.name.eq_ignore_ascii_case(want))
                    .ok_or_else(|| {
                        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                        err(format!(
                            "{} has no key named \"{want}\" (it has: {})",
                            path.display(),
                            names.join(", ")
                        ))
                    })?;
                if let Some(a) = &entry.algorithm {
                    alg =
                        Algorithm::parse(a).map_err(|e| err(format!("{}: {e}", path.display())))?;
                }
                Secret::from_base64(&entry.secret)
                    .map_err(|e| err(format!("{}: {e}", path.display())))?
            }
        }
    } else if let Some(var) = secret_env {
        let v = std::env::var(var)
            .map_err(|_| err(format!("environment variable {var} is not set")))?;
        Secret::from_base64(&v).map_err(|e| err(format!("${var}: {e}")))?
    } else {
        return Err(err("neither secret_file nor secret_env is set".into()));
    };
    Ok(TsigKey {
        name: want.to_string(),
        algorithm: alg,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_secret() {
        let k = parse_key_file("  c2VjcmV0\n").unwrap();
        assert_eq!(k, KeyFile::Bare("c2VjcmV0".into()));
        assert_eq!(
            Secret::from_base64("c2Vj cmV0").unwrap().expose(),
            b"secret"
        );
    }

    #[test]
    fn bind_key_file() {
        let text = "# generated\nkey \"pgdeploy-lab\" {\n\talgorithm hmac-sha384;\n\tsecret \"c2VjcmV0\";\n};\n// other\nkey other. { secret \"b3RoZXI=\"; };";
        let k = parse_key_file(text).unwrap();
        let KeyFile::Bind(e) = k else {
            panic!("not bind")
        };
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "pgdeploy-lab");
        assert_eq!(e[0].algorithm.as_deref(), Some("hmac-sha384"));
        assert_eq!(e[0].secret, "c2VjcmV0");
        assert_eq!(e[1].name, "other");
        assert_eq!(e[1].algorithm, None);
    }

    #[test]
    fn bind_key_file_errors() {
        assert!(parse_key_file("key \"a\" { secret \"x\" }").is_err());
        assert!(parse_key_file("key \"a\" { algorithm hmac-sha256; };").is_err());
        assert!(parse_key_file("key \"a { secret").is_err());
        assert!(parse_key_file("   \n").is_err());
    }

    #[test]
    fn load_picks_named_key_and_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        std::fs::write(
            &p,
            "key \"a\" { algorithm hmac-sha256; secret \"YQ==\"; };\nkey \"b\" { algorithm hmac-sha512; secret \"Yg==\"; };\n",
        )
        .unwrap();
        let k = load_key("b.", "hmac-sha256", Some(&p), None).unwrap();
        assert_eq!(k.algorithm, Algorithm::HmacSha512);
        assert_eq!(k.secret.expose(), b"b");
        let e = load_key("c", "hmac-sha256", Some(&p), None).unwrap_err();
        assert!(e.to_string().contains("has no key named"), "{e}");
        // the secret never shows up in Debug output
        assert!(!format!("{k:?}").contains("Yg"));
        assert!(format!("{k:?}").contains("redacted"));
    }

    #[test]
    fn algorithms() {
        assert_eq!(
            Algorithm::parse("HMAC-SHA384.").unwrap(),
            Algorithm::HmacSha384
        );
        assert!(Algorithm::parse("hmac-md5").is_err());
    }
}
