//! Reloads of a running proxy, from its watched file: a proxy of a protocol whose codec no test
//! connects to, with real listeners on 127.0.0.1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use metaprotocol_core::CodecRegistry;

use crate::LogControl as _;
use crate::testing::NullCodec;
use crate::{CONFIG_FILE_SETTLE, Config, Proxy};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CONFIG: &str = "
listeners:
  - { name: front, address: 127.0.0.1:0, protocol: test, route_config: r }
route_configs:
  - { name: r, routes: [ { route: { cluster: c } } ] }
clusters:
  - { name: c, endpoints: [ { address: 127.0.0.1:1 } ] }
";

/// How often the tests' watchers look at their files.
const POLL: Duration = Duration::from_millis(10);

async fn start(config: &str) -> TestResult<Proxy> {
    let mut codecs = CodecRegistry::new();
    // A second protocol, which no listener speaks: a cluster can be moved to it.
    for protocol in ["test", "other"] {
        codecs.register(protocol, |_| Ok(Arc::new(NullCodec)));
    }
    Ok(Proxy::builder(Config::from_yaml(config)?)
        .codecs(codecs)
        .start()
        .await?)
}

/// A config file of its own for `test`, holding `config`.
fn config_file(test: &str, config: &str) -> TestResult<PathBuf> {
    let path = std::env::temp_dir().join(format!("reload-{test}-{}.yaml", std::process::id()));
    std::fs::write(&path, config)?;
    Ok(path)
}

/// A proxy of [`CONFIG`] watching a config file of its own, every [`POLL`].
struct Watched {
    proxy: Proxy,
    path: PathBuf,
    watcher: tokio::task::JoinHandle<()>,
}

impl Watched {
    /// The proxy, and its file for `test`, holding [`CONFIG`].
    async fn start(test: &str) -> TestResult<Self> {
        let proxy = start(CONFIG).await?;
        let path = config_file(test, CONFIG)?;
        let watcher = {
            let proxy = proxy.clone();
            let path = path.clone();
            tokio::spawn(async move { proxy.watch_file(&path, POLL).await })
        };
        Ok(Self {
            proxy,
            path,
            watcher,
        })
    }

    /// Shuts the proxy down, waits for its watcher to end, and removes the file.
    async fn stop(self) -> TestResult {
        self.proxy.shutdown().await;
        tokio::time::timeout(Duration::from_secs(10), self.watcher).await??;
        std::fs::remove_file(&self.path)?;
        Ok(())
    }
}

/// The proxy's count of rejected updates.
fn rejected(proxy: &Proxy) -> u64 {
    proxy.state.updates_rejected.get()
}

/// Waits (at most 10 s) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

#[tokio::test]
async fn a_config_file_emptied_before_its_new_contents_are_written_is_not_applied() -> TestResult {
    let watched = Watched::start("emptied").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    // A first change, once applied, shows the watcher at work: written again (made new by a
    // comment) until then, as the watcher may have begun by reading it as the running config.
    let middle = CONFIG.replace("name: front", "name: middle");
    let mut tries = 0;
    while !proxy.listeners().iter().any(|(name, _)| name == "middle") {
        tries += 1;
        assert!(
            tries <= 100,
            "the first change was not applied: {:?}",
            proxy.listeners()
        );
        std::fs::write(path, format!("{middle}# {tries}\n"))?;
        tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 10).await;
    }
    // An editor that truncates the file, then writes it, is seen between the two.
    std::fs::write(path, "")?;
    assert!(
        until(|| rejected(proxy) == 1).await,
        "the empty file was not rejected"
    );
    assert_eq!(
        proxy.listeners().len(),
        1,
        "the running config is kept: {:?}",
        proxy.listeners()
    );
    std::fs::write(path, "# being written\n")?;
    assert!(
        until(|| rejected(proxy) == 2).await,
        "a file of comments only was not rejected"
    );
    let renamed = CONFIG.replace("name: front", "name: back");
    std::fs::write(path, &renamed)?;
    assert!(
        until(|| proxy.listeners().iter().any(|(name, _)| name == "back")).await,
        "the written file was not applied: {:?}",
        proxy.listeners()
    );
    watched.stop().await
}

/// A config file written in place (`cp`, an editor) is applied once it has stayed the same
/// for [`CONFIG_FILE_SETTLE`], not as first seen: a look in the middle of the write found a
/// prefix that was a valid config of its own (here the first of two listeners) and ran it.
#[tokio::test]
async fn a_config_file_caught_half_written_is_not_applied() -> TestResult {
    written_in_two_parts("half-written", |path| {
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
    })
    .await
}

/// A config file written anew under its name, as vim writes one (the old file renamed aside as
/// a backup, a new one created at the path and written there), is another file at the path, as
/// one renamed over it is, but one that may still be being written: it was applied at the next
/// look, half-written.
#[tokio::test]
async fn a_config_file_written_anew_under_its_name_is_not_applied_half_written() -> TestResult {
    written_in_two_parts("written-anew", |path| {
        let backup = path.with_extension("yaml~");
        std::fs::rename(path, &backup)?;
        let file = std::fs::File::create_new(path);
        std::fs::remove_file(backup)?;
        file
    })
    .await
}

/// Writes a new config to the watched file of `test` in two parts, into the file `open` gives,
/// pausing between them as a slow editor would: the proxy applies the whole, never the first
/// part alone.
async fn written_in_two_parts(
    test: &str,
    open: impl FnOnce(&std::path::Path) -> std::io::Result<std::fs::File>,
) -> TestResult {
    use std::io::Write;
    let watched = Watched::start(test).await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    // Once the status is set, the watcher has read the file as it runs now.
    assert!(
        until(|| proxy.config_file_status().is_some()).await,
        "the watcher did not start"
    );
    let (tables, listeners) = CONFIG
        .split_once("route_configs:")
        .map(|(listeners, tables)| (format!("route_configs:{tables}"), listeners))
        .ok_or("CONFIG has route configs")?;
    let first = listeners.replace("name: front", "name: first");
    let second = "  - { name: second, address: 127.0.0.1:0, protocol: test, route_config: r }\n";
    let mut file = open(path)?;
    file.write_all(format!("{tables}{first}").as_bytes())?;
    // The writer pauses (well within the settle time): the watcher looks many times meanwhile.
    tokio::time::sleep(CONFIG_FILE_SETTLE / 3).await;
    let names = || {
        let mut names: Vec<String> = proxy
            .listeners()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(), ["front"], "the half-written file was applied");
    file.write_all(second.as_bytes())?;
    drop(file);
    assert!(
        until(|| names() == ["first", "second"]).await,
        "the whole file was not applied: {:?}",
        names()
    );
    watched.stop().await
}

/// A config file renamed over the path (written aside first: `sed -i`, Ansible) is applied at
/// the next look, without waiting to settle: it was whole before it appeared. Shown by a file
/// that never settles: written in place again every third of the settle time after the rename.
#[tokio::test]
async fn a_config_file_renamed_over_the_path_is_applied_without_settling() -> TestResult {
    let watched = Watched::start("renamed-over").await?;
    let path = watched.path.clone();
    applied_without_settling(&watched, &path, || {
        let aside = path.with_extension("yaml.new");
        std::fs::write(&aside, CONFIG.replace("name: front", "name: back"))?;
        std::fs::rename(&aside, &path)
    })
    .await?;
    watched.stop().await
}

/// A config file reached through symlinks swapped to a new one as Kubernetes swaps a mounted
/// ConfigMap's (files written into a new directory, then a link to it renamed over `..data`,
/// through which the file's own link points) is applied at the next look, without waiting to
/// settle.
#[cfg(unix)]
#[tokio::test]
async fn a_config_file_swapped_as_a_configmap_is_applied_without_settling() -> TestResult {
    use std::os::unix::fs::symlink;
    let dir = std::env::temp_dir().join(format!("reload-configmap-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("..v1"))?;
    std::fs::write(dir.join("..v1/proxy.yaml"), CONFIG)?;
    symlink("..v1", dir.join("..data"))?;
    symlink("..data/proxy.yaml", dir.join("proxy.yaml"))?;
    let proxy = start(CONFIG).await?;
    let watcher = {
        let (proxy, path) = (proxy.clone(), dir.join("proxy.yaml"));
        tokio::spawn(async move { proxy.watch_file(&path, POLL).await })
    };
    let watched = Watched {
        proxy,
        path: dir.join("proxy.yaml"),
        watcher,
    };
    applied_without_settling(&watched, &dir.join("..v2/proxy.yaml"), || {
        std::fs::create_dir(dir.join("..v2"))?;
        std::fs::write(
            dir.join("..v2/proxy.yaml"),
            CONFIG.replace("name: front", "name: back"),
        )?;
        symlink("..v2", dir.join("..data_tmp"))?;
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))
    })
    .await?;
    watched.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Replaces the watched file by `replace` with [`CONFIG`]'s listener named `back`, then keeps
/// the file it put in place (`written`) from settling, appending a comment to it every third
/// of the settle time: the proxy must apply it all the same, in at most 10 s.
async fn applied_without_settling(
    watched: &Watched,
    written: &std::path::Path,
    replace: impl FnOnce() -> std::io::Result<()>,
) -> TestResult {
    use std::io::Write;
    let proxy = &watched.proxy;
    assert!(
        until(|| proxy.config_file_status().is_some()).await,
        "the watcher did not start"
    );
    replace()?;
    let mut file = std::fs::OpenOptions::new().append(true).open(written)?;
    for touch in 0..30 {
        if proxy.listeners().iter().any(|(name, _)| name == "back") {
            return Ok(());
        }
        tokio::time::sleep(CONFIG_FILE_SETTLE / 3).await;
        writeln!(file, "# {touch}")?;
    }
    Err(format!("the replaced file was not applied: {:?}", proxy.listeners()).into())
}

/// The watcher looks at a config file that does not change without reading it (only its
/// metadata), and still reads and applies it when it is rewritten in place: it read the whole
/// file at every look.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_config_file_is_read_only_when_it_changes() -> TestResult {
    let watched = Watched::start("read-on-change").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    assert!(
        until(|| proxy.config_file_status().is_some()).await,
        "the watcher did not start"
    );
    // A file changed a moment ago is read at each look for a while (its timestamps may not
    // show the next change yet): the quiet starts once it is older.
    tokio::time::sleep(crate::file_stamp::SETTLE + Duration::from_secs(1)).await;
    let opens = crate::testing::Opens::of(path)?;
    tokio::time::sleep(POLL * 50).await;
    assert!(
        !opens.opened()?,
        "the file was read though it did not change"
    );
    std::fs::write(path, CONFIG.replace("name: front", "name: back"))?;
    assert!(
        until(|| proxy.listeners().iter().any(|(name, _)| name == "back")).await,
        "the file rewritten in place was not applied"
    );
    watched.stop().await
}

/// A change of the watched file that is rejected shows in `/config_dump` (as
/// [`Proxy::config_file_status`]), with the field and line at fault, until a later change
/// applies: the log and a counter were the only signs that an edit had not taken effect.
#[tokio::test]
async fn a_rejected_change_of_the_config_file_shows_until_one_applies() -> TestResult {
    let watched = Watched::start("shown").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    assert!(
        until(|| proxy.config_file_status().is_some()).await,
        "the watcher did not start"
    );
    let error = || proxy.config_file_status().and_then(|s| s.last_error);
    assert_eq!(error(), None);
    std::fs::write(path, CONFIG.replace("protocol: test", "protocol: [test]"))?;
    assert!(
        until(|| error().is_some()).await,
        "the change was not rejected"
    );
    let shown = error().unwrap_or_default();
    assert!(
        shown.contains("listeners[0].protocol") && shown.contains("line 3"),
        "{shown}"
    );
    assert_eq!(proxy.listeners().len(), 1, "the running config is kept");
    std::fs::write(path, CONFIG.replace("name: front", "name: back"))?;
    assert!(
        until(|| proxy.listeners().iter().any(|(name, _)| name == "back")).await,
        "the written file was not applied"
    );
    let status = proxy.config_file_status().unwrap_or_default();
    assert_eq!(status.last_error, None, "cleared by the change applied");
    assert!(status.last_applied.is_some());
    assert_eq!(status.path, path.display().to_string());
    watched.stop().await
}

