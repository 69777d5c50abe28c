#!/usr/bin/env python3
"""Tables and a chart from the guest benchmark (qemu/guest/demo.sh).

    scripts/bench-report.py [--text-only] [--out-dir DIR] LABEL=CONSOLE_TXT ...

Each CONSOLE_TXT is the console of one guest run (one device model); its
FIOJSON lines (fio's --output-format=json report of each job, one line) are
the measurements, its BENCH lines the virtual disk's request counts and its
BENCHINFO lines the run's parameters. Prints tables per device model
(medians of the repetitions: MiB/s, IOPS, completion latency p50 and p99 in
microseconds, the mlsdisk/dm-crypt MiB/s ratio next to the seed prototype's
MlsDisk/CryptDisk ratio); with --out-dir also writes DIR/results.md,
DIR/results.json (every number, per repetition and median) and
DIR/chart.svg. Exit status 1 when a FIOJSON line does not parse (the report
is still written, without that measurement). Standard library only.

Older consoles (BENCH <target> <column> <rep> <MiB/s> <IOPS> dev_...=..,
from fio's terse output) still give MiB/s and IOPS, without latencies.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

COLUMNS = [
    "seq-write",
    "rnd-write-4k",
    "rnd-write-32k",
    "rnd-write-256k",
    "seq-read",
    "rnd-read-4k",
    "rnd-read-32k",
    "rnd-read-256k",
]
HEAD = {c: c.replace("k", "K") for c in COLUMNS}
TARGETS = ["raw", "dm-crypt", "mlsdisk", "ublk"]
TARGET_NAME = {
    "raw": "raw (dm-linear)",
    "dm-crypt": "dm-crypt",
    "mlsdisk": "mlsdisk",
    "ublk": "ublk (serve)",
}
COLORS = {"raw": "#9e9e9e", "dm-crypt": "#4878b0", "mlsdisk": "#e07b39", "ublk": "#5aa05a"}
# The seed's README table (100 GiB, the research prototype in userspace):
# MlsDisk and CryptDisk (encrypt-only) MiB/s, and their ratio.
SEED_MLS = [960, 605, 842, 928, 1128, 140, 446, 992]
SEED_CRYPT = [982, 45.5, 271, 860, 1203, 165, 489, 1057]
SEED_RATIO = dict(zip(COLUMNS, [m / c for m, c in zip(SEED_MLS, SEED_CRYPT)]))


# The metrics of one job, in the order of the tables: (key in
# results.json, label in the text table); clat = fio's completion latency
# (submission to completion of one request).
METRICS = [
    ("mib_s", "MiB/s"),
    ("iops", "IOPS"),
    ("clat_p50_us", "p50 clat µs"),
    ("clat_p99_us", "p99 clat µs"),
]
MD_LABEL = {
    "mib_s": "MiB/s",
    "iops": "IOPS",
    "clat_p50_us": "completion latency p50 (µs)",
    "clat_p99_us": "completion latency p99 (µs)",
}
DEV_KEYS = ("dev_r", "dev_r_kib", "dev_w", "dev_w_kib")


def fio_metrics(obj, col):
    """MiB/s, IOPS and completion-latency p50/p99 (µs) of the one job in a
    fio JSON report: the read side for the read columns, else the write side."""
    jobs = obj.get("jobs") if isinstance(obj, dict) else None
    if not isinstance(jobs, list) or len(jobs) != 1 or not isinstance(jobs[0], dict):
        raise ValueError("not a fio report of exactly one job")
    job = jobs[0]
    if job.get("error", 0) != 0:
        raise ValueError(f"fio reports error {job.get('error')}")
    side = job.get("read" if "read" in col else "write")
    if not isinstance(side, dict):
        raise ValueError("no read/write section")
    if "bw_bytes" in side:
        bw = float(side["bw_bytes"])
    else:
        bw = float(side["bw"]) * 1024  # KiB/s in fio's older reports
    pct = side.get("clat_ns", {}).get("percentile", {}) or {}

    def lat(key):
        v = pct.get(key)
        return None if v is None else float(v) / 1000

    return {
        "mib_s": bw / 2**20,
        "iops": float(side["iops"]),
        "clat_p50_us": lat("50.000000"),
        "clat_p99_us": lat("99.000000"),
    }


def parse(path):
    runs = {}  # (target, column) -> {rep: metrics dict}
    dev = {}  # (target, column) -> {rep: (read reqs, read KiB, write reqs, write KiB)}
    ext4 = {}  # target -> metrics dict of the ext4 job
    info = {}  # key -> list of values, in order
    errors = []
    for no, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        line = line.strip()
        if line.startswith("| "):
            line = line[2:]
        if line.startswith("FIOJSON "):
            words = line.split(None, 4)
            try:
                if len(words) != 5:
                    raise ValueError("fewer than 4 fields before the JSON")
                rep = int(words[3])
                obj, _ = json.JSONDecoder().raw_decode(words[4])
                met = fio_metrics(obj, words[2])
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                errors.append(f"{path}:{no}: FIOJSON line does not parse: {e}")
                continue
            if words[1].startswith("ext4/"):
                ext4[words[1][len("ext4/"):]] = met
            else:
                runs.setdefault((words[1], words[2]), {})[rep] = met
            continue
        words = line.split()
        if len(words) >= 4 and words[0] == "BENCH":
            try:
                rep = int(words[3])
            except ValueError:
                continue
            key = (words[1], words[2])
            # The terse-era format: MiB/s and IOPS after the repetition.
            if len(words) >= 6 and "=" not in words[4]:
                try:
                    runs.setdefault(key, {}).setdefault(
                        rep,
                        {"mib_s": float(words[4]), "iops": float(words[5]), "clat_p50_us": None, "clat_p99_us": None},
                    )
                except ValueError:
                    pass
            kv = dict(w.split("=", 1) for w in words[4:] if "=" in w)
            if all(k in kv for k in DEV_KEYS):
                try:
                    dev.setdefault(key, {})[rep] = tuple(int(kv[k]) for k in DEV_KEYS)
                except ValueError:
                    pass
        elif len(words) >= 2 and words[0] == "BENCHINFO":
            info.setdefault(words[1], []).append(" ".join(words[2:]))
    return runs, info, dev, ext4, errors


def first(info, key, default="?"):
    return info.get(key, [default])[0]


def fmt_metric(key, v):
    """A metric's cell: IOPS as whole numbers, the others as fmt."""
    if key == "iops" and v is not None:
        return f"{v:.0f}"
    return fmt(v)


