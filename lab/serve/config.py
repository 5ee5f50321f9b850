"""What ``lab serve`` is told: the run, the artifact, where to listen and the limits it enforces.

    from lab.serve.config import ServeConfig
    cfg = ServeConfig(run="gpt-nano/20261128-120000-ab12", artifact="int8-dynamic", port=8000)
    cfg.validate()            # LabError naming the field, before any model is loaded

Every limit is here so a request is measured against one number, and the CLI, the notebooks and
the dashboard start servers from the same dataclass (``dataclasses.asdict`` travels to workers).
"""

from __future__ import annotations

from dataclasses import dataclass

from lab.errors import LabError
from lab.ports import LOOPBACK

ARTIFACTS = ("fp32", "int8-dynamic", "prune", "prune-structured", "distill", "onnx", "onnx-int8")
"""What can be served: the run's own checkpoint (``fp32``) or an artifact of ``lab compress``.
(``int8-static`` is an AOTInductor package with fixed shapes: refused.)"""


@dataclass
class ServeConfig:
    """A server for one run."""

    run: str
    """The run: ``<experiment>/<run_id>``, an id, a path or ``last``."""
    artifact: str = "fp32"
    """One of ``ARTIFACTS``: the checkpoint itself, or a compressed artifact under the run's compressed/."""
    ckpt: str = "best"
    """``fp32``: which checkpoint (best, last or a path)."""
    runs_dir: str | None = None
    """The runs root (default: as every lab command finds it)."""
    host: str = LOOPBACK
    """Address to listen on; 127.0.0.1 = this machine only. 0.0.0.0 opens it to the network."""
    port: int = 8000
    """TCP port; 0 = any free port (the started server reports which)."""
    workers: int = 1
    """Server processes, each with its own copy of the model (and its own /metrics)."""
    api_key: str | None = None
    """When set, every endpoint but /health wants ``Authorization: Bearer <key>`` (what the openai client sends)."""
    model_name: str | None = None
    """The model's name in /v1/models and the ``model`` field requests must give (default: the run's name)."""
    max_batch_size: int = 8
    """Requests run together in one forward pass (prediction), or completions decoding at once (generation)."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for others (a running generation batch takes newcomers in
    every ``join_every``-th decoding step, or at once when they fill it)."""
    join_every: int = 4
    """Decoding steps between newcomers joining a running generation batch (at once into an empty batch, or
    when they fill it). Each joining is a prefill pass of its own, so they come in groups, as
    text-generation-inference's max_waiting_tokens has them: 1 joins at every step (the shortest wait for
    a newcomer, the most prefill passes). gpt-nano at concurrency 32, 3 rounds: 334-411 req/s with 4 against
    183-391 with 1."""
    max_prompt_tokens: int = 2048
    """Longest prompt accepted, in tokens (longer ones are cropped to block_size when run)."""
    max_tokens: int = 512
    """Most tokens one completion may ask for."""
    max_body_bytes: int = 1_000_000
    """Largest request body accepted (413 beyond)."""
    max_streams: int = 16
    """Completions (streamed or not) in flight at once; more get 429 until one finishes or disconnects."""
    max_queue: int = 256
    """Requests waiting for a batch; more get 503 (the server sheds load instead of queueing without bound)."""
    threads: int | None = None
    """torch intra-op threads for the model (default: torch's)."""
    access_log: bool = False
    """Print one line per request (uvicorn's access log). Off by default, as in gunicorn: under load the
    lines cost the event loop about 5% of its time, and errors are logged either way."""

    def validate(self) -> None:
        """Refuse values that cannot work, naming the option (before anything is loaded)."""
        if self.artifact not in ARTIFACTS:
            raise LabError(f"--artifact {self.artifact}: choose one of {', '.join(ARTIFACTS)}")
        if not 0 <= self.port <= 65535:
            raise LabError(f"--port {self.port}: give a TCP port in [0, 65535] (0 = any free one)")
        for name in ("workers", "max_batch_size", "join_every", "max_prompt_tokens", "max_tokens", "max_body_bytes",
                     "max_streams", "max_queue"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise LabError(f"--{name.replace('_', '-')} {getattr(self, name)}: give a whole number >= 1")
        if not self.max_wait_ms >= 0:
            raise LabError(f"--max-wait-ms {self.max_wait_ms}: give a number of milliseconds >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise LabError("--api-key is empty: give a key, or leave the option out for no key")
        if self.threads is not None and self.threads < 1:
            raise LabError(f"--threads {self.threads}: give a whole number >= 1")