/// `method path` with `body` to the admin API at `admin`: the answer's status and body.
async fn admin_request(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> TestResult<(u16, String)> {
    admin_request_with_headers(admin, method, path, "", body).await
}

/// [`admin_request`] with `Authorization: Bearer <token>`.
async fn admin_request_with_token(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> TestResult<(u16, String)> {
    let authorization = format!("authorization: Bearer {token}\r\n");
    admin_request_with_headers(admin, method, path, &authorization, "").await
}

/// `method path` with `headers` (each line ending in CRLF) and `body` to the admin API at
/// `admin`: the answer's status and body, within 10 s.
async fn admin_request_with_headers(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> TestResult<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\n{headers}connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer)).await??;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("no status line")?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

#[tokio::test]
async fn a_resource_put_through_the_admin_api_is_told_its_mistakes_in_its_own_terms() -> TestResult
{
    // The route config `r` is the second: its errors in the running config's terms would be
    // `route_configs[1]...`.
    let config = CONFIG.replace(
        "route_configs:\n",
        "admin: { address: 127.0.0.1:0 }\nroute_configs:\n  - { name: p, routes: [] }\n",
    );
    let proxy = start(&config).await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let body = "name: r\nroutes:\n  - route: { cluster: c }\n  - route: { cluster: ghost }\n";
    let (status, answer) = admin_request(admin, "PUT", "/route_configs/r", body).await?;
    assert_eq!(status, 400, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer)?;
    assert_eq!(answer["field"], "routes[1].route.cluster", "{answer}");
    assert_eq!(answer["line"], 4, "{answer}");
    assert_eq!(answer["column"], 23, "{answer}");
    assert_eq!(rejected(&proxy), 1);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_config_file_rejected_for_an_address_in_use_is_applied_once_the_address_is_free()
-> TestResult {
    let watched = Watched::start("address-in-use").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let address = taken.local_addr()?;
    let moved = CONFIG.replace("address: 127.0.0.1:0", &format!("address: {address}"));
    // Written again (made new by a comment) until rejected: the watcher may have begun by
    // reading it as the running config.
    let mut tries = 0;
    while rejected(proxy) == 0 {
        tries += 1;
        assert!(tries <= 100, "the file was not rejected");
        std::fs::write(path, format!("{moved}# {tries}\n"))?;
        tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 10).await;
    }
    assert_ne!(proxy.listeners()[0].1, address, "{:?}", proxy.listeners());
    drop(taken);
    assert!(
        until(|| proxy.listeners().iter().any(|(_, at)| *at == address)).await,
        "the file was not applied once its address was free: {:?}",
        proxy.listeners()
    );
    watched.stop().await
}

/// A config file rejected because a file it names could not be read (a password file copied
/// after the config that names it; as well a certificate and its key replaced one after the
/// other, a network file system that did not answer) is applied once the file is there, the
/// config file itself unchanged.
#[tokio::test]
async fn a_config_file_rejected_for_a_file_it_names_is_applied_once_the_file_is_there() -> TestResult
{
    let watched = Watched::start("named-file").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    let password =
        std::env::temp_dir().join(format!("reload-named-file-{}.password", std::process::id()));
    let _ = std::fs::remove_file(&password);
    let config = config_with_password_file(&password);
    // Written again (made new by a comment) until rejected: the watcher may have begun by
    // reading it as the running config.
    let mut tries = 0;
    while rejected(proxy) == 0 {
        tries += 1;
        assert!(tries <= 100, "the file was not rejected");
        std::fs::write(path, format!("{config}# {tries}\n"))?;
        tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 10).await;
    }
    std::fs::write(&password, "secret\n")?;
    let applied = until(|| proxy.config().listeners[0].filters.len() == 1).await;
    std::fs::remove_file(&password)?;
    let status = proxy.config_file_status();
    watched.stop().await?;
    assert!(
        applied,
        "the config file was not applied once the file it names was there: {status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_admin_update_cut_by_its_deadline_says_it_changed_nothing() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = CONFIG.replace(
        "route_configs:\n",
        "admin: { address: 127.0.0.1:0 }\nroute_configs:\n",
    );
    let proxy = start(&config).await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    // Another update (a reload, a dynamic source's) in progress for longer than the PUT's
    // 30 s: the PUT waits behind it until its deadline.
    let other_update = proxy.state.updates.lock().await;
    let body = "name: c\nendpoints: [ { address: 127.0.0.1:2 } ]\n";
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(
            format!(
                "PUT /clusters/c HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    // The 30 s pass at once: the clock moves to each timer when nothing else is left to do.
    tokio::time::pause();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_string(&mut answer)).await??;
    tokio::time::resume();
    drop(other_update);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("not applied"), "{answer}");
    assert_eq!(rejected(&proxy), 1, "counted as rejected");
    let running = proxy.state.config();
    let cluster = running
        .clusters
        .iter()
        .find(|c| c.name == "c")
        .ok_or("no cluster c")?;
    assert_eq!(
        cluster.endpoints[0].address.to_string(),
        "127.0.0.1:1",
        "nothing changed"
    );
    proxy.shutdown().await;
    Ok(())
}

