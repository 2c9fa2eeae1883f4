"""Quantization: the offline pipeline (llm-compressor, run in its own venv), evaluation against a
baseline, the deployment gate, quantize-on-load validation and the capacity planner.

Importing this package imports nothing heavy: the pure modules (methods, onload, architectures,
planner, gate, report, evaluate) use only the standard library, so ``serve_app.config`` can call
them from validators. ``pipeline`` (torch + llm-compressor) and ``eval_worker`` (vLLM) run only
as child processes.
"""
