//! The ingress-nginx corpus: Ingresses as public Helm charts ship them
//! (`testdata/ingress-nginx-corpus/`, each file naming its source; see
//! SOURCES.md there), with their class `nginx` pointed at Vestibule as a
//! migrating user would. Each goes through `migrate`'s report and the
//! translator; the verdicts (per annotation, and the Ingress's conditions)
//! are checked in as `snapshots/corpus__<file>.snap`. Update after an
//! intended change with `INSTA_UPDATE=always cargo test -p vestibule-config
//! --test corpus`.

use std::fmt::Write;
use std::path::Path;

use vestibule_config::manifests::{load_text, Loaded};
use vestibule_config::migrate;
use vestibule_config::translate::annotations::Support;
use vestibule_config::translate::{translate, Options};

/// The class a migrating user points at Vestibule.
const NGINX_CLASS: &str = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx}\nspec: {controller: vestibule.dev/ingress-controller}\n";

fn verdicts(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read corpus file");
    let source = text.lines().next().unwrap_or_default().to_string();
    assert!(
        source.starts_with("# Source: "),
        "{}: no source line",
        path.display()
    );
    let mut loaded = Loaded::default();
    load_text(path, &format!("{NGINX_CLASS}---\n{text}"), &mut loaded);
    assert!(
        loaded.errors.is_empty(),
        "{}: {:?}",
        path.display(),
        loaded.errors
    );
    let report = migrate::report(&loaded.snapshot);
    let translation = translate(&loaded.snapshot, &Options::default());
    let mut out = format!("{source}\n");
    for ingress in &report {
        writeln!(out, "{}:", ingress.ingress).unwrap();
        for a in &ingress.annotations {
            let support = serde_json::to_value(a.support).unwrap();
            writeln!(out, "  {}: {}", a.annotation, support.as_str().unwrap()).unwrap();
            // Snippets are refused, always.
            if a.annotation.ends_with("snippet") {
                assert_eq!(a.support, Support::Refused, "{}", a.annotation);
            }
        }
        let (namespace, name) = ingress.ingress.split_once('/').unwrap();
        let status = translation
            .statuses
            .iter()
            .find(|s| s.object.namespace.as_deref() == Some(namespace) && s.object.name == name)
            .unwrap_or_else(|| panic!("{}: no status for {}", path.display(), ingress.ingress));
        for c in &status.conditions {
            writeln!(
                out,
                "  => {:?}={} {:?}: {}",
                c.type_, c.status, c.reason, c.message
            )
            .unwrap();
        }
    }
    out
}

#[test]
fn corpus_verdicts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/ingress-nginx-corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus has {} files", files.len());
    let mut failed = Vec::new();
    for path in files {
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let checked = std::panic::catch_unwind(|| {
            let output = verdicts(&path);
            insta::with_settings!({ description => format!("ingress-nginx-corpus/{name}.yaml"), omit_expression => true }, {
                insta::assert_snapshot!(name.as_str(), output);
            });
        });
        if checked.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "corpus verdicts differ: {failed:?}");
}

#[test]
fn the_readme_annotation_table_is_the_codes() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let table = vestibule_config::translate::annotations::markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's ingress-nginx annotation table is stale; it should read:\n{table}"
    );
}
