//! The status page in a real browser: Debian's headless Chromium, driven over WebDriver by
//! chromedriver (fantoccini), against a live ringlb with three backends and a token.
//! Saves a screenshot (target/status-page.png; with RINGLB_WRITE_SCREENSHOT=1 also
//! docs/status-page.png, the one the README shows).

mod common;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "page-token-1234";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(profile: &std::path::Path) -> (Driver, Client) {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
    let driver = Driver(driver);
    wait_until(Duration::from_secs(20), || {
        TcpStream::connect(addr(port)).is_ok()
    });
    // The flags the machine notes give: root needs --no-sandbox, and without the
    // background-networking ones Chromium keeps dialling Google's hosts on a closed network.
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1360,820",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let caps = caps.as_object().unwrap().clone().into_iter().collect();
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session in headless Chromium");
    (driver, client)
}

/// The text of the first element matching `css`, or "" if there is none yet.
async fn text_of(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls the page (bounded) until `css`'s text satisfies `ok`; returns it.
async fn page_shows(c: &Client, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let t = text_of(c, css).await;
        if ok(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{css} shows {t:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn api_state(admin: SocketAddr, backend: SocketAddr) -> String {
    let (status, body) = http(admin, "GET", "/backends", None, Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["backends"].as_array().unwrap().iter())
        .find(|b| b["addr"] == backend.to_string())
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

fn row(b: SocketAddr, cell: &str) -> String {
    format!("tr[data-addr=\"{b}\"] {cell}")
}

#[tokio::test(flavor = "current_thread")]
async fn the_status_page_shows_backends_live_and_drains_one_with_a_click() {
    let backends: Vec<TestBackend> = ["a", "b", "c"]
        .iter()
        .map(|n| TestBackend::start(n))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let (port, admin) = (free_port(), addr(free_port()));
    // A second pool, with a backup server: the page marks it.
    let (primary, backup) = (TestBackend::start("primary"), TestBackend::start("backup"));
    let cfg = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken_file = {:?}\n{}{}[pools.web.health]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n[pools.db]\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\", backup = true }}]\n",
        token.display().to_string(),
        listener_config("web", port, "web", ""),
        pool_config(
            "web",
            "round_robin",
            &addrs.iter().map(|a| (*a, 1)).collect::<Vec<_>>(),
            ""
        ),
        primary.addr,
        backup.addr,
    );
    let _lb = Proxy::start(&cfg, addr(port));
    let mut backends = backends;

    let (_driver, c) = browser(&dir.path().join("profile")).await;
    // The page's files: script and style from this origin only, nothing inline.
    for (path, kind) in [
        ("/", "text/html"),
        ("/status.js", "text/javascript"),
        ("/status.css", "text/css"),
    ] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: ringlb\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(
            head.contains(&format!("content-type: {kind}")),
            "{path}: {head}"
        );
        assert!(
            head.contains("content-security-policy: default-src 'self'; frame-ancestors 'none'"),
            "{path}: {head}"
        );
    }
    c.goto(&format!("http://{admin}/")).await.unwrap();

    // It asks for the token first (the API answered 401 without one).
    let input = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#login:not(.hidden) #token"))
        .await
        .expect("the page asks for the token");
    input.send_keys(TOKEN).await.unwrap();
    click(&c, "#token-submit").await;

    // Its style sheet applies under a CSP that allows no inline style: the header has the
    // dark background status.css gives it (no style at all would leave it transparent).
    let header_bg = c
        .execute(
            "return getComputedStyle(document.querySelector('header')).backgroundColor",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        header_bg,
        serde_json::json!("rgb(31, 41, 55)"),
        "status.css is not applied"
    );

    // Then lists the three backends with their states.
    for a in &addrs {
        page_shows(&c, &row(*a, ".state"), Duration::from_secs(10), |t| {
            t == "up"
        })
        .await;
    }
    page_shows(
        &c,
        &row(backup.addr, ".state"),
        Duration::from_secs(10),
        |t| t.contains("up") && t.contains("backup"),
    )
    .await;
    page_shows(
        &c,
        &row(primary.addr, ".state"),
        Duration::from_secs(10),
        |t| t == "up",
    )
    .await;
    let stored: serde_json::Value = c
        .execute(
            "return sessionStorage.getItem('ringlb-admin-token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, TOKEN, "the token is kept in sessionStorage");

    // Held connections: the page counts them, per listener and over the backends.
    let held: Vec<TcpStream> = (0..6).map(|_| greet(addr(port)).0).collect();
    page_shows(
        &c,
        "tr[data-listener=\"web\"] .active",
        Duration::from_secs(10),
        |t| t == "6",
    )
    .await;
    for a in &addrs {
        page_shows(&c, &row(*a, ".active"), Duration::from_secs(10), |t| {
            t == "2"
        })
        .await;
    }

    // Drain b by a click and a confirmation: the API says draining, the page within 2 s.
    click(&c, &row(addrs[1], "button.drain")).await;
    click(&c, "#confirm-yes").await;
    wait_until(Duration::from_secs(5), || {
        api_state(admin, addrs[1]) == "draining"
    });
    page_shows(&c, &row(addrs[1], ".state"), Duration::from_secs(2), |t| {
        t == "draining"
    })
    .await;

    // A refused change shows the API's own error text.
    click(&c, &row(addrs[0], "button.weight")).await;
    let field = c.find(Locator::Css("#confirm-input")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys("999").await.unwrap();
    click(&c, "#confirm-yes").await;
    page_shows(&c, "#message", Duration::from_secs(5), |t| {
        t.contains("400") && t.contains("out of range")
    })
    .await;
    assert_eq!(api_state(admin, addrs[0]), "up");

    // A backend stopped by the test turns down on the page.
    drop(held);
    let stopped = backends.remove(2);
    drop(stopped);
    page_shows(&c, &row(addrs[2], ".state"), Duration::from_secs(10), |t| {
        t == "down"
    })
    .await;
    assert_eq!(api_state(admin, addrs[2]), "down");

    // The filter box narrows the rows; the pool heading says how many are shown.
    let filter = c.find(Locator::Css("#filter")).await.unwrap();
    filter.send_keys("draining").await.unwrap();
    let visible = |a: SocketAddr| {
        let c = c.clone();
        async move {
            c.find(Locator::Css(&format!("tr[data-addr=\"{a}\"]")))
                .await
                .unwrap()
                .is_displayed()
                .await
                .unwrap()
        }
    };
    assert!(visible(addrs[1]).await);
    assert!(!visible(addrs[0]).await && !visible(addrs[2]).await);
    filter.clear().await.unwrap();
    // clear() fires no input event; an empty search restores every row.
    filter.send_keys(" ").await.unwrap();
    assert!(visible(addrs[0]).await && visible(addrs[2]).await);

    // Some traffic for the sparklines (a rising, then falling rate), then the screenshot.
    let _hold: Vec<TcpStream> = (0..3).map(|_| greet(addr(port)).0).collect();
    for round in 0..8u32 {
        for _ in 0..(5 + 10 * round.min(8 - round)) {
            let (mut s, _) = greet(addr(port));
            let _ = std::io::Write::write_all(&mut s, &[b'x'; 2000]);
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());
    if std::env::var_os("RINGLB_WRITE_SCREENSHOT").is_some() {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status-page.png"),
            &png,
        )
        .unwrap();
    }
    c.close().await.unwrap();
}