/// An admin API update that failed because a file it reads was not read in time (here every
/// thread reading files is held by reads that do not end, as on a network file system that does
/// not answer; FIFOs nothing writes to) is the proxy's failure, not the request's: it is
/// answered 503, as an update cut by its deadline is, naming the file, and counted as rejected;
/// nothing changed.
#[tokio::test]
async fn an_admin_update_whose_file_read_timed_out_is_answered_503() -> TestResult {
    use super::file_reads::MOST_READERS;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = CONFIG.replace(
        "route_configs:\n",
        "admin: { address: 127.0.0.1:0 }\nroute_configs:\n",
    );
    let fifo = fifo("admin-timeout")?;
    let ca_file = fifo.with_extension("ca.pem");
    std::fs::write(&ca_file, "never read")?;
    let proxy = start(&config).await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let hung = config_with_password_file(&fifo).replace(
        "route_configs:\n",
        "admin: { address: 127.0.0.1:0 }\nroute_configs:\n",
    );
    let soon = || tokio::time::Instant::now() + Duration::from_millis(300);
    for _ in 0..MOST_READERS {
        let update = super::update::with_deadline(soon(), proxy.reload_yaml(&hung)).await;
        assert_refused_naming(&update, "its read had not ended");
    }
    let rejected_before = rejected(&proxy);
    let body = format!(
        "name: c\nendpoints: [ {{ address: 127.0.0.1:2 }} ]\ntls: {{ ca_file: {} }}\n",
        ca_file.display()
    );
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream
        .write_all(
            format!(
                "PUT /clusters/c HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    // The update's 10 s wait for a reading thread passes at once: the clock moves to each
    // timer when nothing else is left to do.
    tokio::time::pause();
    let mut answer = String::new();
    let read =
        tokio::time::timeout(Duration::from_secs(60), stream.read_to_string(&mut answer)).await;
    tokio::time::resume();
    // The hung reads end, and their threads with them.
    write_fifo(&fifo)?;
    let running = proxy.state.config();
    let rejected = rejected(&proxy) - rejected_before;
    proxy.shutdown().await;
    std::fs::remove_file(&fifo)?;
    std::fs::remove_file(&ca_file)?;
    read??;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("was not read"), "{answer}");
    assert!(answer.contains(&ca_file.display().to_string()), "{answer}");
    assert_eq!(rejected, 1, "counted as rejected");
    let endpoint = running
        .clusters
        .iter()
        .find(|c| c.name == "c")
        .map(|c| c.endpoints[0].address.to_string());
    assert_eq!(endpoint.as_deref(), Some("127.0.0.1:1"), "nothing changed");
    Ok(())
}

/// A log filter kept in memory, as an embedder's [`crate::LogControl`] keeps it.
#[derive(Default)]
struct Levels(std::sync::Mutex<String>);

impl crate::LogControl for Levels {
    fn current(&self) -> String {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn set(&self, directives: &str) -> Result<(), String> {
        if let Ok(mut levels) = self.0.lock() {
            *levels = directives.to_owned();
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_misspelt_log_level_is_refused_and_keeps_the_filter() -> TestResult {
    let config = CONFIG.replace(
        "route_configs:\n",
        "admin: { address: 127.0.0.1:0 }\nroute_configs:\n",
    );
    let mut codecs = CodecRegistry::new();
    codecs.register("test", |_| Ok(Arc::new(NullCodec)));
    let levels = Arc::new(Levels(std::sync::Mutex::new("warn".to_owned())));
    let proxy = Proxy::builder(Config::from_yaml(&config)?)
        .codecs(codecs)
        .log_control(levels.clone())
        .start()
        .await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let (status, answer) = admin_request(admin, "POST", "/logging?level=wran", "").await?;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("?level= is one of off, error, warn"),
        "{answer}"
    );
    assert_eq!(levels.current(), "warn", "the filter in force stays");
    let (status, answer) = admin_request(admin, "POST", "/logging?level=DEBUG", "").await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(levels.current(), "debug");
    // Directives are no misspelt level: they are taken, as they always were.
    let (status, answer) = admin_request(
        admin,
        "POST",
        "/logging?level=metaprotocol_router=trace",
        "",
    )
    .await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(levels.current(), "metaprotocol_router=trace");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_readiness_probe_is_answered_while_a_large_scrape_runs() -> TestResult {
    use std::io::{Read, Write};
    let config = CONFIG.replace(
        "route_configs:\n",
        "admin: { address: 127.0.0.1:0 }\nroute_configs:\n",
    );
    let proxy = start(&config).await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let metrics = proxy.state.metrics().clone();
    let root = metrics.root();
    let counters: Vec<_> = (0..50_000)
        .map(|i| root.counter_with("widgets", "Widgets", &[("widget", &i.to_string())]))
        .collect();
    let began = std::time::Instant::now();
    let _ = metrics.encode(crate::stats::ExpositionFormat::Prometheus);
    let scrape = began.elapsed();
    // The probe comes from a thread of its own, which a blocked runtime does not hold up.
    let (scraping, scrape_sent) = std::sync::mpsc::channel();
    let probe = std::thread::spawn(move || -> std::io::Result<(Duration, String)> {
        let _ = scrape_sent.recv_timeout(Duration::from_secs(10));
        // Into the scrape's work.
        std::thread::sleep(scrape / 10);
        let asked = std::time::Instant::now();
        let mut stream = std::net::TcpStream::connect(admin)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok((asked.elapsed(), answer))
    });
    let scraped = tokio::spawn(admin_request(admin, "GET", "/metrics", ""));
    tokio::task::yield_now().await;
    let sent = std::time::Instant::now();
    scraping.send(())?;
    let (status, _) = tokio::time::timeout(Duration::from_secs(60), scraped).await???;
    // Measured in the same run as the probe: a loaded machine slows both alike.
    let during = sent.elapsed();
    assert_eq!(status, 200);
    let (waited, answer) = probe.join().map_err(|_| "the probe panicked")??;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Held behind the scrape, the probe (sent a tenth into it) waited for the rest of it.
    assert!(
        waited < during / 2,
        "/ready took {waited:?} during a scrape that took {during:?}"
    );
    drop(counters);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_put_whose_body_is_not_text_or_too_large_is_rejected_in_json() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = CONFIG.replace(
        "route_configs:\n",
        "admin: { address: 127.0.0.1:0 }\nroute_configs:\n",
    );
    let proxy = start(&config).await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let too_large = vec![b'a'; 3 << 20];
    for (body, status) in [(&b"name: c\xff\xfe"[..], 400), (&too_large[..], 413)] {
        let mut stream = tokio::net::TcpStream::connect(admin).await?;
        let head = format!(
            "PUT /clusters/c HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        // The server may answer and close before it has taken the whole of a body too large.
        let _ = stream.write_all(body).await;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let json = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let json: serde_json::Value = serde_json::from_str(json)?;
        assert!(json["error"].is_string(), "{json}");
    }
    assert_eq!(rejected(&proxy), 2, "both counted as rejected");
    proxy.shutdown().await;
    Ok(())
}

/// A config of `clusters` clusters `c0`, `c1` ... of one endpoint each, and `routes` routes
/// matching `m` = `m0`, `m1` ..., route `i` to cluster `c{i % clusters}`.
fn routed_clusters(routes: usize, clusters: usize) -> String {
    let mut yaml = String::from(
        "listeners:\n  - { name: front, address: 127.0.0.1:0, protocol: test, route_config: r }\n\
         route_configs:\n  - name: r\n    routes:\n",
    );
    for i in 0..routes {
        yaml.push_str(&format!(
            "      - {{ match: {{ metadata: [ {{ key: m, exact: m{i} }} ] }}, route: {{ cluster: c{} }} }}\n",
            i % clusters
        ));
    }
    yaml.push_str("clusters:\n");
    for i in 0..clusters {
        yaml.push_str(&format!(
            "  - {{ name: c{i}, endpoints: [ {{ address: 127.0.0.1:1 }} ] }}\n"
        ));
    }
    yaml
}

/// A proxy of thousands of clusters (200 of them routed to) starts, and an update of one of
/// them rebuilds that cluster alone, each doing work linear in its clusters: the cluster map was
/// copied once per cluster it gained, at start and again at commit, and every update searched
/// the cluster list for each cluster (quadratic: 10,000 clusters took minutes to start in a
/// debug build). The work is counted, not timed: a start of 10,000 clusters that took 7 s of
/// CPU took 140 s on a machine loaded by other tests, past any bound on the wall clock.
#[tokio::test]
async fn one_cluster_changed_among_thousands_rebuilds_that_cluster_alone() -> TestResult {
    use crate::config::work;
    const CLUSTERS: usize = 2_000;
    let counters = [
        ("cluster maps copied", &work::CLUSTER_MAPS_COPIED),
        ("cluster names indexed", &work::NAMES_INDEXED),
        ("cluster specs checked", &work::CHECKED),
        ("cluster specs compared", &work::COMPARED),
        ("running clusters looked at", &work::HANDLES_CHECKED),
        ("cluster snapshots built", &work::SNAPSHOTS_BUILT),
    ];
    let done = || counters.map(|(_, counter)| work::done(counter));
    // The work since `before` of each counter, named.
    let since = |before: [usize; 6]| -> Vec<(&str, usize)> {
        counters
            .iter()
            .zip(done().iter().zip(before))
            .map(|((what, _), (now, before))| (*what, now - before))
            .collect()
    };
    let before = done();
    let proxy = start(&routed_clusters(200, CLUSTERS)).await?;
    let started = since(before);
    // One copy of the map, which the start publishes; a few passes over the clusters else.
    assert!(
        started[0].1 <= 1 && started.iter().all(|(_, work)| *work <= 3 * CLUSTERS),
        "starting {CLUSTERS} clusters: {started:?}"
    );
    let versions = |proxy: &Proxy| -> Vec<(String, u64)> {
        proxy
            .clusters()
            .into_iter()
            .map(|c| (c.name, c.version))
            .collect()
    };
    let before_update = versions(&proxy);
    let spec = crate::config::ClusterSpec::from_yaml(
        "{ name: c5, endpoints: [ { address: 127.0.0.1:2 } ] }",
    )?;
    let before = done();
    proxy.update_cluster(spec).await?;
    let updated = since(before);
    // The changed cluster's own work, none of the others'.
    assert!(
        updated.iter().all(|(_, work)| *work <= 2),
        "updating one of {CLUSTERS} clusters: {updated:?}"
    );
    let after = versions(&proxy);
    let rebuilt: Vec<&String> = before_update
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(_, (name, _))| name)
        .collect();
    assert_eq!(rebuilt, ["c5"]);
    proxy.shutdown().await;
    Ok(())
}

/// An update of one cluster among thousands checks, compares and copies that cluster alone:
/// every update validated the whole config twice, copied each spec into the config it composed
/// and compared each with the running one field by field (a fifth of a second per update at
/// 20,000 clusters in a debug build). The checks across entries still run: a route to a cluster
/// that does not exist is refused.
#[tokio::test]
async fn one_cluster_changed_among_thousands_is_checked_compared_and_copied_alone() -> TestResult {
    use crate::config::{ClusterSpec, work};
    let mut yaml = String::from(
        "listeners:\n  - { name: front, address: 127.0.0.1:0, protocol: test, route_config: r }\n\
         route_configs:\n  - { name: r, routes: [ { route: { cluster: c0 } } ] }\nclusters:\n",
    );
    for i in 0..2_000 {
        yaml.push_str(&format!(
            "  - {{ name: c{i}, endpoints: [ {{ address: 127.0.0.1:1 }} ] }}\n"
        ));
    }
    let proxy = start(&yaml).await?;
    let before = proxy.state.config.load_full();
    let spec = ClusterSpec::from_yaml("{ name: c5, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    let (checked, compared) = (work::done(&work::CHECKED), work::done(&work::COMPARED));
    proxy.update_cluster(spec).await?;
    assert_eq!(work::done(&work::CHECKED) - checked, 1, "clusters checked");
    // The changed one, against the running cluster and against the config it replaces.
    assert_eq!(
        work::done(&work::COMPARED) - compared,
        2,
        "clusters compared"
    );
    let after = proxy.state.config.load_full();
    let copied: Vec<&str> = before
        .clusters
        .iter()
        .zip(&after.clusters)
        .filter(|(b, a)| !Arc::ptr_eq(b, a))
        .map(|(_, a)| a.name.as_str())
        .collect();
    assert_eq!(
        copied,
        ["c5"],
        "clusters not shared with the running config"
    );

    let routes = crate::config::RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { route: { cluster: nowhere } } ] }",
    )?;
    let refused = proxy.update_route_config(routes).await;
    assert_refused_naming(&refused, "nowhere");
    proxy.shutdown().await;
    Ok(())
}

/// An update of one cluster among thousands indexes no cluster's name and looks at no other
/// running cluster: each update indexed every name five times (checks, composition, protocols)
/// and took the lock of every running cluster twice (20,000 clusters: 120 ms an update in a
/// debug build). The checks that need names still find them: a route to a cluster that does
/// not exist is refused, and so is a second cluster of a name.
#[tokio::test]
async fn one_cluster_changed_among_thousands_indexes_and_looks_at_no_other() -> TestResult {
    use crate::config::{ClusterSpec, work};
    let proxy = start(&routed_clusters(200, 2_000)).await?;
    let spec = ClusterSpec::from_yaml("{ name: c5, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    let (indexed, checked) = (
        work::done(&work::NAMES_INDEXED),
        work::done(&work::HANDLES_CHECKED),
    );
    proxy.update_cluster(spec).await?;
    assert_eq!(
        work::done(&work::NAMES_INDEXED) - indexed,
        0,
        "cluster names indexed"
    );
    assert_eq!(
        work::done(&work::HANDLES_CHECKED) - checked,
        1,
        "running clusters looked at"
    );
    assert!(proxy.state.clusters.get("c5").is_some_and(|c| {
        c.snapshot()
            .hosts
            .iter()
            .any(|h| h.endpoint.address().port() == 2)
    }));

    let routes = crate::config::RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { route: { cluster: c1999 } }, { route: { cluster: nowhere } } ] }",
    )?;
    let refused = proxy.update_route_config(routes).await;
    assert_refused_naming(&refused, "nowhere");
    let mut doubled = proxy.state.config.load_full().as_ref().clone();
    let twin = doubled.clusters.first().cloned().ok_or("no cluster")?;
    doubled.clusters.push(twin);
    let refused = proxy.state.apply(super::update::Source::File, |layers, _| {
        layers.base = doubled.clone();
        Ok(())
    });
    let refused = refused.await;
    assert_refused_naming(&refused, "duplicate name `c0`");
    proxy.shutdown().await;
    Ok(())
}

/// An update that adds a cluster among thousands indexes that one's name and looks at no
/// running cluster, nor at any route, and one that removes a cluster indexes no name and looks
/// at no running cluster: each indexed every name and looked at every running cluster under its
/// lock (20,000 clusters: 180-200 ms an update in a debug build), and the addition checked every
/// route again. The checks that need names still find them: a second cluster of a new name is
/// refused, and the clusters after the one removed are found at their new places.
#[tokio::test]
async fn a_cluster_added_or_removed_among_thousands_is_the_only_one_looked_at() -> TestResult {
    use crate::config::{ClusterSpec, RouteConfigSpec, work};
    let proxy = start(&routed_clusters(200, 2_000)).await?;
    let work = || {
        [
            &work::NAMES_INDEXED,
            &work::HANDLES_CHECKED,
            &work::ROUTES_CHECKED,
        ]
        .map(work::done)
    };
    let spec = ClusterSpec::from_yaml("{ name: added, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    let before = work();
    proxy.update_cluster(spec).await?;
    let after = work();
    // Its name, and whether its first snapshot is left to build.
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [1, 1, 0],
        "names indexed, running clusters looked at, routes checked to add one"
    );
    assert!(proxy.state.clusters.get("added").is_some());

    let before = work();
    proxy.remove_cluster("c1000").await?;
    let after = work();
    assert_eq!(
        [after[0] - before[0], after[1] - before[1]],
        [0, 0],
        "names indexed, running clusters looked at to remove one"
    );
    assert!(proxy.state.clusters.get("c1000").is_none());
    let config = proxy.state.config.load_full();
    let places: Vec<&str> = [1_000, 1_999]
        .iter()
        .filter_map(|&i| config.clusters.get(i).map(|c| c.name.as_str()))
        .collect();
    assert_eq!(places, ["c1001", "added"]);

    let routes = RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { route: { cluster: c1001 } }, { route: { cluster: added } }, { route: { cluster: c1000 } } ] }",
    )?;
    let refused = proxy.update_route_config(routes).await;
    assert_refused_naming(&refused, "c1000");
    let mut doubled = proxy.state.config.load_full().as_ref().clone();
    let twin = ClusterSpec::from_yaml("{ name: twin, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    doubled
        .clusters
        .extend([Arc::new(twin.clone()), Arc::new(twin)]);
    let refused = proxy.state.apply(super::update::Source::File, |layers, _| {
        layers.base = doubled.clone();
        Ok(())
    });
    assert_refused_naming(&refused.await, "duplicate name `twin`");
    proxy.shutdown().await;
    Ok(())
}

/// An update that removes a cluster among thousands checks no route again: each route config
/// is looked at for the names of its routes' clusters alone, where each route was checked whole
/// (its match, its policies) when a cluster was removed. A removal that leaves a route without
/// its cluster is still refused.
#[tokio::test]
async fn a_cluster_removed_among_thousands_checks_no_route_again() -> TestResult {
    use crate::config::work;
    let proxy = start(&routed_clusters(200, 2_000)).await?;
    let checked = work::done(&work::ROUTES_CHECKED);
    proxy.remove_cluster("c1000").await?;
    assert_eq!(
        work::done(&work::ROUTES_CHECKED) - checked,
        0,
        "routes checked to remove a cluster"
    );
    assert!(proxy.state.clusters.get("c1000").is_none());

    let mut without = proxy.state.config.load_full().as_ref().clone();
    without.clusters.retain(|c| c.name != "c5");
    let refused = proxy.state.apply(super::update::Source::File, |layers, _| {
        layers.base = without.clone();
        Ok(())
    });
    assert_refused_naming(&refused.await, "no cluster named `c5`");
    assert!(proxy.state.clusters.get("c5").is_some());
    proxy.shutdown().await;
    Ok(())
}

