//! apt with a private configuration: its own sources list, package lists and cache under a
//! directory of ours, so that fetching pinned Debian packages (`apt-get download`) and source
//! tarballs (`apt-get source --download-only`) never modifies the host's apt state. The host's
//! configuration is only read: `apt.conf.d` still applies (proxies), and [`mirrors`] reuses the
//! Debian mirror URIs of its sources.
//!
//! Nothing fetched this way is trusted: callers check every file against a pinned SHA-256.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result, bail};

use crate::util::{output, run};

/// Debian's archive keyring, the `signed-by` of every private source.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One line of the private sources list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// `deb-src` (source packages) rather than `deb` (binary packages).
    pub deb_src: bool,
    /// Archive base URI (`http://deb.debian.org/debian`).
    pub uri: String,
    /// Suite (`trixie`, `bookworm-security`).
    pub suite: String,
    /// Space-separated components (`main contrib`).
    pub components: String,
}

impl Source {
    /// A `deb` (binary packages) line.
    pub fn deb(uri: &str, suite: &str, components: &str) -> Self {
        Source { deb_src: false, uri: uri.into(), suite: suite.into(), components: components.into() }
    }

    /// A `deb-src` (source packages) line.
    pub fn deb_src(uri: &str, suite: &str, components: &str) -> Self {
        Source { deb_src: true, ..Source::deb(uri, suite, components) }
    }

    /// The one-line-style sources.list entry, signed by Debian's archive keyring.
    pub fn line(&self) -> String {
        let kind = if self.deb_src { "deb-src" } else { "deb" };
        format!("{kind} [signed-by={KEYRING}] {} {} {}", self.uri, self.suite, self.components)
    }
}

/// A private apt configuration rooted at one directory: `etc/sources.list`, `lists/` and
/// `cache/` (with `cache/archives/`) live there; the host's sources, preferences, lists and
/// caches are not used.
#[derive(Debug)]
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Create the directory layout under `dir` and write `sources` as its sources list
    /// (replacing any earlier one). Run [`PrivateApt::update`] before downloading.
    pub fn new(dir: &Path, sources: &[Source]) -> Result<Self> {
        for d in ["etc", "lists/partial", "cache/archives/partial"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        let list = sources.iter().fold(String::new(), |mut s, src| {
            let _ = writeln!(s, "{}", src.line());
            s
        });
        let path = dir.join("etc/sources.list");
        fs::write(&path, list).with_context(|| format!("writing {}", path.display()))?;
        Ok(PrivateApt { dir: dir.to_path_buf() })
    }

    /// The `-o` options that point apt at the private configuration.
    ///
    /// `APT::Sandbox::User=root`: as root, apt would otherwise download as `_apt`, which
    /// usually cannot write into a checkout (a private directory such as `/root/...`).
    pub fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::sourcelist={d}/etc/sources.list"),
            "-oDir::Etc::sourceparts=/dev/null".into(),
            "-oDir::Etc::preferencesparts=/dev/null".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oAPT::Architecture=amd64".into(),
            "-oAcquire::Languages=none".into(),
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    fn apt_get(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.args(self.options()).arg("-q");
        c
    }

    /// `apt-get update` of the private lists.
    pub fn update(&self) -> Result<()> {
        run(self.apt_get().arg("update")).context("apt-get update (private apt configuration)")
    }

    /// Versions of binary package `name` the private lists offer (`apt-cache madison`).
    pub fn available(&self, name: &str) -> Result<Vec<String>> {
        let out = output(Command::new("apt-cache").args(self.options()).args(["madison", name]))
            .with_context(|| format!("apt-cache madison {name} (private apt configuration)"))?;
        Ok(parse_madison(&out))
    }

    /// `apt-get download <spec>` (`name=version`) into `dest_dir`; fails when apt does.
    pub fn download(&self, spec: &str, dest_dir: &Path) -> Result<()> {
        run(self.apt_get().args(["download", spec]).current_dir(dest_dir))
            .with_context(|| format!("apt-get download {spec} (private apt configuration)"))
    }

    /// `apt-get source --download-only <spec>` (`name=version`) into `dest_dir`.
    ///
    /// Returns apt's exit status without judging it (an error only when apt cannot be
    /// started): the caller decides from the files that arrived, see `firmware::fetch_source`.
    pub fn source_download(&self, spec: &str, dest_dir: &Path) -> Result<ExitStatus> {
        self.apt_get()
            .args(["source", "--download-only", spec])
            .current_dir(dest_dir)
            .status()
            .with_context(|| format!("starting apt-get source --download-only {spec}"))
    }
}

/// The versions column of `apt-cache madison` output.
fn parse_madison(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.split('|').nth(1)).map(|v| v.trim().to_string()).collect()
}

/// The Debian archive and security-archive URIs to use for private sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirrors {
    /// The main archive (`.../debian`): every suite except `*-security`.
    pub main: String,
    /// The security archive (`.../debian-security`): the `*-security` suites.
    pub security: String,
}

