//! The applications' roles and databases (`users:` and `databases:`), as the leader's catalog
//! should hold them. Pure: the probe is one psql script and its JSON output; the plan compares
//! the inventory with those facts and yields [`Step::Catalog`] steps (SQL with their one-line
//! summary) and [`Step::Note`]s for what is kept as found.
//!
//! Passwords never reach a plan: a step that sets one names the role (`password_of`), and the
//! run makes a fresh SCRAM-SHA-256 verifier from the password at that moment. The plan compares
//! a password by recomputing the stored verifier's keys with its own salt.

use crate::engine::step::{PlannedStep, Step};
use crate::inventory::{DatabaseSpec, Inventory, Presence, UserSpec};
use crate::secrets::Secret;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use miette::{miette, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

/// The role pgdeploy's own checks (verify) log in as: login and nothing more.
pub const CHECK_ROLE: &str = "pgdeploy_check";
const CHECK_ROLE_LIMIT: i32 = 10;
/// The comment on every role and database pgdeploy manages (how it tells them from others).
pub const MANAGED: &str = "managed by pgdeploy";
/// SCRAM iterations, as PostgreSQL's default (`scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;

/// The passwords of the declared login roles, read from their files or variables (before any
/// host is contacted): a missing, empty or group/other-readable file, or an unset variable, is
/// an error that names it.
pub fn load_passwords(inv: &Inventory) -> Result<BTreeMap<String, Secret>> {
    let mut out = BTreeMap::new();
    for u in inv.users.iter().filter(|u| u.state == Presence::Present) {
        let (value, source) = if let Some(f) = &u.password_file {
            let path = inv.resolve_path(f);
            let shown = path.display().to_string();
            let meta = std::fs::metadata(&path).map_err(|e| {
                miette!(
                    help = "create it with the password on one line, mode 0600",
                    "role {}: password_file {shown}: {e}",
                    u.name
                )
            })?;
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(miette!(
                        help = format!("chmod 600 {shown}"),
                        "role {}: password_file {shown} is readable by others (mode {mode:o})",
                        u.name
                    ));
                }
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| miette!("role {}: password_file {shown}: {e}", u.name))?;
            (text.trim_end_matches(['\n', '\r']).to_string(), shown)
        } else if let Some(v) = &u.password_env {
            let value = std::env::var(v).map_err(|_| {
                miette!(
                    help = format!("export {v}=... before running pgdeploy"),
                    "role {}: environment variable {v} is not set",
                    u.name
                )
            })?;
            (value, format!("${v}"))
        } else {
            continue;
        };
        if value.is_empty() {
            return Err(miette!(
                help = "put the password in it",
                "role {}: the password in {source} is empty",
                u.name
            ));
        }
        if !value.is_ascii() || value.chars().any(|c| c.is_ascii_control()) {
            return Err(miette!(
                help = "use printable ASCII characters (PostgreSQL normalises other passwords before hashing)",
                "role {}: the password in {source} has characters other than printable ASCII",
                u.name
            ));
        }
        out.insert(u.name.clone(), Secret::new(value));
    }
    Ok(out)
}

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&k, msg).as_ref().to_vec()
}

fn scram_keys(password: &str, salt: &[u8], iterations: u32) -> (Vec<u8>, Vec<u8>) {
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations.max(1)).expect("at least 1"),
        salt,
        password.as_bytes(),
        &mut salted,
    );
    let client = hmac(&salted, b"Client Key");
    let stored = ring::digest::digest(&ring::digest::SHA256, &client)
        .as_ref()
        .to_vec();
    (stored, hmac(&salted, b"Server Key"))
}

/// A SCRAM-SHA-256 verifier of `password` with `salt`, in PostgreSQL's `rolpassword` form.
pub fn scram_verifier(password: &str, salt: &[u8]) -> String {
    let (stored, server) = scram_keys(password, salt, SCRAM_ITERATIONS);
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored),
        B64.encode(server)
    )
}

/// A verifier of `password` with a fresh random salt.
pub fn new_verifier(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    scram_verifier(password, &salt)
}

