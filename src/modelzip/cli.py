"""The ``modelzip`` command: parse, call the API, print. Errors: one line, exit code 2."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from modelzip import api
from modelzip.errors import ModelzipError
from modelzip.progress import bar

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as clickx
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as clickx  # type: ignore[no-redef]

app = typer.Typer(
    name="modelzip",
    help="Make trained neural networks small and fast while keeping their accuracy.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console()
err = Console(stderr=True)

DataOpt = Annotated[
    str,
    typer.Option(
        "--data", help="digits | mnist5k | fashion-mnist | FILE.npz/.parquet/.csv | IDX folder"
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print exactly one JSON object on stdout")]
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="state_dict for a FILE.py:FACTORY model")
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="FILE.py:FACTORY (or a Hugging Face folder) that builds the architecture of a "
        ".mzip made from your own model",
    ),
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed for training and every random choice")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]


@app.callback()
def _root(debug: DebugOpt = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _architecture(spec: str | None) -> Any:
    """The caller's architecture for loading a user model's .mzip (None: not given)."""
    if spec is None:
        return None
    from modelzip.factory import call_factory, is_factory_spec

    if is_factory_spec(spec):
        return lambda: call_factory(spec)
    if Path(spec).is_dir():
        return lambda: api.load_model(spec)
    raise typer.BadParameter(f"--model must be FILE.py:FACTORY or a model folder, got {spec!r}")


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")


def _summary_table(result: dict[str, Any], title: str) -> Table:
    from modelzip.report import summary_rows

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("baseline (fp32)", justify="right")
    table.add_column("compressed", justify="right")
    for row in summary_rows(result):
        table.add_row(*row)
    table.add_row("ratio", "1.0x", f"{result['ratio']:.1f}x", style="bold")
    return table


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4f}"
        table.add_row(key, str(value))
    return table


def _layer_table(stages: list[dict[str, Any]]) -> Table | None:
    sparsity: dict[str, float] = {}
    for s in stages:
        sparsity.update(s.get("notes", {}).get("layer_sparsity", {}))
    if not sparsity:
        return None
    table = Table(title="per-layer sparsity")
    table.add_column("layer")
    table.add_column("sparsity", justify="right")
    for name, value in sparsity.items():
        table.add_row(name, f"{value:.2%}")
    return table


def _run_compress(
    model_spec: str,
    data_spec: str,
    recipe: str,
    output: Path,
    *,
    weights: Path | None,
    report: Path | None,
    architecture: str | None = None,
    seed: int,
    as_json: bool,
    measure_latency: bool = True,
    title: str = "modelzip compress",
    with_sensitivity: bool = False,
    html: bool = True,
) -> dict[str, Any]:
    from modelzip.recipe import Recipe
    from modelzip.report import write_reports

    rec = Recipe.load(recipe)  # validate before any training
    if output.suffix != ".mzip":
        raise typer.BadParameter(f"output must end in .mzip, got {output}")
    data = api.load_data(data_spec, seed=seed)
    model = api.load_model(
        model_spec,
        data=data,
        weights=weights,
        seed=seed,
        progress=not as_json,
        architecture=_architecture(architecture),
    )
    data = api.data_for_model(model, data)
    sens = None
    if with_sensitivity and report is not None:
        from modelzip.search.sensitivity import sensitivity as run_sensitivity

        sens = run_sensitivity(model, data, seed=seed, progress=not as_json)
    names = [cfg.method for cfg in rec.stages]

    def step(i: int) -> str:
        return f"stage {i + 1}/{len(names)}: {names[i]}" if i < len(names) else "write .mzip"

    with bar(step(0), len(names) + 1, enabled=not as_json) as advance:
        result = api.compress(
            model,
            data,
            rec,
            out=output,
            seed=seed,
            progress=not as_json,
            measure_latency=measure_latency,
            on_stage=lambda i, _method, _record: advance(description=step(i)),
        )
        advance()
    result.pop("model")
    result["model_spec"] = model_spec
    if report is not None:
        result["reports"] = write_reports(result, report, before=model, sensitivity=sens, html=html)
    if as_json:
        _print_json(result)
    else:
        out.print(_summary_table(result, title))
        layers = _layer_table(result["stages"])
        if layers is not None:
            out.print(layers)
        out.print(f"wrote {output} ({result['compressed']['bytes']:,} bytes)")
    return result


@app.command()
def compress(
    model: Annotated[str, typer.Argument(help="zoo:NAME | FILE.py:FACTORY | FILE.mzip")],
    data: DataOpt,
    recipe: Annotated[str, typer.Option("--recipe", help="built-in name or recipe .yaml")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the .mzip file to write")],
    weights: WeightsOpt = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="folder for report.html, report.json and report.md"),
    ] = None,
    with_sensitivity: Annotated[
        bool,
        typer.Option(
            "--sensitivity", help="add per-layer pruning sensitivity curves to the --report"
        ),
    ] = False,
    architecture: ArchOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Compress MODEL with RECIPE on DATA and write OUT.mzip."""
    if with_sensitivity and report is None:
        raise typer.BadParameter("--sensitivity draws into the report: give --report DIR too")
    _run_compress(
        model,
        data,
        recipe,
        output,
        weights=weights,
        report=report,
        architecture=architecture,
        seed=seed,
        as_json=as_json,
        with_sensitivity=with_sensitivity,
    )


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="zoo:NAME | FILE.py:FACTORY | FILE.mzip")],
    data: DataOpt,
    split: Annotated[str, typer.Option("--split", help="train | val | test")] = "test",
    weights: WeightsOpt = None,
    architecture: ArchOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Measure accuracy, size and latency of a model or a .mzip file."""
    bundle = api.load_data(data, seed=seed)
    bundle.loader(split)  # unknown split -> clear error before any work
    arch = _architecture(architecture)
    if model.endswith(".mzip"):
        metrics = api.evaluate(model, bundle, split=split, architecture=arch)
    else:
        loaded = api.load_model(
            model, data=bundle, weights=weights, seed=seed, progress=not as_json
        )
        metrics = api.evaluate(loaded, bundle, split=split)
    metrics["model"] = model
    if as_json:
        _print_json(metrics)
    else:
        out.print(_metrics_table(metrics, f"{model} on {data} ({split})"))


@app.command()
def sensitivity(
    model: Annotated[str, typer.Argument(help="zoo:NAME | FILE.py:FACTORY | FILE.mzip")],
    data: DataOpt,
    sparsities: Annotated[
        str, typer.Option("--sparsities", help="comma-separated sparsities in [0, 1)")
    ] = "0.5,0.7,0.8,0.9,0.95,0.98",
    layers: Annotated[
        str | None, typer.Option("--layers", help="comma-separated layer patterns (default: all)")
    ] = None,
    criterion: Annotated[
        str, typer.Option("--criterion", help="magnitude | taylor | random")
    ] = "magnitude",
    pattern: Annotated[
        str, typer.Option("--pattern", help="unstructured | channel (surgery)")
    ] = "unstructured",
    split: Annotated[str, typer.Option("--split", help="train | val | test")] = "val",
    weights: WeightsOpt = None,
    architecture: ArchOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Prune each layer alone at several sparsities and report the accuracy curve per layer."""
    from modelzip.errors import ConfigError
    from modelzip.search.sensitivity import sensitivity as run_sensitivity

    try:
        levels = [float(s) for s in sparsities.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"--sparsities must be comma-separated numbers in [0, 1), got {sparsities!r}"
        ) from None
    bundle = api.load_data(data, seed=seed)
    bundle.loader(split)
    loaded = api.load_model(
        model,
        data=bundle,
        weights=weights,
        seed=seed,
        progress=not as_json,
        architecture=_architecture(architecture),
    )
    bundle = api.data_for_model(loaded, bundle)
    patterns = [p.strip() for p in layers.split(",") if p.strip()] if layers else None
    result = run_sensitivity(
        loaded,
        bundle,
        sparsities=levels,
        layers=patterns,
        criterion=criterion,
        pattern=pattern,
        split=split,
        seed=seed,
        progress=not as_json,
    )
    result["model"] = model
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"sensitivity of {model} on {data} ({split}, {criterion})")
    table.add_column("layer")
    table.add_column("params", justify="right")
    for s in result["sparsities"]:
        table.add_column(f"{s:.0%}", justify="right")
    table.add_column(f"max within {result['max_drop']:.0%}", justify="right")
    for name, row in result["layers"].items():
        cells = [f"{a:.2%}" for a in row["accuracy"]]
        table.add_row(name, f"{row['params']:,}", *cells, f"{row['max_sparsity']:.0%}")
    out.print(table)
    for name, why in result["skipped"].items():
        out.print(f"skipped {name}: {why}")
    out.print(f"baseline {bundle.task.label} {result['baseline']:.2%}")


