//! What `ember run` tells its guest init, and the pure logic the init applies to it.
//!
//! This file is compiled twice: as `vmm::run::guest` (ember writes the configuration and the
//! unit tests run here) and into the static init program (`vmm/init/main.rs`, built by
//! `vmm/build.rs` with nothing but `std`), which reads the configuration and resolves the user
//! against the image's `/etc/passwd` and `/etc/group`. So it uses only `std`: its error type
//! implements `Display` by hand because `thiserror` is not available to the init. It owns no
//! I/O: files come in as strings and bytes.
//!
//! The configuration is a file of NUL-terminated `key`, `value` pairs. A NUL is the one byte
//! that can appear in no argument, environment entry, path or name the kernel passes on, so no
//! value needs quoting; the kernel command line would cap the length and need quoting.

use std::fmt;
use std::net::Ipv4Addr;

/// Where ember puts the configuration in the initramfs, and where the init reads it.
pub const CONFIG_PATH: &str = "/ember/config";

/// `PATH` when neither the image nor `-e` sets one (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One `-v HOSTDIR:GUESTDIR[:ro]`: the virtio-fs tag ember gave it and where the init mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The virtio-fs tag.
    pub tag: String,
    /// The mount point in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// The guest's network settings, with `--net`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetSettings {
    /// The interface's address and prefix length, `10.0.0.2/24`.
    pub address: String,
    /// The default gateway, if any.
    pub gateway: Option<String>,
    /// Name servers for `/etc/resolv.conf`.
    pub dns: Vec<String>,
}

/// Everything the init needs to start the program.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestConfig {
    /// The program and its arguments (Entrypoint + Cmd, or their overrides).
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries, already merged (image Env, then `-e`).
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// `USER[:GROUP]` as given (names or numbers); empty for root.
    pub user: String,
    /// The container's host name.
    pub hostname: String,
    /// `-t`: the program gets an interactive terminal (echo, line editing, CR-LF output).
    pub tty: bool,
    /// With `-t` on a terminal: its size, rows and columns, which the init gives the console.
    pub term_size: Option<(u16, u16)>,
    /// `--rootfs-size`: the device of the disk that holds the overlay's upper layer instead of
    /// a tmpfs.
    pub upper_disk: Option<String>,
    /// The `-v` directories.
    pub volumes: Vec<Volume>,
    /// `--net` settings for eth0.
    pub net: Option<NetSettings>,
}

/// Why a configuration, a user or an environment entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestError {
    /// The configuration file is malformed (a truncated pair or an unknown key).
    Config(String),
    /// `-u` is not `USER[:GROUP]`.
    UserSyntax(String),
    /// A user name the image's /etc/passwd does not have.
    NoSuchUser(String),
    /// A group name the image's /etc/group does not have.
    NoSuchGroup(String),
    /// `-e` with an empty name.
    EnvSyntax(String),
    /// A `--net` address or gateway that is not IPv4.
    Address(String),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(why) => write!(f, "bad ember run configuration: {why}"),
            Self::UserSyntax(u) => write!(
                f,
                "user '{u}' is not USER[:GROUP] (a name or number, then optionally a group name \
                 or number)"
            ),
            Self::NoSuchUser(u) => write!(
                f,
                "user '{u}' is not in the image's /etc/passwd (give a number, -u 1000:1000, to \
                 use an id the image does not name)"
            ),
            Self::NoSuchGroup(g) => write!(
                f,
                "group '{g}' is not in the image's /etc/group (give a number to use an id the \
                 image does not name)"
            ),
            Self::EnvSyntax(e) => write!(f, "-e '{e}' is not KEY=VALUE (or KEY)"),
            Self::Address(a) => write!(
                f,
                "--net address '{a}' is not IPv4 ADDRESS/PREFIX (ip=10.0.0.2/24) or, for gw=, \
                 an IPv4 address"
            ),
        }
    }
}

impl std::error::Error for GuestError {}

