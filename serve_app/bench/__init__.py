"""``serve-app bench``: vLLM's own serving benchmark for streaming chat and completions, and an
async load generator for what it cannot send (``POST /generate``, non-streaming requests) and for
the fault ledger.

Layers: ``vllm_serve`` (vLLM's benchmark: arguments in, its result file out, in a subprocess),
``records`` (plain per-request data), ``stats`` (pure statistics), ``sse`` (pure stream parsing),
``prompts`` (prompt sets), ``endpoints`` (one HTTP request), ``loadgen`` (arrivals and
concurrency), ``report`` (JSON, Markdown, plots), ``ledger``/``fault_load``/``fault_report``
(the fault tests' ledger). Metric definitions are vLLM's.
"""