def fmt(v):
    if v is None:
        return "n/a"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


class Model:
    def __init__(self, label, path):
        self.label = label
        self.path = path
        self.runs, self.info, self.dev, self.ext4, self.errors = parse(path)
        self.med = {k: self._median(k, "mib_s") for k in self.runs}
        self.med = {k: v for k, v in self.med.items() if v is not None}
        self.reps = max((len(v) for v in self.runs.values()), default=0)
        self.targets = [t for t in TARGETS if any((t, c) in self.med for c in COLUMNS)]

    def _median(self, key, metric):
        vals = [r[metric] for r in self.runs.get(key, {}).values() if r.get(metric) is not None]
        return statistics.median(vals) if vals else None

    def value(self, target, col):
        """Median MiB/s."""
        return self.med.get((target, col))

    def metric(self, target, col, metric):
        """Median of one metric over the repetitions (None when missing)."""
        return self._median((target, col), metric)

    def ratio(self, col):
        m, c = self.value("mlsdisk", col), self.value("dm-crypt", col)
        if m is None or c is None or c == 0:
            return None
        return m / c

    def req_kib(self, target, col):
        """Median KiB per request the virtual disk served during the job."""
        sizes = []
        for r, rk, w, wk in self.dev.get((target, col), {}).values():
            n, k = (w, wk) if "write" in col else (r, rk)
            if n:
                sizes.append(k / n)
        return statistics.median(sizes) if sizes else None

    def spread(self, target, col):
        v = [r["mib_s"] for r in self.runs.get((target, col), {}).values()]
        if len(v) < 2 or statistics.median(v) == 0:
            return None
        return (max(v) - min(v)) / statistics.median(v)

    def describe(self):
        th = first(self.info, "throttle", "none")
        if th in ("none", "?"):
            dev = "file-backed virtio disk, no throttling"
        else:
            iops, bps = th.split(":")
            dev = (
                f"file-backed virtio disk with QEMU throttling: {iops} IOPS and "
                f"{int(bps) / 1e6:.0f} MB/s (a per-request and a per-byte cost: an SSD model)"
            )
        return dev

    def stage(self):
        st = self.info.get("mlsdisk_status", [])
        if not st:
            return None, None
        last = st[-1]
        words = last.split()
        if "passthrough" in words or "engine=passthrough" in words:
            return "passthrough", last
        return "engine", last