/// Whether the stored `verifier` is one of `password` (None or another method: no).
pub fn scram_matches(verifier: Option<&str>, password: &str) -> bool {
    let Some(rest) = verifier.and_then(|v| v.strip_prefix("SCRAM-SHA-256$")) else {
        return false;
    };
    let parse = || -> Option<bool> {
        let (params, keys) = rest.split_once('$')?;
        let (iter, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iter.parse().ok()?;
        let salt = B64.decode(salt).ok()?;
        let (s, k) = scram_keys(password, &salt, iterations);
        Some(B64.decode(stored).ok()? == s && B64.decode(server).ok()? == k)
    };
    parse().unwrap_or(false)
}

/// A role as the leader's catalog holds it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RoleFact {
    pub name: String,
    pub login: bool,
    pub connlimit: i32,
    pub createdb: bool,
    pub createrole: bool,
    #[serde(default)]
    pub verifier: Option<String>,
    #[serde(default)]
    pub member_of: Vec<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

/// A database as the catalog holds it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DbFact {
    pub name: String,
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    #[serde(default)]
    pub comment: Option<String>,
}

/// What a role owns, per database (`db` None: objects of the whole cluster, such as databases).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Owned {
    pub role: String,
    #[serde(default)]
    pub db: Option<String>,
    pub count: i64,
}

/// A declared reader as one database sees it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ReaderFact {
    pub role: String,
    pub connect: bool,
    pub usage: bool,
    /// Tables and views of `public` it cannot read.
    pub missing: i64,
    /// The owner's default privileges give it SELECT on new tables.
    pub default: bool,
}

/// What one existing declared database holds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct InDb {
    pub db: String,
    pub extensions: Vec<String>,
    /// Its tables, counted only for a database marked absent (0 for the others).
    #[serde(default)]
    pub tables: i64,
    pub readers: Vec<ReaderFact>,
    /// Roles the owner's default privileges in `public` give SELECT to.
    pub grantees: Vec<String>,
}

