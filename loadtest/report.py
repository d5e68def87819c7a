#!/usr/bin/env python3
"""report.md and PNG plots from a bench.py run directory (results.tsv + meta.json).

    python3 loadtest/report.py loadtest/out/<run>
"""

import json
import sys
from pathlib import Path

# "-log": the same proxy with its access log on (to a file or stdout).
PROXIES = ["vestibule", "nginx", "haproxy", "vestibule-log", "nginx-log", "haproxy-log", "bare",
           "vestibule-limited", "vestibule-redis", "vestibule-canonical"]
COLORS = {"vestibule": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#d62728", "bare": "#7f7f7f",
          "vestibule-log": "#aec7e8", "nginx-log": "#98df8a", "haproxy-log": "#ff9896",
          "vestibule-limited": "#9467bd", "vestibule-redis": "#8c564b", "vestibule-canonical": "#17becf"}

# (label, test, column, better: "high"/"low")
FIGURES = [
    ("HTTP/1.1 keep-alive RPS", "http", "rps", "high"),
    ("HTTP p50 ms", "http", "p50_ms", "low"),
    ("HTTP p99 ms", "http", "p99_ms", "low"),
    ("HTTP p99.9 ms", "http", "p999_ms", "low"),
    ("HTTP CPU µs/request", "http", "cpu_us_per_req", "low"),
    ("HTTP errors", "http", "errors", "low"),
    ("RSS idle, no certs (MB)", "http", "idle_rss_mb", "low"),
    ("RSS loaded, no certs (MB)", "http", "loaded_rss_mb", "low"),
    ("cold start -> last host 200 (s)", "http", "cold_start_s", "low"),
    ("TLS HTTP/1.1 keep-alive RPS", "tls_h1", "rps", "high"),
    ("TLS h1 p50 ms", "tls_h1", "p50_ms", "low"),
    ("TLS h1 p99 ms", "tls_h1", "p99_ms", "low"),
    ("TLS h1 p99.9 ms", "tls_h1", "p999_ms", "low"),
    ("TLS h1 CPU µs/request", "tls_h1", "cpu_us_per_req", "low"),
    ("TLS h1 errors", "tls_h1", "errors", "low"),
    ("TLS h2 RPS", "tls_h2", "rps", "high"),
    ("TLS h2 p99 ms", "tls_h2", "p99_ms", "low"),
    ("TLS h2 CPU µs/request", "tls_h2", "cpu_us_per_req", "low"),
    ("TLS h2 errors", "tls_h2", "errors", "low"),
    ("full handshakes/s (1 req/conn)", "handshake", "rps", "high"),
    ("CPU µs/handshake", "handshake", "cpu_us_per_req", "low"),
    ("handshake errors", "handshake", "errors", "low"),
    ("RSS idle, 1 cert/host (MB)", "tls_h1", "idle_rss_mb", "low"),
    ("PSS idle, 1 cert/host (MB)", "tls_h1", "idle_pss_mb", "low"),
    ("RSS after TLS load (MB)", "handshake", "loaded_rss_mb", "low"),
    ("cold start -> last host over TLS (s)", "tls_h1", "cold_start_s", "low"),
    ("config changes under load", "change", "changes", "none"),
    ("failed requests during changes", "change", "errors", "low"),
    ("change -> live p50 (ms)", "change", "ttl_p50_ms", "low"),
    ("change -> live max (ms)", "change", "ttl_max_ms", "low"),
]


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load(run):
    rows = []
    lines = (run / "results.tsv").read_text().splitlines()
    cols = lines[0].split("\t")
    for line in lines[1:]:
        if line.strip():
            rows.append(dict(zip(cols, line.split("\t"))))
    meta = json.loads((run / "meta.json").read_text()) if (run / "meta.json").exists() else {}
    return rows, meta


def fmt(v):
    x = num(v)
    if x is None:
        return "–"
    if x == int(x) and abs(x) >= 10:
        return f"{int(x):,}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:,.0f}"


def ratio(v, o):
    a, b = num(v), num(o)
    if a is None or b is None:
        return "–"
    if b == 0:
        return "=" if a == 0 else "∞"
    return f"{a / b:.2f}"