def accel_note(accel):
    if accel == "TCG":
        return (
            "TCG: the guest CPU is emulated in software (no KVM here), so every "
            "CPU cycle of the guest (AES, the engine's index and log work, the "
            "block layer) costs many host cycles; CPU-bound paths weigh far "
            "more than on hardware. Compare the columns of one run; the "
            "absolute MiB/s are not hardware numbers."
        )
    if accel == "KVM":
        return (
            "KVM: hardware virtualization, guest CPU costs close to native; the "
            "disk is still a file on the host (page cache), so compare the "
            "columns, not absolute numbers."
        )
    return f"accelerator: {accel}"


def stage_note(models):
    for m in models:
        stage, status = m.stage()
        if stage == "passthrough":
            return (
                "NOTE: the mlsdisk target ran at its PASS-THROUGH stage (its status "
                "line starts with 'passthrough'): no encryption, no log structure. "
                "Its column is not the MlsDisk engine and not comparable with dm-crypt "
                "as an encrypted disk."
            )
        if stage == "engine":
            return "mlsdisk ran on the real engine; its status at the end: " + " ".join(status.split()[3:])
    return None


def ext4_lines(m):
    """The BENCHINFO ext4 lines, with the job's numbers from its FIOJSON."""
    out = []
    for line in m.info.get("ext4", []):
        met = m.ext4.get(line.split(":", 1)[0])
        if met:
            line += (
                f"; {fmt(met['mib_s'])} MiB/s, {fmt_metric('iops', met['iops'])} IOPS, "
                f"completion latency p50 {fmt(met['clat_p50_us'])} µs, p99 {fmt(met['clat_p99_us'])} µs"
            )
        out.append(line)
    return out


def mem_lines(m):
    """The module's memory (BENCHINFO mlsdisk_mem): the most an open
    mlsdisk held after its jobs, and the most left after its removal."""
    out = []
    for when, what in (("open", "held while open, after the jobs"), ("removed", "left after dmsetup remove")):
        best = None
        for line in m.info.get("mlsdisk_mem", []):
            words = line.split()
            if not words or words[0] != when:
                continue
            kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
            try:
                used = int(kv["used_kib"])
            except (KeyError, ValueError):
                continue
            if best is None or used > best[0]:
                best = (used, " ".join(words[1:]))
        if best is not None:
            out.append(f"mlsdisk memory {what} (max over passes, /proc/meminfo deltas in KiB): {best[1]}")
    return out


