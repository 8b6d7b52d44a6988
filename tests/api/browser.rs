//! The chat page end to end in headless Chromium (driven over WebDriver by
//! `chromedriver`): two people join a room, see each other, type, talk; one reloads and
//! gets the history. A screenshot is kept in `target/test-artifacts/`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{json, Value};

use crate::helpers::{in_ci, spawn_app, spawn_app_with, test_settings, TestDb};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(15);

/// A running chromedriver, killed when dropped.
struct Driver {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// Starts chromedriver, or `None` (after saying why) when Chromium is not installed
    /// outside CI.
    async fn start() -> Option<Self> {
        if !(std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists())
        {
            assert!(
                !in_ci(),
                "CI=true but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipping browser test: install chromium and chromium-driver");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = driver
                .http
                .get(format!("{}/status", driver.url))
                .send()
                .await;
            if let Ok(response) = ready {
                let status: Value = response.json().await.unwrap_or_default();
                if status["value"]["ready"] == true {
                    return Some(driver);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new headless browser window.
    async fn browser(&self, profile: &tempfile::TempDir) -> Browser<'_> {
        self.browser_sized(profile, (1200, 800)).await
    }

    /// A browser whose window is `(width, height)` CSS pixels (390 × 844: a phone).
    async fn browser_sized(&self, profile: &tempfile::TempDir, size: (u32, u32)) -> Browser<'_> {
        self.browser_with(profile, size, &[]).await
    }

    /// A browser that cannot reach the internet: no host name resolves (only the
    /// loopback addresses the tests use work).
    async fn browser_offline(&self, profile: &tempfile::TempDir) -> Browser<'_> {
        self.browser_with(
            profile,
            (1280, 800),
            &["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"],
        )
        .await
    }

    async fn browser_with(
        &self,
        profile: &tempfile::TempDir,
        size: (u32, u32),
        extra: &[&str],
    ) -> Browser<'_> {
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={},{}", size.0, size.1),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
        }}});
        let created = self.call("POST", "/session", capabilities).await;
        let id = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Browser { driver: self, id }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.url);
        let request = match method {
            "POST" => self.http.post(url).json(&body),
            "DELETE" => self.http.delete(url),
            _ => self.http.get(url),
        };
        let response: Value = request
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("WebDriver answers JSON");
        if let Some(error) = response["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {error}: {}",
                response["value"]["message"]
            );
        }
        response.get("value").cloned().unwrap_or(response)
    }
}

/// One browser window.
struct Browser<'d> {
    driver: &'d Driver,
    id: String,
}