def budget(by, n_counts):
    """DESIGN.md "Performance budget" checks that this run can answer."""
    out = []
    get = lambda p, n, t, c: num(by.get((p, n, t), {}).get(c))
    for n in n_counts:
        v, g = get("vestibule", n, "http", "cpu_us_per_req"), get("nginx", n, "http", "cpu_us_per_req")
        if v is not None and g is not None:
            out.append((f"CPU µs per plain request ≤ nginx ({n} hosts)", f"{v:.1f} vs {g:.1f}", v <= g))
        v = get("vestibule", n, "tls_h1", "idle_rss_mb")
        if v is not None and n >= 10000:
            out.append((f"RSS with {n} certificates ≤ 40 MB", f"{v:.1f} MB", v <= 40))
        v = get("vestibule", n, "tls_h1", "cold_start_s")
        if v is not None and n >= 10000:
            out.append((f"exec -> last of {n} TLS hosts ≤ 0.5 s", f"{v:.3f} s", v <= 0.5))
        v = get("vestibule", n, "change", "errors")
        if v is not None:
            out.append((f"0 failed requests on config changes ({n} hosts)", f"{v:.0f}", v == 0))
        v = get("vestibule", n, "change", "ttl_p50_ms")
        if v is not None:
            out.append((f"change -> live p50 ≤ 50 ms ({n} hosts)", f"{v:.1f} ms", v <= 50))
    return out


def write_report(run, rows, meta):
    by = {(r["proxy"], int(r["hosts"]), r["test"]): r for r in rows}
    counts = sorted({int(r["hosts"]) for r in rows})
    present = [p for p in PROXIES if any(r["proxy"] == p for r in rows)]
    logged = "vestibule-log" in present
    L = ["# Vestibule vs nginx vs HAProxy", ""]
    if meta:
        L += [f"Run {meta.get('date')}: {meta.get('cores')} cores ({meta.get('cpu_model')}), kernel "
              f"{meta.get('kernel')}, loopback only. One worker per proxy pinned to the last core; wrk/h2load, "
              f"the upstream (nginx answering 200) and the driver on core 0. {meta.get('connections')} connections, "
              f"{meta.get('duration_s')} s per load run, {meta.get('changes')} config changes (one per second) "
              f"under load.", ""]
        pools = meta.get("pools") or [1]
        L += [f"Upstreams: {len(pools)} pool(s) of {', '.join(map(str, pools))} endpoint(s), hosts spread round them; "
              f"\"-log\" rows have the access log on (Vestibule's own, nginx `access_log` to a file, HAProxy "
              f"`option httplog` to stdout).", ""]
        v = meta.get("versions", {})
        L += ["Versions: " + "; ".join(f"{k}: {val}" for k, val in v.items() if val), ""]
        if meta.get("loadavg_before"):
            L += [f"Load average before the run: {meta['loadavg_before']}", ""]
    checks = budget(by, counts)
    if checks:
        L += ["## Budget (DESIGN.md \"Performance budget\")", "", "| check | Vestibule | met |", "|---|---|---|"]
        L += [f"| {c} | {val} | {'yes' if ok else '**no**'} |" for c, val, ok in checks]
        L.append("")
    for n in counts:
        L += [f"## {n:,} hosts", "",
              "| figure | " + " | ".join(present) + " | Vestibule / nginx | Vestibule / HAProxy | better |",
              "|---|" + "---|" * len(present) + "---|---|---|"]
        if logged:
            L[-2] = L[-2].replace(" | better |", " | logged: Vestibule / nginx | logged: Vestibule / HAProxy | better |")
            L[-1] += "---|---|"
        for label, test, col, better in FIGURES:
            vals = {p: by.get((p, n, test), {}).get(col, "") for p in present}
            if all(num(x) is None for x in vals.values()):
                continue
            v = vals.get("vestibule", "")
            logged_ratios = ""
            if logged:
                vl = vals.get("vestibule-log", "")
                logged_ratios = f"{ratio(vl, vals.get('nginx-log'))} | {ratio(vl, vals.get('haproxy-log'))} | "
            L.append(f"| {label} | " + " | ".join(fmt(vals[p]) for p in present) +
                     f" | {ratio(v, vals.get('nginx'))} | {ratio(v, vals.get('haproxy'))} | {logged_ratios}"
                     f"{ {'high': 'higher', 'low': 'lower', 'none': ''}[better]} |")
        notes = [f"- {p} {t}: {by[(p, n, t)]['note']}" for p in present for t in
                 ["http", "tls_h1", "handshake", "change"] if by.get((p, n, t), {}).get("note")]
        if notes:
            L += ["", "Notes:", ""] + notes
        L.append("")
    L += ["## Plots", "", "![RPS](rps.png)", "", "![p99](p99.png)", "", "![CPU per request](cpu.png)", "",
          "![RSS vs hosts](rss.png)", "", "![time to live](ttl.png)", ""]
    (run / "report.md").write_text("\n".join(L) + "\n")