def text_table(m):
    w0, w = 18, 15
    out = []
    out.append(f"[{m.label}] {m.describe()}")
    out.append(
        f"  {first(m.info, 'accel')}; {first(m.info, 'params')}; reads on a {first(m.info, 'read_layout')} layout; median of {m.reps}"
    )
    for key, label in METRICS:
        out.append("  " + label.ljust(w0) + "".join(HEAD[c].rjust(w) for c in COLUMNS))
        for t in m.targets:
            out.append(
                "  " + TARGET_NAME[t].ljust(w0) + "".join(fmt_metric(key, m.metric(t, c, key)).rjust(w) for c in COLUMNS)
            )
        if key != "mib_s":
            continue
        if "mlsdisk" in m.targets and "dm-crypt" in m.targets:
            out.append(
                "  "
                + "mlsdisk/dm-crypt".ljust(w0)
                + "".join((f"{m.ratio(c):.2f}x" if m.ratio(c) is not None else "n/a").rjust(w) for c in COLUMNS)
            )
        out.append(
            "  " + "seed Mls/Crypt".ljust(w0) + "".join(f"{SEED_RATIO[c]:.2f}x".rjust(w) for c in COLUMNS)
        )
    for line in ext4_lines(m):
        out.append(f"  ext4: {line}")
    for line in mem_lines(m):
        out.append(f"  {line}")
    return "\n".join(out)


def md_table(m):
    out = []
    out.append(f"### {m.label}: {m.describe()}")
    out.append("")
    out.append(
        f"{first(m.info, 'accel')}; fio {first(m.info, 'params')}; reads on a {first(m.info, 'read_layout')} "
        f"layout; median of {m.reps} run{'s' if m.reps != 1 else ''}; MiB/s and IOPS of the job, "
        "completion latency (fio's clat: submission to completion of one request) p50 and p99 in µs."
    )
    for key, _ in METRICS:
        out.append("")
        out.append(f"| {MD_LABEL[key]} | " + " | ".join(HEAD[c] for c in COLUMNS) + " |")
        out.append("|---|" + "---:|" * len(COLUMNS))
        for t in m.targets:
            out.append(f"| {TARGET_NAME[t]} | " + " | ".join(fmt_metric(key, m.metric(t, c, key)) for c in COLUMNS) + " |")
        if key != "mib_s":
            continue
        if "mlsdisk" in m.targets and "dm-crypt" in m.targets:
            out.append(
                "| **mlsdisk / dm-crypt** | "
                + " | ".join(f"**{m.ratio(c):.2f}**" if m.ratio(c) is not None else "n/a" for c in COLUMNS)
                + " |"
            )
        out.append(
            "| seed prototype MlsDisk / CryptDisk | " + " | ".join(f"{SEED_RATIO[c]:.2f}" for c in COLUMNS) + " |"
        )
    if any(m.req_kib(t, c) is not None for t in m.targets for c in COLUMNS):
        out.append("")
        out.append(
            "What the virtual disk served: KiB per request (writes for the write "
            "columns, reads for the read columns; median). Throttling counts requests."
        )
        out.append("")
        out.append("| KiB/request | " + " | ".join(HEAD[c] for c in COLUMNS) + " |")
        out.append("|---|" + "---:|" * len(COLUMNS))
        for t in m.targets:
            out.append(
                f"| {TARGET_NAME[t]} | "
                + " | ".join(fmt(m.req_kib(t, c)) if m.req_kib(t, c) is not None else "n/a" for c in COLUMNS)
                + " |"
            )
    mem = mem_lines(m)
    if mem:
        out.append("")
        out.extend(f"- {line}" for line in mem)
    ext4 = ext4_lines(m)
    if ext4:
        out.append("")
        out.append("On ext4 (mkfs.ext4, mount, one fio job on a file, umount, e2fsck -fn):")
        out.append("")
        out.extend(f"- {line}" for line in ext4)
    spreads = sorted(
        (m.spread(t, c), t, c) for t in m.targets for c in COLUMNS if m.spread(t, c) is not None
    )
    if spreads:
        worst = spreads[-1]
        out.append("")
        out.append(
            f"Run-to-run spread of MiB/s, (max-min)/median over the {m.reps} runs of a cell: median "
            f"{statistics.median(x[0] for x in spreads) * 100:.0f}%, widest "
            f"{worst[0] * 100:.0f}% ({TARGET_NAME[worst[1]]} {HEAD[worst[2]]})."
        )
    return "\n".join(out)