/// Everything the plan needs from the leader.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct Facts {
    pub roles: Vec<RoleFact>,
    pub databases: Vec<DbFact>,
    pub available: Vec<String>,
    pub owned: Vec<Owned>,
    #[serde(default)]
    pub in_db: Vec<InDb>,
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A name as an SQL identifier (names are validated `[a-z_][a-z0-9_]*`; quoting keeps
/// keywords such as `user` usable).
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The psql script (run as the superuser on the leader, `psql -f -`) that prints the facts:
/// one JSON line for the cluster, then one for each declared database that exists.
pub fn probe_script(inv: &Inventory) -> String {
    let absent: Vec<String> = inv
        .users
        .iter()
        .filter(|u| u.state == Presence::Absent)
        .map(|u| lit(&u.name))
        .collect();
    let absent = if absent.is_empty() {
        "NULL".to_string()
    } else {
        absent.join(",")
    };
    let mut s = format!(
        r#"\set ON_ERROR_STOP 1
\pset tuples_only on
\pset format unaligned
SELECT json_build_object(
 'roles', (SELECT coalesce(json_agg(json_build_object('name', a.rolname, 'login', a.rolcanlogin,
    'connlimit', a.rolconnlimit, 'createdb', a.rolcreatedb, 'createrole', a.rolcreaterole,
    'verifier', a.rolpassword,
    'member_of', (SELECT coalesce(json_agg(b.rolname ORDER BY b.rolname), '[]'::json)
                  FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid WHERE m.member = a.oid),
    'comment', shobj_description(a.oid, 'pg_authid')) ORDER BY a.rolname), '[]'::json)
    FROM pg_authid a WHERE a.rolname NOT LIKE 'pg\_%' AND a.rolname NOT IN ('postgres', 'replicator')),
 'databases', (SELECT coalesce(json_agg(json_build_object('name', d.datname,
    'owner', pg_get_userbyid(d.datdba), 'encoding', pg_encoding_to_char(d.encoding),
    'collate', d.datcollate, 'ctype', d.datctype,
    'comment', shobj_description(d.oid, 'pg_database')) ORDER BY d.datname), '[]'::json)
    FROM pg_database d WHERE NOT d.datistemplate AND d.datname <> 'postgres'),
 'available', (SELECT coalesce(json_agg(name ORDER BY name), '[]'::json) FROM pg_available_extensions),
 'owned', (SELECT coalesce(json_agg(json_build_object('role', r.rolname, 'db', d.datname, 'count', x.n)), '[]'::json)
    FROM (SELECT refobjid, dbid, count(*) AS n FROM pg_shdepend
          WHERE deptype = 'o' AND classid <> 'pg_default_acl'::regclass GROUP BY 1, 2) x
    JOIN pg_roles r ON r.oid = x.refobjid LEFT JOIN pg_database d ON d.oid = x.dbid
    WHERE r.rolname IN ({absent})));
"#
    );
    // Which declared databases exist, in one query; then one connection to each of those.
    if !inv.databases.is_empty() {
        let has: Vec<String> = inv
            .databases
            .iter()
            .enumerate()
            .map(|(i, d)| {
                format!(
                    "EXISTS (SELECT FROM pg_database WHERE datname = {}) AS pgdeploy_has_{i}",
                    lit(&d.name)
                )
            })
            .collect();
        s.push_str(&format!("SELECT {} \\gset\n", has.join(",\n ")));
    }
    for (i, d) in inv.databases.iter().enumerate() {
        let query = if d.state == Presence::Present {
            let readers: Vec<String> = d.readers.iter().map(|r| lit(r)).collect();
            format!(
                r#"WITH acl AS (SELECT x.grantee, x.privilege_type FROM pg_default_acl a, aclexplode(a.defaclacl) x
    WHERE a.defaclnamespace = 'public'::regnamespace AND a.defaclobjtype = 'r'
    AND a.defaclrole = (SELECT datdba FROM pg_database WHERE datname = current_database())
    AND x.grantee <> a.defaclrole AND x.grantee <> 0),
 tabs AS (SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm'))
SELECT json_build_object('db', current_database(),
 'extensions', (SELECT coalesce(json_agg(extname ORDER BY extname), '[]'::json) FROM pg_extension WHERE extname <> 'plpgsql'),
 'readers', (SELECT coalesce(json_agg(json_build_object('role', r.rolname,
    'connect', has_database_privilege(r.oid, current_database(), 'CONNECT'),
    'usage', has_schema_privilege(r.oid, 'public', 'USAGE'),
    'missing', (SELECT count(*) FROM tabs WHERE NOT has_table_privilege(r.oid, tabs.oid, 'SELECT')),
    'default', EXISTS (SELECT FROM acl WHERE acl.grantee = r.oid AND acl.privilege_type = 'SELECT'))), '[]'::json)
    FROM pg_roles r WHERE r.rolname = ANY (ARRAY[{readers}]::text[])),
 'grantees', (SELECT coalesce(json_agg(DISTINCT pg_get_userbyid(acl.grantee)), '[]'::json) FROM acl));"#,
                readers = readers.join(",")
            )
        } else {
            // Marked absent: only whether it holds data (a drop then needs `drop_data`).
            r#"SELECT json_build_object('db', current_database(), 'extensions', '[]'::json, 'readers', '[]'::json, 'grantees', '[]'::json,
 'tables', (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_toast%'));"#
                .to_string()
        };
        s.push_str(&format!(
            "\\if :pgdeploy_has_{i}\n\\c {db}\n{query}\n\\endif\n",
            db = d.name
        ));
    }
    s
}

/// Parse the probe's output (one JSON object per line).
pub fn parse_probe(out: &str) -> Result<Facts, String> {
    let mut lines = out.lines().map(str::trim).filter(|l| l.starts_with('{'));
    let first = lines.next().ok_or("no output from the catalog probe")?;
    let mut facts: Facts =
        serde_json::from_str(first).map_err(|e| format!("catalog probe: {e}: {first}"))?;
    for l in lines {
        facts
            .in_db
            .push(serde_json::from_str(l).map_err(|e| format!("catalog probe: {e}: {l}"))?);
    }
    Ok(facts)
}

/// What the plan needs besides the facts: the passwords it compares with (the declared login
/// roles' and the check role's).
pub struct Passwords<'a> {
    pub roles: &'a BTreeMap<String, Secret>,
    pub check: &'a str,
}

struct Plan<'a> {
    host: &'a str,
    steps: Vec<PlannedStep>,
}

impl Plan<'_> {
    fn sql(&mut self, change: String, database: &str, sql: String, password_of: Option<&str>) {
        self.steps.push(PlannedStep::new(
            self.host,
            Step::Catalog {
                change,
                database: database.to_string(),
                sql,
                password_of: password_of.map(str::to_string),
                drop_role: None,
            },
        ));
    }
    fn note(&mut self, text: String) {
        self.steps
            .push(PlannedStep::new(self.host, Step::Note { text }));
    }
}

/// A role's attributes as the inventory (or pgdeploy, for its check role) wants them.
struct Want<'a> {
    name: &'a str,
    login: bool,
    connlimit: i32,
    createdb: bool,
    createrole: bool,
    member_of: &'a [String],
}

fn want(u: &UserSpec) -> Want<'_> {
    Want {
        name: &u.name,
        login: u.login,
        connlimit: u.connection_limit,
        createdb: u.createdb,
        createrole: u.createrole,
        member_of: &u.member_of,
    }
}

