"""What CPU placement each process of a server gets while it serves: affinity, OMP/torch settings.

Samples every process of this PID namespace (run it inside the benchmark's `unshare --pid`, next to
the server) every ``--every`` seconds into JSON lines: the command line, the process's and each
thread's allowed CPUs (``Cpus_allowed_list``), niceness, the CPU each thread last ran on and its CPU
time, and the start-up environment variables that steer OpenMP / torch / vLLM's CPU thread binding
and Ray's worker niceness. Read-only: it changes nothing it looks at.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Any

ENV_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "VLLM_CPU", "LD_PRELOAD", "RAY_SERVE_THROUGHPUT", "RAY_worker_nice")


def _status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def _thread(task: Path) -> dict[str, Any]:
    stat = (task / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return {
        "tid": int(task.name),
        "comm": stat[stat.index("(") + 1 : stat.rindex(")")],
        "allowed": _status_field((task / "status").read_text(), "Cpus_allowed_list"),
        "nice": int(fields[16]),  # field 19 of /proc/PID/stat
        "last_cpu": int(fields[36]),  # field 39, "processor"
        "cpu_ticks": int(fields[11]) + int(fields[12]),  # utime + stime
    }


def _process(proc: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        if not cmd:
            return None
        env = dict(
            e.split("=", 1) for e in (proc / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in e
        )
        threads = [_thread(t) for t in sorted((proc / "task").iterdir())]
        return {
            "pid": int(proc.name),
            "cmd": cmd[:200],
            "allowed": _status_field((proc / "status").read_text(), "Cpus_allowed_list"),
            "env": {k: v for k, v in env.items() if k.startswith(ENV_PREFIXES)},
            "threads": threads,
        }
    return None


def sample() -> list[dict[str, Any]]:
    procs = (_process(p) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [p for p in procs if p is not None]


def digest(samples: Path, min_cpu_s: float) -> str:
    """A markdown row per process that used at least ``min_cpu_s`` of CPU, from its last sample."""
    last: dict[int, dict[str, Any]] = {}
    for line in samples.read_text().splitlines():
        for proc in json.loads(line)["procs"]:
            last[proc["pid"]] = proc
    head = "| pid | process | nice | CPUs allowed | threads | OMP_NUM_THREADS | GOMP_CPU_AFFINITY | CPU s |"
    rows = [head, "|---:|---|---:|---|---:|---|---|---:|"]
    for pid, proc in sorted(last.items()):
        cpu_s = sum(t["cpu_ticks"] for t in proc["threads"]) / 100  # USER_HZ
        if cpu_s < min_cpu_s:
            continue
        env, nice = proc["env"], proc["threads"][0].get("nice", "?")
        rows.append(
            f"| {pid} | `{proc['cmd'][:70]}` | {nice} | {proc['allowed']} | {len(proc['threads'])}"
            f" | {env.get('OMP_NUM_THREADS', '-')} | {env.get('GOMP_CPU_AFFINITY', '-')} | {cpu_s:.1f} |"
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one sample of every process per line")
    parser.add_argument("--every", type=float, default=15.0)
    parser.add_argument("--digest", action="store_true", help="print a table of --out's processes and exit")
    parser.add_argument("--min-cpu-s", type=float, default=2.0, help="--digest: leave out processes under this")
    args = parser.parse_args()
    if args.digest:
        print(digest(args.out, args.min_cpu_s), end="")
        return
    with args.out.open("a") as out:
        while True:
            out.write(json.dumps({"t": time.time(), "procs": sample()}) + "\n")
            out.flush()
            time.sleep(args.every)


if __name__ == "__main__":
    main()
