"""The shipped lm-eval tasks (serve_app/data/lm_eval) and the command lines built for them; lm-eval
itself runs in tests/conformance/test_lm_eval.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from serve_app.quantize.lm_eval_task import (
    MC_TASK,
    QA_TASK,
    TASK_DIR,
    TASKS,
    lm_eval_command,
    read_samples,
    read_scores,
)


class _TaskLoader(yaml.SafeLoader):
    """lm-eval's YAML with its ``!function`` tags kept as plain strings."""


_TaskLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def task_config(name: str) -> dict:
    configs = [yaml.load(p.read_text(), Loader=_TaskLoader) for p in TASK_DIR.glob("*.yaml")]
    return next(c for c in configs if c["task"] == name)


def jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASK_DIR / name).read_text().splitlines()]


@pytest.mark.parametrize("task", list(TASKS))
def test_task_reads_only_shipped_files(task: str):
    config = task_config(task)
    assert config["dataset_path"] == "json"
    for relative in config["dataset_kwargs"]["data_files"].values():
        assert (TASK_DIR / relative).is_file(), relative


def test_multiple_choice_items_are_well_formed():
    docs = jsonl(task_config(MC_TASK)["dataset_kwargs"]["data_files"]["test"])
    assert 30 <= len(docs) <= 50
    for doc in docs:
        assert len(set(doc["choices"])) == 4, doc
        assert 0 <= doc["answer"] < 4, doc
    assert {doc["answer"] for doc in docs} == {0, 1, 2, 3}


def test_generation_items_and_scoring():
    docs = jsonl(task_config(QA_TASK)["dataset_kwargs"]["data_files"]["test"])
    assert 20 <= len(docs) <= 30 and all(doc["answers"] for doc in docs)
    spec = importlib.util.spec_from_file_location("lm_eval_scoring", TASK_DIR / "scoring.py")
    assert spec and spec.loader
    scoring = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scoring)
    assert scoring.process_results({"answers": ["Paris"]}, ["The capital of France is Paris."]) == {"contains": 1}
    assert scoring.process_results({"answers": ["4", "four"]}, ["2 + 2 = 4"]) == {"contains": 1}
    assert scoring.process_results({"answers": ["4"]}, ["It is 42."]) == {"contains": 0}


def test_commands_per_task(tmp_path: Path):
    with pytest.raises(ValueError, match="tokenizer"):
        lm_eval_command(MC_TASK, "http://h:1", "m", tmp_path)
    mc = lm_eval_command(MC_TASK, "http://h:1/", "m", tmp_path, tokenizer="/tok", python="py")
    model_args = mc.argv[mc.argv.index("--model_args") + 1]
    assert mc.argv[:5] == ["py", "-m", "lm_eval", "run", "--model"] and "local-completions" in mc.argv
    assert "base_url=http://h:1/v1/completions" in model_args
    assert "tokenizer_backend=huggingface" in model_args and "tokenizer=/tok" in model_args
    assert "--apply_chat_template" not in mc.argv
    qa = lm_eval_command(QA_TASK, "http://h:1", "m", tmp_path, python="py", limit=3)
    assert "local-chat-completions" in qa.argv and "--apply_chat_template" in qa.argv
    assert "base_url=http://h:1/v1/chat/completions" in qa.argv[qa.argv.index("--model_args") + 1]
    assert qa.argv[-2:] == ["--limit", "3"]
    assert mc.cwd == qa.cwd == TASK_DIR and qa.env["HF_DATASETS_OFFLINE"] == "1"


def test_reads_lm_eval_output(tmp_path: Path):
    run_dir = tmp_path / "m"
    run_dir.mkdir()
    results = {"acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 0.25, "alias": MC_TASK, "sample_len": 40}
    (run_dir / "results_2026-01-01T00-00-00.json").write_text(json.dumps({"results": {MC_TASK: results}}))
    samples = [{"doc_id": 1, "resps": []}, {"doc_id": 0, "resps": []}]
    (run_dir / f"samples_{MC_TASK}_2026-01-01T00-00-00.jsonl").write_text("\n".join(map(json.dumps, samples)))
    assert read_scores(tmp_path, MC_TASK) == {"acc": 0.5, "acc_norm": 0.25}
    assert [s["doc_id"] for s in read_samples(tmp_path, MC_TASK)] == [0, 1]
