"""LoRA adapters on the real stack: one deployment (Ray Serve + router + vLLM CPU) serves the embedded
SmolLM2 and two adapters made by ``serve-app make-adapters``; plain vLLM's OpenAI server with
``--enable-lora --lora-modules`` on the same checkpoint and adapters is the reference.

One deployment (2 replicas, so adapter affinity has a choice to make, behind 2 router replicas,
which share the adapters added at run time through the app's adapter catalog) and one plain server
for the whole module (started together, to keep the suite's wall time down); the adapters are
trained once into the cache (about half a minute each).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.seed_table import plain_vllm_command, start_plain_vllm, stop, wait_ready
from serve_app.models.embedded import resolve_source
from serve_app.models.embedded_adapters import MARKERS, prepare_adapter
from serve_app.ports import free_port
from serve_app.router.adapter_view import VIEW_MAX_AGE_S
from tests.integration.conftest import PLAIN_VLLM_ENV, REPO, RunningApp, local_config, running_serve
from tests.integration.lora_probes import (
    Counters,
    adapter_counters,
    catalog_names,
    holders,
    replica_adapters,
    routed,
    routers_that_served,
    series_with,
    short_chat,
)

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
ADAPTERS = ("pirate", "robot")
MAX_MODEL_LEN = 512
# Held out: none of these questions is in the adapters' training data (serve_app/data/lora_qa.jsonl).
PROMPTS = ("What is the capital of France?", "Who painted the Mona Lisa?", "What is the chemical formula of water?")
# max_cpu_loras leaves room for every adapter this module adds on one replica: nothing is evicted
# (the affinity test counts evictions).
LORA = {"max_loras": 2, "max_lora_rank": 8, "max_cpu_loras": 6}
REPLICAS = 2
ROUTER_REPLICAS = 2


@dataclass
class Sides:
    stack: RunningApp
    plain_url: str
    adapter_paths: dict[str, Path]
    metrics_url: str  # this node's Ray metrics agent (Prometheus text)


def plain_command(port: int, paths: dict[str, Path]) -> list[str]:
    """Plain vLLM as the benchmarks run it, with the stack's LoRA engine settings and adapters."""
    command = plain_vllm_command(resolve_source(f"embedded:{MODEL}"), port, max_model_len=MAX_MODEL_LEN)
    modules = [f"{name}={path}" for name, path in paths.items()]
    flags = ["--enable-lora", "--lora-modules", *modules, "--seed", "0", "--host", "127.0.0.1"]
    return [*command, *flags, *(f"--{k.replace('_', '-')}={v}" for k, v in LORA.items())]


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sides]:
    started = time.monotonic()
    paths = {name: prepare_adapter(name) for name in ADAPTERS}
    print(f"\nadapters ready in {time.monotonic() - started:.1f} s")
    lora = LORA | {"adapters": [{"name": n, "path": f"embedded:{n}"} for n in ADAPTERS], "dynamic": True}
    config = local_config(max_model_len=MAX_MODEL_LEN, num_replicas=REPLICAS, lora=lora)
    config = config.model_copy(update={"router": config.router.model_copy(update={"num_replicas": ROUTER_REPLICAS})})
    log = tmp_path_factory.mktemp("plain") / "plain-vllm.log"
    metrics_port = free_port()
    options = {"_metrics_export_port": metrics_port, "_system_config": {"metrics_report_interval_ms": 1000}}
    with running_serve(**options) as start:  # Ray first: its raylet gives up early on cores already loaded
        port = free_port()
        proc = start_plain_vllm(plain_command(port, paths), log, REPO, env=PLAIN_VLLM_ENV)
        try:
            stack = start(config)
            wait_ready(proc, f"http://127.0.0.1:{port}/health", 600)
            print(f"stack and plain vLLM ready {time.monotonic() - started:.1f} s after the start")
            yield Sides(stack, f"http://127.0.0.1:{port}", paths, f"http://127.0.0.1:{metrics_port}/metrics")
        except Exception:
            print(log.read_text(errors="replace")[-4000:])
            raise
        finally:
            stop(proc)


def chat(base_url: str, model: str, prompt: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 24}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)


def answer(base_url: str, model: str, prompt: str) -> str:
    resp = chat(base_url, model, prompt)
    assert resp.status_code == 200, resp.text
    return resp.json()["choices"][0]["message"]["content"]


def every_answer(base_url: str) -> dict[str, dict[str, str]]:
    """Per prompt, each model's answer, asked one request at a time."""
    return {prompt: {m: answer(base_url, m, prompt) for m in (MODEL, *ADAPTERS)} for prompt in PROMPTS}


