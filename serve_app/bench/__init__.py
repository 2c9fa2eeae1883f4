"""``serve-app bench``: an async load generator for OpenAI-compatible servers and ``POST /generate``.

Layers: ``records`` (plain per-request data), ``stats`` (pure statistics), ``sse`` (pure stream
parsing), ``prompts`` (prompt sets), ``endpoints`` (one HTTP request), ``loadgen`` (arrivals and
concurrency), ``report`` (JSON, Markdown, plots). Metric definitions follow ``vllm bench serve``.
"""
