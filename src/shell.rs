//! Quoting for the POSIX shell commands sent to hosts.

/// Quote `s` as one word for POSIX sh. Words made only of characters that sh never treats
/// specially are left bare, so commands shown by `check` stay readable; anything else is
/// single-quoted (an embedded `'` becomes `'\''`).
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::sh_quote;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("/etc/a.conf"), "/etc/a.conf");
        assert_eq!(sh_quote("postgres:postgres"), "postgres:postgres");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
        assert_eq!(sh_quote(""), "''");
        assert_eq!(sh_quote("$HOME;*"), "'$HOME;*'");
        assert_eq!(sh_quote("~root"), "'~root'");
    }

    /// What sh makes of the quoted word is the original string.
    #[test]
    fn round_trips_through_sh() {
        for s in [
            "plain",
            "/a/b.c",
            "a b",
            "it's",
            "",
            "$x `y` \"z\" \\ * ? ~ ! # & | ; < >",
            "\n\t",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", sh_quote(s)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
        }
    }
}
