//! Golden tests: every `testdata/<case>.in.yaml` is translated and compared
//! with `snapshots/golden__<case>.snap` (the config and the statuses).
//! A leading comment line `# options: --require-tenant` turns that option
//! on; `# base: NAME` prepends `testdata/bases/NAME.yaml`.
//! Update snapshots after an intended change with `cargo insta review`
//! (or `INSTA_UPDATE=always cargo test -p vestibule-config --test golden`).

use std::path::Path;

use vestibule_config::manifests::{load_text, Loaded};
use vestibule_config::translate::{translate, Options};

/// PEM bodies make snapshots unreadable; keep their size and drop the key.
fn redact(mut t: vestibule_config::Translation) -> vestibule_config::Translation {
    for cert in t.config.certificates.values_mut() {
        cert.cert_pem = format!("<{} bytes of PEM>", cert.cert_pem.len());
        cert.key_pem = "<redacted>".into();
    }
    t
}

fn run_case(path: &Path) -> String {
    let mut text = std::fs::read_to_string(path).expect("read case");
    let options = Options {
        require_tenant: text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .any(|l| l.starts_with("# options:") && l.contains("--require-tenant")),
        ..Options::default()
    };
    // `# base: NAME` prepends `testdata/bases/NAME.yaml` (shared objects,
    // such as the Gateway API conformance base).
    let base = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix("# base: "))
        .map(|name| {
            let file = path
                .with_file_name("bases")
                .join(format!("{}.yaml", name.trim()));
            std::fs::read_to_string(&file).expect("read base")
        });
    if let Some(base) = base {
        text = format!("{base}\n---\n{text}");
    }
    let mut loaded = Loaded::default();
    load_text(path, &text, &mut loaded);
    assert!(
        loaded.errors.is_empty(),
        "{}: {:?}",
        path.display(),
        loaded.errors
    );
    let translation = redact(translate(&loaded.snapshot, &options));
    serde_saphyr::to_string(&translation).expect("render")
}

#[test]
fn golden_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    let count = cases.len();
    // Every case runs; the failures are reported together at the end.
    let mut failed = Vec::new();
    for path in cases {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".in.yaml"))
            .expect("case name")
            .to_string();
        let checked = std::panic::catch_unwind(|| {
            let output = run_case(&path);
            insta::with_settings!({ description => format!("testdata/{name}.in.yaml"), omit_expression => true }, {
                insta::assert_snapshot!(name.as_str(), output);
            });
        });
        if checked.is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {count} golden cases differ (review with `cargo insta review`): {failed:?}",
        failed.len()
    );
    assert!(
        count >= 25,
        "expected at least 25 golden cases, found {count}"
    );
}