/// An update that adds a cluster, or removes one, copies the map of running clusters once: the
/// route tables are compiled against the copy and the commit publishes it, where it copied the
/// map again to add the new clusters (and once more to take the removed ones out).
#[tokio::test]
async fn an_added_or_removed_cluster_copies_the_cluster_map_once() -> TestResult {
    use crate::config::{ClusterSpec, work};
    let proxy = start(&routed_clusters(10, 100)).await?;
    let copies = work::done(&work::CLUSTER_MAPS_COPIED);
    let spec = ClusterSpec::from_yaml("{ name: added, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    proxy.update_cluster(spec).await?;
    assert_eq!(
        work::done(&work::CLUSTER_MAPS_COPIED) - copies,
        1,
        "copies to add one"
    );
    let added = proxy.state.clusters.get("added").ok_or("not added")?;

    let copies = work::done(&work::CLUSTER_MAPS_COPIED);
    proxy.state.remove_cluster("added").await?;
    assert_eq!(
        work::done(&work::CLUSTER_MAPS_COPIED) - copies,
        1,
        "copies to remove one"
    );
    assert!(proxy.state.clusters.get("added").is_none());
    assert!(added.is_retired());
    assert_eq!(proxy.state.clusters.all().len(), 100);
    proxy.shutdown().await;
    Ok(())
}

/// An update that leaves a route config alone compares none of its routes field by field: the
/// running table's spec and the update's config share them, and each update compared every
/// route of every route config with the running one (and again for the API's record).
#[tokio::test]
async fn an_update_that_leaves_the_routes_alone_compares_none_of_them() -> TestResult {
    use crate::config::{ClusterSpec, work};
    let yaml = routed_clusters(1_000, 10);
    let proxy = start(&yaml).await?;
    let spec = ClusterSpec::from_yaml("{ name: c5, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    let compared = work::done(&work::ROUTES_COMPARED);
    proxy.update_cluster(spec).await?;
    assert_eq!(
        work::done(&work::ROUTES_COMPARED) - compared,
        0,
        "routes compared field by field"
    );
    proxy.shutdown().await;
    Ok(())
}

/// An update that leaves a route config alone checks none of its routes again, each update
/// checked every route of every route config twice (the base layer and the composed config;
/// 2,000 route checks for a 1,000-route config, whatever the update changed). A route config
/// sent again is checked: a route to a cluster that is gone is refused.
#[tokio::test]
async fn an_update_that_leaves_the_routes_alone_checks_none_of_them() -> TestResult {
    use crate::config::{ClusterSpec, RouteConfigSpec, work};
    let proxy = start(&routed_clusters(1_000, 10)).await?;
    let spec = ClusterSpec::from_yaml("{ name: c5, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    let checked = work::done(&work::ROUTES_CHECKED);
    proxy.update_cluster(spec).await?;
    assert_eq!(
        work::done(&work::ROUTES_CHECKED) - checked,
        0,
        "routes checked"
    );
    let spec = ClusterSpec::from_yaml("{ name: c10, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    proxy.update_cluster(spec).await?;
    let checked = work::done(&work::ROUTES_CHECKED);
    let routes =
        RouteConfigSpec::from_yaml("{ name: r, routes: [ { route: { cluster: c10 } } ] }")?;
    proxy.update_route_config(routes).await?;
    assert!(
        work::done(&work::ROUTES_CHECKED) > checked,
        "the new routes are checked"
    );
    let gone = proxy.state.remove_cluster("c9").await;
    assert!(gone.is_ok(), "{gone:?}");
    let routes = RouteConfigSpec::from_yaml("{ name: r, routes: [ { route: { cluster: c9 } } ] }")?;
    let refused = proxy.update_route_config(routes).await;
    assert_refused_naming(&refused, "c9");
    proxy.shutdown().await;
    Ok(())
}

/// An update of one cluster looks at no route, and an update of one route among 1,000 looks at
/// that route alone before it compiles the table: each update listed the clusters of every
/// route five times (composing the config twice, finding the clusters' protocols twice, checking
/// them), and one of a route config checked each of its routes again. A change that needs every
/// route looked at still has them looked at: a cluster moved to a protocol its listener does not
/// speak is refused.
#[tokio::test]
async fn an_update_of_one_cluster_or_route_looks_at_no_other_route() -> TestResult {
    use crate::config::{ClusterSpec, RouteSpec, work};
    let proxy = start(&routed_clusters(1_000, 10)).await?;
    let spec = ClusterSpec::from_yaml("{ name: c5, endpoints: [ { address: 127.0.0.1:2 } ] }")?;
    let walked = work::done(&work::ROUTES_WALKED);
    proxy.update_cluster(spec).await?;
    assert_eq!(
        work::done(&work::ROUTES_WALKED) - walked,
        0,
        "routes looked at to update a cluster"
    );

    let config = proxy.state.config.load_full();
    let mut routes = config.route_config("r").cloned().ok_or("no route config")?;
    let changed = routes.routes.get_mut(500).ok_or("no route 500")?;
    let mut route = RouteSpec::clone(changed);
    route.route.cluster = Some("c7".into());
    *changed = Arc::new(route);
    let (walked, checked) = (
        work::done(&work::ROUTES_WALKED),
        work::done(&work::ROUTES_CHECKED),
    );
    proxy.update_route_config(routes).await?;
    // Its protocol, and the subsets it may name.
    assert_eq!(
        work::done(&work::ROUTES_WALKED) - walked,
        2,
        "routes looked at to update one"
    );
    assert_eq!(
        work::done(&work::ROUTES_CHECKED) - checked,
        1,
        "routes checked"
    );
    let running = proxy.state.config.load_full();
    let sent_to = running
        .route_config("r")
        .and_then(|r| r.routes.get(500))
        .and_then(|route| route.route.cluster.clone());
    assert_eq!(sent_to.as_deref(), Some("c7"));

    let moved = ClusterSpec::from_yaml(
        "{ name: c5, protocol: other, endpoints: [ { address: 127.0.0.1:2 } ] }",
    )?;
    let refused = proxy.update_cluster(moved).await;
    assert_refused_naming(&refused, "speaks other but a test listener routes to it");
    proxy.shutdown().await;
    Ok(())
}

/// A config update of a `ring_hash` cluster (1,000 endpoints: 256,000 points) and one that
/// registers a subset of it build their tables on a blocking thread, not on the thread applying
/// the update (which serves requests too), and publish them before they return.
#[tokio::test]
async fn an_update_builds_its_rings_off_its_thread_and_publishes_them_before_it_returns()
-> TestResult {
    use crate::config::{ClusterSpec, RouteConfigSpec, work};
    let endpoints: String = (1..=1_000)
        .map(|port| format!("{{ address: 127.0.0.1:{port}, labels: {{ v: a }} }}, "))
        .collect();
    let cluster = |more: &str| {
        format!("{{ name: c, lb_policy: ring_hash, endpoints: [ {endpoints} {more} ] }}")
    };
    let proxy = start(&format!(
        "listeners:\n  - {{ name: front, address: 127.0.0.1:0, protocol: test, route_config: r }}\n\
         route_configs:\n  - {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }}\n\
         clusters:\n  - {}\n",
        cluster("")
    ))
    .await?;
    let c = proxy.state.clusters.get("c").ok_or("no cluster c")?;
    let added = std::net::SocketAddr::from(([127, 0, 0, 1], 2_000));

    let built = work::done(&work::SNAPSHOTS_BUILT);
    let spec = ClusterSpec::from_yaml(&cluster("{ address: 127.0.0.1:2000, labels: { v: b } }"))?;
    let version = proxy.update_cluster(spec).await?;
    assert_eq!(
        work::done(&work::SNAPSHOTS_BUILT) - built,
        0,
        "snapshots the cluster update built on its thread"
    );
    let snapshot = c.snapshot();
    assert_eq!(snapshot.version, version);
    let whole = snapshot
        .set(crate::cluster::SubsetId::ALL)
        .ok_or("no set")?;
    assert!(
        whole.offers_untried(|a| a != added),
        "the added endpoint is in the ring"
    );

    let built = work::done(&work::SNAPSHOTS_BUILT);
    let routes = RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { route: { cluster: c, subset: { v: b } } } ] }",
    )?;
    proxy.update_route_config(routes).await?;
    assert_eq!(
        work::done(&work::SNAPSHOTS_BUILT) - built,
        0,
        "snapshots the subset's registration built on the update's thread"
    );
    let snapshot = c.snapshot();
    assert_eq!(snapshot.version, version + 1);
    assert_eq!(snapshot.set_count(), 2, "the subset's set is published");
    proxy.shutdown().await;
    Ok(())
}

/// A `ring_hash` cluster an update adds (1,000 endpoints: 256,000 points) builds its ring on a
/// blocking thread, not on the thread applying the update (which serves requests too), and
/// serves from it once the update returns.
#[tokio::test]
async fn an_added_cluster_builds_its_ring_off_the_updates_thread() -> TestResult {
    use crate::config::{ClusterSpec, work};
    let proxy = start(CONFIG).await?;
    let endpoints: String = (1..=1_000)
        .map(|port| format!("{{ address: 127.0.0.1:{port} }}, "))
        .collect();
    let spec = ClusterSpec::from_yaml(&format!(
        "{{ name: added, lb_policy: ring_hash, endpoints: [ {endpoints} ] }}"
    ))?;
    let built = work::done(&work::SNAPSHOTS_BUILT);
    let version = proxy.update_cluster(spec).await?;
    assert_eq!(
        work::done(&work::SNAPSHOTS_BUILT) - built,
        0,
        "snapshots the update built on its thread"
    );
    let added = proxy
        .state
        .clusters
        .get("added")
        .ok_or("no cluster added")?;
    let snapshot = added.snapshot();
    assert_eq!(snapshot.version, version);
    let whole = snapshot
        .set(crate::cluster::SubsetId::ALL)
        .ok_or("no set")?;
    assert!(whole.pick(&[], Some(7)).is_some(), "the ring serves");
    proxy.shutdown().await;
    Ok(())
}

/// The files an update reads as it builds (here a `global_ratelimit` filter's `password_file`)
/// hold up none of the runtime's other tasks (the accept loops, the admin API, health checks):
/// while the read waits, as on a network file system that does not answer (a FIFO nothing
/// writes to yet), the other task of a one-worker runtime keeps running, and the update
/// applies once the file is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_file_an_update_waits_to_read_holds_up_no_other_task() -> TestResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fifo = fifo("password")?;
    let proxy = start(CONFIG).await?;
    let config = config_with_password_file(&fifo);
    let update = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.reload_yaml(&config).await })
    };
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Counted on this thread, not a worker's: no timer of the runtime need fire for it.
    let mut looks = 0;
    while ticks.load(Ordering::Relaxed) < 20 && looks < 1000 {
        std::thread::sleep(POLL);
        looks += 1;
    }
    let ticked = ticks.load(Ordering::Relaxed);
    let waiting = !update.is_finished();
    write_fifo(&fifo)?;
    let applied = tokio::time::timeout(Duration::from_secs(10), update).await;
    ticker.abort();
    proxy.shutdown().await;
    std::fs::remove_file(&fifo)?;
    assert!(waiting, "the update did not wait for its file: {applied:?}");
    assert!(
        ticked >= 20,
        "the other task ran {ticked} times in 10 s while the update read its file"
    );
    applied???;
    Ok(())
}

