#!/usr/bin/env python3
"""Draws docs/switchover.png from the CSVs that the bench_switchover test writes:
TPS (100 ms buckets) around a switchover, without and with the hooks, PAUSE/RESUME marked.
Usage: plot_switchover.py BENCH_DIR OUT.png"""
import csv
import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def series(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [float(r["t_s"]) for r in rows], [float(r["tps"]) for r in rows]


def events(path):
    out = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["t_s"]:
                out[r["event"]] = float(r["t_s"])
    return out


def main():
    d, png = sys.argv[1], sys.argv[2]
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for ax, kind, title in ((axes[0], "nohooks", "without hooks"), (axes[1], "hooks", "with hooks")):
        files = sorted(glob.glob(os.path.join(d, f"run*-{kind}.csv")))
        for i, fpath in enumerate(files):
            t, tps = series(fpath)
            ax.plot(t, tps, lw=1.2 if i == 0 else 0.8, alpha=1.0 if i == 0 else 0.35,
                    color="tab:blue", label="TPS (100 ms buckets)" if i == 0 else None)
        if files:
            ev = events(files[0].replace(".csv", "-events.csv"))
            marks = (("shutdown", "tab:red", "--", "old primary: shutdown request"),
                     ("promote", "tab:purple", "--", "new primary: promote request"),
                     ("PAUSE", "tab:orange", "-", "PgBouncer PAUSE"),
                     ("RESUME", "tab:green", "-", "PgBouncer RESUME"))
            for name, color, style, label in marks:
                if name in ev:
                    ax.axvline(ev[name], color=color, ls=style, lw=1.2, label=label)
        ax.set_title(f"switchover under pgbench -c 4, {title} (run 1 solid, others faint)", fontsize=10)
        ax.set_ylabel("transactions / s")
        ax.set_xlim(-3, 6)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[1].set_xlabel("seconds since `patronictl switchover`")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