def json_report(models, accel, note):
    """Every number of the report: per model, per target and column, each
    repetition's metrics and request counts, the medians, the ratios."""
    out = {
        "accel": accel,
        "columns": COLUMNS,
        "metrics": {k: MD_LABEL[k] for k, _ in METRICS},
        "seed_ratio_mls_crypt": SEED_RATIO,
        "note": note,
        "models": [],
    }
    for m in models:
        cells = []
        for t in m.targets:
            for c in COLUMNS:
                reps = m.runs.get((t, c), {})
                if not reps:
                    continue
                dev = m.dev.get((t, c), {})
                runs = []
                for rep in sorted(reps):
                    run = {"rep": rep, **reps[rep]}
                    if rep in dev:
                        run.update(zip(DEV_KEYS, dev[rep]))
                    runs.append(run)
                cells.append(
                    {
                        "target": t,
                        "column": c,
                        "median": {k: m.metric(t, c, k) for k, _ in METRICS},
                        "kib_per_request": m.req_kib(t, c),
                        "spread_mib_s": m.spread(t, c),
                        "runs": runs,
                    }
                )
        out["models"].append(
            {
                "label": m.label,
                "console": str(m.path),
                "device": m.describe(),
                "repetitions": m.reps,
                "info": m.info,
                "cells": cells,
                "ratio_mlsdisk_dm_crypt_mib_s": {c: m.ratio(c) for c in COLUMNS},
                "ext4": [
                    {"target": t, "column": "rnd-write-4k", **met} for t, met in sorted(m.ext4.items())
                ],
            }
        )
    return out


def svg_chart(models):
    """Grouped bars, one panel per device model, log-scale MiB/s."""
    left, right, top, ph, gap = 70, 20, 40, 230, 80
    gw = 100  # width of one column group
    width = left + right + gw * len(COLUMNS)
    height = top + len(models) * (ph + gap) + 10
    vals = [v for m in models for v in m.med.values() if v > 0]
    lo = 10 ** int(_floor_log10(min(vals))) if vals else 0.1
    hi = 10 ** (int(_floor_log10(max(vals))) + 1) if vals else 1000
    import math

    def y(v, y0):
        v = max(v, lo)
        return y0 + ph - ph * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    s = []
    s.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">'
    )
    s.append(f'<rect width="{width}" height="{height}" fill="white"/>')
    accel = first(models[0].info, "accel") if models else "?"
    s.append(
        f'<text x="{left}" y="18" font-size="14" font-weight="bold">'
        f"MlsDisk vs dm-crypt vs raw: fio direct=1, MiB/s (log scale), {_esc(accel)}</text>"
    )
    lx = width - right - len(TARGETS) * 110
    for i, t in enumerate(TARGETS):
        s.append(f'<rect x="{lx + i * 110}" y="26" width="10" height="10" fill="{COLORS[t]}"/>')
        s.append(f'<text x="{lx + i * 110 + 14}" y="35">{_esc(TARGET_NAME[t])}</text>')
    for pi, m in enumerate(models):
        y0 = top + pi * (ph + gap) + 20
        s.append(f'<text x="{left}" y="{y0 - 6}" font-weight="bold">{_esc(m.label)}: {_esc(m.describe())}</text>')
        d = lo
        while d <= hi * 1.0001:
            yy = y(d, y0)
            s.append(f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
            s.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{fmt(d)}</text>')
            d *= 10
        for ci, c in enumerate(COLUMNS):
            gx = left + ci * gw
            bw = (gw - 16) / len(TARGETS)
            for ti, t in enumerate(TARGETS):
                v = m.value(t, c)
                if v is None or v <= 0:
                    continue
                bx = gx + 8 + ti * bw
                by = y(v, y0)
                s.append(
                    f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bw - 2:.1f}" height="{y0 + ph - by:.1f}" '
                    f'fill="{COLORS[t]}"><title>{_esc(TARGET_NAME[t])} {c}: {fmt(v)} MiB/s, '
                    f"{fmt_metric('iops', m.metric(t, c, 'iops'))} IOPS, p50 {fmt(m.metric(t, c, 'clat_p50_us'))} µs, "
                    f"p99 {fmt(m.metric(t, c, 'clat_p99_us'))} µs</title></rect>"
                )
            s.append(f'<text x="{gx + gw / 2}" y="{y0 + ph + 14}" text-anchor="middle">{HEAD[c]}</text>')
            r = m.ratio(c)
            if r is not None:
                s.append(
                    f'<text x="{gx + gw / 2}" y="{y0 + ph + 28}" text-anchor="middle" fill="{COLORS["mlsdisk"]}">'
                    f"mls/crypt {r:.2f}x</text>"
                )
                s.append(
                    f'<text x="{gx + gw / 2}" y="{y0 + ph + 42}" text-anchor="middle" fill="#777">'
                    f"seed {SEED_RATIO[c]:.2f}x</text>"
                )
        s.append(f'<line x1="{left}" x2="{width - right}" y1="{y0 + ph}" y2="{y0 + ph}" stroke="#444"/>')
    s.append("</svg>")
    return "\n".join(s) + "\n"


