"""Where trials run: in this process (``local``) or as Ray tasks (``ray``).

Either way the driver alone talks to the Optuna study (ask / tell), so every result lands in
the one SQLite record however many workers there are. With Ray, a trial is one task for its
short-training rung and, if the pruner lets it on, a second task for the full run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from torch import nn

from modelzip.errors import ModelzipError, UnsupportedError
from modelzip.search.trial import run_recipe, run_recipe_task
from modelzip.zoo.data import DataBundle

if TYPE_CHECKING:
    from modelzip.search.runner import _Loop

ENGINES = ("local", "ray")


class Engine(Protocol):
    def run(self, model: nn.Module, data: DataBundle, loop: _Loop) -> None: ...


class LocalEngine:
    """One trial at a time in this process."""

    def run(self, model: nn.Module, data: DataBundle, loop: _Loop) -> None:
        latency = loop.cfg.objective == "latency"
        while loop.want_more():
            trial, recipe, fidelity = loop.start()
            next_recipe: dict[str, Any] | None = recipe
            while next_recipe is not None:
                try:
                    out = run_recipe(
                        model,
                        data,
                        next_recipe,
                        seed=loop.cfg.seed,
                        latency=latency,
                        keep_file=fidelity >= 1,
                    )
                except ModelzipError as exc:
                    loop.fail(trial, str(exc))
                    break
                if fidelity >= 1:
                    loop.save_file(trial, out["blob"])
                next_recipe = loop.report(trial, fidelity, out["metrics"])
                fidelity = 1.0

        def confirm(recipes: list[dict[str, Any]], seed: int) -> list[dict[str, Any] | None]:
            outs: list[dict[str, Any] | None] = []
            for recipe in recipes:
                try:
                    out = run_recipe(
                        model, data, recipe, seed=seed, latency=latency, keep_file=False
                    )
                except ModelzipError:
                    outs.append(None)
                else:
                    outs.append(out["metrics"])
            return outs

        loop.confirm(confirm, batch=1)


class RayEngine:
    """Trials in parallel as Ray tasks: a local Ray (``ray.init()``) or a cluster address."""

    def __init__(self, address: str | None, workers: int) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UnsupportedError(
                "--engine ray needs Ray: pip install 'modelzip[ray]' (or use --engine local)"
            ) from None
        self.address = address
        self.workers = workers

    def run(self, model: nn.Module, data: DataBundle, loop: _Loop) -> None:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            options: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "configure_logging": False,
            }
            if self.address:
                options["address"] = self.address
            else:
                options["num_cpus"] = self.workers
            try:
                ray.init(**options)
            except Exception as exc:  # no cluster at that address, or Ray cannot start here
                raise UnsupportedError(
                    f"Ray could not start ({type(exc).__name__}: {exc})"
                ) from None
        try:
            self._loop(ray, model, data, loop)
        finally:
            if started_here:
                ray.shutdown()

    def _loop(self, ray: Any, model: nn.Module, data: DataBundle, loop: _Loop) -> None:
        task = ray.remote(num_cpus=1)(run_recipe_task)
        model_ref, data_ref = ray.put(model), ray.put(data)
        latency = loop.cfg.objective == "latency"
        pending: dict[Any, tuple[Any, float]] = {}

        def submit(trial: Any, recipe: dict[str, Any], fidelity: float) -> None:
            ref = task.remote(model_ref, data_ref, recipe, loop.cfg.seed, latency, fidelity >= 1)
            pending[ref] = (trial, fidelity)

        while True:
            while len(pending) < self.workers and loop.want_more():
                submit(*loop.start())
            if not pending:
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            trial, fidelity = pending.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except Exception as exc:  # the task's error, re-raised by Ray around it
                loop.fail(trial, str(getattr(exc, "cause", None) or exc))
                continue
            if fidelity >= 1:
                loop.save_file(trial, out["blob"])
            nxt = loop.report(trial, fidelity, out["metrics"])
            if nxt is not None:
                submit(trial, nxt, 1.0)

        def confirm(recipes: list[dict[str, Any]], seed: int) -> list[dict[str, Any] | None]:
            refs = [task.remote(model_ref, data_ref, r, seed, latency, False) for r in recipes]
            outs: list[dict[str, Any] | None] = []
            for ref in refs:
                try:
                    outs.append(ray.get(ref)["metrics"])
                except Exception:  # the task's error: that run is not a confirmation
                    outs.append(None)
            return outs

        loop.confirm(confirm, batch=self.workers)


def make(name: str, *, address: str | None = None, workers: int = 2) -> Engine:
    """The engine called ``name``; unknown names are a clear error."""
    if name == "local":
        if address:
            raise UnsupportedError("--address is for --engine ray")
        return LocalEngine()
    if name == "ray":
        return RayEngine(address, workers)
    raise UnsupportedError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")


__all__ = ["ENGINES", "LocalEngine", "RayEngine", "make"]