impl Mirrors {
    /// The URI that carries `suite`.
    pub fn for_suite(&self, suite: &str) -> &str {
        if suite.ends_with("-security") { &self.security } else { &self.main }
    }
}

/// The host's Debian archive and security-archive URIs, read from its apt sources
/// (`/etc/apt/sources.list`, `/etc/apt/sources.list.d/*.{list,sources}`), or
/// `CHRYSALIS_DEBIAN_MIRROR` and `CHRYSALIS_DEBIAN_SECURITY_MIRROR` when both are set.
pub fn mirrors() -> Result<Mirrors> {
    if let (Ok(main), Ok(security)) =
        (std::env::var("CHRYSALIS_DEBIAN_MIRROR"), std::env::var("CHRYSALIS_DEBIAN_SECURITY_MIRROR"))
    {
        return Ok(Mirrors { main, security });
    }
    let mut text = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources" || x == "list") {
                text.push('\n');
                text.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    match mirrors_in(&text) {
        Some(m) => Ok(m),
        None => bail!(
            "cannot find the Debian archive and security archive in the host's apt sources; \
             set CHRYSALIS_DEBIAN_MIRROR and CHRYSALIS_DEBIAN_SECURITY_MIRROR"
        ),
    }
}

/// The first Debian archive and security archive named in apt sources text (deb822 stanzas:
/// `URIs:` then `Suites:`; one-line entries: `deb [options] URI SUITE COMPONENTS`).
fn mirrors_in(text: &str) -> Option<Mirrors> {
    let (mut main, mut security) = (None, None);
    let mut uri: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("URIs:") {
            uri = u.split_whitespace().next().map(str::to_string);
        } else if let Some(s) = line.strip_prefix("Suites:") {
            if let Some(u) = &uri {
                classify(u, s, &mut main, &mut security);
            }
        } else if let Some(rest) = line.strip_prefix("deb ") {
            let parts: Vec<&str> = rest.split_whitespace().filter(|p| !p.starts_with('[')).collect();
            if let [u, s, ..] = parts.as_slice() {
                classify(u, s, &mut main, &mut security);
            }
        }
    }
    Some(Mirrors { main: main?, security: security? })
}

fn classify(uri: &str, suites: &str, main: &mut Option<String>, security: &mut Option<String>) {
    for s in suites.split_whitespace() {
        if s.ends_with("-security") {
            security.get_or_insert_with(|| uri.to_string());
        } else if ["bookworm", "trixie", "stable", "oldstable"].contains(&s) {
            main.get_or_insert_with(|| uri.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_classify_deb822_and_one_line_sources() {
        let (mut m, mut s) = (None, None);
        classify("http://a/debian", "bookworm bookworm-updates", &mut m, &mut s);
        classify("http://a/debian-security", "bookworm-security", &mut m, &mut s);
        assert_eq!((m.as_deref(), s.as_deref()), (Some("http://a/debian"), Some("http://a/debian-security")));
    }

    #[test]
    fn mirrors_found_in_sources_text() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n";
        let m = mirrors_in(deb822);
        assert_eq!(
            m,
            Some(Mirrors {
                main: "http://deb.debian.org/debian".into(),
                security: "http://deb.debian.org/debian-security".into()
            })
        );
        let one_line = "deb [arch=amd64] http://m/debian trixie main\ndeb http://m/debian-security trixie-security main\n";
        let m = mirrors_in(one_line);
        assert_eq!(m.as_ref().map(|m| m.for_suite("trixie-security")), Some("http://m/debian-security"));
        assert_eq!(m.as_ref().map(|m| m.for_suite("bookworm")), Some("http://m/debian"));
        assert_eq!(mirrors_in("deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"), None);
    }

    #[test]
    fn sources_list_and_options_are_private() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("chrysalis-apt-test-{}", std::process::id()));
        let apt = PrivateApt::new(
            &dir,
            &[Source::deb("http://m/debian", "trixie", "main contrib"), Source::deb_src("http://m/debian", "trixie", "main")],
        )?;
        let list = fs::read_to_string(dir.join("etc/sources.list"))?;
        assert_eq!(
            list,
            format!(
                "deb [signed-by={KEYRING}] http://m/debian trixie main contrib\n\
                 deb-src [signed-by={KEYRING}] http://m/debian trixie main\n"
            )
        );
        assert!(dir.join("lists/partial").is_dir() && dir.join("cache/archives/partial").is_dir());
        let opts = apt.options();
        let d = dir.display();
        for want in [
            format!("-oDir::Etc::sourcelist={d}/etc/sources.list"),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oDir::Etc::sourceparts=/dev/null".into(),
        ] {
            assert!(opts.contains(&want), "{want} missing from {opts:?}");
        }
        fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn madison_versions() {
        let out = " libcuda1 | 550.163.01-2 | http://deb.debian.org/debian trixie/non-free amd64 Packages\n\
                    libcuda1 | 535.247.01-1~deb12u1 | http://deb.debian.org/debian bookworm/non-free amd64 Packages\n";
        assert_eq!(parse_madison(out), ["550.163.01-2", "535.247.01-1~deb12u1"]);
    }
}
