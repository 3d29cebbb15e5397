"""Online iterative preference learning (Xiong et al. 2024, METHODS.md §2), multi-step rejection sampling, and
on-policy DIL — one loop of stages that write ordinary files.

    imitalign iterate CONFIG.yaml [--set rounds=2 ...]

The objective is ``max_π E_x[E_{y~π} r(x,y) − η·KL(π(·|x) ‖ π_0(·|x))]``. Round ``t = 1..T``:

    prompts   a fresh slice of the prompt set (``prompts.per_round``; ``fresh: false`` reuses one slice)
    samples   K samples per prompt from π_{t−1} (an ``enhancer`` share may come from π_0 or another
              temperature); exactly K per prompt, sharded exactly under ``accelerate launch``
    scored    the reward source adds ``score`` (K checked first: a sampling/scoring K mismatch is an error)
    pairs     best vs worst (``max_min``), ``max_random`` or ``random``; ties and empty responses dropped and
              counted — or, with ``rejection``, the samples accepted toward π·exp(r/η_t) (SFT form), or pairs
              of accepted samples (RSO form)
    train     the one training loop, any §1 objective (DPO, IPO, DIL-LSIF/UKL/BCE: on-policy DIL) on the new
              pairs — warm-started from π_{t−1} (``start: warm``, default) or from π_0 on the union of all rounds'
              data (``start: retrain_union``, the ICML text) — with the reference fixed at π_0 (``reference:
              initial``, default; ``previous`` uses π_{t−1} and says so loudly: the authors found it unstable)
    eval      samples on held-out prompts scored by the eval reward (the gym's gold r*), win rate against π_0's
              samples (same prompts, seeds and sample indices), KL(π_t ‖ π_0) from samples, length

Every stage writes its files in ``round_<t>/`` atomically; a rerun (after a crash or kill) reuses every
finished stage and starts at the first unfinished one. ``round_0/eval.json`` evaluates π_0. The per-round
table is printed and written to ``report.md`` with ``reward_per_round.png``; ``results.json`` has the numbers.

Departures from the authors' code, on purpose: the reference is π_0 in every round unless asked otherwise
(their code silently used the previous iterate); prompts are sharded with no dropped tail; the scoring stage
checks K instead of dropping rows.

A ``gym`` section builds (or reuses) the gym, its SFT model and offline pairs, and — when ``${gym.rm}`` is
used — a Bradley–Terry reward model trained on those pairs; ``${gym.<name>}`` placeholders anywhere in the
config are replaced by their paths (``sft``, ``online_prompts``, ``eval_prompts``, ``prefs``, ``eval_pairs``,
``rm``, ``tokenizer``, ``root``).

This module holds the loop (which stages of which round run); the preflight and each round's train config are in
:mod:`imitalign.loops.iterate_preflight`, the stage bodies in :mod:`imitalign.loops.iterate_stages`, the config
models and their reading in :mod:`imitalign.loops.iterate_config`, the tables and report in
:mod:`imitalign.loops.iterate_report` (their public names are importable from here too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imitalign.config import ConfigError, apply_overrides
from imitalign.loops.iterate_config import (
    EnhancerConfig,
    EvalConfig,
    GenerateConfig,
    GymSetup,
    IterateConfig,
    PairsConfig,
    PolicyTrainConfig,
    PromptsConfig,
    RejectionConfig,
    parse_iterate_config,
    prepare_gym,
    read_iterate_config,
    resolve_config,
)
from imitalign.loops.iterate_preflight import LoopError, Preflight, preflight, train_config
from imitalign.loops.iterate_report import (
    TABLE_COLUMNS,
    TIMING_COLUMNS,
    collect_rows,
    format_mean_se,
    plot_rounds,
    round_table,
    summarize_runs,
    write_iterate_report,
)
from imitalign.loops.iterate_stages import (
    eval_stage,
    load_causal,
    offline_stage,
    prompts_stage,
    select_stage,
)
from imitalign.loops.launch import run_stage_job
from imitalign.loops.pairs import OWN_SAMPLES
from imitalign.loops.scoring import read_rows, write_rows
from imitalign.loops.stage_jobs import CONFIG_NAME, generate_stage, gold_column_source, score_stage, stage_command
from imitalign.loops.stages import model_fingerprint, read_json, seal_stage, stage_todo, train_or_reuse, write_json
from imitalign.manifest import MODEL_MANIFEST
from imitalign.processes import is_main, on_main, process_count

__all__ = [  # the config, preflight and report modules' public names, importable here
    "TABLE_COLUMNS",
    "TIMING_COLUMNS",
    "EnhancerConfig",
    "EvalConfig",
    "GenerateConfig",
    "GymSetup",
    "Interrupted",
    "IterateConfig",
    "IterateResult",
    "LoopError",
    "PairsConfig",
    "PolicyTrainConfig",
    "Preflight",
    "PromptsConfig",
    "RejectionConfig",
    "collect_rows",
    "parse_iterate_config",
    "plot_rounds",
    "preflight",
    "prepare_gym",
    "read_iterate_config",
    "resolve_config",
    "iterate",
    "round_table",
    "run_iterate",
    "summarize_runs",
    "train_config",
    "write_iterate_report",
]


class Interrupted(RuntimeError):
    """Raised by an ``on_stage`` hook to stop a run between stages (tests simulate a kill with it)."""


@dataclass
class IterateResult:
    root: Path
    rows: list[dict[str, Any]]
    table: str
    report: Path
    ran: list[tuple[int, str]]  # (round, stage) pairs executed by this call (not reused)


def _same_run(saved: Any, dumped: dict[str, Any]) -> bool:
    """The saved config is this one (validated with the current schema, so later fields with defaults match)."""
    if saved == dumped:
        return True
    try:
        return parse_iterate_config(saved).model_dump(mode="json", exclude={"launch"}) == dumped
    except ConfigError:
        return False


def iterate(
    config: str | Path | dict[str, Any], overrides: list[str] | None = None, *, quiet: bool = True
) -> IterateResult:
    """Run (or resume) the loop of a YAML config file (or its dict), with ``--set``-style ``overrides``: what
    ``imitalign iterate CONFIG`` does (a ``gym`` section builds its gym pieces first)."""
    if isinstance(config, dict):
        raw, source = apply_overrides(dict(config), overrides or []), "<dict>"
    else:
        raw, source = read_iterate_config(config, overrides or []), str(config)
    return run_iterate(resolve_config(raw, source), quiet=quiet)


def run_iterate(
    cfg: IterateConfig,
    *,
    on_stage: Callable[[int, str], None] | None = None,
    say: Callable[[str], None] | None = None,
    quiet: bool = True,
) -> IterateResult:
    """Run (or resume) the loop of ``cfg`` (module docstring). ``on_stage(round, stage)`` is called after each
    stage this call executes (raise :class:`Interrupted` in it to stop).

    Under ``accelerate launch`` every process runs this function: the main process decides which stages are
    finished and writes every file (prompts, scores, pairs, evaluations, report) while the others wait; sampling
    is sharded over the processes (exactly K per prompt) and training is data-parallel through the one loop."""
    root = Path(cfg.run.output_dir)
    main = is_main()
    _say = say or (lambda m: print(f"[iterate] {m}", flush=True))
    say = _say if main else (lambda m: None)
    dumped = cfg.model_dump(mode="json", exclude={"launch"})  # (how stages are launched is not what they compute)
    if cfg.launch.any() and process_count() > 1:
        raise ConfigError(
            "launch: runs stages as their own jobs from one orchestrating process; run imitalign iterate itself "
            "without accelerate launch"
        )
    _check_same_run(root, dumped)
    pf = preflight(cfg, say)
    on_main(lambda: _save_config(root, dumped))
    run = _Run(cfg, pf, root, say, quiet, main, on_stage)
    pi0 = cfg.policy
    run.pi0_fp = on_main(lambda: model_fingerprint(pi0) if Path(pi0).is_dir() else None)  # (main process only)
    if cfg.eval is not None and main and not cfg.launch.any():  # (launched stages need the GPUs: loaded per eval)
        run.pi0_model = load_causal(pi0)

    # round 0: π_0 itself
    r0 = root / "round_0"
    baseline = None
    if cfg.eval is not None:
        if run.todo(r0, 0, "eval", [r0 / "eval.json"]):
            on_main(lambda: run.evaluate(pi0, None, r0))
            run.done(0, "eval")
        baseline = read_json(r0 / "eval.json")["per_sample"]["score"]

    prompt_set = None
    model = pi0
    for t in range(1, cfg.rounds + 1):
        rd = root / f"round_{t}"
        on_main(lambda rd=rd: rd.mkdir(parents=True, exist_ok=True))
        prompt_set = _data_stages(run, rd, t, model, prompt_set)
        model = _train_stage(run, rd, t, model)
        if cfg.eval is not None and run.todo(rd, t, "eval", [rd / "eval.json"], run.model_input(model)):
            on_main(lambda rd=rd, model=model: run.evaluate(model, baseline, rd))
            run.done(t, "eval")
        if cfg.eval is not None:
            g = read_json(rd / "eval.json")["gold_reward"]
            say(f"round {t}: eval reward {format_mean_se(g, 4)}")
    rows = collect_rows(root, cfg.rounds)
    table = round_table(rows)
    on_main(lambda: write_iterate_report(root, cfg, rows, table))
    say("\n" + table)
    return IterateResult(root, rows, table, root / "report.md", run.ran)


@dataclass
class _Run:
    """What the stages of one :func:`run_iterate` call share; ``done`` records a stage this call executed."""

    cfg: IterateConfig
    pf: Preflight
    root: Path
    say: Callable[[str], None]
    quiet: bool
    main: bool
    on_stage: Callable[[int, str], None] | None
    ran: list[tuple[int, str]] = field(default_factory=list)
    pi0_fp: str | None = None  # π_0's weights fingerprint (main process only)
    pi0_model: Any = None  # π_0 loaded for the KL of the evaluations (main process, with an eval section)

    pending: dict[tuple[int, str], tuple] = field(default_factory=dict)  # stages to seal when done

    def todo(
        self, rd: Path, t: int, stage: str, outputs: list[Path], inputs: Sequence[Path] = (),
        optional: Sequence[Path] = (),
    ) -> bool:
        """Whether stage ``stage`` of round ``t`` still has to run: its manifest is missing or does not match its
        files and ``inputs`` (the run says so when files were there); ``done`` seals it (``outputs``, those of
        ``optional`` that exist, ``inputs``)."""
        if not stage_todo(rd, stage, inputs, self.say, outputs):
            return False
        self.pending[(t, stage)] = (rd, outputs, inputs, optional)
        return True

    def model_input(self, model: str) -> list[Path]:
        """A trained model as a stage input: its folder's manifest (π_0, given by the user, is not recorded)."""
        return [] if model == self.cfg.policy else [Path(model) / MODEL_MANIFEST]

    def done(self, t: int, stage: str) -> None:
        if (t, stage) in self.pending:
            rd, outputs, inputs, optional = self.pending.pop((t, stage))
            seal_stage(rd, stage, outputs, inputs, optional=optional)
        self.ran.append((t, stage))
        if self.on_stage is not None:
            self.on_stage(t, stage)

    def evaluate(self, model_dir: str, baseline: list[float] | None, rd: Path) -> None:
        """``eval.json`` of ``model_dir``; π_0 is the one kept loaded, or (stages launched as jobs, which need the
        GPUs in between) loaded for this evaluation only."""
        pi0 = self.pi0_model if self.pi0_model is not None else load_causal(self.cfg.policy)
        eval_stage(self.cfg, self.pf, model_dir, pi0, baseline, rd)

    def job(self, stage: str, t: int, **paths: str | None) -> bool:
        """Run ``stage`` of round ``t`` as its own launched job when the config's ``launch`` names it."""
        spec = self.cfg.launch.of(stage)
        if spec is None:
            return False
        run_stage_job(spec, stage, t, stage_command(self.root / CONFIG_NAME, stage, t, **paths), self.say)
        return True


