"""Shared bits of the peer jobs."""
import csv
import os

TOP_CLIENT = "bronze"


def write_top(out, metric, rows):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"top_{TOP_CLIENT}_by_{metric.removeprefix('total_')}.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", metric])
        for user, value in rows:
            w.writerow([user, f"{float(value):.4f}"])