def _floor_log10(v):
    import math

    return math.floor(math.log10(v))


def _esc(t):
    return str(t).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-only", action="store_true")
    ap.add_argument("--out-dir")
    ap.add_argument("runs", nargs="+", metavar="LABEL=CONSOLE_TXT")
    a = ap.parse_args()
    models = []
    errors = 0
    for r in a.runs:
        label, _, path = r.partition("=")
        m = Model(label, path)
        for e in m.errors:
            print(f"bench-report: {e}", file=sys.stderr)
        errors += len(m.errors)
        if not m.med:
            print(f"bench-report: no measurements (FIOJSON lines) in {path}", file=sys.stderr)
            continue
        models.append(m)
    if not models:
        return 1
    status = 1 if errors else 0
    accel = first(models[0].info, "accel")
    print(f"=== MlsDisk benchmark ({accel}) ===")
    for m in models:
        print()
        print(text_table(m))
    print()
    note = stage_note(models)
    if note:
        print(note)
    print(accel_note(accel))
    print(
        "seed Mls/Crypt: MlsDisk/CryptDisk of the research prototype's README "
        "(100 GiB, userspace, CryptDisk = an in-place encrypt-only disk)."
    )
    if errors:
        print(f"bench-report: {errors} measurement(s) left out: their FIOJSON lines do not parse", file=sys.stderr)
    if a.text_only or not a.out_dir:
        return status
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"## MlsDisk benchmark ({accel})", ""]
    md.append(
        "fio with `direct=1`, libaio, on raw block devices (no file system); the "
        "three targets on separate regions of the same virtual disk, repetitions "
        "interleaved; each cell the median. raw = dm-linear, dm-crypt = "
        "aes-xts-plain64 (the encrypt-only baseline)."
    )
    md.append("")
    for m in models:
        md.append(md_table(m))
        md.append("")
    if note:
        md.append(note)
        md.append("")
    md.append(accel_note(accel))
    md.append("")
    md.append(
        "Seed prototype ratios: MlsDisk / CryptDisk from the research prototype's "
        "README (userspace, 100 GiB, on hardware), for the shape of the result only."
    )
    md.append("")
    md.append("![chart](chart.svg)")
    (out / "results.md").write_text("\n".join(md) + "\n")
    (out / "results.json").write_text(json.dumps(json_report(models, accel, note), indent=1) + "\n")
    (out / "chart.svg").write_text(svg_chart(models))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {out / 'chart.svg'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