def plots(run, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib missing: no plots", file=sys.stderr)
        return
    by = {(r["proxy"], int(r["hosts"]), r["test"]): r for r in rows}
    counts = sorted({int(r["hosts"]) for r in rows})
    present = [p for p in PROXIES if any(r["proxy"] == p for r in rows)]
    logged = "vestibule-log" in present

    def bars(ax, test, col, title, ylabel):
        w = 0.8 / max(1, len(present))
        for j, p in enumerate(present):
            ys = [num(by.get((p, n, test), {}).get(col)) or 0 for n in counts]
            xs = [i + (j - (len(present) - 1) / 2) * w for i in range(len(counts))]
            b = ax.bar(xs, ys, w, label=p, color=COLORS[p])
            ax.bar_label(b, labels=[fmt(y) if y else "" for y in ys], fontsize=7, rotation=90, padding=2)
        ax.set_xticks(range(len(counts)), [f"{n:,} hosts" for n in counts])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.25)

    def panel(name, specs, suptitle):
        fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 4.2))
        axes = axes if len(specs) > 1 else [axes]
        for ax, spec in zip(axes, specs):
            bars(ax, *spec)
        axes[0].legend(fontsize=8)
        fig.suptitle(suptitle)
        fig.tight_layout()
        fig.savefig(run / name, dpi=110)
        plt.close(fig)

    panel("rps.png", [("http", "rps", "HTTP/1.1 keep-alive", "requests/s"),
                      ("tls_h1", "rps", "TLS HTTP/1.1 keep-alive", "requests/s"),
                      ("tls_h2", "rps", "TLS h2", "requests/s"),
                      ("handshake", "rps", "full TLS handshakes", "handshakes/s")],
          "Throughput, one worker per proxy (higher is better)")
    panel("p99.png", [("http", "p99_ms", "HTTP p99", "ms"), ("http", "p999_ms", "HTTP p99.9", "ms"),
                      ("tls_h1", "p99_ms", "TLS h1 p99", "ms"), ("tls_h2", "p99_ms", "TLS h2 p99", "ms")],
          "Tail latency at 64 connections (lower is better)")
    panel("cpu.png", [("http", "cpu_us_per_req", "HTTP", "CPU µs / request"),
                      ("tls_h1", "cpu_us_per_req", "TLS h1 keep-alive", "CPU µs / request"),
                      ("handshake", "cpu_us_per_req", "full handshake + request", "CPU µs / handshake")],
          "Proxy CPU time per unit of work (lower is better)")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in present:
        for test, col, style, what in [("http", "idle_rss_mb", ":", "no certs"),
                                       ("tls_h1", "idle_rss_mb", "--", "certs, idle"),
                                       ("handshake", "loaded_rss_mb", "-", "certs, after TLS load")]:
            pts = [(n, num(by.get((p, n, test), {}).get(col))) for n in counts]
            pts = [(n, y) for n, y in pts if y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", color=COLORS[p],
                        label=f"{p} ({what})")
    if len(counts) > 1:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda y, _: f"{y:g}" if str(int(y))[0] in "25" else ""))
    ax.set_xticks(counts, [f"{n:,}" for n in counts])
    if len(counts) == 1:
        ax.set_xlim(counts[0] * 0.5, counts[0] * 2)
        ax.set_xscale("log")
        ax.set_xticks(counts, [f"{n:,}" for n in counts])
        ax.minorticks_off()
    ax.set_xlabel("hosts (one certificate each in the TLS configs)")
    ax.set_ylabel("RSS MB (process tree, log scale)")
    ax.set_title("Memory vs host count (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=1, loc="upper left")
    fig.tight_layout()
    fig.savefig(run / "rss.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(counts), figsize=(max(7, 5 * len(counts)), 4.2), squeeze=False)
    for ax, n in zip(axes[0], counts):
        for p in present:
            note = by.get((p, n, "change"), {}).get("note", "")
            if "ttls " in note:
                ttls = sorted(float(x) for x in note.split("ttls ", 1)[1].split(",") if x)
                ax.plot(range(1, len(ttls) + 1), ttls, marker="o", color=COLORS[p],
                        label=f"{p} ({by[(p, n, 'change')]['errors']} failed req.)")
        ax.set_title(f"{n:,} hosts: new host -> first 200", fontsize=10)
        ax.set_xlabel("changes, sorted by time to live")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Config change -> live, one host added per second under load")
    fig.tight_layout()
    fig.savefig(run / "ttl.png", dpi=110)
    plt.close(fig)


def main():
    run = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    rows, meta = load(run)
    write_report(run, rows, meta)
    plots(run, rows)
    print(f"wrote {run}/report.md")


if __name__ == "__main__":
    main()
