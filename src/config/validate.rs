//! Validation: from the raw schema to the model. Checks what serde cannot (URLs, ranges, that
//! exactly one credential source is set, that files exist, the `iris` profile's fixed values),
//! applies defaults, resolves relative paths against the config file's directory, and loads
//! secrets. Every error names the file, the line and the dotted key
//! (`irisd.toml:14: destination[0].auth.token_url: ...`).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use secrecy::SecretString;
use toml::Spanned;

use super::model::*;
use super::schema::*;
use super::ConfigError;

/// librdkafka settings irisd owns: overriding them would break at-least-once.
const KAFKA_RESERVED: [&str; 4] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

/// What validation needs to produce good messages.
pub(super) struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    /// Refuse secret files that group or others can read (otherwise: a warning).
    pub strict_permissions: bool,
}

impl Ctx<'_> {
    pub fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let mut names = HashSet::new();
        let mut destinations = Vec::with_capacity(raw.destinations.len());
        for (i, d) in raw.destinations.into_iter().enumerate() {
            let key = format!("destination[{i}]");
            let name_span = d.name.span();
            let dest = self.destination(&key, d)?;
            if !names.insert(dest.name.clone()) {
                return Err(self.invalid(
                    name_span,
                    &format!("{key}.name"),
                    &format!("duplicate destination name {:?}", dest.name),
                ));
            }
            destinations.push(dest);
        }
        let spool = self.spool(&raw.spool)?;
        let kafka = raw
            .source
            .kafka
            .into_iter()
            .enumerate()
            .map(|(i, k)| self.kafka(i, k, &names))
            .collect::<Result<_, _>>()?;
        Ok(Config {
            path: self.path.to_owned(),
            intake: self.intake(&raw.intake)?,
            spool,
            admin: self.admin(&raw.admin)?,
            destinations,
            kafka,
        })
    }

    fn intake(&self, raw: &RawIntake) -> Result<IntakeConfig, ConfigError> {
        Ok(IntakeConfig {
            listen: raw.listen,
            max_body_bytes: raw.max_body_bytes,
            max_connections: raw.max_connections,
            header_read_timeout_ms: raw.header_read_timeout_ms,
            tls: self.listener_tls(&raw.security(), "intake")?,
            auth_token: self.listener_auth(&raw.security(), Some(raw.listen), "intake")?,
        })
    }

    fn admin(&self, raw: &RawAdmin) -> Result<AdminConfig, ConfigError> {
        Ok(AdminConfig {
            listen: raw.listen,
            tls: self.listener_tls(&raw.security(), "admin")?,
            auth_token: self.listener_auth(&raw.security(), raw.listen, "admin")?,
        })
    }

    fn kafka(
        &self,
        i: usize,
        k: RawKafka,
        destinations: &HashSet<String>,
    ) -> Result<KafkaSourceConfig, ConfigError> {
        let key = |f: &str| format!("source.kafka[{i}].{f}");
        for (v, f) in [
            (&k.bootstrap_servers, "bootstrap_servers"),
            (&k.group_id, "group_id"),
        ] {
            if v.get_ref().trim().is_empty() {
                return Err(self.invalid(v.span(), &key(f), "must not be empty"));
            }
        }
        if k.topics.get_ref().is_empty() || k.topics.get_ref().iter().any(|t| t.is_empty()) {
            return Err(self.invalid(
                k.topics.span(),
                &key("topics"),
                "must list at least one topic, none empty",
            ));
        }
        if let Some(d) = &k.destination {
            if !destinations.contains(d.get_ref()) {
                return Err(self.invalid(
                    d.span(),
                    &key("destination"),
                    &format!("no destination named {:?} is configured", d.get_ref()),
                ));
            }
        }
        let mut librdkafka = BTreeMap::new();
        for (name, v) in k.librdkafka {
            if KAFKA_RESERVED.contains(&name.as_str()) {
                return Err(self.invalid(
                    v.span(),
                    &key(&format!("librdkafka.{name}")),
                    "is set by irisd (offsets are committed only after delivery); remove it",
                ));
            }
            librdkafka.insert(name, SecretString::from(v.into_inner()));
        }
        Ok(KafkaSourceConfig {
            bootstrap_servers: k.bootstrap_servers.into_inner(),
            topics: k.topics.into_inner(),
            group_id: k.group_id.into_inner(),
            destination: k.destination.map(Spanned::into_inner),
            commit_interval: Duration::from_millis(k.commit_interval_ms.max(10)),
            librdkafka,
        })
    }

    fn destination(&self, key: &str, d: RawDestination) -> Result<Destination, ConfigError> {
        let name = d.name.get_ref().trim().to_string();
        if name.is_empty() || name.len() > 128 {
            return Err(self.invalid(
                d.name.span(),
                &format!("{key}.name"),
                "must be 1 to 128 characters",
            ));
        }
        let profile = self.profile(key, &d.profile)?;
        let insecure = d.allow_insecure_http;
        Ok(Destination {
            destination_id: self.number(&d.destination_id, key, "destination_id")?,
            user_dpid: self.dpid(&d.user_dpid, key)?,
            aam_client_id: self.number(&d.aam_client_id, key, "aam_client_id")?,
            auth: self.auth(key, &d.auth, insecure)?,
            publish: self.publish(key, &d.publish, profile, insecure)?,
            retry: self.retry(key, &d.retry, profile)?,
            tls: self.tls(key, d.tls)?,
            batch: d
                .batch
                .as_ref()
                .map(|b| self.batch(key, b, profile))
                .transpose()?,
            signing: d
                .signing
                .as_ref()
                .map(|s| self.signing(key, s))
                .transpose()?,
            name,
            allow_insecure_http: insecure,
            user_agent: d.user_agent.unwrap_or_else(|| IRIS_USER_AGENT.to_string()),
            profile,
        })
    }

    /// An Audience Manager id: a digit string.
    fn number(&self, v: &Spanned<String>, key: &str, field: &str) -> Result<String, ConfigError> {
        let s = v.get_ref();
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.invalid(
                v.span(),
                &format!("{key}.{field}"),
                &format!(
                    "{s:?} must be a decimal number (Audience Manager sends ids as digit strings)"
                ),
            ));
        }
        Ok(s.clone())
    }

    /// `User_DPID`: the device-ID type. Any positive data source id is legitimate (a partner's
    /// own, for web IDs); what cannot be one is refused.
    fn dpid(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let s = self.number(v, key, "user_dpid")?;
        match s.parse::<i64>() {
            Ok(n) if n > 0 => Ok(s),
            Ok(_) => Err(self.invalid(
                v.span(),
                &format!("{key}.user_dpid"),
                "0 is no data source; use the partner's DPID (20914 GAID, 20915 IDFA, or the partner's own)",
            )),
            Err(_) => Err(self.invalid(
                v.span(),
                &format!("{key}.user_dpid"),
                &format!("{s} is out of range for a data source id (at most {})", i64::MAX),
            )),
        }
    }

    fn profile(&self, key: &str, p: &Option<Spanned<String>>) -> Result<Profile, ConfigError> {
        match p.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
            None | Some(("reliable", _)) => Ok(Profile::Reliable),
            Some(("iris", _)) => Ok(Profile::Iris),
            Some((other, span)) => Err(self.invalid(
                span,
                &format!("{key}.profile"),
                &format!("{other:?} is not one of \"reliable\", \"iris\""),
            )),
        }
    }

    /// Under the iris profile some values are fixed; setting them to something else is a
    /// mistake.
    fn iris_fixes(&self, span: Range<usize>, key: &str, what: &str) -> ConfigError {
        self.invalid(
            span,
            key,
            &format!("profile = \"iris\" fixes this ({what}); remove the key or the profile"),
        )
    }

    /// Users per message: at most 10 and by default 10 under the iris profile (real time and
    /// batches alike), else `default`.
    fn max_users(
        &self,
        v: &Option<Spanned<usize>>,
        key: &str,
        iris: bool,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match v {
            Some(v) => {
                let n = self.positive(v, key, 100_000)?;
                if iris && n > 10 {
                    return Err(self.iris_fixes(v.span(), key, "at most 10 users per message"));
                }
                Ok(n)
            }
            None if iris => Ok(10),
            None => Ok(default),
        }
    }

    /// A whole number in `1..=max`.
    fn positive(&self, v: &Spanned<usize>, key: &str, max: usize) -> Result<usize, ConfigError> {
        let n = *v.get_ref();
        if n == 0 || n > max {
            Err(self.invalid(
                v.span(),
                key,
                &format!("must be between 1 and {max}, got {n}"),
            ))
        } else {
            Ok(n)
        }
    }

    fn auth(&self, key: &str, a: &RawAuth, insecure: bool) -> Result<AuthConfig, ConfigError> {
        let token_url = self.url(&a.token_url, &format!("{key}.auth.token_url"), insecure)?;
        let scope = match &a.scope {
            Some(s) if s.get_ref().is_empty() || !s.get_ref().bytes().all(is_scope_char) => {
                return Err(self.invalid(
                    s.span(),
                    &format!("{key}.auth.scope"),
                    "scope tokens are printable ASCII without '\"' or '\\', separated by spaces (RFC 6749 §3.3)",
                ));
            }
            Some(s) => Some(s.get_ref().clone()),
            None => None,
        };
        Ok(AuthConfig {
            token_url,
            credentials: self.credentials(key, a)?,
            scope,
            refresh_skew: a.refresh_skew_secs.map(Duration::from_secs),
            timeout: Duration::from_millis(a.timeout_ms.max(1)),
        })
    }

    fn publish(
        &self,
        key: &str,
        p: &RawPublish,
        profile: Profile,
        insecure: bool,
    ) -> Result<PublishConfig, ConfigError> {
        let k = |f: &str| format!("{key}.publish.{f}");
        let iris = profile == Profile::Iris;
        let url = self.url(&p.url, &k("url"), insecure)?;
        let method: PublishMethod = p
            .method
            .get_ref()
            .parse()
            .map_err(|e: String| self.invalid(p.method.span(), &k("method"), &e))?;
        let max_users = self.max_users(&p.max_users, &k("max_users"), iris, 10)?;
        let timeout_ms = match &p.timeout_ms {
            Some(v) if *v.get_ref() == 0 => {
                return Err(self.invalid(v.span(), &k("timeout_ms"), "must be greater than 0"))
            }
            Some(v) if iris && *v.get_ref() != 3000 => {
                return Err(self.iris_fixes(
                    v.span(),
                    &k("timeout_ms"),
                    "the partner answers within 3000 ms",
                ))
            }
            Some(v) => *v.get_ref(),
            None => 3000,
        };
        let success_status = match &p.success_status {
            Some(v) => {
                if let Some(bad) = v.get_ref().iter().find(|s| !(100..=599).contains(*s)) {
                    return Err(self.invalid(
                        v.span(),
                        &k("success_status"),
                        &format!("{bad} is not an HTTP status"),
                    ));
                }
                if iris && v.get_ref() != &[200] {
                    return Err(self.iris_fixes(
                        v.span(),
                        &k("success_status"),
                        "only 200 is success",
                    ));
                }
                v.get_ref().clone()
            }
            None if iris => vec![200],
            None => Vec::new(),
        };
        let max_bytes = self.positive(&p.max_bytes, &k("max_bytes"), 256 * 1024 * 1024)?;
        if max_bytes < 1024 {
            return Err(self.invalid(
                p.max_bytes.span(),
                &k("max_bytes"),
                "must be at least 1024 (one user record must fit)",
            ));
        }
        Ok(PublishConfig {
            url,
            method,
            gzip: p.gzip,
            gzip_level: self.positive(&p.gzip_level, &k("gzip_level"), 9)? as u32,
            max_users,
            max_bytes,
            linger: Duration::from_millis(p.linger_ms),
            timeout: Duration::from_millis(timeout_ms),
            connect_timeout: Duration::from_millis(p.connect_timeout_ms.max(1)),
            max_in_flight: self.positive(&p.max_in_flight, &k("max_in_flight"), 1024)?,
            success_status,
            pool_idle_timeout: Duration::from_millis(p.pool_idle_timeout_ms.max(1)),
            http2: p.http2,
        })
    }

    fn retry(&self, key: &str, r: &RawRetry, profile: Profile) -> Result<RetryPolicy, ConfigError> {
        let iris = profile == Profile::Iris;
        let max_attempts = match &r.max_attempts {
            Some(v) if iris && *v.get_ref() != 2 => {
                return Err(self.iris_fixes(
                    v.span(),
                    &format!("{key}.retry.max_attempts"),
                    "one retry, so 2 attempts",
                ))
            }
            Some(v) if *v.get_ref() == 0 => None,
            Some(v) => Some(*v.get_ref()),
            None if iris => Some(2),
            None => None,
        };
        Ok(RetryPolicy {
            initial: Duration::from_millis(r.initial_ms.unwrap_or(500).max(1)),
            max_delay: Duration::from_millis(r.max_delay_ms.unwrap_or(60_000).max(1)),
            max_attempts,
            max_age: Duration::from_secs(r.max_age_secs.unwrap_or(7 * 86_400).max(1)),
            circuit_threshold: r.circuit_threshold.unwrap_or(5).max(1),
        })
    }

    /// A file the configuration names, resolved and checked to exist.
    fn existing_file(&self, v: &Spanned<PathBuf>, key: &str) -> Result<PathBuf, ConfigError> {
        let path = self.relative(v.get_ref());
        if path.is_file() {
            Ok(path)
        } else {
            Err(self.invalid(
                v.span(),
                key,
                &format!("{} does not exist or is not a file", path.display()),
            ))
        }
    }

    fn tls(&self, key: &str, t: RawTls) -> Result<TlsConfig, ConfigError> {
        let k = |f: &str| format!("{key}.tls.{f}");
        let ca_file = t
            .ca_file
            .as_ref()
            .map(|p| self.existing_file(p, &k("ca_file")))
            .transpose()?;
        let client_cert = match (t.client_cert_file, t.client_key_file) {
            (Some(c), Some(key_file)) => {
                let cert = self.existing_file(&c, &k("client_cert_file"))?;
                let key_path = self.existing_file(&key_file, &k("client_key_file"))?;
                // The key is a secret: same permission rule as the other secret files.
                self.secret_file(&key_file, &k("client_key_file"))?;
                Some((cert, key_path))
            }
            (Some(c), None) => {
                return Err(self.invalid(
                    c.span(),
                    &k("client_cert_file"),
                    "needs tls.client_key_file too",
                ))
            }
            (None, Some(key_file)) => {
                return Err(self.invalid(
                    key_file.span(),
                    &k("client_key_file"),
                    "needs tls.client_cert_file too",
                ))
            }
            (None, None) => None,
        };
        Ok(TlsConfig {
            ca_file,
            client_cert,
            insecure_skip_verify: t.insecure_skip_verify,
        })
    }

    fn signing(&self, key: &str, sg: &RawSigning) -> Result<SigningConfig, ConfigError> {
        let k = |f: &str| format!("{key}.signing.{f}");
        let algorithm = sg
            .algorithm
            .get_ref()
            .parse()
            .map_err(|e: String| self.invalid(sg.algorithm.span(), &k("algorithm"), &e))?;
        let header = http::HeaderName::from_bytes(sg.header.get_ref().as_bytes())
            .map_err(|_| self.invalid(sg.header.span(), &k("header"), "not a valid header name"))?;
        let secret = match (&sg.key_env, &sg.key_file) {
            (Some(env), None) => self.secret_env(env, &k("key_env"))?,
            (None, Some(file)) => self.secret_file(file, &k("key_file"))?,
            _ => {
                return Err(self.invalid(
                    sg.algorithm.span(),
                    &format!("{key}.signing"),
                    "set exactly one of key_env, key_file",
                ))
            }
        };
        Ok(SigningConfig {
            algorithm,
            header,
            key: secret,
        })
    }

    fn batch(&self, key: &str, b: &RawBatch, profile: Profile) -> Result<BatchConfig, ConfigError> {
        let k = |f: &str| format!("{key}.batch.{f}");
        let iris = profile == Profile::Iris;
        // IRIS sends batches to the same endpoint in the same format as real time: at most 10
        // users per message, and no client-side rate limit ("could lead to data loss").
        let max_users = self.max_users(&b.max_users, &k("max_users"), iris, 1000)?;
        let rate = |v: &Option<Spanned<u32>>, f: &str| match v {
            Some(v) if iris => Err(self.iris_fixes(
                v.span(),
                &k(f),
                "IRIS applies no rate limit; the partner absorbs batches",
            )),
            Some(v) => Ok(std::num::NonZeroU32::new(*v.get_ref())),
            None => Ok(None),
        };
        let schedule = match (&b.daily_at, &b.cron) {
            (None, None) => None,
            (daily, cron) => {
                let span = daily
                    .as_ref()
                    .or(cron.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0);
                Some(
                    crate::schedule::Schedule::parse(
                        daily.as_ref().map(|s| s.get_ref().as_str()),
                        cron.as_ref().map(|s| s.get_ref().as_str()),
                        b.time_zone.get_ref(),
                    )
                    .map_err(|e| {
                        let which = if e.contains("time zone") {
                            "time_zone"
                        } else if daily.is_some() {
                            "daily_at"
                        } else {
                            "cron"
                        };
                        self.invalid(
                            if which == "time_zone" {
                                b.time_zone.span()
                            } else {
                                span.clone()
                            },
                            &k(which),
                            &e,
                        )
                    })?,
                )
            }
        };
        let input = match &b.input {
            Some(g) => {
                let path = self.relative(Path::new(g.get_ref()));
                let pattern = path.to_string_lossy().into_owned();
                glob::Pattern::new(&pattern).map_err(|e| {
                    self.invalid(
                        g.span(),
                        &k("input"),
                        &format!("{pattern:?} is not a valid glob: {e}"),
                    )
                })?;
                Some(pattern)
            }
            None => None,
        };
        if schedule.is_some() && input.is_none() {
            return Err(self.invalid(
                b.daily_at
                    .as_ref()
                    .or(b.cron.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0),
                &k("input"),
                "a scheduled batch needs input (a glob of the files to deliver)",
            ));
        }
        Ok(BatchConfig {
            input,
            schedule,
            max_users,
            max_bytes: self
                .positive(&b.max_bytes, &k("max_bytes"), 256 * 1024 * 1024)?
                .max(1024),
            requests_per_second: rate(&b.requests_per_second, "requests_per_second")?,
            users_per_second: rate(&b.users_per_second, "users_per_second")?,
            max_in_flight: self.positive(&b.max_in_flight, &k("max_in_flight"), 1024)?,
            chunk_users: self.positive(&b.chunk_users, &k("chunk_users"), 10_000_000)?,
            move_done: b.move_done,
        })
    }

    pub fn spool(&self, raw: &RawSpool) -> Result<SpoolConfig, ConfigError> {
        for (v, key) in [
            (&raw.max_bytes, "spool.max_bytes"),
            (
                &raw.max_bytes_per_destination,
                "spool.max_bytes_per_destination",
            ),
        ] {
            if let Some(v) = v {
                if *v.get_ref() < 64 * 1024 {
                    return Err(self.invalid(v.span(), key, "must be at least 65536"));
                }
            }
        }
        Ok(SpoolConfig {
            path: raw
                .path
                .as_ref()
                .map(|p| self.relative(p.get_ref()))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_PATH)),
            max_bytes: raw.max_bytes.as_ref().map_or(1 << 30, |v| *v.get_ref()),
            max_bytes_per_destination: raw
                .max_bytes_per_destination
                .as_ref()
                .map_or(256 << 20, |v| *v.get_ref()),
            fsync: raw.fsync.unwrap_or(true),
        })
    }

    pub fn invalid(&self, span: Range<usize>, key: &str, message: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: line_col(self.text, span.start).0,
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    /// Resolves a path in the config relative to the config file's directory.
    pub fn relative(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn url(&self, v: &Spanned<String>, key: &str, allow_http: bool) -> Result<Uri, ConfigError> {
        let uri: Uri = v.get_ref().parse().map_err(|e| {
            self.invalid(
                v.span(),
                key,
                &format!("{:?} is not a valid URL: {e}", v.get_ref()),
            )
        })?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if allow_http => {}
            Some("http") => {
                return Err(self.invalid(
                    v.span(),
                    key,
                    "plain http:// is refused: tokens are passwords and must travel over https \
                     (set allow_insecure_http = true on the destination for local tests only)",
                ))
            }
            _ => return Err(self.invalid(v.span(), key, "the URL must start with https://")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(self.invalid(v.span(), key, "the URL has no host"));
        }
        Ok(uri)
    }

    /// Checks a listener's TLS files: certificate and key together; a client CA only with TLS.
    fn listener_tls(
        &self,
        raw: &RawListenerSecurity<'_>,
        section: &str,
    ) -> Result<Option<ListenerTls>, ConfigError> {
        let k = |f: &str| format!("{section}.{f}");
        match (raw.tls_cert_file, raw.tls_key_file) {
            (Some(c), Some(key)) => {
                self.secret_file(key, &k("tls_key_file"))?;
                Ok(Some(ListenerTls {
                    cert: self.existing_file(c, &k("tls_cert_file"))?,
                    key: self.existing_file(key, &k("tls_key_file"))?,
                    client_ca: raw
                        .client_ca_file
                        .as_ref()
                        .map(|ca| self.existing_file(ca, &k("client_ca_file")))
                        .transpose()?,
                }))
            }
            (None, None) => match raw.client_ca_file {
                Some(ca) => Err(self.invalid(
                    ca.span(),
                    &k("client_ca_file"),
                    "client certificates need TLS: set tls_cert_file and tls_key_file too",
                )),
                None => Ok(None),
            },
            (Some(c), None) | (None, Some(c)) => Err(self.invalid(
                c.span(),
                &k("tls_cert_file"),
                "tls_cert_file and tls_key_file go together",
            )),
        }
    }

    /// Loads a listener's token and refuses an open non-loopback listener (a client CA counts
    /// as authentication).
    fn listener_auth(
        &self,
        raw: &RawListenerSecurity<'_>,
        listen: Option<SocketAddr>,
        section: &str,
    ) -> Result<Option<SecretString>, ConfigError> {
        let token = match (raw.auth_token_file, raw.auth_token_env) {
            (Some(f), None) => Some(self.secret_file(f, &format!("{section}.auth_token_file"))?),
            (None, Some(e)) => Some(self.secret_env(e, &format!("{section}.auth_token_env"))?),
            (Some(_), Some(e)) => {
                return Err(self.invalid(
                    e.span(),
                    &format!("{section}.auth_token_env"),
                    "set auth_token_file or auth_token_env, not both",
                ))
            }
            (None, None) => None,
        };
        let allow_unauthenticated = raw.allow_unauthenticated || raw.client_ca_file.is_some();
        if let Some(addr) = listen {
            if token.is_none() && !addr.ip().is_loopback() && !allow_unauthenticated {
                return Err(ConfigError::Invalid {
                    path: self.path.to_owned(),
                    line: self
                        .text
                        .lines()
                        .position(|l| l.trim_start().starts_with(&format!("[{section}]")))
                        .map_or(0, |i| i + 1),
                    key: format!("{section}.listen"),
                    message: format!(
                        "{addr} is reachable from other machines but no {section}.auth_token_file or {section}.auth_token_env is set; set one (clients send Authorization: Bearer <token>), or set {section}.allow_unauthenticated = true to let anyone who can reach it in"
                    ),
                });
            }
            if token.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(listener = section, %addr, "listening on a non-loopback address without authentication (allow_unauthenticated = true)");
            }
        }
        Ok(token)
    }
}

/// RFC 6749 §3.3 `scope-token` characters plus the separating space.
fn is_scope_char(b: u8) -> bool {
    b == b' ' || (b == 0x21) || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 0), (1, 1));
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
    }

    #[test]
    fn scope_chars_follow_rfc6749() {
        assert!("segments read:all".bytes().all(is_scope_char));
        assert!(!"a\"b".bytes().all(is_scope_char));
        assert!(!"a\\b".bytes().all(is_scope_char));
    }
}