impl GuestConfig {
    /// The configuration file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |key: &str, value: &str| {
            out.extend_from_slice(key.as_bytes());
            out.push(0);
            out.extend_from_slice(value.as_bytes());
            out.push(0);
        };
        self.argv.iter().for_each(|a| put("arg", a));
        self.env.iter().for_each(|e| put("env", e));
        put("cwd", &self.cwd);
        put("user", &self.user);
        put("hostname", &self.hostname);
        put("tty", if self.tty { "1" } else { "0" });
        if let Some((rows, cols)) = self.term_size {
            put("term-size", &format!("{rows}x{cols}"));
        }
        if let Some(disk) = &self.upper_disk {
            put("upper-disk", disk);
        }
        for v in &self.volumes {
            put("volume", &v.tag);
            put("volume-target", &v.target);
            put("volume-ro", if v.read_only { "1" } else { "0" });
        }
        if let Some(net) = &self.net {
            put("address", &net.address);
            if let Some(gw) = &net.gateway {
                put("gateway", gw);
            }
            net.dns.iter().for_each(|d| put("dns", d));
        }
        out
    }

    /// Reads a configuration [`GuestConfig::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, GuestError> {
        let bad = |why: String| GuestError::Config(why);
        let size = |v: &str| {
            let parsed = v
                .split_once('x')
                .and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)));
            parsed.ok_or_else(|| bad(format!("'{v}' is not a terminal size (ROWSxCOLS)")))
        };
        let mut cfg = GuestConfig::default();
        let mut fields = bytes.split(|&b| b == 0);
        // The file ends in a NUL, so the split's last piece is empty.
        while let Some(key) = fields.next().filter(|k| !k.is_empty()) {
            let key = String::from_utf8_lossy(key);
            let value = fields
                .next()
                .ok_or_else(|| bad(format!("'{key}' has no value")))?;
            let value = String::from_utf8_lossy(value).into_owned();
            let after = |what: &str| bad(format!("'{key}' before {what}"));
            match &*key {
                "arg" => cfg.argv.push(value),
                "env" => cfg.env.push(value),
                "cwd" => cfg.cwd = value,
                "user" => cfg.user = value,
                "hostname" => cfg.hostname = value,
                "tty" => cfg.tty = value == "1",
                "term-size" => cfg.term_size = Some(size(&value)?),
                "upper-disk" => cfg.upper_disk = Some(value),
                "volume" => cfg.volumes.push(Volume {
                    tag: value,
                    target: String::new(),
                    read_only: false,
                }),
                "volume-target" => {
                    let volume = cfg.volumes.last_mut().ok_or_else(|| after("a volume"))?;
                    volume.target = value;
                }
                "volume-ro" => {
                    let volume = cfg.volumes.last_mut().ok_or_else(|| after("a volume"))?;
                    volume.read_only = value == "1";
                }
                "address" => {
                    cfg.net = Some(NetSettings {
                        address: value,
                        ..Default::default()
                    })
                }
                "gateway" => {
                    let net = cfg.net.as_mut().ok_or_else(|| after("the address"))?;
                    net.gateway = Some(value);
                }
                "dns" => {
                    let net = cfg.net.as_mut().ok_or_else(|| after("the address"))?;
                    net.dns.push(value);
                }
                _ => return Err(bad(format!("unknown key '{key}'"))),
            }
        }
        if cfg.argv.is_empty() {
            return Err(bad("no program to run".into()));
        }
        Ok(cfg)
    }
}

/// The environment the program gets: the image's `Env`, each `-e` replacing an entry of the
/// same name (a bare `-e KEY` takes `host(KEY)`, and is dropped when that is `None`, as with
/// `docker run`), and `PATH` set to [`DEFAULT_PATH`] if neither set it.
pub fn merge_env(
    image: &[String],
    overrides: &[String],
    host: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, GuestError> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let name = entry.split('=').next().unwrap_or_default().to_owned();
        env.retain(|e| e.split('=').next() != Some(name.as_str()));
        env.push(entry);
    };
    image.iter().cloned().for_each(&mut set);
    for entry in overrides {
        let name = entry.split('=').next().unwrap_or_default();
        if name.is_empty() {
            return Err(GuestError::EnvSyntax(entry.clone()));
        }
        if entry.contains('=') {
            set(entry.clone());
        } else if let Some(value) = host(name) {
            set(format!("{name}={value}"));
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    Ok(env)
}

/// `10.0.0.2/24` as the address and its netmask (`/24` when no prefix is given).
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, Ipv4Addr), GuestError> {
    let bad = || GuestError::Address(cidr.to_owned());
    let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, "24"));
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Ok((addr, Ipv4Addr::from(mask)))
}