/// A FIFO of its own for `test`, in the temp dir: opening it for reading waits for a writer,
/// as a read from a network file system that does not answer waits.
fn fifo(test: &str) -> TestResult<PathBuf> {
    let fifo = std::env::temp_dir().join(format!("reload-{test}-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    assert!(made.success(), "mkfifo");
    Ok(fifo)
}

/// Writes `secret` into `fifo`, which ends a read waiting on it (opening a FIFO for reading and
/// writing does not wait, on Linux).
fn write_fifo(fifo: &std::path::Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"secret\n"))
}

/// [`CONFIG`] with a `global_ratelimit` filter whose `password_file` is `password_file`.
fn config_with_password_file(password_file: &std::path::Path) -> String {
    format!(
        "
listeners:
  - name: front
    address: 127.0.0.1:0
    protocol: test
    route_config: r
    filters:
      - name: global_ratelimit
        config:
          redis: {{ address: 127.0.0.1:1, password_file: {} }}
          domain: test
          descriptors: [ method ]
          limit: {{ requests: 10, per: 1s }}
          timeout: 50ms
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }}
clusters:
  - {{ name: c, endpoints: [ {{ address: 127.0.0.1:1 }} ] }}
",
        password_file.display()
    )
}

/// A `password_file` larger than a password can be (here a sparse file of 64 MiB, as a config
/// pointing at the wrong file might name) is refused by the update, without its contents being
/// read, naming the field, the file and the cap; the running config stays.
#[tokio::test]
async fn a_password_file_past_its_cap_is_refused_unread() -> TestResult {
    let path = std::env::temp_dir().join(format!("reload-huge-password-{}", std::process::id()));
    std::fs::File::create(&path)?.set_len(64 << 20)?;
    let proxy = start(CONFIG).await?;
    let refused = proxy.reload_yaml(&config_with_password_file(&path)).await;
    let running = proxy.config().listeners[0].filters.len();
    proxy.shutdown().await;
    std::fs::remove_file(&path)?;
    assert_refused_naming(
        &refused,
        "listeners[0].filters[0].config.redis.password_file",
    );
    assert_refused_naming(&refused, &path.display().to_string());
    assert_refused_naming(&refused, "larger than 4 KiB");
    assert_eq!(running, 0, "the refused update changed the running config");
    Ok(())
}

/// On a current-thread runtime (an embedder's), a file an update reads that never comes (a
/// FIFO nothing writes to, as a network file system that does not answer) holds up none of the
/// runtime's tasks (the accept loops, the admin API, health checks share its one thread), and
/// the update fails once its deadline passes, naming the file; the running config stays, and
/// the next update applies.
#[tokio::test(flavor = "current_thread")]
async fn a_file_read_that_hangs_fails_its_update_at_the_deadline_on_a_current_thread_runtime()
-> TestResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let fifo = fifo("hung-read")?;
    let proxy = start(CONFIG).await?;
    // Whatever the update does, its read ends in 5 s: a writer comes then, or once the update
    // returned.
    let (returned, release) = std::sync::mpsc::channel::<()>();
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let _ = release.recv_timeout(Duration::from_secs(5));
            write_fifo(&fifo)
        })
    };
    let ticks = Arc::new(AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLL).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let began = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let config = config_with_password_file(&fifo);
    let update = super::update::with_deadline(deadline, proxy.reload_yaml(&config)).await;
    let took = began.elapsed();
    let ticked = ticks.load(Ordering::Relaxed);
    let _ = returned.send(());
    writer.join().map_err(|_| "the FIFO's writer panicked")??;
    ticker.abort();
    let running = proxy.config().listeners[0].filters.len();
    let next = proxy.reload_yaml(CONFIG).await;
    proxy.shutdown().await;
    std::fs::remove_file(&fifo)?;
    assert!(
        ticked >= 5,
        "the runtime's other task ran {ticked} times in the {took:?} the update took"
    );
    assert!(
        took < Duration::from_secs(4),
        "the update returned after {took:?}, not at its deadline (1 s): {update:?}"
    );
    assert_refused_naming(&update, &fifo.display().to_string());
    assert_eq!(running, 0, "the refused update changed the running config");
    next?;
    Ok(())
}

/// Updates whose files' reads never end (each given up at its deadline) hold at most
/// [`MOST_READERS`](super::file_reads::MOST_READERS) threads: the next update finds them all
/// taken and fails at its deadline saying so, naming its file, without a thread of its own; once
/// the reads end, their threads are free, and an update reads and applies.
#[tokio::test(flavor = "current_thread")]
async fn updates_whose_file_reads_hang_hold_a_bounded_number_of_threads() -> TestResult {
    use super::file_reads::MOST_READERS;
    use std::sync::atomic::{AtomicBool, Ordering};
    let fifo = fifo("hung-reads")?;
    let proxy = start(CONFIG).await?;
    let config = config_with_password_file(&fifo);
    let soon = || tokio::time::Instant::now() + Duration::from_millis(300);
    let mut hung = Vec::new();
    for _ in 0..=MOST_READERS {
        hung.push(super::update::with_deadline(soon(), proxy.reload_yaml(&config)).await);
    }
    // A writer comes every 10 ms, for the reads that opened the FIFO since the last one, until
    // an update applies.
    let applied = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fifo, applied) = (fifo.clone(), applied.clone());
        std::thread::spawn(move || {
            while !applied.load(Ordering::Relaxed) {
                write_fifo(&fifo)?;
                std::thread::sleep(POLL);
            }
            std::io::Result::Ok(())
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let next = super::update::with_deadline(deadline, proxy.reload_yaml(&config)).await;
    applied.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| "the FIFO's writer panicked")??;
    proxy.shutdown().await;
    std::fs::remove_file(&fifo)?;
    let refused = hung.pop().ok_or("no update")?;
    for update in &hung {
        assert_refused_naming(update, "its read had not ended");
    }
    assert_refused_naming(
        &refused,
        &format!("{MOST_READERS} reads of files by earlier updates have not ended"),
    );
    assert_refused_naming(&refused, &fifo.display().to_string());
    next?;
    Ok(())
}

/// Asserts that an update was refused with an error that says `text`.
fn assert_refused_naming<T: std::fmt::Debug, E: std::fmt::Display + std::fmt::Debug>(
    result: &Result<T, E>,
    text: &str,
) {
    assert!(
        result.as_ref().is_err_and(|e| e.to_string().contains(text)),
        "{result:?}"
    );
}

/// An update that changes only a TLS cluster's endpoints (an EDS update) rebuilds nothing of its
/// TLS (the connector stays, and its connections with it), so it reads none of its files: while
/// every thread reading files is held by reads that do not end (a network file system that does
/// not answer; here FIFOs nothing writes to), it applies at once instead of failing at its
/// deadline.
#[tokio::test(flavor = "current_thread")]
async fn an_endpoint_only_update_of_a_tls_cluster_reads_none_of_its_files() -> TestResult {
    use super::file_reads::MOST_READERS;
    use crate::config::ClusterSpec;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ca_file = std::env::temp_dir().join(format!(
        "reload-endpoints-only-{}.ca.pem",
        std::process::id()
    ));
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["ca.test".to_owned()])?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&ca_file, params.self_signed(&key)?.pem())?;
    let fifo = fifo("endpoints-only")?;
    let proxy = start(CONFIG).await?;
    let spec = |port: u16| {
        ClusterSpec::from_yaml(&format!(
            "{{ name: c, endpoints: [ {{ address: 127.0.0.1:{port} }} ], tls: {{ ca_file: {} }} }}",
            ca_file.display()
        ))
    };
    proxy.update_cluster(spec(1)?).await?;
    // Every reading thread held by a read that does not end.
    let hung = config_with_password_file(&fifo);
    let soon = || tokio::time::Instant::now() + Duration::from_millis(300);
    for _ in 0..MOST_READERS {
        let update = super::update::with_deadline(soon(), proxy.reload_yaml(&hung)).await;
        assert_refused_naming(&update, "its read had not ended");
    }
    let began = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let update = super::update::with_deadline(deadline, proxy.update_cluster(spec(2)?)).await;
    let took = began.elapsed();
    let running = proxy.state.config();
    // A writer comes every 10 ms, for the reads that opened the FIFO since the last one, until
    // an update that reads it applies: the hung reads have ended, their threads are free.
    let applied = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fifo, applied) = (fifo.clone(), applied.clone());
        std::thread::spawn(move || {
            while !applied.load(Ordering::Relaxed) {
                write_fifo(&fifo)?;
                std::thread::sleep(POLL);
            }
            std::io::Result::Ok(())
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let freed = super::update::with_deadline(deadline, proxy.reload_yaml(&hung)).await;
    applied.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| "the FIFO's writer panicked")??;
    proxy.shutdown().await;
    std::fs::remove_file(&fifo)?;
    std::fs::remove_file(&ca_file)?;
    freed?;
    update?;
    assert!(took < Duration::from_secs(1), "the update took {took:?}");
    let endpoint = running
        .clusters
        .iter()
        .find(|c| c.name == "c")
        .map(|c| c.endpoints[0].address.to_string());
    assert_eq!(endpoint.as_deref(), Some("127.0.0.1:2"));
    Ok(())
}

/// A config file rejected because a file it names is missing (a `password_file` not written
/// yet) is not built again at every look while that file stays as it was: it is counted
/// rejected once, and applied once the file is written.
#[tokio::test]
async fn a_config_file_waiting_for_a_named_file_is_tried_again_only_once_the_file_changes()
-> TestResult {
    let watched = Watched::start("waits-for-file").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    let password = std::env::temp_dir().join(format!(
        "reload-waits-for-file-{}.password",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&password);
    let config = config_with_password_file(&password);
    // Written again (made new by a comment) until rejected: the watcher may have begun by
    // reading it as the running config.
    let mut tries = 0;
    while rejected(proxy) == 0 {
        tries += 1;
        assert!(tries <= 100, "the file was not rejected");
        std::fs::write(path, format!("{config}# {tries}\n"))?;
        tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 10).await;
    }
    let first = rejected(proxy);
    // Three settle times and 50 looks more, the password file still missing.
    tokio::time::sleep(CONFIG_FILE_SETTLE * 3 + POLL * 50).await;
    let rejections = rejected(proxy) - first;
    std::fs::write(&password, "secret\n")?;
    let applied = until(|| proxy.config().listeners[0].filters.len() == 1).await;
    std::fs::remove_file(&password)?;
    let status = proxy.config_file_status();
    watched.stop().await?;
    assert_eq!(
        rejections, 0,
        "tried again while the named file stayed missing: {status:?}"
    );
    assert!(
        applied,
        "not applied once the named file was written: {status:?}"
    );
    Ok(())
}

