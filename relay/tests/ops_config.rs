//! Configuration as an operator meets it: errors name the key, where the value came from and
//! what is wrong; flag > environment > file > default; `--print-config` reads back to the same
//! settings; the binary exits 2 on a bad value.

mod ops_support;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use relay::config::{self, ConfigError, Loaded, Origin};

fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let argv = std::iter::once("relay").chain(args.iter().copied());
    config::load(argv, |k| env.get(k).map(OsString::from))
}

fn error(args: &[&str], env: &[(&str, &str)]) -> (Option<String>, String) {
    let e = load(args, env).expect_err("configuration is refused");
    (e.key().map(str::to_string), e.to_string())
}

fn toml_file(text: &str) -> PathBuf {
    let path = ops_support::scratch_dir("config").join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_bad_duration_names_the_key_and_the_source() {
    let (key, msg) = error(&["--drain-deadline", "5x"], &[]);
    assert_eq!(key.as_deref(), Some("drain_deadline"));
    assert!(
        msg.contains("--drain-deadline") && msg.contains("`5x` is not a duration"),
        "{msg}"
    );

    let file = toml_file("[call]\nmedia_timeout = \"soon\"\n");
    let (key, msg) = error(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(key.as_deref(), Some("call.media_timeout"));
    assert!(
        msg.contains(file.to_str().unwrap()) && msg.contains("`soon`"),
        "{msg}"
    );

    let (key, msg) = error(&[], &[("RELAY_CALL_DTLS_TIMEOUT", "100years")]);
    assert_eq!(key.as_deref(), Some("call.dtls_timeout"));
    assert!(
        msg.contains("RELAY_CALL_DTLS_TIMEOUT") && msg.contains("24h"),
        "{msg}"
    );
}

#[test]
fn a_bad_ip_names_the_key() {
    let (key, msg) = error(&[], &[("RELAY_WHATSAPP_V4", "300.1.1.1")]);
    assert_eq!(key.as_deref(), Some("whatsapp_v4"));
    assert!(
        msg.contains("RELAY_WHATSAPP_V4") && msg.contains("`300.1.1.1` is not an IP"),
        "{msg}"
    );

    // An IPv6 address where IPv4 belongs.
    let (key, msg) = error(&["--advertise-v4", "2001:db8::1"], &[]);
    assert_eq!(key.as_deref(), Some("advertise_v4"));
    assert!(msg.contains("not an IPv4 address"), "{msg}");

    let (key, _) = error(&["--control-listen", "localhost"], &[]);
    assert_eq!(key.as_deref(), Some("control_listen"));
}

#[test]
fn an_empty_advertised_address_is_refused() {
    // The Helm chart leaves RELAY_ADVERTISE_V4 empty when the annotation it reads is missing;
    // the relay must stop rather than advertise something wrong.
    let (key, msg) = error(&[], &[("RELAY_ADVERTISE_V4", "")]);
    assert_eq!(key.as_deref(), Some("advertise_v4"));
    assert!(
        msg.contains("RELAY_ADVERTISE_V4") && msg.contains("empty"),
        "{msg}"
    );
}

#[test]
fn an_inverted_or_small_port_range_is_refused() {
    let (key, msg) = error(&["--port-min", "30000", "--port-max", "20000"], &[]);
    assert_eq!(key.as_deref(), Some("port_min"));
    assert!(msg.contains("30000 is above port_max 20000"), "{msg}");

    let (key, _) = error(&["--port-min", "20000"], &[]);
    assert_eq!(key.as_deref(), Some("port_max"));

    // 101 ports, 3 per call (IPv4 + IPv6 + internal), 100 calls.
    let (key, msg) = error(
        &[
            "--port-min",
            "20000",
            "--port-max",
            "20100",
            "--capacity",
            "100",
        ],
        &[],
    );
    assert_eq!(key.as_deref(), Some("port_max"));
    assert!(
        msg.contains("holds 101 ports") && msg.contains("needs 300"),
        "{msg}"
    );
    assert!(
        load(
            &[
                "--port-min",
                "20000",
                "--port-max",
                "20299",
                "--capacity",
                "100"
            ],
            &[]
        )
        .is_ok()
    );
}

#[test]
fn unknown_keys_in_the_file_are_refused() {
    let file = toml_file("control_listn = \"127.0.0.1:7070\"\n");
    let e = load(&["--config", file.to_str().unwrap()], &[]).unwrap_err();
    assert!(matches!(e, ConfigError::UnknownKey { .. }));
    assert_eq!(e.key(), Some("control_listn"));
    assert!(e.to_string().contains("--print-config"), "{e}");

    let file = toml_file("[call]\nice_timeout = \"5s\"\n");
    let e = load(&["--config", file.to_str().unwrap()], &[]).unwrap_err();
    assert_eq!(e.key(), Some("call.ice_timeout"));

    let file = toml_file("capacity = [1, 2]\n");
    let (key, msg) = error(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(key.as_deref(), Some("capacity"));
    assert!(msg.contains("found an array"), "{msg}");
}

#[test]
fn cross_key_checks_name_the_key_to_change() {
    let (key, msg) = error(&["--control-listen", "0.0.0.0:7070"], &[]);
    assert_eq!(key.as_deref(), Some("control_token"), "{msg}");
    assert!(
        load(
            &[
                "--control-listen",
                "0.0.0.0:7070",
                "--control-token",
                "s3cret"
            ],
            &[]
        )
        .is_ok()
    );
    assert!(
        load(
            &[
                "--control-listen",
                "0.0.0.0:7070",
                "--allow-unauthenticated"
            ],
            &[]
        )
        .is_ok()
    );

    let (key, _) = error(&["--metrics-listen", "127.0.0.1:7070"], &[]);
    assert_eq!(key.as_deref(), Some("metrics_listen"));

    let (key, _) = error(&["--whatsapp-v4", "none", "--whatsapp-v6", "none"], &[]);
    assert_eq!(key.as_deref(), Some("whatsapp_v4"));

    // Binding every interface needs the address to advertise.
    let (key, _) = error(&["--whatsapp-v4", "0.0.0.0"], &[]);
    assert_eq!(key.as_deref(), Some("advertise_v4"));
    assert!(
        load(
            &["--whatsapp-v4", "0.0.0.0", "--advertise-v4", "203.0.113.7"],
            &[]
        )
        .is_ok()
    );

    let (key, _) = error(&["--call-consent-interval", "40s"], &[]);
    assert_eq!(key.as_deref(), Some("call.consent_interval"));
    let (key, _) = error(&["--call-rtcp-interval", "0s"], &[]);
    assert_eq!(key.as_deref(), Some("call.rtcp_interval"));
    let (key, _) = error(&["--control-tls-cert", "/x.pem"], &[]);
    assert_eq!(key.as_deref(), Some("control_tls_key"));
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let file = toml_file(
        "capacity = 10\ndrain_deadline = \"1m\"\nshards = 3\n\n[call]\nmedia_timeout = \"12s\"\n",
    );
    let loaded = load(
        &["--config", file.to_str().unwrap(), "--capacity", "30"],
        &[
            ("RELAY_CAPACITY", "20"),
            ("RELAY_DRAIN_DEADLINE", "2m"),
            ("RELAY_CALL_MEDIA_TIMEOUT", "15s"),
        ],
    )
    .unwrap();
    let s = &loaded.settings;
    assert_eq!(s.capacity, 30);
    assert_eq!(s.drain_deadline, Duration::from_secs(120));
    assert_eq!(s.call.media_timeout, Duration::from_secs(15));
    assert_eq!(s.shards, 3);
    assert_eq!(s.max_calls_per_number, 1000);
    assert_eq!(loaded.origin("capacity"), Origin::Flag("capacity"));
    assert_eq!(
        loaded.origin("drain_deadline"),
        Origin::Env("RELAY_DRAIN_DEADLINE")
    );
    assert_eq!(loaded.origin("shards"), Origin::File(file.clone()));
    assert_eq!(loaded.origin("max_calls_per_number"), Origin::Default);

    // The file can also come from RELAY_CONFIG.
    let via_env = load(&[], &[("RELAY_CONFIG", file.to_str().unwrap())]).unwrap();
    assert_eq!(via_env.settings.capacity, 10);

    // A boolean flag alone means true, and takes an explicit value too.
    assert!(load(&["--log-json"], &[]).unwrap().settings.log_json);
    assert!(
        !load(&["--log-json=false"], &[("RELAY_LOG_JSON", "true")])
            .unwrap()
            .settings
            .log_json
    );
}

#[test]
fn print_config_reads_back_to_the_same_settings() {
    let loaded = load(
        &[
            "--whatsapp-v4",
            "0.0.0.0",
            "--advertise-v4",
            "203.0.113.7",
            "--whatsapp-v6",
            "none",
            "--port-min",
            "20000",
            "--port-max",
            "29999",
            "--capacity",
            "3000",
            "--call-ice-check-rto",
            "75ms",
            "--call-silence-fill",
            "false",
            "--call-log-dir",
            "/var/log/relay",
        ],
        &[
            ("RELAY_DRAIN_DEADLINE", "300s"),
            ("RELAY_METRICS_LISTEN", "[::1]:9191"),
        ],
    )
    .unwrap();
    let text = loaded.settings.to_toml();
    let file = toml_file(&text);
    let again = load(&["--config", file.to_str().unwrap()], &[]).unwrap();
    assert_eq!(again.settings, loaded.settings, "{text}");
    assert!(text.contains("drain_deadline = \"5m\""), "{text}");
    assert!(text.contains("[call]\n"), "{text}");

    // The token is never printed.
    let with_token = load(&["--control-token", "hunter2"], &[]).unwrap();
    assert!(!with_token.settings.to_toml().contains("hunter2"));
    assert!(!format!("{:?}", with_token.settings).contains("hunter2"));
}

fn relay_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_relay"));
    c.env_clear();
    c
}

#[test]
fn the_binary_prints_its_configuration_and_exits_2_on_errors() {
    let out = relay_bin()
        .args(["--print-config", "--capacity", "42"])
        .env("RELAY_CALL_PTIME", "40ms")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Table = text.parse().expect("--print-config prints TOML");
    assert_eq!(parsed["capacity"].as_integer(), Some(42));
    assert_eq!(parsed["call"]["ptime"].as_str(), Some("40ms"));

    let out = relay_bin().env("RELAY_ADVERTISE_V4", "").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("advertise_v4") && err.contains("RELAY_ADVERTISE_V4"),
        "{err}"
    );

    let out = relay_bin().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