/// A gateway address.
pub fn parse_gateway(gateway: &str) -> Result<Ipv4Addr, GuestError> {
    gateway
        .parse()
        .map_err(|_| GuestError::Address(gateway.to_owned()))
}

/// Who the program runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups: every /etc/group entry listing the user's name.
    pub groups: Vec<u32>,
    /// The home directory (`HOME` unless the environment sets it).
    pub home: String,
}

/// One `/etc/passwd` line's fields ember uses: name, uid, gid, home.
fn passwd_entries(passwd: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, uid, gid, _, home, ..] => {
                Some((*name, uid.parse().ok()?, gid.parse().ok()?, *home))
            }
            _ => None,
        }
    })
}

/// One `/etc/group` line's fields: name, gid, members.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, &str)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, gid, members, ..] => Some((*name, gid.parse().ok()?, *members)),
            [name, _, gid] => Some((*name, gid.parse().ok()?, "")),
            _ => None,
        }
    })
}

/// Checks `USER[:GROUP]` without an image: what ember can refuse before booting.
pub fn check_user_syntax(spec: &str) -> Result<(), GuestError> {
    let bad = || GuestError::UserSyntax(spec.to_owned());
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let valid = |s: &str| !s.is_empty() && !s.contains([':', '\n', '\0']);
    if !valid(user) || group.is_some_and(|g| !valid(g)) {
        return Err(bad());
    }
    Ok(())
}