fn attrs(w: &Want) -> String {
    format!(
        "{} {} {} CONNECTION LIMIT {}",
        if w.login { "LOGIN" } else { "NOLOGIN" },
        if w.createdb { "CREATEDB" } else { "NOCREATEDB" },
        if w.createrole {
            "CREATEROLE"
        } else {
            "NOCREATEROLE"
        },
        w.connlimit
    )
}

fn limit(n: i32) -> String {
    if n < 0 {
        "none".into()
    } else {
        n.to_string()
    }
}

fn plan_role(p: &mut Plan, w: &Want, cur: Option<&RoleFact>, password: Option<&str>) {
    let r = ident(w.name);
    let comment = format!("COMMENT ON ROLE {r} IS {};", lit(MANAGED));
    let Some(cur) = cur else {
        let pw = if password.is_some() {
            " PASSWORD :'pw'"
        } else {
            ""
        };
        p.sql(
            format!(
                "+ role {} ({}, connection limit {})",
                w.name,
                if w.login { "login" } else { "no login" },
                limit(w.connlimit)
            ),
            "postgres",
            format!("CREATE ROLE {r} {}{pw};\n{comment}", attrs(w)),
            password.map(|_| w.name),
        );
        return;
    };
    let flag = |p: &mut Plan, what: &str, from: bool, to: bool, on: &str, off: &str| {
        if from != to {
            p.sql(
                format!("~ role {} {what} {from} -> {to}", w.name),
                "postgres",
                format!("ALTER ROLE {r} {};", if to { on } else { off }),
                None,
            );
        }
    };
    flag(p, "login", cur.login, w.login, "LOGIN", "NOLOGIN");
    flag(
        p,
        "createdb",
        cur.createdb,
        w.createdb,
        "CREATEDB",
        "NOCREATEDB",
    );
    flag(
        p,
        "createrole",
        cur.createrole,
        w.createrole,
        "CREATEROLE",
        "NOCREATEROLE",
    );
    if cur.connlimit != w.connlimit {
        p.sql(
            format!(
                "~ role {} connection limit {} -> {}",
                w.name,
                limit(cur.connlimit),
                limit(w.connlimit)
            ),
            "postgres",
            format!("ALTER ROLE {r} CONNECTION LIMIT {};", w.connlimit),
            None,
        );
    }
    match password {
        Some(pw) if !scram_matches(cur.verifier.as_deref(), pw) => p.sql(
            format!("~ role {} password", w.name),
            "postgres",
            format!("ALTER ROLE {r} PASSWORD :'pw';"),
            Some(w.name),
        ),
        None if cur.verifier.is_some() && !w.login => p.sql(
            format!("~ role {} password removed (it may not log in)", w.name),
            "postgres",
            format!("ALTER ROLE {r} PASSWORD NULL;"),
            None,
        ),
        _ => {}
    }
    if cur.comment.as_deref() != Some(MANAGED) {
        p.sql(
            format!("~ role {}: managed by pgdeploy from now on", w.name),
            "postgres",
            comment,
            None,
        );
    }
}

fn plan_memberships(p: &mut Plan, w: &Want, cur: Option<&RoleFact>) {
    let have: BTreeSet<&str> = cur
        .map(|c| c.member_of.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let wanted: BTreeSet<&str> = w.member_of.iter().map(String::as_str).collect();
    for m in wanted.difference(&have) {
        p.sql(
            format!("+ role {} member of {m}", w.name),
            "postgres",
            format!("GRANT {} TO {};", ident(m), ident(w.name)),
            None,
        );
    }
    for m in have.difference(&wanted) {
        p.sql(
            format!("- role {} member of {m}", w.name),
            "postgres",
            format!("REVOKE {} FROM {};", ident(m), ident(w.name)),
            None,
        );
    }
}

fn reader_sql(db: &str, owner: &str, r: &str, grant: bool) -> String {
    let (db, owner, r) = (ident(db), ident(owner), ident(r));
    if grant {
        format!(
            "GRANT CONNECT ON DATABASE {db} TO {r};\nGRANT USAGE ON SCHEMA public TO {r};\n\
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};\n\
             GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {r};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {r};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON SEQUENCES TO {r};"
        )
    } else {
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public REVOKE SELECT ON TABLES FROM {r};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public REVOKE SELECT ON SEQUENCES FROM {r};\n\
             REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {r};\n\
             REVOKE SELECT ON ALL SEQUENCES IN SCHEMA public FROM {r};\n\
             REVOKE USAGE ON SCHEMA public FROM {r};\nREVOKE CONNECT ON DATABASE {db} FROM {r};"
        )
    }
}

