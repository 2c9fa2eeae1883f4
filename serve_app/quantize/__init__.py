"""Quantization: the offline pipeline (llm-compressor, run in its own venv), evaluation against a
baseline, the deployment gate, quantize-on-load validation, the capacity planner and the goal
planner (variants, gate_reports, goal, speed, goal_planner; goal_output renders its serve config).

Importing this package imports nothing heavy: the pure modules (methods, onload,
planner, gate, report, evaluate and the goal planner's) use only the standard library (goal_output
adds PyYAML), so ``serve_app.config`` can call them from validators. ``pipeline`` (torch +
llm-compressor) and ``eval_worker`` (vLLM) run only as child processes.
"""