@app.command()
def search(
    model: Annotated[str, typer.Argument(help="zoo:NAME | FILE.py:FACTORY | FILE.mzip")],
    data: DataOpt,
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="accuracy points the result may lose (val split)")
    ],
    objective: Annotated[str, typer.Option("--objective", help="bytes | latency")] = "bytes",
    trials: Annotated[int, typer.Option("--trials", help="trials to finish")] = 20,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="minutes; no new trial after that")
    ] = None,
    engine: Annotated[str, typer.Option("--engine", help="local | ray")] = "local",
    address: Annotated[
        str | None, typer.Option("--address", help="ray: a running cluster (default: local)")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="ray: trials at once")] = 2,
    study: Annotated[
        Path, typer.Option("--study", help="folder of the resumable study and its results")
    ] = Path("modelzip-search"),
    epochs: Annotated[
        str, typer.Option("--epochs", help="full trial: prune,recover,polish epochs")
    ] = "8,2,2",
    margin: Annotated[
        float,
        typer.Option("--margin", help="points above the floor the pick aims for (val noise)"),
    ] = 0.2,
    at_least_recipe: Annotated[
        bool,
        typer.Option(
            "--at-least-recipe", help="the pick also reaches the deep-compression trial's val"
        ),
    ] = False,
    confirm: Annotated[
        int,
        typer.Option(
            "--confirm",
            help="candidates trained again with another seed before the pick (0: off)",
        ),
    ] = 5,
    weights: WeightsOpt = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Find the smallest (or fastest) policy within an accuracy budget; resumable.

    Exit code 3 when no trial met the budget (the closest policy is written as closest.yaml).
    """
    from pydantic import ValidationError

    from modelzip.config import describe_validation_error
    from modelzip.errors import ConfigError
    from modelzip.search.runner import EXIT_MISSED_BUDGET, SearchConfig
    from modelzip.search.runner import search as run_search
    from modelzip.task import metric_label

    try:
        sched = tuple(int(e) for e in epochs.split(","))
    except ValueError:
        sched = ()
    if len(sched) != 3 or min(sched) < 0:
        raise ConfigError(f"--epochs takes three counts like 8,2,2, got {epochs!r}")
    fields = {
        "max_drop": max_drop,
        "objective": objective,
        "trials": trials,
        "time_budget_min": time_budget,
        "engine": engine,
        "address": address,
        "workers": workers,
        "study": study,
        "seed": seed,
        "epochs": sched,
        "margin": margin,
        "at_least_recipe": at_least_recipe,
        "confirm": confirm,
        "progress": not as_json,
    }
    try:
        cfg = SearchConfig.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, SearchConfig, "search")) from None
    from modelzip.search.engines import make

    make(engine, address=address, workers=workers)  # a missing Ray is an error before training
    bundle = api.load_data(data, seed=seed)
    loaded = api.load_model(model, data=bundle, weights=weights, seed=seed, progress=not as_json)
    bundle = api.data_for_model(loaded, bundle)
    result = run_search(loaded, bundle, cfg, model_spec=model)
    if as_json:
        _print_json(result)
    else:
        label = "best" if result["met_budget"] else "closest"
        pick = result.get(label)
        if pick is not None:
            table = Table(title=f"modelzip search: {label} policy (trial {pick['trial']})")
            table.add_column("metric")
            table.add_column("baseline (fp32)", justify="right")
            table.add_column(label, justify="right")
            base = result["baseline"]
            table.add_row("bytes", f"{base['bytes']:,}", f"{pick['bytes']:,}")
            table.add_row("ratio", "1.0x", f"{pick['ratio']:.1f}x", style="bold")
            name = metric_label(result["metric"])  # accuracy, cosine mean, R^2
            table.add_row(
                f"val {name}", f"{base['val_accuracy']:.2%}", f"{pick['val_accuracy']:.2%}"
            )
            if pick.get("confirm_val_accuracy") is not None:
                seed2 = result["confirmation"]["seed"]
                table.add_row(
                    f"val {name}, run with seed {seed2}",
                    "",
                    f"{pick['confirm_val_accuracy']:.2%}",
                )
            table.add_row(
                f"test {name} (once)",
                f"{base['test_accuracy']:.2%}",
                f"{pick['test_accuracy']:.2%}",
            )
            if "test_latency_ratio" in pick:
                table.add_row(
                    "latency ratio b1 / bN",
                    "1.0",
                    "{b1} / {bN}".format(**pick["test_latency_ratio"]),
                )
            out.print(table)
        t = result["trials"]
        out.print(
            f"{t['finished']} trials finished ({t['complete']} fully trained, {t['pruned']} "
            f"stopped early, {t['fail']} failed); Pareto front of {len(result['pareto'])} "
            f"in {study / 'search.json'}"
        )
        out.print(result["message"], markup=False, highlight=False)
    if not result["met_budget"]:
        if not as_json:
            err.print(f"modelzip: {result['message']}", markup=False, highlight=False)
        raise typer.Exit(EXIT_MISSED_BUDGET)


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="a .mzip file")],
    tensors: Annotated[
        bool, typer.Option("--tensors", help="every tensor with its kind, shape and codecs")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show what a .mzip file holds: bytes per layer, or per tensor with --tensors."""
    from modelzip.codec.inspect import inspect_file_detail
    from modelzip.report.console import format_inspect

    info, detail = inspect_file_detail(file)
    if as_json:
        _print_json(info)
        return
    sys.stdout.write(format_inspect(info, detail, tensors=tensors))