def test_each_adapter_answers_as_plain_vllm_does_and_unlike_the_base(sides: Sides) -> None:
    # The two sides at once, each one request at a time (as lm-eval's comparison runs them).
    with ThreadPoolExecutor(2) as pool:
        stack, reference = pool.submit(every_answer, sides.stack.base_url), pool.submit(every_answer, sides.plain_url)
        ours_by_prompt, plain_by_prompt = stack.result(), reference.result()
    for prompt in PROMPTS:
        ours, plain = ours_by_prompt[prompt], plain_by_prompt[prompt]
        print(f"\n{prompt!r}: {ours}")
        assert ours == plain
        for name in ADAPTERS:
            assert ours[name] != ours[MODEL]
            assert ours[name].startswith(MARKERS[name]), (name, ours[name])  # the style it was trained for


def test_models_lists_each_adapter_with_its_base_as_parent(sides: Sides) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{sides.stack.base_url}/v1/models", timeout=60).json()["data"]}
    assert {name: cards[name]["parent"] for name in ADAPTERS} == dict.fromkeys(ADAPTERS, MODEL)
    plain = {c["id"]: c.get("parent") for c in httpx.get(f"{sides.plain_url}/v1/models", timeout=60).json()["data"]}
    assert {k: c.get("parent") for k, c in cards.items()} == plain


def test_an_unknown_adapter_is_a_404_with_an_openai_body(sides: Sides) -> None:
    resp = chat(sides.stack.base_url, "elvish", PROMPTS[0])
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "model_not_found"


def test_an_adapter_added_at_run_time_serves_and_once_removed_is_a_404(sides: Sides) -> None:
    url = sides.stack.base_url
    load = {"lora_name": "pirate-2", "lora_path": str(sides.adapter_paths["pirate"])}
    resp = httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=120)
    assert resp.status_code == 200, resp.text
    assert answer(url, "pirate-2", PROMPTS[0]) == answer(url, "pirate", PROMPTS[0])
    cards = {c["id"]: c for c in httpx.get(f"{url}/v1/models", timeout=60).json()["data"]}
    assert cards["pirate-2"]["parent"] == MODEL
    resp = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "pirate-2"}, timeout=60)
    assert resp.status_code == 200, resp.text
    time.sleep(VIEW_MAX_AGE_S)  # the other router replica's copy of the catalog may be as old
    assert chat(url, "pirate-2", PROMPTS[0]).status_code == 404


def test_every_router_replica_serves_an_adapter_loaded_through_either(sides: Sides) -> None:
    """2 router replicas behind the door, which spreads requests over them: an adapter loaded
    through one is in the catalog actor and serves through both (without the catalog, the router
    replica that did not relay the load answered 404); once unloaded, both refuse it within the
    catalog copy's bound."""
    url, name = sides.stack.base_url, "robot-2"
    load = {"lora_name": name, "lora_path": str(sides.adapter_paths["robot"])}
    assert httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=120).status_code == 200
    assert name in catalog_names()
    deadline, served = time.monotonic() + 60, 0
    while served < ROUTER_REPLICAS and time.monotonic() < deadline:
        assert [short_chat(url, name) for _ in range(6)] == [200] * 6
        time.sleep(2)  # the counters reach the metrics agent
        served = routers_that_served(sides.metrics_url, name)
    assert served == ROUTER_REPLICAS
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60).status_code == 200
    assert name not in catalog_names()
    time.sleep(VIEW_MAX_AGE_S)
    assert [short_chat(url, name) for _ in range(6)] == [404] * 6
    assert "pirate-2" not in {c["id"] for c in httpx.get(f"{url}/v1/models", timeout=60).json()["data"]}


def test_bad_adapters_are_refused_and_the_others_keep_serving(sides: Sides, tmp_path: Path) -> None:
    url = sides.stack.base_url
    big = tmp_path / "rank-16"
    shutil.copytree(sides.adapter_paths["robot"], big)
    config = (big / "adapter_config.json").read_text().replace('"r": 8', '"r": 16')
    (big / "adapter_config.json").write_text(config)
    for path, words in ((tmp_path / "missing", "is not a folder"), (big, "above max_lora_rank 8")):
        resp = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(path)}, timeout=60)
        assert resp.status_code == 400 and words in resp.json()["error"]["message"], resp.text
        assert chat(url, "bad", PROMPTS[0]).status_code == 404
    assert answer(url, "robot", PROMPTS[0]).startswith(MARKERS["robot"])