/// Resolves `USER[:GROUP]` (`""` is root) against the image's passwd and group files, as Docker
/// does: a name must be in passwd; a number need not be (its group is then 0 and home `/`);
/// the group, if given, replaces the passwd entry's; the supplementary groups are those listing
/// the user's name.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<Identity, GuestError> {
    let spec = if spec.is_empty() { "0" } else { spec };
    check_user_syntax(spec)?;
    let (user, group_spec) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.1 == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.0 == user)
                .ok_or_else(|| GuestError::NoSuchUser(user.to_owned()))?,
        ),
    };
    let (name, uid, mut gid, home) = match entry {
        Some((name, uid, gid, home)) => (Some(name), uid, gid, home.to_owned()),
        // A number the image does not name.
        None => (None, user.parse().unwrap_or_default(), 0, "/".to_owned()),
    };
    if let Some(g) = group_spec {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.0 == g)
                .map(|e| e.1)
                .ok_or_else(|| GuestError::NoSuchGroup(g.to_owned()))?,
        };
    }
    let mut groups = vec![gid];
    if let Some(name) = name {
        for (_, id, members) in group_entries(group) {
            if members.split(',').any(|m| m == name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        app:x:1000:1001:App:/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwheel:x:10:root,app\napp:x:1001:\naudio:x:29:app\nodd:x:x:app\n";

    fn id(spec: &str) -> Result<Identity, GuestError> {
        resolve_user(spec, PASSWD, GROUP)
    }

    #[test]
    fn users_resolve_by_name_or_number_with_supplementary_groups() {
        let app = id("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1001, "/home/app")
        );
        assert_eq!(app.groups, [1001, 10, 29]);
        assert_eq!(id("1000").unwrap(), app, "a number in passwd is that user");
        let root = id("").unwrap();
        assert_eq!(
            (root.uid, root.gid, root.groups.clone()),
            (0, 0, vec![0, 10])
        );
        assert_eq!(root.home, "/root");
        let stranger = id("4242").unwrap();
        assert_eq!((stranger.uid, stranger.gid), (4242, 0));
        assert_eq!((stranger.groups, stranger.home), (vec![0], "/".to_owned()));
        let g = id("app:wheel").unwrap();
        assert_eq!((g.uid, g.gid), (1000, 10));
        assert_eq!(g.groups, [10, 29], "the group replaces the primary one");
        assert_eq!(id("4242:77").unwrap().gid, 77);
        assert_eq!(id("nobody"), Err(GuestError::NoSuchUser("nobody".into())));
        assert_eq!(
            id("app:staff"),
            Err(GuestError::NoSuchGroup("staff".into()))
        );
        for bad in ["app:", ":10", "a:b:c", "1000:"] {
            assert_eq!(id(bad), Err(GuestError::UserSyntax(bad.into())), "{bad}");
        }
        assert!(
            id("nobody")
                .unwrap_err()
                .to_string()
                .contains("/etc/passwd")
        );
    }

    #[test]
    fn dash_e_wins_over_the_image_env_and_path_has_a_default() {
        let image = ["A=image".to_owned(), "B=image".to_owned()];
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_owned());
        let env = merge_env(
            &image,
            &[
                "A=flag".into(),
                "FROM_HOST".into(),
                "UNSET".into(),
                "C=x=y".into(),
            ],
            host,
        )
        .unwrap();
        assert_eq!(
            env,
            [
                "B=image",
                "A=flag",
                "FROM_HOST=h",
                "C=x=y",
                &format!("PATH={DEFAULT_PATH}")
            ]
        );
        let env = merge_env(&["PATH=/opt/bin".into()], &[], host).unwrap();
        assert_eq!(env, ["PATH=/opt/bin"], "the image's PATH is kept");
        let env = merge_env(&["PATH=/opt/bin".into()], &["PATH=/x".into()], host).unwrap();
        assert_eq!(env, ["PATH=/x"]);
        assert_eq!(
            merge_env(&[], &["=v".into()], host),
            Err(GuestError::EnvSyntax("=v".into()))
        );
    }

    #[test]
    fn net_addresses_take_a_prefix() {
        let (a, m) = parse_cidr("10.0.0.2/24").unwrap();
        assert_eq!(
            (a.to_string(), m.to_string()),
            ("10.0.0.2".into(), "255.255.255.0".into())
        );
        assert_eq!(parse_cidr("10.0.0.2/0").unwrap().1, Ipv4Addr::UNSPECIFIED);
        assert_eq!(parse_cidr("10.0.0.2/32").unwrap().1, Ipv4Addr::BROADCAST);
        assert_eq!(
            parse_cidr("10.0.0.2").unwrap().1.to_string(),
            "255.255.255.0"
        );
        for bad in ["10.0.0.2/33", "host/24", "10.0.0.2/x", "::1/64"] {
            assert_eq!(parse_cidr(bad), Err(GuestError::Address(bad.into())));
        }
        assert!(parse_gateway("10.0.0.1").is_ok() && parse_gateway("gw").is_err());
    }

    #[test]
    fn the_config_file_round_trips_and_bad_files_are_refused() {
        let cfg = GuestConfig {
            argv: vec!["sh".into(), "-c".into(), "echo 'a b'\n; exit 3".into()],
            env: vec!["A=1".into(), "B=".into()],
            cwd: "/srv/my dir".into(),
            user: "app:wheel".into(),
            hostname: "box".into(),
            tty: true,
            term_size: Some((50, 132)),
            upper_disk: Some("/dev/vdb".into()),
            volumes: vec![Volume {
                tag: "vol0".into(),
                target: "/data".into(),
                read_only: true,
            }],
            net: Some(NetSettings {
                address: "10.0.0.2/24".into(),
                gateway: Some("10.0.0.1".into()),
                dns: vec!["1.1.1.1".into(), "9.9.9.9".into()],
            }),
        };
        assert_eq!(GuestConfig::decode(&cfg.encode()), Ok(cfg.clone()));
        let plain = GuestConfig {
            net: None,
            volumes: vec![],
            tty: false,
            term_size: None,
            upper_disk: None,
            ..cfg
        };
        assert_eq!(GuestConfig::decode(&plain.encode()), Ok(plain));
        for bad in [
            &b""[..],
            b"cwd\0/\0",
            b"arg\0sh\0cwd",
            b"arg\0sh\0color\0red\0",
            b"arg\0sh\0volume-ro\x001\0",
            b"arg\0sh\0dns\x001.1.1.1\0",
            b"arg\0sh\0term-size\x0080\0",
            b"arg\0sh\0term-size\0manyx80\0",
            b"arg\0sh\0term-size\x0070000x80\0",
        ] {
            assert!(
                matches!(GuestConfig::decode(bad), Err(GuestError::Config(_))),
                "{bad:?}"
            );
        }
    }
}
