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
        last = None
        for i, fpath in enumerate(files):
            t, tps = series(fpath)
            ax.plot(t, tps, lw=1.2 if i == 0 else 0.8, alpha=1.0 if i == 0 else 0.35,
                    color="tab:blue", label="TPS (100 ms buckets)" if i == 0 else None)
            if i == 0 and t:
                last = (t[-1], tps[-1])
        if files:
            ev = events(files[0].replace(".csv", "-events.csv"))
            marks = (("shutdown", "tab:red", "--", "old primary: shutdown request"),
                     ("promote", "tab:purple", "--", "new primary: promote request"),
                     ("PAUSE", "tab:orange", "-", "PgBouncer PAUSE"),
                     ("RESUME", "tab:green", "-", "PgBouncer RESUME"))
            for name, color, style, label in marks:
                if name in ev:
                    ax.axvline(ev[name], color=color, ls=style, lw=1.2, label=label)
            aborted = int(ev.get("aborted_clients", 0))
            errors = int(ev.get("errors", 0))
            if last and aborted:
                ax.annotate(f"{aborted} of 4 pgbench clients aborted\n(no commit after this; {errors} errors in all)",
                            xy=last, xytext=(last[0] + 1.6, 1200), fontsize=9, color="tab:red",
                            arrowprops=dict(arrowstyle="->", color="tab:red"))
            elif errors == 0:
                ax.text(0.01, 0.04, "0 failed transactions, 0 aborted clients, 0 probe errors",
                        transform=ax.transAxes, fontsize=9, color="tab:green")
        ax.set_title(f"switchover under pgbench -c 4, {title} (run 1 solid, others faint)", fontsize=10)
        ax.set_ylabel("transactions / s")
        ax.set_xlim(-3, 6)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[1].set_xlabel("seconds since `patronictl switchover`")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