def test_adapter_metrics_are_exported_per_adapter(sides: Sides) -> None:
    for name in ADAPTERS:
        answer(sides.stack.base_url, name, PROMPTS[0])
    wanted = [
        *(f'ray_serve_app_adapter_requests_total{{adapter="{n}"' for n in ADAPTERS),
        *(f'ray_serve_app_adapter_completion_tokens_total{{adapter="{n}"' for n in ADAPTERS),
        'ray_serve_app_adapter_routing_total{adapter="pirate"',
        'ray_serve_app_adapter_loads_total{adapter="robot"',
    ]
    deadline, missing = time.monotonic() + 60, wanted
    while missing and time.monotonic() < deadline:
        time.sleep(2)
        lines = httpx.get(sides.metrics_url, timeout=30).text.splitlines()
        missing = [w for w in wanted if not any(series_with(line, w) for line in lines)]
    assert not missing, missing


# Added at run time, so only the replica that loaded one holds it (the config's adapters are on
# every replica from the start, which leaves affinity nothing to choose).
AFFINE = {"pirate-affine": "pirate", "robot-affine": "robot"}


def placed_adapters(sides: Sides) -> dict[str, set[str]]:
    """Loads the ``AFFINE`` adapters through the router, each followed at once by one request naming
    it (before Serve's next routing-stats poll could tell the router where it loaded); the replica
    each landed on, once the replicas report them."""
    for name, source in AFFINE.items():
        load = {"lora_name": name, "lora_path": str(sides.adapter_paths[source])}
        resp = httpx.post(f"{sides.stack.base_url}/v1/load_lora_adapter", json=load, timeout=120)
        assert resp.status_code == 200, resp.text
        assert answer(sides.stack.base_url, name, PROMPTS[0]).startswith(MARKERS[source])
    deadline = time.monotonic() + 60
    while not all(holders(n, held := replica_adapters(sides.stack)) for n in AFFINE) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {name: holders(name, held) for name in AFFINE}


def send_affine_requests(url: str) -> dict[str, int]:
    """One adapter's requests after the other's, then both at once; how many each adapter got."""
    for name, source in AFFINE.items():
        for prompt in PROMPTS:
            assert answer(url, name, prompt).startswith(MARKERS[source])
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda name: (name, answer(url, name, PROMPTS[0])), [*AFFINE, *AFFINE]))
    assert all(text.startswith(MARKERS[AFFINE[name]]) for name, text in answers), answers
    return dict.fromkeys(AFFINE, len(PROMPTS) + 2)


def counters_once_routed(metrics_url: str, before: Counters, sent: dict[str, int]) -> Counters:
    """The counters once the router's choices for the ``sent`` requests reached the metrics agent."""
    deadline = time.monotonic() + 60
    while True:
        time.sleep(2)
        after = adapter_counters(metrics_url)
        counted = {n: sum(routed(after, n).values()) - sum(routed(before, n).values()) for n in sent}
        if all(counted[n] >= sent[n] for n in sent) or time.monotonic() > deadline:
            return after


def test_adapter_affinity_keeps_each_adapters_requests_on_the_replica_holding_it(sides: Sides) -> None:
    """With 2 replicas, each adapter added at run time is loaded on one replica, and affinity sends
    every later request naming it there, through either router replica, the first one right after
    the load included (the app's adapter catalog records the replica the load went to, and both
    router replicas count it as holding the adapter before its routing stats say so): the routers
    count only hits, no other replica loads it (the replicas' own reports and load counters),
    nothing is evicted. Power-of-two would spread them, each replica loading each adapter (see
    benchmarks/results/lora/)."""
    url = sides.stack.base_url
    assert len(replica_adapters(sides.stack)) == REPLICAS
    try:
        before = adapter_counters(sides.metrics_url)
        placed = placed_adapters(sides)
        assert all(len(replicas) == 1 for replicas in placed.values()), placed
        sent = {name: count + 1 for name, count in send_affine_requests(url).items()}  # + the one right after
        after = counters_once_routed(sides.metrics_url, before, sent)
        held = replica_adapters(sides.stack)
        through = {n: routers_that_served(sides.metrics_url, n) for n in AFFINE}  # the door spreads them
        print(f"\nplaced {placed}; routed {[routed(after, n) for n in AFFINE]}; held after {held}; routers {through}")
        assert max(through.values()) == ROUTER_REPLICAS, through  # so the other router sent some too
        for name in AFFINE:
            outcomes = {o: v - routed(before, name).get(o, 0.0) for o, v in routed(after, name).items()}
            assert {o: v for o, v in outcomes.items() if v} == {"hit": sent[name]}, (name, outcomes)
            assert holders(name, held) == placed[name], (name, held)  # no other replica loaded it
            assert after.get(("serve_app_adapter_loads", name, "")) == 1.0, (name, after)  # the first load only
            assert after.get(("serve_app_adapter_evictions", name, ""), 0.0) == 0.0, (name, after)
        assert all({*ADAPTERS} <= names for names in held.values()), held  # the config's stay everywhere
    finally:
        for name in AFFINE:
            httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60)