@app.command()
def export(
    file: Annotated[str, typer.Argument(help="a .mzip file (or zoo:NAME / FILE.py:FACTORY)")],
    onnx: Annotated[Path, typer.Option("--onnx", help="the .onnx file to write")],
    data: Annotated[
        str | None, typer.Option("--data", help="data whose sample fixes the input shape")
    ] = None,
    weights: WeightsOpt = None,
    architecture: ArchOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model to ONNX (dynamic batch), checked against ONNX Runtime."""
    from modelzip.export import export_onnx

    if onnx.suffix != ".onnx":
        raise typer.BadParameter(f"--onnx must end in .onnx, got {onnx}")
    bundle = api.load_data(data) if data else None
    model = api.load_model(
        file, data=bundle, weights=weights, architecture=_architecture(architecture)
    )
    example = api.data_for_model(model, bundle).example(1) if bundle is not None else None
    info = export_onnx(model, onnx, example=example)
    if as_json:
        _print_json(info)
    else:
        out.print(
            f"wrote {onnx} ({info['bytes']:,} bytes, max |onnx - torch| = "
            f"{info.get('max_abs_diff', float('nan')):.2e})"
        )
        if info.get("exact_without_vnni") is False:
            out.print(
                "note: 8-bit int8 weights: on x86 CPUs without VNNI run it in "
                "modelzip.export.ort_session (ONNX Runtime's default session saturates there), "
                "or compress with the w7a8 recipe"
            )


@app.command()
def embed(
    model: Annotated[str, typer.Argument(help="zoo:minilm | HF model folder | FILE.mzip")],
    text: Annotated[Path, typer.Option("--text", help="UTF-8 text file, one sentence a line")],
    output: Annotated[Path, typer.Option("-o", "--output", help="OUT.npy or OUT.jsonl")],
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096)] = 32,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="torch (TorchScript) | onnxruntime (the ONNX export, checked) | auto (for "
            "long texts, the faster of the two on the first batch)",
        ),
    ] = "torch",
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens",
            min=2,
            help="cut each line at this many tokens (default and ceiling: the model's own "
            "limit, 256 for all-MiniLM-L6-v2)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write one embedding per line of --text (.npy array or JSON lines)."""
    from modelzip.embed import embed_file

    info = embed_file(
        model, text, output, batch_size=batch_size, runtime=runtime, max_tokens=max_tokens
    )
    if as_json:
        _print_json(info)
    else:
        out.print(
            f"wrote {info['sentences']} embeddings of dim {info['dim']} to {output} "
            f"(runtime {info['runtime']})"
        )


@app.command()
def recipes(as_json: JsonOpt = False) -> None:
    """List the built-in recipes."""
    from modelzip.recipe import describe_builtin

    items = describe_builtin()
    if as_json:
        _print_json(items)
        return
    table = Table(title="built-in recipes")
    table.add_column("name")
    table.add_column("description")
    for name, desc in items.items():
        table.add_row(name, desc)
    out.print(table)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="a run's report.json (or compress --json output)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the .html file to write")],
    sensitivity: Annotated[
        Path | None,
        typer.Option("--sensitivity", help="curves from `modelzip sensitivity --json` to draw"),
    ] = None,
    pareto: Annotated[
        Path | None,
        typer.Option("--pareto", help='JSON list of {"bytes", "accuracy"} points (a search)'),
    ] = None,
) -> None:
    """Render a run's JSON record as one self-contained HTML page."""
    from modelzip.report.cli import render_report

    path = render_report(run, output, sensitivity=sensitivity, pareto=pareto)
    out.print(f"wrote {path}", highlight=False)