/// An update that changes a TLS listener but not its `tls` (here its route config) keeps the
/// listener's running TLS settings, so it reads none of their files: while every thread reading
/// files is held by reads that do not end (a network file system that does not answer; here a
/// FIFO nothing writes to), it applies instead of failing at its deadline. A read would wait for
/// a reading thread that never comes free, so the deadline is no bound on the update's speed
/// (asserting one failed on a loaded machine): it only ends the wait of an update that reads.
#[tokio::test(flavor = "current_thread")]
async fn a_listener_change_that_keeps_its_tls_reads_no_certificate() -> TestResult {
    use super::file_reads::MOST_READERS;
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = std::env::temp_dir().join(format!("reload-keeps-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["front.test".to_owned()])?.self_signed(&key)?;
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    let tls_config = |route_config: &str| {
        CONFIG
            .replace(
                "route_config: r }",
                &format!(
                    "route_config: {route_config}, tls: {{ cert_file: {}, key_file: {} }} }}",
                    cert_file.display(),
                    key_file.display()
                ),
            )
            .replace(
                "route_configs:\n",
                "route_configs:\n  - { name: r2, routes: [ { route: { cluster: c } } ] }\n",
            )
    };
    let fifo = fifo("keeps-tls")?;
    let proxy = start(&tls_config("r")).await?;
    // Every reading thread held by a read that does not end.
    let hung = config_with_password_file(&fifo);
    let soon = || tokio::time::Instant::now() + Duration::from_millis(300);
    for _ in 0..MOST_READERS {
        let update = super::update::with_deadline(soon(), proxy.reload_yaml(&hung)).await;
        assert_refused_naming(&update, "its read had not ended");
    }
    // Long enough for the update's own work however loaded the machine: an update that reads
    // a file fails at it, however long it is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let update = super::update::with_deadline(deadline, proxy.reload_yaml(&tls_config("r2"))).await;
    let route_config = proxy.config().listeners[0].route_config.clone();
    // A writer comes every 10 ms until the hung reads have ended.
    let ended = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fifo, ended) = (fifo.clone(), ended.clone());
        std::thread::spawn(move || {
            while !ended.load(Ordering::Relaxed) {
                write_fifo(&fifo)?;
                std::thread::sleep(POLL);
            }
            std::io::Result::Ok(())
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let freed = super::update::with_deadline(deadline, proxy.reload_yaml(&hung)).await;
    ended.store(true, Ordering::Relaxed);
    writer.join().map_err(|_| "the FIFO's writer panicked")??;
    proxy.shutdown().await;
    std::fs::remove_file(&fifo)?;
    std::fs::remove_dir_all(&dir)?;
    freed?;
    if let Err(err) = update {
        return Err(format!("the update keeping its TLS failed: {err}").into());
    }
    assert_eq!(route_config, "r2");
    Ok(())
}

/// A config file naming a certificate and key in a Kubernetes secret mount (each a symlink
/// through `..data`, swapped to a new directory at each rotation) that is rejected because the
/// mount held a pair that does not match (the certificate rotated, its key not yet) is applied
/// once `..data` is swapped to a matching pair: its files' metadata, looked at through the
/// symlinks, changed, so it is tried again, though neither the config nor the names changed.
#[tokio::test]
async fn a_config_file_rejected_for_a_mismatched_pair_applies_once_the_secret_mount_swaps()
-> TestResult {
    let watched = Watched::start("secret-swap").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    let mount = std::env::temp_dir().join(format!("reload-secret-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&mount);
    std::fs::create_dir_all(&mount)?;
    let pem = |name: &str| -> TestResult<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])?.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let ((cert_a, _), (cert_b, key_b)) = (pem("a.test")?, pem("b.test")?);
    // What the kubelet does: a new directory, a symlink to it renamed over `..data`.
    let publish = |version: &str, cert: &str, key: &str| -> std::io::Result<()> {
        let dir = mount.join(version);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("tls.crt"), cert)?;
        std::fs::write(dir.join("tls.key"), key)?;
        let link = mount.join("..data_tmp");
        std::os::unix::fs::symlink(version, &link)?;
        std::fs::rename(&link, mount.join("..data"))
    };
    publish("..v1", &cert_a, &key_b)?;
    std::os::unix::fs::symlink("..data/tls.crt", mount.join("tls.crt"))?;
    std::os::unix::fs::symlink("..data/tls.key", mount.join("tls.key"))?;
    let config = CONFIG.replace(
        "route_config: r }",
        &format!(
            "route_config: r, tls: {{ cert_file: {0}/tls.crt, key_file: {0}/tls.key }} }}",
            mount.display()
        ),
    );
    // Written again (made new by a comment) until rejected: the watcher may have begun by
    // reading it as the running config.
    let mut tries = 0;
    while rejected(proxy) == 0 {
        tries += 1;
        assert!(tries <= 100, "the file was not rejected");
        std::fs::write(path, format!("{config}# {tries}\n"))?;
        tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 10).await;
    }
    let status = proxy.config_file_status();
    publish("..v2", &cert_b, &key_b)?;
    let applied = until(|| proxy.config().listeners[0].tls.is_some()).await;
    let after = proxy.config_file_status();
    watched.stop().await?;
    std::fs::remove_dir_all(&mount)?;
    let reason = status
        .and_then(|status| status.last_error)
        .unwrap_or_default();
    assert!(reason.contains("listeners[0].tls"), "{reason}");
    assert!(
        applied,
        "not applied once the mount held a matching pair: {after:?}"
    );
    Ok(())
}

/// A config file rejected for an error no file can mend (here a listener's `cert_file` left
/// empty) is not tried again at every look, though the field names a file: it is counted
/// rejected once, until the file changes.
#[tokio::test]
async fn a_config_file_with_a_static_error_on_a_file_field_is_rejected_once() -> TestResult {
    let watched = Watched::start("static-file-error").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    let config = CONFIG.replace(
        "route_config: r }",
        "route_config: r, tls: { cert_file: '', key_file: /nonexistent.key } }",
    );
    assert_ne!(config, CONFIG);
    // Written again (made new by a comment) until rejected: the watcher may have begun by
    // reading it as the running config.
    let mut tries = 0;
    while rejected(proxy) == 0 {
        tries += 1;
        assert!(tries <= 100, "the file was not rejected");
        std::fs::write(path, format!("{config}# {tries}\n"))?;
        tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 10).await;
    }
    let first = rejected(proxy);
    // 50 looks more.
    tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 50).await;
    let rejections = rejected(proxy) - first;
    let status = proxy.config_file_status();
    watched.stop().await?;
    assert_eq!(rejections, 0, "tried again: {status:?}");
    Ok(())
}

/// A config file rejected because the `wasm` filter's module it names is not there yet (copied
/// after the config) is applied once the module is there, the config file itself unchanged.
#[cfg(feature = "wasm")]
#[tokio::test]
async fn a_config_file_rejected_for_its_wasm_module_is_applied_once_the_module_is_there()
-> TestResult {
    let watched = Watched::start("wasm-module").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    let module =
        std::env::temp_dir().join(format!("reload-wasm-module-{}.wasm", std::process::id()));
    let _ = std::fs::remove_file(&module);
    let config = CONFIG.replace(
        "route_config: r }",
        &format!(
            "route_config: r, filters: [ {{ name: wasm, config: {{ path: {} }} }} ] }}",
            module.display()
        ),
    );
    assert_ne!(config, CONFIG);
    let mut tries = 0;
    while rejected(proxy) == 0 {
        tries += 1;
        assert!(tries <= 100, "the file was not rejected");
        std::fs::write(path, format!("{config}# {tries}\n"))?;
        tokio::time::sleep(CONFIG_FILE_SETTLE + POLL * 10).await;
    }
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm-filter/metaprotocol_wasm_filter_example.wasm");
    std::fs::copy(example, &module)?;
    let applied = until(|| proxy.config().listeners[0].filters.len() == 1).await;
    std::fs::remove_file(&module)?;
    let status = proxy.config_file_status();
    watched.stop().await?;
    assert!(
        applied,
        "the config file was not applied once its module was there: {status:?}"
    );
    Ok(())
}

/// The admin token file is read as the proxy's other files are: a FIFO is refused without
/// waiting for a writer (a read of it held the write request for ever), a file larger than a
/// token can be is refused unread (each write read it whole), both answered `503` (why is
/// logged, never told to a caller not yet authenticated); a token file swapped back is read
/// again at the next write.
#[tokio::test]
async fn an_admin_token_file_past_its_bound_or_no_regular_file_is_refused_unread() -> TestResult {
    let token = std::env::temp_dir().join(format!("admin-token-{}", std::process::id()));
    std::fs::write(&token, "s3cret\n")?;
    let config = CONFIG.replace(
        "route_configs:\n",
        &format!(
            "admin: {{ address: 127.0.0.1:0, token_file: \"{}\" }}\nroute_configs:\n",
            token.display()
        ),
    );
    let proxy = start(&config).await?;
    let admin = proxy.admin_addr().ok_or("no admin")?;
    let write = || admin_request_with_token(admin, "POST", "/healthcheck/ok", "s3cret");
    let good = write().await?;
    let fifo = fifo("admin-token")?;
    std::fs::rename(&fifo, &token)?;
    let from_fifo = write().await;
    // A read stuck on the FIFO ends.
    write_fifo(&token)?;
    std::fs::remove_file(&token)?;
    std::fs::File::create(&token)?.set_len(1 << 20)?;
    let from_large = write().await;
    std::fs::write(&token, "s3cret\n")?;
    let again = write().await;
    proxy.shutdown().await;
    std::fs::remove_file(&token)?;
    assert_eq!(good.0, 200, "{good:?}");
    for refused in [from_fifo?, from_large?] {
        assert_eq!(refused.0, 503, "{refused:?}");
        let told = &refused.1;
        assert!(told.contains("the proxy's log says why"), "{told}");
        assert!(!told.contains("FIFO") && !told.contains("KiB"), "{told}");
    }
    assert_eq!(again?.0, 200);
    Ok(())
}

/// A config file replaced by a FIFO, or by a file larger than [`crate::MAX_CONFIG_FILE_BYTES`],
/// is rejected unread, said once with the bound, and the watcher goes on: a later change
/// applies. A FIFO nothing writes to would hold a read of it, and the watcher, for ever.
#[tokio::test]
async fn a_config_file_past_the_bound_or_no_regular_file_is_rejected_unread() -> TestResult {
    let watched = Watched::start("refused").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    assert!(
        until(|| proxy.config_file_status().is_some()).await,
        "the watcher did not start"
    );
    let error = || {
        proxy
            .config_file_status()
            .and_then(|s| s.last_error)
            .unwrap_or_default()
    };
    let fifo = fifo("refused")?;
    std::fs::rename(&fifo, path)?;
    let fifo_refused = until(|| error().contains("it is a FIFO")).await;
    let said = error();
    // A read the watcher may be stuck in ends.
    write_fifo(path)?;
    assert!(fifo_refused, "the FIFO was not refused: {said:?}");
    assert_eq!(said, "cannot read: it is a FIFO, not a regular file");
    let large = path.with_extension("large");
    std::fs::File::create(&large)?.set_len(crate::MAX_CONFIG_FILE_BYTES + 1)?;
    std::fs::rename(&large, path)?;
    assert!(
        until(|| error().contains("larger")).await,
        "the large file was not refused: {:?}",
        error()
    );
    assert_eq!(error(), "cannot read: it is larger than 64 MiB");
    let rejected_now = rejected(proxy);
    tokio::time::sleep(POLL * 20).await;
    assert_eq!(
        rejected(proxy),
        rejected_now,
        "a refusal that lasts counts once"
    );
    let renamed = CONFIG.replace("name: front", "name: back");
    let next = path.with_extension("next");
    std::fs::write(&next, &renamed)?;
    std::fs::rename(&next, path)?;
    assert!(
        until(|| proxy.listeners().iter().any(|(name, _)| name == "back")).await,
        "the change after was not applied: {:?}",
        proxy.listeners()
    );
    assert_eq!(error(), "", "cleared by the change applied");
    watched.stop().await
}

/// A look at the files of a rejected config that does not end (a `stat` on a network file
/// system that does not answer; here, one waiting on a channel) holds the watcher no longer
/// than its deadline, is not started again while it runs, and is taken once it ends.
#[tokio::test]
async fn a_look_at_files_that_does_not_end_is_given_up_and_not_started_again() -> TestResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (release, hung) = std::sync::mpsc::channel::<()>();
    let hung = Arc::new(std::sync::Mutex::new(hung));
    let started = Arc::new(AtomicUsize::new(0));
    let look = || {
        let (hung, started) = (hung.clone(), started.clone());
        move || {
            started.fetch_add(1, Ordering::SeqCst);
            let _ = hung.lock().map(|hung| hung.recv());
            true
        }
    };
    let bound = Duration::from_secs(10);
    let mut looks = super::OneAtATime::default();
    let first = tokio::time::timeout(bound, looks.call(Duration::from_millis(100), look())).await;
    // Waiting a minute would outlast the bound: the look still running is not waited for.
    let second = tokio::time::timeout(bound, looks.call(Duration::from_secs(60), look())).await;
    let _ = release.send(());
    let mut answer = super::Called::Unanswered;
    for _ in 0..1000 {
        answer = looks.call(Duration::ZERO, look()).await;
        if answer != super::Called::Unanswered {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        first?,
        super::Called::Unanswered,
        "given up at its deadline"
    );
    assert_eq!(
        second?,
        super::Called::Unanswered,
        "still running, not waited for"
    );
    assert_eq!(
        answer,
        super::Called::AnsweredLate(true),
        "taken once it ended"
    );
    assert_eq!(started.load(Ordering::SeqCst), 1, "never started twice");
    Ok(())
}