fn plan_database(p: &mut Plan, d: &DatabaseSpec, facts: &Facts) -> Result<()> {
    let owner = d.owner.as_deref().unwrap_or("postgres");
    let cur = facts.databases.iter().find(|x| x.name == d.name);
    let inside = facts.in_db.iter().find(|x| x.db == d.name);
    let db = ident(&d.name);
    for e in &d.extensions {
        if !facts.available.iter().any(|a| a == e) {
            return Err(miette!(
                help = "name an extension this PostgreSQL release ships (contrib), e.g. pg_trgm, citext, pgcrypto, hstore",
                "database {}: extension {e} is not available on the leader",
                d.name
            ));
        }
    }
    match cur {
        None => p.sql(
            format!(
                "+ database {} (owner {owner}, {}, {})",
                d.name, d.encoding, d.locale
            ),
            "postgres",
            format!(
                "CREATE DATABASE {db} OWNER {} ENCODING {} LOCALE {} TEMPLATE template0;\n\
                 REVOKE ALL ON DATABASE {db} FROM PUBLIC;\nCOMMENT ON DATABASE {db} IS {};",
                ident(owner),
                lit(&d.encoding),
                lit(&d.locale),
                lit(MANAGED)
            ),
            None,
        ),
        Some(c) => {
            if !c.encoding.eq_ignore_ascii_case(&d.encoding)
                || c.collate != d.locale
                || c.ctype != d.locale
            {
                return Err(miette!(
                    help = "a database's encoding and locale cannot change in place: dump it and restore it into a new database, or write what it has in the inventory",
                    "database {} has encoding {} and locale {}/{}; the inventory says {} and {}",
                    d.name,
                    c.encoding,
                    c.collate,
                    c.ctype,
                    d.encoding,
                    d.locale
                ));
            }
            if c.owner != owner {
                p.sql(
                    format!("~ database {} owner {} -> {owner}", d.name, c.owner),
                    "postgres",
                    format!("ALTER DATABASE {db} OWNER TO {};", ident(owner)),
                    None,
                );
            }
            if c.comment.as_deref() != Some(MANAGED) {
                p.sql(
                    format!("~ database {}: managed by pgdeploy from now on", d.name),
                    "postgres",
                    format!("COMMENT ON DATABASE {db} IS {};", lit(MANAGED)),
                    None,
                );
            }
        }
    }
    let installed: &[String] = inside.map(|i| i.extensions.as_slice()).unwrap_or(&[]);
    for e in &d.extensions {
        if !installed.contains(e) {
            p.sql(
                format!("+ extension {e} in database {}", d.name),
                &d.name,
                format!("CREATE EXTENSION IF NOT EXISTS {};", ident(e)),
                None,
            );
        }
    }
    for e in installed.iter().filter(|e| !d.extensions.contains(e)) {
        p.note(format!(
            "extension {e} in database {} is not in the inventory: kept (pgdeploy never drops an extension)",
            d.name
        ));
    }
    for r in &d.readers {
        let f = inside.and_then(|i| i.readers.iter().find(|x| &x.role == r));
        let change = match f {
            Some(f) if f.connect => (!f.usage || f.missing > 0 || !f.default).then(|| {
                format!(
                    "~ reader {r} of database {}: SELECT on {} table(s) it cannot read{}",
                    d.name,
                    f.missing,
                    if f.default {
                        ""
                    } else {
                        ", and on future ones"
                    }
                )
            }),
            _ => Some(format!(
                "+ reader {r} of database {} (SELECT on the tables of public, also future ones)",
                d.name
            )),
        };
        if let Some(change) = change {
            p.sql(change, &d.name, reader_sql(&d.name, owner, r, true), None);
        }
    }
    if let Some(i) = inside {
        for g in i.grantees.iter().filter(|g| !d.readers.contains(g)) {
            p.sql(
                format!("- reader {g} of database {}", d.name),
                &d.name,
                reader_sql(&d.name, owner, g, false),
                None,
            );
        }
    }
    Ok(())
}

