"""Each stage of ``imitalign iterate`` as its own launched job (the iterate config's ``launch:`` section).

    launch:
      generate: {num_processes: 8}                                           # 8 vLLM engines, one per GPU
      score: {num_processes: 8}                                              # the reward model on every GPU
      train: {num_processes: 8, config_file: configs/accelerate/fsdp2.yaml}  # the user's FSDP/DeepSpeed config

A stage named here runs as ``accelerate launch [--config_file F] --num_processes N -m imitalign.cli iterate-stage
RUN/iterate_config.yaml --stage S --round T ...``: a fresh set of processes for that stage alone, which reads the
round's files and writes the stage's files (atomically, the main process merging the shards), then exits. The
orchestrator (``imitalign iterate``, one process) waits for the job and goes on from the files; a stage not named
runs in the orchestrator's process as before. Nothing is scheduled here: the processes are accelerate's (torchrun),
GPU placement inside a job is accelerate's (training) or vLLM's (sampling), and several machines are reached
through the cluster's own launcher (``prefix``, e.g. ``srun``), each machine's rank read from its environment.

The files stay the interface: a job that dies leaves no finished-looking file, and rerunning ``imitalign iterate``
redoes exactly that stage (a training job resumes from its newest checkpoint of the same config).

``IMITALIGN_FAULT=stage:round[:rank]`` makes the job of that stage and round exit abruptly on that rank (default:
the last) at the stage's fault point (generation/scoring: after the rank's shard is written, before the merge;
training: after the first checkpoint is saved) — tests use it to kill a stage half-way.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

STAGES = ("generate", "score", "train")
FAULT_ENV = "IMITALIGN_FAULT"
FAULT_EXIT = 86  # the exit status of an injected fault


class StageLaunch(BaseModel):
    """How one stage's job is launched (every field optional: ``{}`` is one process of accelerate's defaults)."""

    model_config = ConfigDict(extra="forbid")

    num_processes: int | None = Field(None, ge=1)  # in all (every machine); default: the config file's, else 1
    config_file: str | None = None  # an accelerate config (FSDP2, DeepSpeed ZeRO-3, ...); its keys apply
    num_machines: int = Field(1, ge=1)
    main_process_ip: str | None = None  # several machines: the address of machine 0
    main_process_port: int | None = None  # default on one machine: a free port, picked per job
    machine_rank_env: str = "SLURM_NODEID"  # several machines: the variable that holds each machine's rank
    prefix: list[str] = Field(default_factory=list)  # starts the launcher on every machine: [srun, --ntasks-per-node=1]
    args: list[str] = Field(default_factory=list)  # more accelerate launch arguments, e.g. [--mixed_precision, bf16]
    env: dict[str, str] = Field(default_factory=dict)  # extra environment of the job

    @model_validator(mode="after")
    def _machines(self) -> StageLaunch:
        if self.num_machines > 1:
            if not self.prefix:
                raise ValueError(
                    "num_machines > 1 needs a prefix that starts the launcher once on every machine (e.g. [srun, "
                    "--nodes=2, --ntasks-per-node=1]); imitalign does not ssh into machines itself"
                )
            if self.main_process_ip is None or self.main_process_port is None:
                raise ValueError("num_machines > 1 needs main_process_ip and main_process_port (machine 0's)")
        return self


class LaunchConfig(BaseModel):
    """The ``launch:`` section: which stages run as their own job, and how."""

    model_config = ConfigDict(extra="forbid")

    generate: StageLaunch | None = None
    score: StageLaunch | None = None
    train: StageLaunch | None = None

    def of(self, stage: str) -> StageLaunch | None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages that can be launched: {', '.join(STAGES)}")
        return getattr(self, stage)

    def any(self) -> bool:
        return any(self.of(s) is not None for s in STAGES)


class StageJobError(ValueError):
    """A launched stage job failed; the message names the round, the stage, the exit status and the command."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_argv(spec: StageLaunch, command: Sequence[str]) -> list[str]:
    """The command line of a stage job: ``accelerate launch`` (of this interpreter) running ``python -m
    imitalign.cli COMMAND``; behind ``spec.prefix`` through ``bash -c`` when the machine rank is read on each
    machine."""
    head = [sys.executable, "-m", "accelerate.commands.launch"]
    if spec.config_file is not None:
        head += ["--config_file", spec.config_file]
    else:  # no config file: say what accelerate would otherwise warn about choosing
        head += ["--mixed_precision", "no", "--dynamo_backend", "no"]
        if (spec.num_processes or 1) > 1:
            head.append("--multi_gpu")  # torchrun processes (gloo on a CPU-only machine, NCCL on GPUs)
    if spec.num_processes is not None:
        head += ["--num_processes", str(spec.num_processes)]
    head += ["--num_machines", str(spec.num_machines)]
    if spec.main_process_ip is not None:
        head += ["--main_process_ip", spec.main_process_ip]
    head += ["--main_process_port", str(spec.main_process_port or free_port()), *spec.args]
    tail = ["-m", "imitalign.cli", *command]
    if spec.num_machines == 1:
        return [*spec.prefix, *head, *tail]
    rank = f'--machine_rank "${{{spec.machine_rank_env}}}"'
    return [*spec.prefix, "bash", "-c", f"{shlex.join(head)} {rank} {shlex.join(tail)}"]