/// Waits (at most `bound`) until `done` holds.
async fn until_within(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    done()
}

/// The proxy's start-up read of its config file, on a network file system that does not
/// answer (here, a FUSE mount whose server never answers), fails once the update's wait for
/// files is over, saying so, rather than holding start-up for ever.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_config_file_read_at_start_up_that_does_not_end_fails_at_its_deadline() -> TestResult {
    let mount = crate::testing::HungMount::new("start-up")?;
    let path = mount.path().join("config.yaml");
    let began = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(30), Config::read_file_within(&path)).await;
    let took = began.elapsed();
    drop(mount);
    let read = read.map_err(|_| "the read of the config file was still waiting after 30 s")?;
    assert_eq!(
        read,
        Err(
            "an attempt to read it had not ended after 10 s (a slow or unreachable file system?)"
                .to_owned()
        )
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    Ok(())
}

/// A watched config file that comes to live on a network file system that does not answer
/// (here, a symlink swapped to point into a FUSE mount whose server never answers) is a
/// rejected change at the deadline of the look at it, counted and said once; the watcher goes
/// on, and applies the file once it can be read again. It used to wait on the look for ever,
/// and apply nothing more.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_config_file_whose_look_does_not_end_is_rejected_at_the_deadline_and_watched_on()
-> TestResult {
    let mut mount = crate::testing::HungMount::new("watched")?;
    let watched = Watched::start("hung-look").await?;
    let (proxy, path) = (&watched.proxy, &watched.path);
    assert!(
        until(|| proxy.config_file_status().is_some()).await,
        "the watcher did not start"
    );
    let error = || {
        proxy
            .config_file_status()
            .and_then(|s| s.last_error)
            .unwrap_or_default()
    };
    let rejected_before = rejected(proxy);
    let into_mount = path.with_extension("hung");
    std::os::unix::fs::symlink(mount.path().join("config.yaml"), &into_mount)?;
    std::fs::rename(&into_mount, path)?;
    let said_late = until_within(Duration::from_secs(30), || error().contains("not ended")).await;
    let said = error();
    // Counted once, however many looks find the first still waiting.
    tokio::time::sleep(POLL * 20).await;
    let rejected_hung = rejected(proxy) - rejected_before;
    // The file moves off the mount, and the mount is given up: the look waiting on it ends.
    let next = path.with_extension("next");
    std::fs::write(&next, CONFIG.replace("name: front", "name: back"))?;
    std::fs::rename(&next, path)?;
    mount.give_up();
    assert!(said_late, "no rejection within 30 s: {said:?}");
    assert_eq!(
        said,
        "cannot read: an attempt to look at it had not ended after 10 s (a slow or unreachable \
         file system?)"
    );
    assert_eq!(rejected_hung, 1, "a look that does not end counts once");
    assert!(
        until_within(Duration::from_secs(30), || proxy
            .listeners()
            .iter()
            .any(|(name, _)| name == "back"))
        .await,
        "the change after was not applied: {:?}",
        proxy.listeners()
    );
    assert_eq!(error(), "", "cleared by the change applied");
    watched.stop().await
}

/// A route edit leaves the listeners as they were, and reads none of their files: while a
/// listener's `password_file` cannot be read at all (a network file system that does not
/// answer; here a symlink swapped to point into a FUSE mount whose server never answers), an
/// update of its route config applies at once. A change of the listener itself builds its
/// filter chain anew, and so reads its filters' files: it fails at its deadline, naming the
/// file, and the running config stays.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_route_edit_reads_no_file_of_a_listener_and_a_listener_change_reads_its_own() -> TestResult
{
    let mut mount = crate::testing::HungMount::new("route-edit")?;
    let dir = std::env::temp_dir().join(format!("reload-route-edit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (password, link) = (dir.join("password"), dir.join("password-link"));
    std::fs::write(&password, "secret\n")?;
    std::os::unix::fs::symlink(&password, &link)?;
    let config = config_with_password_file(&link);
    let proxy = start(&config).await?;
    let into_mount = dir.join("password-hung");
    std::os::unix::fs::symlink(mount.path().join("password"), &into_mount)?;
    std::fs::rename(&into_mount, &link)?;
    let route_edit = config
        .replace("{ route: { cluster: c } }", "{ route: { cluster: c2 } }")
        .replace(
            "clusters:\n",
            "clusters:\n  - { name: c2, endpoints: [ { address: 127.0.0.1:2 } ] }\n",
        );
    // Ample for an update that reads nothing: one that read the file would fail at it.
    let ample = tokio::time::Instant::now() + Duration::from_secs(20);
    let routed = super::update::with_deadline(ample, proxy.reload_yaml(&route_edit)).await;
    let soon = || tokio::time::Instant::now() + Duration::from_secs(2);
    let listener_change = route_edit.replace(
        "    route_config: r\n",
        "    route_config: r\n    idle_timeout: 5s\n",
    );
    let changed = super::update::with_deadline(soon(), proxy.reload_yaml(&listener_change)).await;
    let running = proxy.config();
    mount.give_up();
    proxy.shutdown().await;
    drop(mount);
    std::fs::remove_dir_all(&dir)?;
    routed?;
    assert_refused_naming(&changed, "password_file");
    assert_refused_naming(&changed, "password-link` was not read");
    assert_eq!(running.clusters.len(), 2, "the route edit applied");
    assert_eq!(
        running.listeners[0].idle_timeout, None,
        "the listener stays"
    );
    Ok(())
}

/// The endpoints 100 calls to cluster `name` of `proxy` would go to now.
fn picked(proxy: &Proxy, name: &str) -> Vec<Option<std::net::SocketAddr>> {
    let Some(cluster) = proxy.state.clusters.get(name) else {
        return Vec::new();
    };
    let snapshot = cluster.snapshot();
    (0..100)
        .map(|_| {
            let set = snapshot.set(crate::cluster::SubsetId::ALL)?;
            Some(set.pick(&[], None)?.endpoint.address())
        })
        .collect()
}

/// A new cluster with active health checks serves its first call with its endpoints checked,
/// as Envoy uses a cluster only after the first round of its checks: one that refuses
/// connections takes none of its calls, from the first, whether the cluster comes with the
/// config the proxy starts with or with an update. (Served at once, all its endpoints awaited
/// their first check, and panic mode spread its calls over both.)
#[tokio::test]
async fn a_new_cluster_serves_its_first_call_with_its_endpoints_checked() -> TestResult {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let live_addr = live.local_addr()?;
    let (_refusing, refusing) = crate::testing::refusing_address()?;
    let cluster = |name: &str| {
        format!(
            "{{ name: {name}, endpoints: [ {{ address: \"{live_addr}\" }}, {{ address: \"{refusing}\" }} ],
    health_check: {{ interval: 1h, timeout: 10s, unhealthy_threshold: 3, healthy_threshold: 2 }} }}"
        )
    };
    let config = format!(
        "
listeners:
  - {{ name: front, address: 127.0.0.1:0, protocol: test, route_config: r }}
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }}
clusters:
  - {}
",
        cluster("c")
    );
    let proxy = start(&config).await?;
    let first = picked(&proxy, "c");
    assert!(
        first.iter().all(|&picked| picked == Some(live_addr)),
        "the proxy's first calls went to {first:?}, not only to {live_addr}"
    );
    proxy
        .update_cluster(crate::config::ClusterSpec::from_yaml(&cluster("d"))?)
        .await?;
    let added = picked(&proxy, "d");
    assert!(
        added.iter().all(|&picked| picked == Some(live_addr)),
        "the added cluster's first calls went to {added:?}, not only to {live_addr}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A running cluster that an update gives active health checks serves, once the update is
/// applied, only endpoints whose first check passed, as Envoy warms a cluster whose update adds
/// checks (a new cluster to it) before it replaces the running one: one that refuses
/// connections takes none of its calls. (Its endpoints were kept as they were, in rotation and
/// unchecked, so the refusing one took half of the calls until `unhealthy_threshold` checks in a
/// row had failed, `interval` apart.)
#[tokio::test]
async fn a_cluster_an_update_gives_health_checks_serves_only_endpoints_that_passed() -> TestResult {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let live_addr = live.local_addr()?;
    let (_refusing, refusing) = crate::testing::refusing_address()?;
    let endpoints = format!("[ {{ address: \"{live_addr}\" }}, {{ address: \"{refusing}\" }} ]");
    let config = format!(
        "
listeners:
  - {{ name: front, address: 127.0.0.1:0, protocol: test, route_config: r }}
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }}
clusters:
  - {{ name: c, endpoints: {endpoints} }}
"
    );
    let proxy = start(&config).await?;
    let unchecked = picked(&proxy, "c");
    assert!(
        unchecked.contains(&Some(refusing)),
        "without checks, the cluster serves every endpoint: {unchecked:?}"
    );
    let checked = format!(
        "{{ name: c, endpoints: {endpoints},
    health_check: {{ interval: 1h, timeout: 10s, unhealthy_threshold: 3, healthy_threshold: 2 }} }}"
    );
    proxy
        .update_cluster(crate::config::ClusterSpec::from_yaml(&checked)?)
        .await?;
    let after = picked(&proxy, "c");
    assert!(
        after.iter().all(|&picked| picked == Some(live_addr)),
        "once the update that adds checks applied, calls went to {after:?}, not only to {live_addr}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// Endpoints the first round of an update's checks has just checked keep that round's verdicts
/// once the update applies, and are checked next an `interval` later, as Envoy's warmed cluster
/// checks on from its first round: the checks the update starts do not check them again at once.
/// (They checked every endpoint again as they started, right after the round.)
#[tokio::test]
async fn endpoints_an_updates_first_round_checked_are_checked_next_an_interval_later() -> TestResult
{
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let live_addr = live.local_addr()?;
    let cluster = |checks: &str| {
        format!("{{ name: c, endpoints: [ {{ address: \"{live_addr}\" }} ]{checks} }}")
    };
    let config = format!(
        "
listeners:
  - {{ name: front, address: 127.0.0.1:0, protocol: test, route_config: r }}
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }}
clusters:
  - {}
",
        cluster("")
    );
    let proxy = start(&config).await?;
    let checked = crate::config::ClusterSpec::from_yaml(&cluster(
        ", health_check: { interval: 1h, timeout: 10s }",
    ))?;
    tokio::time::timeout(Duration::from_secs(20), proxy.update_cluster(checked)).await??;
    // The first round's check.
    tokio::time::timeout(Duration::from_secs(20), live.accept()).await??;
    // Watched for 3 s, not less: the update has applied, but on a loaded machine the checker
    // it starts may take its first step hundreds of milliseconds later, and a shorter watch
    // would end before a check again at once could come (a pass that proves nothing).
    let again = tokio::time::timeout(Duration::from_secs(3), live.accept()).await;
    assert!(
        again.is_err(),
        "the endpoint the update's first round had just checked was checked again as it applied"
    );
    let cluster = proxy.state.clusters.get("c").ok_or("cluster c")?;
    let status = cluster.status();
    assert!(
        status
            .endpoints
            .first()
            .is_some_and(|e| !e.awaiting_first_check && !e.failing_active_checks),
        "the endpoint that passed its first check is in rotation: {:?}",
        status.endpoints
    );
    proxy.shutdown().await;
    Ok(())
}