impl Browser<'_> {
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    async fn open(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Types `text` into the element with `id` (real key events, so `input` fires).
    async fn type_into(&self, id: &str, text: &str) {
        let element = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": format!("#{id}")}),
            )
            .await;
        let key = element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_owned();
        self.call(
            "POST",
            &format!("/element/{key}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, id: &str) {
        self.run(
            &format!("document.getElementById('{id}').click()"),
            json!([]),
        )
        .await;
    }

    async fn text_of(&self, id: &str) -> String {
        let value = self
            .run(
                &format!("return document.getElementById('{id}').innerText"),
                json!([]),
            )
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the element's text contains `wanted`.
    async fn wait_for(&self, id: &str, wanted: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text_of(id).await;
            if text.contains(wanted) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "#{id} never showed `{wanted}`; it shows `{text}`"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Connects as `name` and joins `room`.
    async fn enter(&self, base: &str, name: &str, room: &str) {
        self.open(base).await;
        self.type_into("name", name).await;
        self.click("connect").await;
        self.wait_for("conn-state", "connected").await;
        self.type_into("room", room).await;
        self.click("join").await;
        self.wait_for("rooms", room).await;
    }

    /// Sets a text field's value (replacing what it held) as typing would.
    async fn set_value(&self, id: &str, value: &str) {
        self.run(
            "const field = document.getElementById(arguments[0]);
             field.value = arguments[1];
             field.dispatchEvent(new Event('input'));",
            json!([id, value]),
        )
        .await;
    }

    async fn screenshot(&self, path: &PathBuf) {
        let png = self.call("GET", "/screenshot", Value::Null).await;
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            png.as_str().expect("base64 PNG"),
        )
        .expect("valid base64");
        std::fs::write(path, bytes).expect("the screenshot is written");
    }

    async fn close(self) {
        self.driver
            .call("DELETE", &format!("/session/{}", self.id), Value::Null)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_on_the_page_and_a_reload_brings_the_history_back() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let app = spawn_app().await;
    let base = app.url("/");
    let (profile_a, profile_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ann = driver.browser(&profile_a).await;
    let bob = driver.browser(&profile_b).await;

    ann.enter(&base, "Ann", "lobby").await;
    bob.enter(&base, "Bob", "lobby").await;
    ann.wait_for("members", "Bob").await;
    bob.wait_for("members", "Ann").await;

    bob.type_into("text", "hello from bob").await;
    ann.wait_for("typing", "Bob is typing").await;
    bob.click("send").await;
    ann.wait_for("messages", "hello from bob").await;
    ann.type_into("text", "hi bob").await;
    ann.click("send").await;
    bob.wait_for("messages", "hi bob").await;
    ann.wait_for("stat-sessions", "2").await;

    // Bob leaves; Ann reloads. The reload starts from nothing: the history request on
    // join brings the talk back, with names (Bob is no longer there to list), and Ann is
    // the same guest as before (her resume token), so her own messages are hers.
    bob.close().await;
    ann.wait_for("stat-sessions", "1").await;
    ann.enter(&base, "Ann", "lobby").await;
    ann.wait_for("messages", "hello from bob").await;
    ann.wait_for("messages", "hi bob").await;
    let lines = ann
        .run(
            "return [...document.querySelectorAll('#messages .msg')].map((m) =>
               [m.querySelector('.who').textContent, m.children[1].textContent,
                m.classList.contains('mine')]);",
            json!([]),
        )
        .await;
    assert_eq!(
        lines,
        json!([["Bob", "hello from bob", false], ["Ann", "hi bob", true]]),
        "names from history, and Ann's own line marked as hers"
    );

    let shot = artifacts().join("chat-page.png");
    ann.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "a real PNG");
    eprintln!("screenshot: {}", shot.display());
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_rate_limit_close_and_waits_as_advised_before_reconnecting() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    // Two tokens, one every 10 s: the page and its first stats poll take both.
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.rate_limit_per_second = 0.1;
    settings.rate_limit_burst = 2;
    let app = spawn_app_with(db, settings).await;
    let profile = tempfile::tempdir().unwrap();
    let ann = driver.browser(&profile).await;
    ann.open(&app.url("/")).await;
    ann.wait_for("stat-sessions", "0").await;
    ann.type_into("name", "Ann").await;
    ann.click("connect").await;
    ann.wait_for("error", "rate limit exceeded; retry in").await;
    ann.wait_for("conn-state", "reconnecting").await;

    // The close said to wait ~10 s: no second attempt meanwhile (a plain backoff would
    // have tried again after 0.5, 1 and 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ann.text_of("stat-sessions").await,
        "0",
        "a refused stats poll keeps the last figures"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_rate_limit_rejections_total{protocol=\"ws\"} 1\n"),
        "one refused upgrade, not a retry storm:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("rejections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_fits_a_phone_and_has_leave_and_private_controls() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let app = spawn_app().await;
    let base = app.url("/");
    let (profile_a, profile_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let phone = driver.browser_sized(&profile_a, (390, 844)).await;
    let desk = driver.browser(&profile_b).await;
    phone.open(&base).await;
    let folded = phone
        .run(
            "return document.getElementById('side-lists').open;",
            json!([]),
        )
        .await;
    assert_eq!(folded, false, "rooms and members start folded on a phone");
    // Unfolded, so their (rendered) text can be read below.
    phone
        .run(
            "document.getElementById('side-lists').open = true;",
            json!([]),
        )
        .await;
    phone.type_into("name", "Ann").await;
    phone.click("connect").await;
    phone.wait_for("conn-state", "connected").await;
    phone.type_into("room", "lobby").await;
    phone.click("join").await;
    phone.wait_for("rooms", "lobby").await;
    desk.enter(&base, "Bob", "lobby").await;
    phone.wait_for("members", "Bob").await;

    // Nothing scrolls sideways, and the conversation gets the width.
    let layout = phone
        .run(
            "const chat = document.getElementById('chat').getBoundingClientRect();
             return [document.documentElement.scrollWidth, window.innerWidth, chat.width];",
            json!([]),
        )
        .await;
    let (scroll, inner, chat) = (
        layout[0].as_f64().unwrap(),
        layout[1].as_f64().unwrap(),
        layout[2].as_f64().unwrap(),
    );
    assert!(inner <= 500.0, "a phone-sized window: {layout}");
    assert!(scroll <= inner, "no sideways scrolling: {layout}");
    assert!(chat >= inner * 0.8, "the messages take the width: {layout}");

    // A private message: pick Bob among the members, send; only Bob gets it, marked.
    phone
        .run(
            "[...document.querySelectorAll('#members li')]
               .find((li) => li.textContent.startsWith('Bob')).click();",
            json!([]),
        )
        .await;
    phone.wait_for("private-to", "private to Bob").await;
    phone.type_into("text", "just for you").await;
    phone.click("send").await;
    desk.wait_for("messages", "just for you").await;
    let marked = desk
        .run(
            "return document.querySelector('#messages .msg.private') !== null;",
            json!([]),
        )
        .await;
    assert_eq!(marked, true, "shown as private");
    phone.wait_for("messages", "you → ").await;

    let dir = artifacts();
    for (browser, name) in [(&phone, "chat-phone.png"), (&desk, "chat-desktop.png")] {
        let shot = dir.join(name);
        browser.screenshot(&shot).await;
        assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "a real PNG");
        eprintln!("screenshot: {}", shot.display());
    }

    // Leaving: the room goes from Ann's list, and Bob sees her go.
    phone
        .run(
            "document.querySelector('#rooms button.leave').click();",
            json!([]),
        )
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rooms = phone.text_of("rooms").await;
        let members = desk.text_of("members").await;
        if !rooms.contains("lobby") && !members.contains("Ann") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left: rooms {rooms:?}, Bob's members {members:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    phone.close().await;
    desk.close().await;
}

/// Where screenshots go.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graphql_console_works_offline_docs_queries_tokens_and_subscriptions() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let app = spawn_app().await;
    let profile = tempfile::tempdir().unwrap();
    let browser = driver.browser_offline(&profile).await;
    browser.open(&app.url("/graphiql")).await;

    // Docs from introspection: the roots, then a type clicked through, then a search.
    browser.wait_for("docs", "Subscription").await;
    browser
        .run(
            "[...document.querySelectorAll('#docs button.type')]
               .find((b) => b.textContent === 'Query').click();",
            json!([]),
        )
        .await;
    browser.wait_for("docs", "users(limit: Int! = 10").await;
    browser.set_value("docs-search", "postcreated").await;
    browser.wait_for("docs", "Subscription.postCreated").await;

    // A mutation without a token is refused; with one it runs.
    let create = |name: &str| {
        format!(
            "mutation {{ createUser(input: {{name: \"{name}\", email: \"{}@example.com\"}}) {{ name }} }}",
            name.to_lowercase()
        )
    };
    browser.set_value("query", &create("Ada")).await;
    browser.click("run").await;
    browser.wait_for("result", "UNAUTHENTICATED").await;
    let token = crate::ws_client::token("console-user", None);
    browser.type_into("token", &token).await;
    browser.click("run").await;
    browser.wait_for("result", "\"name\": \"Ada\"").await;
    browser.wait_for("status", "200").await;

    // Several operations: the picked one runs, with its variables.
    browser
        .set_value(
            "query",
            "query First { users(limit: 1) { email } }\nquery Named($filter: String!) { users(filter: $filter) { name } }",
        )
        .await;
    browser
        .set_value("variables", "{ \"filter\": \"ada\" }")
        .await;
    browser
        .run(
            "const pick = document.getElementById('operation');
             pick.value = '1'; pick.dispatchEvent(new Event('change'));",
            json!([]),
        )
        .await;
    browser.click("run").await;
    browser.wait_for("result", "\"name\": \"Ada\"").await;
    assert!(
        !browser.text_of("result").await.contains("email"),
        "the second operation ran"
    );
    browser.set_value("variables", "{ not json").await;
    browser.click("run").await;
    browser.wait_for("result", "Variables:").await;
    browser.set_value("variables", "").await;

    // A subscription streams events until stopped.
    browser
        .set_value("query", "subscription Watch { userCreated { name } }")
        .await;
    browser.click("run").await;
    browser.wait_for("status", "subscribed").await;
    let created = app
        .post_graphql(Some(&token), &json!({ "query": create("Grace") }))
        .await;
    assert_eq!(created.status(), 200);
    browser.wait_for("result", "Grace").await;
    browser.click("stop").await;
    browser.wait_for("status", "stopped").await;

    // Everything the page loaded came from the server itself.
    let loaded = browser
        .run(
            "return [location.href, ...performance.getEntriesByType('resource').map((e) => e.name)];",
            json!([]),
        )
        .await;
    let base = app.url("/");
    let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
    assert!(
        loaded.len() >= 3,
        "the page, its script and styles: {loaded:?}"
    );
    for url in &loaded {
        assert!(url.starts_with(&base), "{url} is not from {base}");
    }
    let shot = artifacts().join("graphql-console.png");
    browser.screenshot(&shot).await;
    eprintln!("screenshot: {}", shot.display());
    browser.close().await;
}

#[tokio::test]
async fn the_console_is_served_with_a_strict_policy_and_playground_points_to_it() {
    let app = spawn_app().await;
    let page = app.get("/graphiql").await;
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("https://"), "no outside address in the page");
    for (path, kind) in [
        ("/graphiql/console.js", "text/javascript"),
        ("/graphiql/console.css", "text/css"),
    ] {
        let asset = app.get(path).await;
        assert_eq!(asset.status(), 200, "{path}");
        assert!(asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
        assert!(!asset.text().await.unwrap().contains("https://"), "{path}");
    }
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let playground = plain.get(app.url("/playground")).send().await.unwrap();
    assert_eq!(playground.status(), 308);
    assert_eq!(playground.headers()["location"], "/graphiql");
}

#[tokio::test]
async fn the_page_and_its_stats_are_served() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains("<script>") && html.contains("/ws?${query}"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from a CDN"
    );
    assert!(html.contains(r#"<link rel="icon" href="/favicon.svg""#));
    let icon = app.http.get(app.url("/favicon.svg")).send().await.unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    assert!(icon.text().await.unwrap().starts_with("<svg"));
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["sessions"], 0);
    assert!(stats["messages_in"].is_u64());
}

/// A TCP proxy standing in for a load balancer: each new connection goes to the address
/// `target` holds at that moment.
async fn balancer(
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = *target.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// Two cluster nodes behind a balancer: the page shows the node it is on; when that node
/// stops (close 1012) the page reconnects through the balancer to the other node at once,
/// rejoins from its last offset, and shows every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_a_rolling_restart_to_another_node() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let Some(redis) = crate::private_redis::shared_redis() else {
        return;
    };
    let prefix = crate::private_redis::test_prefix();
    let db = TestDb::sqlite();
    let a = spawn_app_with(
        db.share(),
        crate::cluster::node_settings(&db, &redis, &prefix, "node-a"),
    )
    .await;
    let b = spawn_app_with(
        db.share(),
        crate::cluster::node_settings(&db, &redis, &prefix, "node-b"),
    )
    .await;
    let target = std::sync::Arc::new(std::sync::Mutex::new(a.http_addr));
    let front = balancer(target.clone()).await;
    let profile = tempfile::tempdir().unwrap();
    let ann = driver.browser(&profile).await;
    ann.enter(&format!("http://{front}/"), "Ann", "lobby").await;
    ann.wait_for("stat-node", "node-a").await;

    let mut bob = crate::ws_client::WsClient::user(&b, "bob").await;
    bob.join("lobby").await;
    crate::history::post(&mut bob, "lobby", 1).await;
    ann.wait_for("messages", "m0").await;

    // The balancer sends new connections to b; a stops as on SIGTERM.
    *target.lock().unwrap() = b.http_addr;
    a.shutdown().await.unwrap();
    bob.send(json!({"type": "message", "room_id": "lobby", "content": "while you moved"}))
        .await;
    bob.recv_kind("ack").await;
    ann.wait_for("stat-node", "node-b").await;
    ann.wait_for("conn-state", "connected").await;
    ann.wait_for("messages", "while you moved").await;
    let lines = ann
        .run(
            "return [...document.querySelectorAll('#messages .msg')].map((m) =>
               m.children[1].textContent);",
            json!([]),
        )
        .await;
    assert_eq!(lines, json!(["m0", "while you moved"]), "each message once");
    ann.close().await;
    drop(b);
    drop(db);
    crate::private_redis::forget(&redis, &prefix).await;
}