@app.command()
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="a fast smoke run (for tests)")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="output folder")] = Path("modelzip-demo"),
    html: Annotated[
        bool, typer.Option("--html/--no-html", help="write report.html (the default)")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """LeNet-300-100 on digits with the default recipe: .mzip, report.html/.json/.md."""
    result = _run_compress(
        "zoo:lenet300",
        "digits",
        "quick" if quick else "default",
        out_dir / "lenet300-digits.mzip",
        weights=None,
        report=out_dir,
        seed=0,
        as_json=as_json,
        title="modelzip demo: LeNet-300-100 on digits",
        with_sensitivity=True,
        html=html,
    )
    if not as_json:
        paths = result["reports"]
        if "html" in paths:
            out.print(f"report: {Path(paths['html']).resolve()}", highlight=False)
        out.print(f"data: {paths['json']}, {paths['md']}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for any bad input."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="modelzip", standalone_mode=False)
    except ModelzipError as exc:
        if debug:
            raise
        err.print(f"modelzip: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except getattr(clickx, "NoArgsIsHelpError", getattr(clickx, "NoArgsIsHelp", ())):
        return 0
    except clickx.UsageError as exc:
        if debug:
            raise
        err.print(
            f"modelzip: error: {exc.format_message()}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("modelzip: aborted", markup=False)
        return 130
    except KeyboardInterrupt:
        err.print("modelzip: interrupted", markup=False)
        return 130
    # without standalone mode, click hands back a typer.Exit's code as the return value
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