/// An update that waits for a new cluster's first round of health checks holds back no other
/// update: a route edit that comes meanwhile applies at once, and the cluster joins when its
/// round ends, as Envoy's warming clusters do. (The wait held the update lock, so every other
/// update, the admin API's, the file's and xDS's, waited for the round, up to its `timeout`.)
#[tokio::test]
async fn a_route_edit_applies_while_a_new_cluster_waits_for_its_first_checks() -> TestResult {
    // Takes the check's connection and never answers: the round lasts until it is closed.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_addr = silent.local_addr()?;
    let proxy = start(CONFIG).await?;
    let slow = crate::config::ClusterSpec::from_yaml(&format!(
        "{{ name: slow, endpoints: [ {{ address: \"{silent_addr}\" }} ],
    health_check: {{ interval: 1h, timeout: 60s, probe: {{ http: {{ path: /health }} }} }} }}"
    ))?;
    let adding = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.update_cluster(slow).await }
    });
    let (probe, _) = tokio::time::timeout(Duration::from_secs(20), silent.accept()).await??;
    let edit = crate::config::RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { match: { metadata: [ { key: method, exact: edited } ] }, route: { cluster: c } } ] }",
    )?;
    let edited =
        tokio::time::timeout(Duration::from_secs(20), proxy.update_route_config(edit)).await;
    assert!(
        edited.is_ok(),
        "the route edit waited for the new cluster's first round of checks"
    );
    edited??;
    assert!(
        !adding.is_finished(),
        "the new cluster's update ended before its check was answered"
    );
    // The check's connection closes: the check fails, the round ends, the cluster joins.
    drop(probe);
    tokio::time::timeout(Duration::from_secs(20), adding).await???;
    assert!(
        proxy.state.clusters.get("slow").is_some(),
        "the cluster joined"
    );
    // Planned again after the edit, the update took the cluster as warmed, its checks running
    // on (the next an hour away): no second check comes.
    let again = tokio::time::timeout(Duration::from_millis(500), silent.accept()).await;
    assert!(
        again.is_err(),
        "the cluster was checked again when its update was planned again"
    );
    proxy.shutdown().await;
    Ok(())
}

/// Starts a proxy whose cluster `c` (one endpoint, at `silent`) an update gives health checks
/// (and the cluster settings `more`), overtaken by a route edit during the first round of its
/// checks; returns the proxy, the update and the connection of its check, not answered yet.
async fn giving_checks_overtaken_by_a_route_edit(
    silent: &tokio::net::TcpListener,
    more: &str,
) -> TestResult<(
    Proxy,
    tokio::task::JoinHandle<Result<u64, crate::UpdateError>>,
    tokio::net::TcpStream,
)> {
    let silent_addr = silent.local_addr()?;
    let cluster = |checks: &str| {
        format!("{{ name: c, endpoints: [ {{ address: \"{silent_addr}\" }} ]{checks} }}")
    };
    let config = format!(
        "
listeners:
  - {{ name: front, address: 127.0.0.1:0, protocol: test, route_config: r }}
route_configs:
  - {{ name: r, routes: [ {{ route: {{ cluster: c }} }} ] }}
clusters:
  - {}
",
        cluster("")
    );
    let proxy = start(&config).await?;
    let checked = crate::config::ClusterSpec::from_yaml(&cluster(&format!(
        "{more}, health_check: {{ interval: 1h, timeout: 60s, probe: {{ http: {{ path: /health }} }} }}",
    )))?;
    let giving = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.update_cluster(checked).await }
    });
    let (first, _) = tokio::time::timeout(Duration::from_secs(20), silent.accept()).await??;
    let edit = crate::config::RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { match: { metadata: [ { key: method, exact: edited } ] }, route: { cluster: c } } ] }",
    )?;
    tokio::time::timeout(Duration::from_secs(20), proxy.update_route_config(edit)).await??;
    assert!(
        !giving.is_finished(),
        "the update giving checks ended before its check was answered"
    );
    Ok((proxy, giving, first))
}

/// An update that gives a running cluster health checks holds back no other update during the
/// first round of its checks either; overtaken by a route edit, it is planned again on top of
/// it, keeping the endpoints its round checked with their verdicts, and applies as soon as the
/// round has ended. (Planned again, it ran the round again, holding the update lock: up to the
/// checks' `timeout`, 60 s here, for it and for every other update behind it.)
#[tokio::test]
async fn an_update_giving_checks_overtaken_by_a_route_edit_applies_after_it() -> TestResult {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (proxy, giving, first) = giving_checks_overtaken_by_a_route_edit(&silent, "").await?;
    // The check's connection closes: the check fails, the round ends, and the update, planned
    // again, applies with that verdict.
    drop(first);
    let applied = tokio::time::timeout(Duration::from_secs(20), giving).await;
    assert!(
        applied.is_ok(),
        "the overtaken update had not applied 20 s after its round ended: planned again, it ran the round again with the update lock held"
    );
    applied???;
    let cluster = proxy.state.clusters.get("c").ok_or("cluster c")?;
    assert!(cluster.checks_actively(), "the update applied");
    let status = cluster.status();
    let endpoint = status.endpoints.iter().find(|e| !e.awaiting_first_check);
    assert!(
        endpoint.is_some_and(|e| e.failing_active_checks),
        "the endpoint that closed its check's connection is out of rotation: {:?}",
        status.endpoints
    );
    proxy.shutdown().await;
    Ok(())
}

/// Asserts that the first endpoint of `cluster`, which closed its check's connection, had its
/// first check and is out of rotation.
fn assert_failed_its_first_check(cluster: &crate::cluster::ClusterHandle) {
    let status = cluster.status();
    assert!(
        status
            .endpoints
            .first()
            .is_some_and(|e| !e.awaiting_first_check && e.failing_active_checks),
        "the endpoint that closed its check's connection is out of rotation: {:?}",
        status.endpoints
    );
}

/// Starts a proxy and a file reload that adds cluster `d` (one endpoint, at `silent`) with
/// health checks; during the first round of its checks the admin API adds `d` without checks,
/// so that, planned again, the reload gives the running cluster checks: a round it needs.
/// Returns the proxy, the reload and the connection of that second round's check.
async fn a_reload_in_its_second_round(
    silent: &tokio::net::TcpListener,
) -> TestResult<(
    Proxy,
    tokio::task::JoinHandle<Result<crate::ReloadSummary, crate::UpdateError>>,
    tokio::net::TcpStream,
)> {
    let silent_addr = silent.local_addr()?;
    let proxy = start(CONFIG).await?;
    let cluster = |checks: &str| {
        format!("{{ name: d, endpoints: [ {{ address: \"{silent_addr}\" }} ]{checks} }}")
    };
    let reloaded = Config::from_yaml(&format!(
        "{CONFIG}  - {}\n",
        cluster(
            ", health_check: { interval: 1h, timeout: 60s, probe: { http: { path: /health } } }"
        )
    ))?;
    let reloading = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.reload(reloaded).await }
    });
    // The new cluster's first round.
    let (first, _) = tokio::time::timeout(Duration::from_secs(20), silent.accept()).await??;
    let unchecked = crate::config::ClusterSpec::from_yaml(&cluster(""))?;
    tokio::time::timeout(Duration::from_secs(20), proxy.update_cluster(unchecked)).await??;
    drop(first);
    // Planned again, the reload gives the running cluster checks: its endpoints' first round.
    let (second, _) = tokio::time::timeout(Duration::from_secs(20), silent.accept()).await??;
    Ok((proxy, reloading, second))
}

/// An update planned again that needs a round of checks its first plan did not run (the admin
/// API added, meanwhile, a cluster the update adds: it now gives that running cluster checks)
/// runs that round without the update lock too: a route edit applies during it, and the update
/// applies when it ends. (Planned again, it ran the round holding the lock, so the edit, like any
/// other update, waited for it, up to the checks' `timeout`.)
#[tokio::test]
async fn an_update_planned_again_holds_no_other_update_during_the_round_it_runs() -> TestResult {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (proxy, reloading, second) = a_reload_in_its_second_round(&silent).await?;
    let edit = crate::config::RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { match: { metadata: [ { key: method, exact: edited } ] }, route: { cluster: c } } ] }",
    )?;
    let edited =
        tokio::time::timeout(Duration::from_secs(20), proxy.update_route_config(edit)).await;
    assert!(
        edited.is_ok(),
        "the route edit waited for the round of checks of the update planned again"
    );
    edited??;
    assert!(
        !reloading.is_finished(),
        "the reload ended before its second round's check was answered"
    );
    drop(second);
    tokio::time::timeout(Duration::from_secs(20), reloading).await???;
    let cluster = proxy.state.clusters.get("d").ok_or("cluster d")?;
    assert!(cluster.checks_actively(), "the reload applied");
    assert_failed_its_first_check(&cluster);
    proxy.shutdown().await;
    Ok(())
}

/// An update that gives a running cluster health checks and new codec options, overtaken by a
/// route edit during its first round, keeps, planned again, the endpoints that round checked:
/// it reuses the stale plan's codec, the options being the same, and applies when the round
/// ends. (Planned again, it built another codec, so the checked endpoints did not fit and it
/// ran another round: with other updates applying during each, it never applied.)
#[tokio::test]
async fn an_update_changing_codec_options_planned_again_keeps_its_checked_endpoints() -> TestResult
{
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (proxy, giving, first) =
        giving_checks_overtaken_by_a_route_edit(&silent, ", codec: { option: 1 }").await?;
    drop(first);
    let applied = tokio::time::timeout(Duration::from_secs(20), giving).await;
    assert!(
        applied.is_ok(),
        "the overtaken update had not applied 20 s after its round ended: planned again, it checked its endpoints again"
    );
    applied???;
    let cluster = proxy.state.clusters.get("c").ok_or("cluster c")?;
    assert_failed_its_first_check(&cluster);
    proxy.shutdown().await;
    Ok(())
}

/// An update overtaken in two rounds of checks in a row runs its third round holding the update
/// lock, so that it applies however often other updates come (an xDS server pushing during
/// each round): here a file reload adds a cluster with checks that the admin API adds, then
/// removes, during its rounds, each plan needing a round anew. (Each round ran without the lock:
/// a route edit during the third overtook it again, and so on for as long as updates came.)
#[tokio::test]
async fn an_update_overtaken_twice_holds_the_lock_during_its_next_round() -> TestResult {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (proxy, reloading, second) = a_reload_in_its_second_round(&silent).await?;
    // The admin API removes the cluster during the second round.
    tokio::time::timeout(Duration::from_secs(20), proxy.remove_cluster("d")).await??;
    drop(second);
    // Planned a third time, the reload adds the cluster anew: this round holds the lock.
    let (third, _) = tokio::time::timeout(Duration::from_secs(20), silent.accept()).await??;
    let edit = crate::config::RouteConfigSpec::from_yaml(
        "{ name: r, routes: [ { match: { metadata: [ { key: method, exact: edited } ] }, route: { cluster: c } } ] }",
    )?;
    // Given up after half a second, the edit changes nothing.
    let edited =
        tokio::time::timeout(Duration::from_millis(500), proxy.update_route_config(edit)).await;
    assert!(
        edited.is_err(),
        "a route edit applied during the third round of the reload's checks: overtaken again, it applies only once no update comes during a round"
    );
    drop(third);
    tokio::time::timeout(Duration::from_secs(20), reloading).await???;
    let cluster = proxy.state.clusters.get("d").ok_or("cluster d")?;
    assert!(cluster.checks_actively(), "the reload applied");
    proxy.shutdown().await;
    Ok(())
}