def _check_same_run(root: Path, dumped: dict[str, Any]) -> None:
    saved = root / CONFIG_NAME
    if saved.exists() and not _same_run(yaml.safe_load(saved.read_text()), dumped):
        raise ConfigError(
            f"{root} holds a run of a different configuration ({saved}); use a new run.output_dir, or delete it"
        )


def _save_config(root: Path, dumped: dict[str, Any]) -> None:
    saved = root / CONFIG_NAME
    root.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_name(saved.name + ".tmp")
    tmp.write_text(yaml.safe_dump(dumped, sort_keys=False))
    tmp.replace(saved)


def _data_stages(run: _Run, rd: Path, t: int, model: str, prompt_set: Any) -> Any:
    """Round ``t``'s training data: the offline baseline's, or prompts → samples of π_{t-1} → scores; then the
    pairs (or accepted samples). Returns the prompt set (loaded once, reused by later rounds)."""
    cfg, pf, say = run.cfg, run.pf, run.say
    selected = [rd / "train_data.jsonl", rd / "selection.json"]
    if cfg.offline is not None and run.todo(rd, t, "pairs", selected):  # the offline baseline
        on_main(lambda: offline_stage(cfg, rd))
        run.done(t, "pairs")
    if cfg.offline is None:
        if run.todo(rd, t, "prompts", [rd / "prompts.jsonl"]):
            prompt_set = on_main(lambda ps=prompt_set: prompts_stage(cfg, pf, rd, t, ps))
            run.done(t, "prompts")
        samples = [rd / "samples.jsonl", rd / "generation.json"]
        if run.todo(rd, t, "samples", samples, [rd / "prompts.jsonl", *run.model_input(model)]):  # every process
            # (of the job) samples its shard of the prompts
            if not run.job("generate", t, model=model):
                generate_stage(cfg, rd, t, model, cfg.policy, say)
            run.done(t, "samples")
        if run.todo(rd, t, "scored", [rd / "scored.jsonl", rd / "scoring.json"], [rd / "samples.jsonl"]):
            # every process (of the job) scores its shard of the samples
            if not run.job("score", t):
                score_stage(cfg, pf.reward, gold_column_source(cfg, pf.eval_reward), rd, t)
            run.done(t, "scored")
    optional = [rd / "accepted.jsonl", rd / "policy_samples.jsonl"]
    if cfg.offline is None and run.todo(rd, t, "pairs", selected, [rd / "scored.jsonl"], optional):  # or accepted

        def select() -> None:
            _, info = select_stage(cfg, rd, t, read_rows(rd / "scored.jsonl"))
            write_json(rd / "selection.json", info)
            say(f"round {t}: {info.get('pairs', info.get('own_samples', info.get('rejection')))}")

        on_main(select)
        run.done(t, "pairs")
    return prompt_set


