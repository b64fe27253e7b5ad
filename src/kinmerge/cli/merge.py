"""``kinmerge merge`` and ``eval``: make a model, score a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kinmerge.cli.app import cli, echo_json, fmt_num, json_option, print_tables, wide_console
from kinmerge.evaluate import EVALUATORS
from kinmerge.merge import DTYPES, RECIPES
from kinmerge.merge.recipes import LORA_COMBINATIONS


@cli.command("merge")
@click.argument("parents", nargs=-1, required=True)
@click.option("--method", type=click.Choice(list(RECIPES)),
              default=None, help="Merge recipe  [default: slerp; raw with --config; lora for LoRA adapters]")
@click.option("--combination", type=click.Choice(LORA_COMBINATIONS), default=None,
              help="lora: PEFT's add_weighted_adapter combination  [default: cat, exact]")
@click.option("--full", is_flag=True,
              help="LoRA adapter parents: merge base+adapter through mergekit into a full model (not an adapter)")
@click.option("--t", "t", type=float, default=None,
              help="slerp: one constant t in [0,1] (0 = parent A, 1 = B)  [default: the paper's layer gradient]")
@click.option("--weight", multiple=True,
              help="linear/task_arithmetic/ties/dare_ties: one weight, or one per parent (repeat or comma-separate)")
@click.option("--density", type=float, default=None, help="ties/dare_ties: fraction of each delta kept  [default: 0.5]")
@click.option("--base", default=None,
              help="The parents' shared base model (needed by task_arithmetic, ties, dare_ties)")
@click.option("--seed", type=int, default=None, help="dare_ties/raw: random seed  [default: 0 for dare_ties]")
@click.option("--dtype", type=click.Choice(DTYPES), default=None,
              help="Merge and output dtype  [default: bfloat16]")
@click.option("--config", "raw_config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A mergekit YAML with ${parent_a}, ${parent_b}, ... and ${base} placeholders (method raw)")
@click.option("--out", "out_root", required=True, type=click.Path(file_okay=False),
              help="Folder of merges; the merge goes to OUT/<id>")
@click.option("--name", default=None,
              help="Also make OUT/NAME a symlink to OUT/<id> (a readable name; the id folder stays)")
@click.option("--cuda", is_flag=True, help="Do the arithmetic on the GPU")
@json_option
def merge_cmd(
    parents: tuple[str, ...],
    method: str | None,
    combination: str | None,
    full: bool,
    t: float | None,
    weight: tuple[str, ...],
    density: float | None,
    base: str | None,
    seed: int | None,
    dtype: str | None,
    raw_config: str | None,
    out_root: str,
    name: str | None,
    cuda: bool,
    as_json: bool,
) -> None:
    """Merge PARENTS (local folders or hub ids) with mergekit into OUT/<id>.

    The id is a hash of the parents' weights and the recipe, so the same merge asked twice is
    made once: the second call returns the existing folder. The folder is a Hugging Face model
    (tokenizer from the first parent) plus kinmerge.json (lineage) and a README.md model card.
    The default recipe is the paper's: SLERP with a layer gradient, parent A as base, bf16.

    PEFT LoRA adapters (of one base: --base, or their base_model_name_or_path) merge into a new
    adapter with PEFT's add_weighted_adapter (--method lora, the default for adapters; the child
    stays low-rank), or with --full into a full model through mergekit (each adapter applied to
    the base first).

    \b
    Example:
      kinmerge merge zoo:add zoo:sort --out merges
      kinmerge merge zoo:add zoo:sort --method slerp --t 0.3 --out merges --json
      kinmerge merge zoo:add zoo:sort --method ties --base zoo:base --density 0.5 --weight 0.5 --out merges
      kinmerge merge zoo:add zoo:sort --config examples/nuslerp.yaml --out merges --name add-sort
      kinmerge merge examples/adapters/add examples/adapters/sort --method lora --combination linear --out merges
      kinmerge merge examples/adapters/add examples/adapters/sort --full --base zoo:base --out merges
    """
    from kinmerge.errors import MergeError
    from kinmerge.merge import RECIPES, Raw, get_recipe, merge

    method = method or ("raw" if raw_config else _default_method(parents, full))
    if full and method == "lora":
        raise MergeError("--full merges into a full model through mergekit; --method lora makes an adapter — "
                         "drop one of them")
    if not full and method != "lora" and (adapter := _first_adapter(parents)):
        raise MergeError(f"{adapter} is a LoRA adapter: pass --full to merge base+adapter into a full model with "
                         f"{method}, or --method lora for an adapter")
    if method == "raw":
        if not raw_config:
            raise MergeError("--method raw needs --config RAW.yaml (a mergekit YAML with ${parent_a}, ${parent_b})")
    elif raw_config:
        raise MergeError(f"--config is the raw recipe; drop --method {method} or --config")
    weights = _parse_weights(weight)
    given = {"t": t, "weight": tuple(weights) or None, "density": density, "seed": seed, "dtype": dtype,
             "combination": combination}
    fields_of = set(RECIPES[method].__dataclass_fields__)
    for key, value in given.items():
        if value is not None and key not in fields_of:
            raise MergeError(f"--{key} does not apply to --method {method}")
    if method == "raw":
        recipe = Raw.from_file(raw_config, seed=seed)  # type: ignore[arg-type]
    else:
        recipe = get_recipe(method, **given)
    result = merge(list(parents), recipe, out_root, base=base, cuda=cuda, quiet=as_json)
    if name:
        _link_name(result.path, name)
    if as_json:
        echo_json(result.to_dict() | ({"name": name} if name else {}))
    else:
        click.echo(f"id: {result.id}")
        click.echo(f"path: {result.path}")
        click.echo(f"reused: {'yes' if result.reused else 'no (merged now)'}")


def _first_adapter(parents: tuple[str, ...]) -> str | None:
    """The first parent that is a PEFT LoRA adapter, if any."""
    from kinmerge.merge.adapters import is_adapter

    return next((p for p in parents if is_adapter(p)), None)


def _default_method(parents: tuple[str, ...], full: bool) -> str:
    """slerp (the paper's), or lora when every parent is an adapter and no --full was asked for."""
    from kinmerge.merge.adapters import is_adapter

    return "lora" if not full and all(is_adapter(p) for p in parents) else "slerp"


def _parse_weights(given: tuple[str, ...]) -> list[float]:
    """``--weight`` values (repeated and/or comma-separated) as finite numbers."""
    import math

    weights = []
    for item in given:
        for text in (w.strip() for w in item.split(",")):
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                raise click.BadParameter(f"{text!r} is not a number", param_hint="'--weight'") from None
            if not math.isfinite(value):
                raise click.BadParameter(f"{text!r} is not a finite number", param_hint="'--weight'")
            weights.append(value)
    return weights


def _link_name(target: Any, name: str) -> None:
    """Point ``target.parent/name`` at ``target`` (atomically replacing an older link)."""
    from kinmerge._io import atomic_symlink
    from kinmerge.errors import MergeError

    if not name or "/" in name or name.startswith("."):
        raise MergeError(f"--name {name!r} must be a plain folder name (no '/', not starting with '.')")
    link = Path(target).parent / name
    if link.exists() and not link.is_symlink():
        raise MergeError(f"{link} exists and is not a kinmerge link; pick another --name")
    atomic_symlink(link, Path(target).name)


def _evaluator_settings(evaluator: str, tasks: list[str], *, limit: float | None, batch_size: str | None,
                        device: str | None, num_fewshot: int | None, model_args: str | None, dtype: str | None,
                        options: tuple[str, ...], progress: bool) -> dict[str, Any]:
    """Map ``kinmerge eval``'s options (lm-eval's names where they overlap) onto the evaluator's
    settings; the evaluator itself refuses, in one line, any setting it does not take."""
    import yaml

    from kinmerge.errors import ConfigError

    settings: dict[str, Any] = {}
    if limit is not None:
        settings["limit"] = int(limit) if float(limit).is_integer() else float(limit)
    if batch_size is not None:
        if batch_size != "auto" and not batch_size.isdigit():
            raise ConfigError(f"--batch-size {batch_size!r}: give a positive integer or 'auto'")
        settings["batch_size"] = batch_size if batch_size == "auto" else int(batch_size)
    for key, value in (("device", device), ("num_fewshot", num_fewshot), ("dtype", dtype)):
        if value is not None:
            settings[key] = value
    if model_args:
        settings["model_args"] = _key_values(model_args, "--model-args", yaml)
    for option in options:
        settings.update(_key_values(option, "--option", yaml))
    if evaluator == "builtin":
        if len(tasks) != 1:
            raise ConfigError(f"--tasks: the builtin evaluator reads one folder of <task>.jsonl files, got {tasks}")
        settings.update(tasks_dir=tasks[0], progress=progress)
    else:
        settings["tasks"] = tasks
    from kinmerge.evaluate import resolve_paths

    return resolve_paths(settings)


def _key_values(text: str, option: str, yaml: Any) -> dict[str, Any]:
    """``"a=1,b=true"`` -> ``{"a": 1, "b": True}`` (values read as YAML scalars, as lm-eval does)."""
    from kinmerge.errors import ConfigError

    out: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


@cli.command("eval")
@click.argument("model")
@click.option("--tasks", "tasks", required=True, multiple=True,
              help="builtin: a folder of <task>.jsonl files (docs/tasks.md); lm_eval: harness task names or "
                   "YAML folders, comma-separated or repeated (winogrande,gsm8k).")
@click.option("--evaluator", type=click.Choice(sorted(EVALUATORS)), default="builtin", show_default=True,
              help="Who scores: the builtin JSONL tasks, or lm-evaluation-harness.")
@click.option("--limit", type=float, default=None,
              help="Examples per task: a count, or (lm_eval) a fraction below 1.")
@click.option("--batch-size", default=None, help="Sequences per forward pass, or 'auto' (lm_eval).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ...")
@click.option("--num-fewshot", type=click.IntRange(min=0), default=None, help="lm_eval: few-shot examples per task.")
@click.option("--dtype", default=None, help="The dtype the model runs in (builtin: float32, bfloat16, float16).")
@click.option("--model-args", default=None,
              help="lm_eval: extra arguments for the harness's model, KEY=VALUE,... (as lm_eval's --model_args).")
@click.option("--option", "options", multiple=True,
              help="Any other evaluator setting as KEY=VALUE (repeatable), e.g. seed=1, apply_chat_template=true.")
@click.option("--no-cache", is_flag=True, help="Recompute even if a cached result exists.")
@json_option
def eval_cmd(model: str, tasks: tuple[str, ...], evaluator: str, limit: float | None, batch_size: str | None,
             device: str | None, num_fewshot: int | None, dtype: str | None, model_args: str | None,
             options: tuple[str, ...], as_json: bool, no_cache: bool) -> None:
    """Score MODEL (a model folder or a hub id org/name[@rev]) on a task set.

    Prints each task's score, the examples it was scored on and its mean answer log-likelihood,
    and the average over the tasks (the paper's P̄). Results are cached by (model content id,
    evaluator, settings incl. the task set's content) under ~/.cache/kinmerge/evaluations;
    --no-cache recomputes. Options follow lm-evaluation-harness's names where they overlap.

    \b
    Example:
      kinmerge eval zoo:add --tasks zoo:tasks
      kinmerge eval merges/add-sort --tasks zoo:tasks --limit 50 --json
      kinmerge eval examples/adapters/add --tasks zoo:tasks --limit 20
      kinmerge eval zoo:add --evaluator lm_eval --tasks examples/lm-eval/zoo_add.yaml --num-fewshot 0 --batch-size auto
    """
    from kinmerge.evaluate import get_evaluator
    from kinmerge.evaluate.cache import evaluate_cached
    from kinmerge.sources import resolve_ref

    names = [t.strip() for item in tasks for t in item.split(",") if t.strip()]
    settings = _evaluator_settings(evaluator, names, limit=limit, batch_size=batch_size, device=device,
                                   num_fewshot=num_fewshot, model_args=model_args, dtype=dtype, options=options,
                                   progress=not as_json)
    folder = resolve_ref(model, want="folder").path
    assert folder is not None
    result, cached = evaluate_cached(get_evaluator(evaluator, **settings), folder, refresh=no_cache)
    if as_json:
        echo_json({"model": model, "evaluator": evaluator, "cached": cached, **result.to_dict()})
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{model} ({evaluator})")
    table.add_column("task")
    table.add_column("accuracy", justify="right")
    table.add_column("mean loglik", justify="right")
    table.add_column("n", justify="right")
    for task, score in result.scores.items():
        detail = result.details.get(task, {})
        loglik = detail.get("mean_loglik")
        n = detail.get("n")
        table.add_row(task, f"{score:.3f}", "" if loglik is None else f"{loglik:.3f}",
                      "" if n is None else f"{int(n)}")
    table.add_section()
    table.add_row("[bold]average[/]", f"[bold]{result.average:.3f}[/]", "", "")
    Console().print(table)
    if cached:
        click.echo("(from the evaluation cache; --no-cache recomputes)", err=True)


@cli.command("suggest")
@click.argument("models", nargs=-1, required=True)
@click.option("--base", default=None, help="The shared base model the deltas are taken from (LoRA adapters: default "
                                         "their base_model_name_or_path).")
@click.option("--scores", "scores_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON {model: average score} (the models as given here) to predict child scores too.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Pairs to show.")
@click.option("--no-progress", is_flag=True, help="No progress bar on stderr.")
@json_option
def suggest_cmd(models: tuple[str, ...], base: str | None, scores_file: str | None, top: int, no_progress: bool,
                as_json: bool) -> None:
    """Rank the pairs of MODELS for merging, from their kinship (and scores, when given).

    Without --scores, pairs rank by predicted gain over their parents, i.e. least related first;
    with --scores, by predicted child score: the parents' mean plus that gain. The gain is a
    least-squares fit of held-out gain on PCC over 260 merges of SmolLM2-135M fine-tunes
    (gain = 0.068 - 0.102 x PCC; docs/results.md). What that is worth, measured there: kinship
    tells which merge gains over its parents (a child merged with a third specialist, PCC ~0.06:
    +0.06 to +0.10; merged back with its own parent, PCC ~0.6: -0.02), not which merge gives the
    best model. In three all-pairs tests the top pair's child was, on average, 0.067 below the
    best child with this ranking, 0.061 with the parents' scores alone, 0.187 with kinship alone
    and 0.193 for a random pair. So: give --scores, and read kinship as a flag for redundant pairs.

    \b
    Example:
      kinmerge suggest zoo:add zoo:sort zoo:count --base zoo:base
      kinmerge suggest zoo:add zoo:reverse zoo:sort zoo:count --base zoo:base --scores examples/scores.json --top 3
    """
    from kinmerge.scan import scan_refs
    from kinmerge.suggest import PRIOR_SOURCE, rank_pairs

    if len(models) < 2:
        raise click.BadParameter("give at least two models", param_hint="MODELS")
    scores = _read_scores(scores_file, models) if scores_file else None
    result = scan_refs(base, list(models), progress=not no_progress)
    labels = list(models)
    rows = rank_pairs(labels, result.matrix("pcc"), scores=scores)[:top]
    if as_json:
        echo_json({"pairs": [r.to_dict() for r in rows], "prior": PRIOR_SOURCE, "notes": result.notes})
        return
    from rich.table import Table

    table = Table(title="pairs to merge, most promising first")
    for col in ("#", "a", "b", "PCC", "predicted gain", *(["predicted child"] if scores else []), "why"):
        table.add_column(col, justify="right" if col in ("#", "PCC", "predicted gain", "predicted child") else "left")
    for i, r in enumerate(rows, 1):
        cells = [str(i), result.models[labels.index(r.a)], result.models[labels.index(r.b)], fmt_num(r.kinship, 3),
                 "—" if r.predicted_gain is None else f"{r.predicted_gain:+.3f}"]
        if scores:
            cells.append(fmt_num(r.predicted_score, 3))
        table.add_row(*cells, r.reason)
    console = wide_console()
    print_tables(console, table)
    console.print(f"prior: {PRIOR_SOURCE}", highlight=False)


def _read_scores(scores_file: str, models: tuple[str, ...]) -> dict[str, float]:
    """``--scores``: a strict JSON object {model: accuracy in [0, 1]} covering every model.

    A NaN would rank its pairs first, a score out of 100 would predict a child of 48, a key given
    twice would keep whichever came last: each is refused in one line instead.
    """
    from kinmerge._json import StrictInputError, loads_strict, score
    from kinmerge.errors import ConfigError

    try:
        data = loads_strict(Path(scores_file).read_bytes())
    except StrictInputError as exc:
        raise ConfigError(f"{scores_file}: {exc}; expected a JSON object {{model: score in [0, 1]}}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{scores_file}: expected a JSON object {{model: score in [0, 1]}}, got a "
                          f"{type(data).__name__}")
    try:
        checked = {k: score(v, f"{scores_file}: the score of {k!r}") for k, v in data.items()}
    except StrictInputError as exc:
        raise ConfigError(str(exc)) from None
    missing = [m for m in models if m not in checked]
    if missing:
        raise ConfigError(f"{scores_file}: no score for {', '.join(missing)} (keys are the models as given)")
    return {m: checked[m] for m in models}
