"""Where the stack's CPU goes while one client streams: CPU seconds per process (grouped by role)
per streamed token, and optionally py-spy profiles of the router and model replica processes.

Starts the stack as ``make serve`` does (``serve run configs/local.yaml``, HAProxy door on :8000),
drives it with vLLM's own benchmark at concurrency 1 (fixed 256 in / 64 out, as
benchmarks/cpu_compare.py), reads every process's CPU time before and after, then (``--py-spy``)
repeats the load under py-spy and writes collapsed stacks per process. Run inside a private
network + PID namespace, holding the heavy lock:

    flock /tmp/heavy.lock unshare --net --pid --fork --mount-proc bash -c 'ip link set lo up; \
        cd /work/main && .venv/bin/python benchmarks/stream_profile.py --out /tmp/stream-profile --py-spy'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_compare import HAPROXY_ENV, PORT, answered, bench_argv, only_loopback
from gpu import vllm_bench
from seed_table import PY, ROOT, stop, wait_ready


def role(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        title = " ".join(proc.cmdline())
        for key, name in (  # most specific first: a process's arguments may name others
            ("ServeReplica:serve-app:router", "router replica"),
            ("ServeReplica:serve-app:llm-", "model replica"),
            ("ServeReplica", "other serve replica"),
            ("ray::ProxyActor", "serve proxy actor"),
            ("ray::ServeController", "serve controller"),
            ("ray::HAProxyManager", "haproxy manager actor"),
            ("ray::DashboardAgent", "dashboard agent"),
            ("ray::RuntimeEnvAgent", "runtime env agent"),
            ("VLLM::EngineCore", "vllm engine core"),
            ("VLLM::Worker", "vllm worker"),
            ("bin/serve run", "serve run driver"),
            ("_private/log_monitor.py", "log monitor"),
            ("autoscaler/_private/monitor.py", "autoscaler monitor"),
            ("dashboard/dashboard.py", "dashboard"),
            ("gcs_server", "gcs"),
            ("raylet", "raylet"),
            ("bin/haproxy", "haproxy"),
        ):
            if key in title:
                return name
        return title[:60] or proc.name()
    return "gone"


def cpu_by_pid() -> dict[int, tuple[str, float]]:
    out = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[proc.pid] = (role(proc), times.user + times.system)
    return out


def breakdown(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    by_role: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        by_role[name] = by_role.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]
    return dict(sorted(by_role.items(), key=lambda kv: -kv[1]))


def load(args: argparse.Namespace, seed: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{PORT}"
    return vllm_bench.run(bench_argv(url, "fixed", 1, seed, args), timeout_s=1800)


def pids_of(names: list[str]) -> dict[str, int]:
    found = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if role(proc) in names and proc.pid != os.getpid():
                found[role(proc)] = proc.pid
    return found


def spy_on(targets: dict[str, int], out: Path, rate: int) -> list[subprocess.Popen[bytes]]:
    """py-spy on each process, collapsed stacks to ``out``; stopped with SIGINT."""
    spies = []
    for name, pid in targets.items():
        stem = out / name.replace(" ", "-")
        argv = [str(Path(PY).with_name("py-spy")), "record", "--pid", str(pid), "--rate", str(rate)]
        argv += ["--format", "raw", "--nonblocking", "-o", f"{stem}.collapsed"]
        spies.append(subprocess.Popen(argv, stdout=open(f"{stem}.spy.log", "wb"), stderr=subprocess.STDOUT))
    return spies


def measure(args: argparse.Namespace) -> dict[str, object]:
    result: dict[str, object] = {}
    before, idle_started = cpu_by_pid(), time.monotonic()
    time.sleep(args.idle_s)  # what each process spends with no request at all
    idle = breakdown(before, cpu_by_pid())
    idle_rate = {k: 1000 * v / (time.monotonic() - idle_started) for k, v in idle.items() if v > 0.01}
    before, started = cpu_by_pid(), time.monotonic()
    figures = load(args, 1001)
    cpu = breakdown(before, cpu_by_pid())
    busy_s, tokens = time.monotonic() - started, figures["total_output_tokens"]
    result["figures"] = {k: figures[k] for k in ("output_throughput", "median_itl_ms", "median_ttft_ms")}
    result["tokens"], result["load_s"] = tokens, round(busy_s, 1)
    result["idle_cpu_ms_per_s"] = {k: round(v, 2) for k, v in idle_rate.items()}
    result["cpu_ms_per_token"] = {k: round(1000 * v / tokens, 2) for k, v in cpu.items() if v > 0.01}
    # Of that, what the process spends anyway: its idle rate over the load's wall time.
    result["idle_share_ms_per_token"] = {k: round(v * busy_s / tokens, 2) for k, v in idle_rate.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-prompts", type=int, default=8)
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()
    args.input_len, args.output_len, args.prompts_per_slot = 256, 64, 4
    if not only_loopback():
        sys.exit("run this inside `unshare --net --pid --fork --mount-proc`")
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "server.log").open("wb")
    serve = [str(Path(PY).with_name("serve")), "run", "configs/local.yaml"]
    env = {**os.environ, **HAPROXY_ENV}
    proc = subprocess.Popen(serve, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    result: dict[str, object] = {}
    try:
        wait_ready(proc, f"http://127.0.0.1:{PORT}/ready", 600)
        answered(f"http://127.0.0.1:{PORT}", 300)
        result = measure(args)
        print(json.dumps(result, indent=1), flush=True)
        if args.py_spy:
            spies = spy_on(pids_of(["router replica", "model replica"]), args.out, args.rate)
            time.sleep(2)
            load(args, 2001)
            for spied in spies:
                spied.send_signal(2)
            for spied in spies:
                spied.wait(120)
    finally:
        stop(proc)
        path = f"{Path(PY).parent}:{os.environ['PATH']}"
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=os.environ | {"PATH": path})
        log.close()
    (args.out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