/// The steps that make the leader's catalog what the inventory declares, in order: the check
/// role, the roles, their memberships, the databases (extensions, readers), the databases to
/// drop, the roles to drop, and notes on what is kept.
pub fn plan(
    inv: &Inventory,
    host: &str,
    facts: &Facts,
    pw: &Passwords,
) -> Result<Vec<PlannedStep>> {
    let mut p = Plan {
        host,
        steps: Vec::new(),
    };
    let role = |n: &str| facts.roles.iter().find(|r| r.name == n);
    let check = Want {
        name: CHECK_ROLE,
        login: true,
        connlimit: CHECK_ROLE_LIMIT,
        createdb: false,
        createrole: false,
        member_of: &[],
    };
    plan_role(&mut p, &check, role(CHECK_ROLE), Some(pw.check));
    plan_memberships(&mut p, &check, role(CHECK_ROLE));
    let present: Vec<&UserSpec> = inv
        .users
        .iter()
        .filter(|u| u.state == Presence::Present)
        .collect();
    for u in &present {
        let password = pw.roles.get(&u.name).map(|s| s.expose());
        plan_role(&mut p, &want(u), role(&u.name), password);
    }
    for u in &present {
        plan_memberships(&mut p, &want(u), role(&u.name));
    }
    for d in inv
        .databases
        .iter()
        .filter(|d| d.state == Presence::Present)
    {
        plan_database(&mut p, d, facts)?;
    }
    for d in inv.databases.iter().filter(|d| d.state == Presence::Absent) {
        if !facts.databases.iter().any(|x| x.name == d.name) {
            continue;
        }
        let tables = facts
            .in_db
            .iter()
            .find(|x| x.db == d.name)
            .map(|x| x.tables)
            .unwrap_or(0);
        if tables > 0 && !d.drop_data {
            p.note(format!(
                "database {} is marked absent but holds {tables} table(s): kept; add `drop_data: true` to drop it with its data",
                d.name
            ));
        } else {
            p.sql(
                format!(
                    "- database {}{}",
                    d.name,
                    if tables > 0 {
                        format!(" and its {tables} table(s) (drop_data)")
                    } else {
                        String::new()
                    }
                ),
                "postgres",
                format!("DROP DATABASE {};", ident(&d.name)),
                None,
            );
        }
    }
    for u in inv.users.iter().filter(|u| u.state == Presence::Absent) {
        if role(&u.name).is_none() {
            continue;
        }
        let owns: Vec<String> = facts
            .owned
            .iter()
            .filter(|o| o.role == u.name)
            .map(|o| match &o.db {
                Some(db) => format!("{} object(s) in database {db}", o.count),
                None => format!("{} database(s) or other cluster object(s)", o.count),
            })
            .collect();
        let mut change = format!("- role {}", u.name);
        if !owns.is_empty() {
            change.push_str(&format!(
                " (refused while it owns {}: drop or reassign them first)",
                owns.join(", ")
            ));
        }
        p.steps.push(PlannedStep::new(
            host,
            Step::Catalog {
                change,
                database: "postgres".into(),
                sql: format!("DROP ROLE {};", ident(&u.name)),
                password_of: None,
                drop_role: Some(u.name.clone()),
            },
        ));
    }
    let declared_roles: BTreeSet<&str> = inv.users.iter().map(|u| u.name.as_str()).collect();
    for r in facts.roles.iter().filter(|r| {
        r.comment.as_deref() == Some(MANAGED)
            && r.name != CHECK_ROLE
            && !declared_roles.contains(r.name.as_str())
    }) {
        p.note(format!(
            "role {} is not in the inventory: kept (declare it with `state: absent` to drop it)",
            r.name
        ));
    }
    let declared_dbs: BTreeSet<&str> = inv.databases.iter().map(|d| d.name.as_str()).collect();
    for d in facts.databases.iter().filter(|d| {
        d.comment.as_deref() == Some(MANAGED) && !declared_dbs.contains(d.name.as_str())
    }) {
        p.note(format!(
            "database {} is not in the inventory: kept (declare it with `state: absent` to drop it)",
            d.name
        ));
    }
    Ok(p.steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verifier PostgreSQL 15 stored for `ALTER ROLE x PASSWORD 'secret'` has this shape;
    /// recomputing it from its own salt must give the same keys.
    #[test]
    fn scram_round_trip() {
        let v = scram_verifier("secret", b"0123456789abcdef");
        assert!(
            v.starts_with("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$"),
            "{v}"
        );
        assert!(scram_matches(Some(&v), "secret"));
        assert!(!scram_matches(Some(&v), "Secret"));
        assert!(!scram_matches(None, "secret"));
        assert!(!scram_matches(Some("md5abc"), "secret"));
        let fresh = new_verifier("secret");
        assert_ne!(fresh, v);
        assert!(scram_matches(Some(&fresh), "secret"));
    }

    /// RFC 7677's example: user "user", password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==,
    /// 4096 iterations; its ServerSignature proves the ServerKey.
    #[test]
    fn scram_keys_match_rfc7677() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let (stored, server) = scram_keys("pencil", &salt, 4096);
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        assert_eq!(
            B64.encode(hmac(&server, auth.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // ClientProof = ClientKey XOR ClientSignature; StoredKey = H(ClientKey).
        let proof = B64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let sig = hmac(&stored, auth.as_bytes());
        let client: Vec<u8> = proof.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        assert_eq!(
            ring::digest::digest(&ring::digest::SHA256, &client).as_ref(),
            stored.as_slice()
        );
    }

    fn inv(extra: &str) -> Inventory {
        let text = format!(
            "cluster: {{name: t}}\nplatform: debian-12\ngroups:\n  etcd: [{{name: a, address: 192.0.2.1}}]\n  \
             patroni: [{{name: a, address: 192.0.2.1}}, {{name: b, address: 192.0.2.2}}]\n  \
             haproxy: [{{name: c, address: 192.0.2.3}}]\n{extra}"
        );
        crate::inventory::load_str(&text, "t.yaml", std::path::Path::new("."))
            .unwrap()
            .0
    }

    fn summaries(steps: &[PlannedStep]) -> Vec<String> {
        steps.iter().map(|s| s.step.summary()).collect()
    }

    const CAT: &str = "users:\n  - {name: app, password_env: X, connection_limit: 20}\n  \
        - {name: app_ro, login: false}\n\
        databases:\n  - {name: app, owner: app, extensions: [pg_trgm], readers: [app_ro]}\n";

    fn available() -> Vec<String> {
        ["pg_trgm", "citext", "plpgsql"].map(String::from).to_vec()
    }

    #[test]
    fn a_fresh_cluster_gets_everything_in_order() {
        let inv = inv(CAT);
        let pws = BTreeMap::from([("app".to_string(), Secret::new("pw1"))]);
        let facts = Facts {
            available: available(),
            ..Default::default()
        };
        let pw = Passwords {
            roles: &pws,
            check: "chk",
        };
        let steps = plan(&inv, "a", &facts, &pw).unwrap();
        assert_eq!(
            summaries(&steps),
            [
                "+ role pgdeploy_check (login, connection limit 10)",
                "+ role app (login, connection limit 20)",
                "+ role app_ro (no login, connection limit none)",
                "+ database app (owner app, UTF8, C.UTF-8)",
                "+ extension pg_trgm in database app",
                "+ reader app_ro of database app (SELECT on the tables of public, also future ones)",
            ]
        );
        // No password in any step: the verifier is made at run time.
        let json = serde_json::to_string(&steps).unwrap();
        assert!(!json.contains("pw1") && !json.contains("chk"), "{json}");
        assert!(json.contains("\"password_of\":\"app\""));
    }

    fn converged(pw: &str, check: &str) -> Facts {
        let role = |name: &str, login, connlimit, verifier: Option<String>| RoleFact {
            name: name.into(),
            login,
            connlimit,
            createdb: false,
            createrole: false,
            verifier,
            member_of: vec![],
            comment: Some(MANAGED.into()),
        };
        Facts {
            roles: vec![
                role("app", true, 20, Some(new_verifier(pw))),
                role("app_ro", false, -1, None),
                role(CHECK_ROLE, true, 10, Some(new_verifier(check))),
            ],
            databases: vec![DbFact {
                name: "app".into(),
                owner: "app".into(),
                encoding: "UTF8".into(),
                collate: "C.UTF-8".into(),
                ctype: "C.UTF-8".into(),
                comment: Some(MANAGED.into()),
            }],
            available: available(),
            owned: vec![],
            in_db: vec![InDb {
                db: "app".into(),
                extensions: vec!["pg_trgm".into()],
                tables: 2,
                readers: vec![ReaderFact {
                    role: "app_ro".into(),
                    connect: true,
                    usage: true,
                    missing: 0,
                    default: true,
                }],
                grantees: vec!["app_ro".into()],
            }],
        }
    }

    #[test]
    fn converged_is_empty_and_differences_are_single_steps() {
        let pws = BTreeMap::from([("app".to_string(), Secret::new("pw1"))]);
        let pw = Passwords {
            roles: &pws,
            check: "chk",
        };
        assert_eq!(
            summaries(&plan(&inv(CAT), "a", &converged("pw1", "chk"), &pw).unwrap()),
            Vec::<String>::new()
        );
        let changed = CAT
            .replace("connection_limit: 20", "connection_limit: 50")
            .replace("[pg_trgm]", "[pg_trgm, citext]");
        let mut facts = converged("old", "chk");
        facts.in_db[0].extensions.push("hstore".into());
        facts.roles.push(RoleFact {
            name: "gone".into(),
            login: true,
            connlimit: -1,
            createdb: false,
            createrole: false,
            verifier: None,
            member_of: vec![],
            comment: Some(MANAGED.into()),
        });
        assert_eq!(
            summaries(&plan(&inv(&changed), "a", &facts, &pw).unwrap()),
            [
                "~ role app connection limit 20 -> 50",
                "~ role app password",
                "+ extension citext in database app",
                "= extension hstore in database app is not in the inventory: kept (pgdeploy never drops an extension)",
                "= role gone is not in the inventory: kept (declare it with `state: absent` to drop it)",
            ]
        );
    }

    #[test]
    fn drops_need_the_mark_and_data_a_second_one() {
        let pws = BTreeMap::from([("app".to_string(), Secret::new("pw1"))]);
        let pw = Passwords {
            roles: &pws,
            check: "chk",
        };
        let mut facts = converged("pw1", "chk");
        facts.databases.push(DbFact {
            name: "old".into(),
            owner: "report".into(),
            encoding: "UTF8".into(),
            collate: "C.UTF-8".into(),
            ctype: "C.UTF-8".into(),
            comment: Some(MANAGED.into()),
        });
        facts.in_db.push(InDb {
            db: "old".into(),
            extensions: vec![],
            tables: 3,
            readers: vec![],
            grantees: vec![],
        });
        let mut r = facts.roles[1].clone();
        r.name = "report".into();
        facts.roles.push(r);
        facts.owned.push(Owned {
            role: "report".into(),
            db: Some("app".into()),
            count: 1,
        });
        let absent = format!(
            "{}  - {{name: old, state: absent}}\n",
            CAT.replace("users:\n", "users:\n  - {name: report, state: absent}\n")
        );
        assert_eq!(
            summaries(&plan(&inv(&absent), "a", &facts, &pw).unwrap()),
            [
                "= database old is marked absent but holds 3 table(s): kept; add `drop_data: true` to drop it with its data",
                "- role report (refused while it owns 1 object(s) in database app: drop or reassign them first)",
            ]
        );
        let confirmed = absent.replace(
            "{name: old, state: absent}",
            "{name: old, state: absent, drop_data: true}",
        );
        let s = summaries(&plan(&inv(&confirmed), "a", &facts, &pw).unwrap());
        assert_eq!(s[0], "- database old and its 3 table(s) (drop_data)");
    }

    #[test]
    fn an_unknown_extension_or_a_locale_change_is_an_error() {
        let pws = BTreeMap::from([("app".to_string(), Secret::new("pw1"))]);
        let pw = Passwords {
            roles: &pws,
            check: "chk",
        };
        let e = plan(
            &inv(&CAT.replace("[pg_trgm]", "[postgis]")),
            "a",
            &converged("pw1", "chk"),
            &pw,
        )
        .unwrap_err();
        assert!(format!("{e}").contains("extension postgis is not available"));
        let e = plan(
            &inv(&CAT.replace("readers:", "locale: en_US.UTF-8, readers:")),
            "a",
            &converged("pw1", "chk"),
            &pw,
        )
        .unwrap_err();
        assert!(
            format!("{e}").contains("the inventory says UTF8 and en_US.UTF-8"),
            "{e:?}"
        );
    }

    #[test]
    fn probe_output_parses() {
        let out = r#"{"roles": [{"name":"app","login":true,"connlimit":20,"createdb":false,"createrole":false,"verifier":null,"member_of":[],"comment":"managed by pgdeploy"}], "databases": [], "available": ["citext"], "owned": []}
{"db": "app", "extensions": [], "readers": [], "grantees": []}
{"db": "old", "extensions": [], "tables": 3, "readers": [], "grantees": []}
"#;
        let f = parse_probe(out).unwrap();
        assert_eq!(f.roles[0].connlimit, 20);
        assert_eq!(f.in_db[0].db, "app");
        assert_eq!((f.in_db[0].tables, f.in_db[1].tables), (0, 3));
        assert!(parse_probe("").is_err());
        let script = probe_script(&inv(CAT));
        assert!(script.contains("\\c app\n") && script.contains("ARRAY['app_ro']::text[]"));
        // Which declared databases exist is one query; tables are counted only where a drop
        // would need them (none is marked absent here).
        assert_eq!(script.matches("\\gset").count(), 1, "{script}");
        assert!(!script.contains("'tables'"), "{script}");
    }
}