def job_env(spec: StageLaunch) -> dict[str, str]:
    """The orchestrator's environment, with the package importable and ``spec.env`` added."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
    env.update(spec.env)
    return env


def run_stage_job(spec: StageLaunch, stage: str, t: int, command: Sequence[str], say=print) -> None:  # noqa: ANN001
    """Run the job and wait for it; its output goes to the orchestrator's. A failed job raises
    :class:`StageJobError` (its stage files are unfinished; rerunning ``imitalign iterate`` redoes the stage)."""
    argv = launch_argv(spec, command)
    say(f"round {t}: {stage} as its own job ({spec.num_processes or 'config'} processes): {shlex.join(argv)}")
    proc = subprocess.run(argv, env=job_env(spec), check=False)
    if proc.returncode != 0:
        raise StageJobError(
            f"round {t}: the {stage} job exited with status {proc.returncode}; its files are unfinished and a rerun "
            f"of imitalign iterate redoes this stage. Command: {shlex.join(argv)}"
        )


# ------------------------------------------------------------------------------------------ fault injection
def fault_targets(stage: str, t: int, rank: int, world: int) -> bool:
    """Whether ``IMITALIGN_FAULT`` (``stage:round[:rank]``) names this stage, round and rank."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return False
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(p.lstrip("-").isdigit() for p in parts[1:]):
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected stage:round[:rank]")
    want_rank = int(parts[2]) if len(parts) == 3 else world - 1
    return parts[0] == stage and int(parts[1]) == t and want_rank == rank


def fault_point(stage: str, t: int) -> None:
    """Exit this process abruptly (no cleanup, status :data:`FAULT_EXIT`) when ``IMITALIGN_FAULT`` names it."""
    from imitalign.processes import process_state

    state = process_state()
    if fault_targets(stage, t, state.process_index, state.num_processes):
        print(f"[fault] {FAULT_ENV}: rank {state.process_index} of the {stage} job of round {t} exits", flush=True)
        os._exit(FAULT_EXIT)


def fault_after_first_checkpoint(t: int) -> None:
    """Arm the training fault: the targeted rank exits right after the first checkpoint is saved (the training
    loop's ``save_checkpoint`` is wrapped wherever it was imported)."""
    from imitalign.processes import process_state

    state = process_state()
    if not fault_targets("train", t, state.process_index, state.num_processes):
        return
    import imitalign.train.loop  # noqa: F401 - the loop's modules imported, so that their names are wrapped too
    from imitalign.train import checkpoint

    original = checkpoint.save_checkpoint

    def save_then_fail(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        path = original(*args, **kwargs)
        print(f"[fault] {FAULT_ENV}: rank {state.process_index} exits after saving {path}", flush=True)
        os._exit(FAULT_EXIT)

    for module in list(sys.modules.values()):
        mine = getattr(module, "__name__", "").startswith("imitalign.")
        if mine and getattr(module, "save_checkpoint", None) is original:
            module.save_checkpoint = save_then_fail  # type: ignore[attr-defined]