def _train_stage(run: _Run, rd: Path, t: int, model: str) -> str:
    """Round ``t``'s training (warm start from π_{t-1}, or from π_0 on the union of all rounds' data); returns
    π_t's model folder."""
    cfg, pi0 = run.cfg, run.cfg.policy
    if cfg.start == "retrain_union":
        data_path = rd / "union_train_data.jsonl"
        own = cfg.pairs.mode == OWN_SAMPLES

        def union() -> None:
            for name in ("train_data.jsonl", "policy_samples.jsonl") if own else ("train_data.jsonl",):
                # (rewritten every time: a round's file redone is in the union too; same rows, same file)
                rows = [row for s in range(1, t + 1) for row in read_rows(run.root / f"round_{s}" / name)]
                write_rows(rd / f"union_{name}", rows)

        on_main(union)
        init = pi0
    else:
        data_path, init = rd / "train_data.jsonl", model
    ref = pi0 if cfg.reference == "initial" else model
    tcfg = train_config(cfg, t, init, ref, data_path, rd / "train")
    names = ("train_data.jsonl", "policy_samples.jsonl") if cfg.pairs.mode == OWN_SAMPLES else ("train_data.jsonl",)
    rounds = range(1, t + 1) if cfg.start == "retrain_union" else (t,)
    inputs = [run.root / f"round_{s}" / n for s in rounds for n in names]
    inputs += run.model_input(init) + run.model_input(ref)
    if not run.todo(rd, t, "train", [rd / "training.json", rd / "train" / "model"], inputs):
        return train_or_reuse(tcfg, say=run.say, quiet=run.quiet)["model_dir"]  # reuses the finished run
    t0 = time.perf_counter()
    if run.job("train", t, init=init, reference=ref, data=str(data_path)):
        summary = read_json(Path(tcfg.run.output_dir) / "summary.json")
    else:
        summary = train_or_reuse(tcfg, say=run.say, quiet=run.quiet or not run.main)
    seconds = time.perf_counter() - t0

    def trained() -> None:
        record = {
            "seconds": seconds,
            "init": init,
            "reference": ref,
            "reference_fingerprint": model_fingerprint(ref) if Path(ref).is_dir() else None,
            "pi0_fingerprint": run.pi0_fp,
            "steps": summary["steps"],
            "train": summary.get("train", {}),
            "eval": summary.get("eval", {}),
        }
        write_json(rd / "training.json", record)

    on_main(trained)
    run.done(t, "train")
    return summary["model_dir"]
