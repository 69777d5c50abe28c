#!/usr/bin/env python3
"""Tables and a chart from the guest benchmark (qemu/guest/demo.sh).

    scripts/bench-report.py [--text-only] [--out-dir DIR] LABEL=CONSOLE_TXT ...

Each CONSOLE_TXT is the console of one guest run (one device model); its
BENCH / BENCHINFO lines are the measurements. Prints a table per device
model (medians of the repetitions, MiB/s, and the mlsdisk/dm-crypt ratio
next to the seed prototype's MlsDisk/CryptDisk ratio); with --out-dir also
writes DIR/results.md and DIR/chart.svg. Standard library only.
"""

import argparse
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
TARGETS = ["raw", "dm-crypt", "mlsdisk"]
TARGET_NAME = {
    "raw": "raw (dm-linear)",
    "dm-crypt": "dm-crypt",
    "mlsdisk": "mlsdisk",
}
COLORS = {"raw": "#9e9e9e", "dm-crypt": "#4878b0", "mlsdisk": "#e07b39"}
# The seed's README table (100 GiB, the research prototype in userspace):
# MlsDisk and CryptDisk (encrypt-only) MiB/s, and their ratio.
SEED_MLS = [960, 605, 842, 928, 1128, 140, 446, 992]
SEED_CRYPT = [982, 45.5, 271, 860, 1203, 165, 489, 1057]
SEED_RATIO = dict(zip(COLUMNS, [m / c for m, c in zip(SEED_MLS, SEED_CRYPT)]))


def parse(path):
    runs = {}  # (target, column) -> [MiB/s per repetition]
    dev = {}  # (target, column) -> [(read reqs, read KiB, write reqs, write KiB) per repetition]
    info = {}  # key -> list of values, in order
    for line in Path(path).read_text(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("| "):
            line = line[2:]
        words = line.split()
        if len(words) >= 6 and words[0] == "BENCH":
            try:
                runs.setdefault((words[1], words[2]), []).append(float(words[4]))
            except ValueError:
                continue
            kv = dict(w.split("=", 1) for w in words[6:] if "=" in w)
            if all(k in kv for k in ("dev_r", "dev_r_kib", "dev_w", "dev_w_kib")):
                dev.setdefault((words[1], words[2]), []).append(
                    tuple(int(kv[k]) for k in ("dev_r", "dev_r_kib", "dev_w", "dev_w_kib"))
                )
        elif len(words) >= 2 and words[0] == "BENCHINFO":
            info.setdefault(words[1], []).append(" ".join(words[2:]))
    return runs, info, dev


def first(info, key, default="?"):
    return info.get(key, [default])[0]


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
        self.runs, self.info, self.dev = parse(path)
        self.med = {k: statistics.median(v) for k, v in self.runs.items()}
        self.reps = max((len(v) for v in self.runs.values()), default=0)
        self.targets = [t for t in TARGETS if any((t, c) in self.med for c in COLUMNS)]

    def value(self, target, col):
        return self.med.get((target, col))

    def ratio(self, col):
        m, c = self.value("mlsdisk", col), self.value("dm-crypt", col)
        if m is None or c is None or c == 0:
            return None
        return m / c

    def req_kib(self, target, col):
        """Median KiB per request the virtual disk served during the job."""
        sizes = []
        for r, rk, w, wk in self.dev.get((target, col), []):
            n, k = (w, wk) if "write" in col else (r, rk)
            if n:
                sizes.append(k / n)
        return statistics.median(sizes) if sizes else None

    def spread(self, target, col):
        v = self.runs.get((target, col), [])
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


def text_table(m):
    w0, w = 18, 15
    out = []
    out.append(f"[{m.label}] {m.describe()}")
    out.append(
        f"  {first(m.info, 'accel')}; {first(m.info, 'params')}; reads on a {first(m.info, 'read_layout')} layout; median of {m.reps}; MiB/s"
    )
    out.append("  " + "".ljust(w0) + "".join(HEAD[c].rjust(w) for c in COLUMNS))
    for t in m.targets:
        out.append("  " + TARGET_NAME[t].ljust(w0) + "".join(fmt(m.value(t, c)).rjust(w) for c in COLUMNS))
    if "mlsdisk" in m.targets and "dm-crypt" in m.targets:
        out.append(
            "  "
            + "mlsdisk/dm-crypt".ljust(w0)
            + "".join((f"{m.ratio(c):.2f}x" if m.ratio(c) is not None else "n/a").rjust(w) for c in COLUMNS)
        )
    out.append(
        "  " + "seed Mls/Crypt".ljust(w0) + "".join(f"{SEED_RATIO[c]:.2f}x".rjust(w) for c in COLUMNS)
    )
    for line in m.info.get("ext4", []):
        out.append(f"  ext4: {line}")
    return "\n".join(out)


def md_table(m):
    out = []
    out.append(f"### {m.label}: {m.describe()}")
    out.append("")
    out.append(f"{first(m.info, 'accel')}; fio {first(m.info, 'params')}; reads on a {first(m.info, 'read_layout')} layout; median of {m.reps} run{'s' if m.reps != 1 else ''}; MiB/s.")
    out.append("")
    out.append("| MiB/s | " + " | ".join(HEAD[c] for c in COLUMNS) + " |")
    out.append("|---|" + "---:|" * len(COLUMNS))
    for t in m.targets:
        out.append(f"| {TARGET_NAME[t]} | " + " | ".join(fmt(m.value(t, c)) for c in COLUMNS) + " |")
    if "mlsdisk" in m.targets and "dm-crypt" in m.targets:
        out.append(
            "| **mlsdisk / dm-crypt** | "
            + " | ".join(f"**{m.ratio(c):.2f}**" if m.ratio(c) is not None else "n/a" for c in COLUMNS)
            + " |"
        )
    out.append("| seed prototype MlsDisk / CryptDisk | " + " | ".join(f"{SEED_RATIO[c]:.2f}" for c in COLUMNS) + " |")
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
    ext4 = m.info.get("ext4", [])
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
            f"Run-to-run spread, (max-min)/median over the {m.reps} runs of a cell: median "
            f"{statistics.median(x[0] for x in spreads) * 100:.0f}%, widest "
            f"{worst[0] * 100:.0f}% ({TARGET_NAME[worst[1]]} {HEAD[worst[2]]})."
        )
    return "\n".join(out)


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
    lx = width - right - 3 * 110
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
            bw = (gw - 16) / 3
            for ti, t in enumerate(TARGETS):
                v = m.value(t, c)
                if v is None or v <= 0:
                    continue
                bx = gx + 8 + ti * bw
                by = y(v, y0)
                s.append(
                    f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bw - 2:.1f}" height="{y0 + ph - by:.1f}" '
                    f'fill="{COLORS[t]}"><title>{_esc(TARGET_NAME[t])} {c}: {fmt(v)} MiB/s</title></rect>'
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
    for r in a.runs:
        label, _, path = r.partition("=")
        m = Model(label, path)
        if not m.med:
            print(f"bench-report: no BENCH lines in {path}", file=sys.stderr)
            continue
        models.append(m)
    if not models:
        return 1
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
    if a.text_only or not a.out_dir:
        return 0
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
    (out / "chart.svg").write_text(svg_chart(models))
    print(f"wrote {out / 'results.md'} and {out / 'chart.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
