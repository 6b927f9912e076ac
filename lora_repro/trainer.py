"""The one trainer: config -> backbone + method -> transformers.Trainer -> record.json.

It calls only the Method interface (apply, create_optimizer, hparams) and never looks at a method's
name, so a new method is one module plus one yaml file."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import psutil
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from .backbone import head_parameter_names, load_tokenizer
from .assembly import Built, build
from .config import check_early_stopping
from .errors import ConfigError, DataError, RecordNotWritten, TrainingDiverged, one_line
from .methods import Method
from .metrics import constant_metrics
from .profiling import LiveTensorBytes, PeakMemory, live_tensors
from .provenance import device, git_branch, git_commit
from .paper_rows import paper_fit
from .record import BEST_FILE, CHECKPOINT_FILE, TRAINABLE_FILE, RunRecord, new_record, write_record
from .ui import show_progress
from .rundir import config_hash, is_main_process, readable_safetensors, resolve_init_from

log = logging.getLogger(__name__)
TRAINER_DIR = "trainer"  # the Trainer's resumable checkpoints inside a run folder

def run_name(cfg: DictConfig) -> str:
    return f"{cfg.task.name}-{cfg.model.name}-{cfg.method.name}-seed{cfg.seed}"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What restores a fine-tuned model on top of its pretrained backbone: every trainable tensor
    (the whole model for full FT; adapter + task head for the others)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names and bytes: equal digests mean bit-identical weights (determinism, DDP ranks)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].float().numpy().tobytes())
    return digest.hexdigest()


class RunTrainer(Trainer):
    """transformers.Trainer that (1) stops at the first non-finite training loss, naming the step,
    instead of training on garbage for hours, and (2) checkpoints exactly the trainable tensors, for
    every method alike (peft's own save would drop the task head, which we train outside
    `modules_to_save`; optimizer, scheduler, RNG and data position are the Trainer's)."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        save_file(trainable_state(self.model), os.path.join(output_dir, TRAINABLE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = model if model is not None else self.model
        path = os.path.join(resume_from_checkpoint, TRAINABLE_FILE)
        if not os.path.isfile(path):
            raise DataError(f"checkpoint {resume_from_checkpoint} has no {TRAINABLE_FILE}")
        state = load_file(path)
        expected = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise DataError(f"checkpoint {resume_from_checkpoint} does not match this config's trainable parameters")
        model.load_state_dict(state, strict=False)

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint save, with a failure (a full disk, a file-size limit) named in one
        line instead of torch's zip-writer message; the run's earlier checkpoints stay usable."""
        try:
            return super()._save_checkpoint(model, trial)
        except (RuntimeError, OSError) as exc:
            folder = Path(self.args.output_dir)
            free = shutil.disk_usage(folder if folder.exists() else folder.parent).free
            raise DataError(f"could not save the resumable checkpoint at step {self.state.global_step} under {folder} "
                            f"({one_line(exc)}; {free / 2**20:,.0f} MiB free there). Free some space and run the "
                            f"same command: it resumes from the last complete checkpoint") from exc

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and not torch.isfinite(loss.detach()).all():
            raise TrainingDiverged(f"training loss is {loss.detach().float().item()} at step {self.state.global_step + 1}")
        return result


class WallClock(TrainerCallback):
    """Keeps a run's wall time across resumes: each checkpoint stores the seconds spent so far, and a
    resumed run starts its count from there, so record.json's wall_s is the whole run's."""

    FILE = "wall.json"

    def __init__(self, start: float, prior_s: float):
        self.start, self.prior_s = start, prior_s

    def elapsed(self) -> float:
        return self.prior_s + time.perf_counter() - self.start

    @classmethod
    def prior(cls, checkpoint: str | None) -> float:
        try:
            return float(json.loads((Path(checkpoint) / cls.FILE).read_text())["wall_s"]) if checkpoint else 0.0
        except (OSError, ValueError, KeyError):
            return 0.0

    @classmethod
    def commit(cls, checkpoint: str | None) -> str | None:
        """The code version the checkpoint was written by (None: unknown or no checkpoint)."""
        try:
            return json.loads((Path(checkpoint) / cls.FILE).read_text()).get("git_commit") if checkpoint else None
        except (OSError, ValueError, AttributeError):
            return None

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:
            (folder / self.FILE).write_text(json.dumps({"wall_s": self.elapsed(), "git_commit": git_commit()}))


class TensorMemory(TrainerCallback):
    """The peak of live tensor bytes during training. On CUDA the allocator counts it
    (max_memory_allocated, reset at the start); on CPU a LiveTensorBytes dispatch mode watches the
    first `steps` optimizer steps, by when weights, gradients, optimizer state and activations have
    all been allocated once (watching longer only costs speed)."""

    def __init__(self, model: torch.nn.Module, steps: int = 3):
        self.model, self.steps = model, steps
        self.mode: LiveTensorBytes | None = None
        self.peak: int | None = None
        self.first_step = 0

    @property
    def source(self) -> str:
        return "cuda_max_memory_allocated" if torch.cuda.is_available() else f"cpu_live_tensors_first_{self.steps}_steps"

    def on_train_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            return
        self.first_step = state.global_step
        # the optimizer's state exists already when a run resumes; otherwise its first step makes it
        self.mode = LiveTensorBytes(existing=live_tensors(self.model, kwargs.get("optimizer")))
        self.mode.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        # Also at a run's last step when it has fewer than `steps`: evaluation and decoding follow
        # on_step_end, and must never run under the dispatch mode (it slows every operator).
        last = state.max_steps and state.global_step >= state.max_steps
        if self.mode is not None and (state.global_step - self.first_step >= self.steps or last):
            self.stop()

    def on_train_end(self, args, state, control, **kwargs):
        if self.mode is not None:
            self.stop()

    def stop(self) -> None:
        if torch.cuda.is_available():
            self.peak = int(torch.cuda.max_memory_allocated())
        elif self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.peak, self.mode = self.mode.peak, None


class BestState(TrainerCallback):
    """Early stopping on one evaluation metric (train.early_stopping), keeping the best trainable
    weights in memory: the Trainer's own load_best_model_at_end reloads a checkpoint folder in its
    format, and ours hold only the trainable tensors. After training, `restore` puts the best
    weights back, so the reported evaluation and the saved weights are those of the selected step."""

    def __init__(self, model: torch.nn.Module, metric: str, patience: int, min_evals: int = 1, mode: str = "max",
                 floor: float | None = None):
        self.model, self.key, self.patience, self.min_evals = model, f"eval_{metric}", patience, min_evals
        self.sign = 1.0 if mode == "max" else -1.0
        # With a floor (the constant predictor's score on the watched split, plus above_constant_by),
        # patience counts only once the best score has beaten it: a run still on the majority-class
        # plateau (CoLA's MCC 0 for the first epoch) trains on, to the epoch cap, instead of stopping
        # before it has learned anything.
        self.floor = floor
        self.best: float | None = None
        self.best_step: int | None = None
        self.state: dict[str, torch.Tensor] | None = None
        self.evals = self.bad = 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(self.key)
        if value is None:  # this call evaluated another split
            return
        self.evals += 1
        if self.best is None or self.sign * value > self.sign * self.best:
            self.best, self.best_step, self.bad = float(value), state.global_step, 0
            self.state = {n: p.detach().to("cpu", copy=True) for n, p in self.model.named_parameters() if p.requires_grad}
        elif self.floor is None or self.sign * self.best > self.sign * self.floor:
            self.bad += 1
        if self.evals >= self.min_evals and self.bad >= self.patience:
            control.should_training_stop = True

    def restore(self) -> dict[str, Any] | None:
        if self.state is None:
            return None
        with torch.no_grad():
            params = dict(self.model.named_parameters())
            for name, tensor in self.state.items():
                params[name].copy_(tensor.to(params[name].device))
        return {"metric": self.key.removeprefix("eval_"), "value": self.best, "step": self.best_step,
                "evaluations": self.evals}


def early_stopping(cfg: DictConfig, model: torch.nn.Module, evals: dict[str, Any] | None = None) -> BestState | None:
    spec = cfg.train.get("early_stopping")
    if not spec:
        return None
    check_early_stopping(spec)
    floor = None
    if spec.get("above_constant"):  # the constant predictor's score on the watched split
        evals, key = evals or {}, str(spec.metric)
        # The Trainer names one evaluated split's metrics plainly (`accuracy`), several as `<split>_<metric>`.
        split, metric = ((next(iter(evals)), key) if len(evals) == 1 else
                         next(((s, key[len(s) + 1:]) for s in evals if key.startswith(f"{s}_")), (None, None)))
        if split is None:
            raise ConfigError(f"train.early_stopping.above_constant: {spec.metric} names no evaluated split "
                              f"({', '.join(evals or {})})")
        floor = constant_metrics([metric], evals[split]["labels"], cfg.task)[metric]
        # above_constant_by: how far past the constant the score must get before patience counts. On
        # CoLA's 500 held-out rows one right minority-class answer lifts MCC from 0 to ~0.07, and the
        # claims runs' LoRA stopped on that noise before it had learned (records before this key).
        by = float(spec.get("above_constant_by") or 0.0)
        floor = floor + by if str(spec.get("mode", "max")) == "max" else floor - by
    return BestState(model, str(spec.metric), int(spec.get("patience", 4)), int(spec.get("min_evals", 1)),
                     str(spec.get("mode", "max")), floor)


class KillAtStep(TrainerCallback):
    """Fault injection for the resume tests, given through config
    (train.callbacks=[{_target_:lora_repro.trainer.KillAtStep,step:N}]): the process SIGKILLs itself
    after optimizer step N, as a pre-empted cluster job would die."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def load_method_weights(model: torch.nn.Module, source: Path, head: list[str]) -> None:
    """Copy a finished run's method weights (LoRA factors, adapters, ...) into this model; the task
    head is left fresh, since tasks differ in their labels (MNLI's 3 classes vs STS-B's score)."""
    state = load_file(str(source))
    head_names = head_parameter_names(model, head)
    own = {n: p for n, p in model.named_parameters() if p.requires_grad and n not in head_names}
    usable = {n: t for n, t in state.items() if n in own and own[n].shape == t.shape}
    if not usable:
        raise ConfigError(f"init_from={source}: none of its tensors fit this model's {len(own)} trainable tensors")
    missing = sorted(set(own) - set(usable))
    if missing:
        raise ConfigError(f"init_from={source} lacks {len(missing)} of this method's tensors (e.g. {missing[0]})")
    with torch.no_grad():
        for name, tensor in usable.items():
            own[name].copy_(tensor)


def training_arguments(cfg: DictConfig, run_dir: Path, report_to: list[str], evaluate: bool = True,
                       prediction_loss_only: bool = False) -> TrainingArguments:
    train = cfg.train
    warmup = int(train.warmup_steps) if train.warmup_steps else float(train.warmup_ratio)
    by_steps = train.eval_every != "epoch"
    every = train.checkpoint_every
    save = {"save_strategy": "no"} if not every else (
        {"save_strategy": "epoch"} if every == "epoch" else {"save_strategy": "steps", "save_steps": int(every)})
    return TrainingArguments(
        output_dir=str(run_dir / TRAINER_DIR),
        per_device_train_batch_size=int(train.batch_size),
        per_device_eval_batch_size=int(train.eval_batch_size),
        gradient_accumulation_steps=int(train.grad_accum),
        num_train_epochs=float(train.epochs) if train.epochs else 1.0,
        max_steps=int(train.max_steps) if train.max_steps and train.max_steps > 0 else -1,
        lr_scheduler_type=str(train.schedule),
        warmup_steps=warmup,
        max_grad_norm=float(train.max_grad_norm),
        learning_rate=float(train.lr),
        weight_decay=float(train.weight_decay),
        bf16=train.precision == "bf16",
        fp16=train.precision == "fp16",
        eval_strategy="no" if not evaluate else ("steps" if by_steps else "epoch"),
        eval_steps=int(train.eval_every) if by_steps and evaluate else None,
        prediction_loss_only=prediction_loss_only,
        **save,
        save_total_limit=1,
        logging_steps=int(train.logging_steps),
        report_to=report_to,
        run_name=run_name(cfg),
        seed=int(cfg.seed),
        dataloader_num_workers=int(train.num_workers),
        label_names=["labels"],
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not show_progress(),  # a bar with ETA and loss in a terminal; quiet in CI and logs
        dataloader_pin_memory=torch.cuda.is_available(),
        tf32=bool(train.tf32) if train.get("tf32") is not None and torch.cuda.is_available() else None,
        torch_compile=bool(train.get("compile")),
        ddp_find_unused_parameters=bool(train.get("ddp_find_unused_parameters")),
        # On CPU this makes torchrun / accelerate launch use DDP over gloo (accelerate's MULTI_CPU).
        use_cpu=not torch.cuda.is_available(),
    )


class WandbRun:
    """Optional wandb logging (offline by default). wandb is never required: a missing package or a
    failed init only disables it, with a warning."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.run = None
        wcfg = cfg.logger.wandb
        if wcfg.mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed; logging to record.json only")
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            self.run = wandb.init(
                project=wcfg.project, entity=wcfg.entity, mode=wcfg.mode, dir=str(run_dir),
                # One group per study and recipe (its seeds together); names differ between recipes.
                group=f"{cfg.get('study') or 'adhoc'}/{config_hash(cfg)}",
                name=f"{run_name(cfg)}-{config_hash(cfg)}",
                tags=list(wcfg.tags), config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous",
                # Without a network, wandb's default waits 90 s per run before giving up (probe E7).
                settings=wandb.Settings(init_timeout=float(wcfg.get("init_timeout", 15))),
            )
        except Exception as exc:  # wandb problems must not cost a run
            log.warning("wandb init failed (%s); logging to record.json only", one_line(exc))

    @property
    def report_to(self) -> list[str]:
        return ["wandb"] if self.run is not None else []

    def finish(self, record: dict[str, Any]) -> None:
        if self.run is None:
            return
        summary = {f"final/{k}": v for k, v in (record.get("metrics") or {}).items()}
        summary.update({f"best/{k}": v for k, v in (record.get("best_metrics") or {}).items()})
        summary.update({f"params/{k}": v for k, v in (record.get("params") or {}).items()})
        summary.update(status=record["status"], peak_memory_bytes=record.get("peak_memory_bytes"))
        self.run.summary.update(summary)
        self.run.finish(exit_code=0 if record["status"] == "ok" else 1)


def save_trainable(state: dict[str, torch.Tensor], run_dir: Path, save: bool) -> int:
    """Save the fine-tuned model's trainable tensors (when `save`); return their size in bytes."""
    if not save:
        return sum(t.numel() * t.element_size() for t in state.values())
    path = run_dir / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path.stat().st_size


def start_record(cfg: DictConfig, method: Method, experiment: str | None, overrides: str) -> RunRecord:
    return new_record(
        study=cfg.get("study"), task=cfg.task.name, model=cfg.model.name, method=cfg.method.name,
        method_info=method.info(), paper_setting=cfg.get("paper_setting") or method.paper_setting,
        paper_row=cfg.get("paper_row"), paper_fit=paper_fit(cfg),
        seed=int(cfg.seed), experiment=experiment, overrides=overrides, hparams=method.hparams(),
        git_commit=git_commit(), git_branch=git_branch(), device=device(), config=OmegaConf.to_container(cfg, resolve=True),
    )


def make_trainer(cfg: DictConfig, built: Built, data: Any, tokenizer: Any, optimizer: torch.optim.Optimizer,
                 run_dir: Path, report_to: list[str], callbacks: list[TrainerCallback]) -> RunTrainer:
    evals = watched_splits(cfg, data.evals)
    return RunTrainer(
        model=built.model,
        args=training_arguments(cfg, run_dir, report_to, evaluate=evals is not None,
                                prediction_loss_only=built.task.prediction_loss_only),
        train_dataset=data.train,
        eval_dataset=evals,
        data_collator=built.task.collator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=built.task.compute_metrics(),
        optimizers=(optimizer, None),
        callbacks=[*callbacks, *configured_callbacks(cfg)],
    )


def eval_dataset(splits: dict[str, Any]) -> Any:
    """The Trainer's eval_dataset: one split as itself (metrics `eval_<metric>`), several as a dict
    (`eval_<split>_<metric>`), none as None (no evaluation)."""
    return (splits if len(splits) > 1 else next(iter(splits.values()))) if splits else None


def watched_splits(cfg: DictConfig, splits: dict[str, Any]) -> Any:
    """What is evaluated during training: every split, or those train.watch names (kept as a dict,
    so their metrics keep the split's name, e.g. `heldout_accuracy`); the run evaluates every split
    once more at the end (`all_splits`)."""
    watch = cfg.train.get("watch")
    if not watch:
        return eval_dataset(splits)
    unknown = sorted(set(watch) - set(splits))
    if unknown:
        raise ConfigError(f"train.watch={list(watch)}: no split named {', '.join(unknown)} (this run evaluates "
                          f"{', '.join(splits) or 'nothing'}; `heldout` needs task.heldout_rows)")
    return {name: splits[name] for name in watch}


def configured_callbacks(cfg: DictConfig) -> list[TrainerCallback]:
    """train.callbacks, each instantiated from its _target_ (lightning-hydra-template's way)."""
    from hydra.utils import instantiate

    made = [instantiate(spec) for spec in cfg.train.get("callbacks") or []]
    wrong = [type(c).__name__ for c in made if not isinstance(c, TrainerCallback)]
    if wrong:
        raise ConfigError(f"train.callbacks: {', '.join(wrong)} is not a transformers TrainerCallback")
    return made


def checkpoint_step(folder: Path) -> int:
    """The optimizer step a Trainer checkpoint folder (checkpoint-<step>) was saved at."""
    return int(folder.name.split("-")[-1])


def checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (None: it is complete). A save cut
    short (a full disk, a kill during the write) leaves a folder with missing or truncated files."""
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError):
        return f"{state.name} missing or unreadable"
    if not readable_safetensors(folder / TRAINABLE_FILE):
        return f"{TRAINABLE_FILE} missing or truncated"
    for path in sorted(folder.glob("*.pt*")):  # optimizer, scheduler, RNG states: torch's zip format
        try:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return f"{path.name} is corrupt"
        except (OSError, zipfile.BadZipFile):
            return f"{path.name} is truncated or not a torch file"
    if not (folder / "optimizer.pt").is_file():
        return "optimizer.pt missing"
    return None


def resume_point(cfg: DictConfig, run_dir: Path) -> str | None:
    """The newest complete checkpoint of this run folder; incomplete newer ones are named and
    skipped (a re-run of the same command then recovers). With resume=false all are discarded."""
    checkpoint_root = run_dir / TRAINER_DIR
    if not checkpoint_root.is_dir():
        return None
    if not cfg.resume:
        shutil.rmtree(checkpoint_root, ignore_errors=True)
        return None
    folders = sorted((p for p in checkpoint_root.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                     key=checkpoint_step, reverse=True)
    for folder in folders:
        problem = checkpoint_problem(folder)
        if problem is None:
            log.info("resuming from %s", folder)
            return str(folder)
        log.warning("skipping and removing incomplete checkpoint %s (%s); trying an earlier one", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)  # or the Trainer's rotation would count it as the newest
    if folders:
        log.warning("no complete checkpoint in %s: training starts over", checkpoint_root)
    return None


def throughput(trainer: Trainer, train_out: Any) -> dict[str, float]:
    runtime = float(train_out.metrics["train_runtime"])
    # Tokens of this session only (a resumed run's counter includes the earlier ones).
    tokens = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return {"train_tokens_per_s": tokens / runtime if runtime else None,
            "train_samples_per_s": float(train_out.metrics["train_samples_per_second"]),
            "train_runtime_s": runtime, "train_steps": trainer.state.global_step}


class Phases:
    """Where a run's time goes (record.json's `timing`): the process's start-up before the run
    (imports, Hydra; shared by the jobs of a multirun), model load, tokenization, set-up, training,
    evaluation during training (the Trainer's eval_runtime, taken out of training), the results
    step (final evaluation, decoding), saving. For tuning where per-run overhead matters."""

    def __init__(self, start: float):
        self.last = start
        self.seconds: dict[str, float] = {}
        try:
            self.seconds["process_start_to_run_s"] = max(0.0, time.time() - psutil.Process().create_time())
        except psutil.Error:
            pass

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self.last
        self.last = now

    def breakdown(self, log_history: list[dict]) -> dict[str, float]:
        evaluating = sum(float(e.get(k, 0.0)) for e in log_history for k in e if k.endswith("_runtime")
                         and k.startswith("eval"))
        out = dict(self.seconds)
        if "train_s" in out:
            out["eval_during_training_s"] = evaluating
            out["train_s"] = max(0.0, out["train_s"] - evaluating)
        return {k: round(v, 3) for k, v in out.items()}


def run(cfg: DictConfig, method: Method, run_dir: str | Path, experiment: str | None = None,
        overrides: str = "") -> RunRecord:
    """Train and evaluate one config; write and return its record (rank 0 only writes). Resumes
    from the folder's last checkpoint when cfg.resume and one exists. Failures are recorded
    (status "failed", one-line error) and re-raised. `experiment` (the conf/experiment file) and
    `overrides` (how the recipe differs from its named defaults) keep runs of different recipes
    apart in the analysis."""
    run_dir = Path(run_dir)
    main_process = is_main_process()
    start = time.perf_counter()
    phases = Phases(start)
    record = start_record(cfg, method, experiment, overrides)
    memory = PeakMemory()
    clock = WallClock(start, 0.0)
    tensors: TensorMemory | None = None
    wandb_run: WandbRun | None = None
    try:
        with memory:
            set_seed(int(cfg.seed))
            built = build(cfg, method)
            tokenizer = load_tokenizer(cfg.model)
            phases.mark("model_load_s")
            data = built.task.encode(tokenizer)
            phases.mark("tokenize_s")
            source = resolve_init_from(cfg)
            if source is not None:
                record["init_from"] = str(source)
                load_method_weights(built.model, source, built.head)
            record["params"] = built.params()
            optimizer, groups = method.create_optimizer(built.model, cfg.train)
            record["optimizer_groups"] = [vars(g) for g in groups]
            wandb_run = WandbRun(cfg, run_dir) if main_process else None
            last = resume_point(cfg, run_dir)
            record["resumed_from_step"] = checkpoint_step(Path(last)) if last else None
            clock.prior_s = WallClock.prior(last)
            earlier = WallClock.commit(last)
            if earlier and earlier != record["git_commit"]:  # steps before the resume ran other code
                record["resumed_from_commit"] = earlier
                log.warning("resuming a run whose first %s steps ran at code %s; this process runs %s (both are "
                            "recorded)", record["resumed_from_step"], earlier, record["git_commit"])
            tensors = TensorMemory(built.model)
            best = early_stopping(cfg, built.model, data.evals)
            # train.keep_best watches one metric without stopping (patience past any schedule).
            keeper = BestState(built.model, str(cfg.train.keep_best), 10**9) if cfg.train.get("keep_best") else None
            watchers = [w for w in (best, keeper) if w is not None]
            trainer = make_trainer(cfg, built, data, tokenizer, optimizer, run_dir,
                                   wandb_run.report_to if wandb_run else [], [clock, tensors, *watchers])
            before = built.task.before_training(built.model, tokenizer)
            record.update(before)
            phases.mark("setup_s")
            train_out = trainer.train(resume_from_checkpoint=last)
            if best is not None:
                record["selected"] = best.restore()
                if record["selected"] is not None:
                    record["selected"]["stopped_at_step"] = trainer.state.global_step
            phases.mark("train_s")
            trainer.eval_dataset = eval_dataset(data.evals)  # the end of the run evaluates every split
            record.update(built.task.results(trainer, built.model, tokenizer, run_dir, record.get("selected"), before))
            phases.mark("results_s")
            record["throughput"] = throughput(trainer, train_out)
            record["train_loss_curve"] = [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e]
            record["world_size"] = int(trainer.args.world_size)
            state = trainable_state(built.model)
            record["trainable_sha256"] = state_digest(state)
            log.info("rank %s of %s: trainable_sha256=%s", trainer.args.process_index, trainer.args.world_size,
                     record["trainable_sha256"])
            record["checkpoint_bytes"] = save_trainable(state, run_dir, main_process and bool(cfg.save_checkpoint))
            if keeper is not None and keeper.state is not None:
                record["kept_best"] = {"metric": str(cfg.train.keep_best), "value": keeper.best, "step": keeper.best_step}
                if main_process and cfg.save_checkpoint:
                    save_file(keeper.state, str(run_dir / BEST_FILE))
            if main_process:
                shutil.rmtree(run_dir / TRAINER_DIR, ignore_errors=True)  # resumable state is no longer needed
            phases.mark("save_s")
            record["timing"] = phases.breakdown(trainer.state.log_history)
        record["status"] = "ok"
    except BaseException as exc:
        record["status"] = "failed"
        record["error"] = one_line(exc) if not isinstance(exc, KeyboardInterrupt) else "interrupted"
        raise
    finally:
        record["peak_memory_bytes"] = int(memory.peak)
        record["peak_memory_source"] = memory.source
        if tensors is not None:
            tensors.stop()  # also leaves the dispatch mode if training ended early
            record["peak_tensor_bytes"], record["peak_tensor_source"] = tensors.peak, tensors.source
        record["wall_s"] = clock.elapsed()
        if main_process:
            save_record(run_dir, record)
        if wandb_run is not None:
            wandb_run.finish(record)
    _check_finite(record)
    return record


def save_record(run_dir: Path, record: RunRecord) -> None:
    """Write the record; if that fails while an exception is already on its way out, mark that
    exception (`record_written = False`) instead of hiding it, so the caller never claims the
    failure was recorded."""
    in_flight = sys.exc_info()[1]
    try:
        write_record(run_dir, record)
    except OSError as exc:
        if in_flight is not None:
            in_flight.record_written = False  # type: ignore[attr-defined]
            log.error("could not write %s/record.json: %s", run_dir, one_line(exc))
            return
        raise RecordNotWritten(f"could not write {run_dir}/record.json ({one_line(exc)}); the run's result "
                               f"was not recorded") from exc


def _check_finite(record: dict[str, Any]) -> None:
    for key, value in (record["metrics"] or {}).items():
        if isinstance(value, float) and math.isnan(value):
            log.warning("metric %s is NaN (e.g. a constant prediction for a correlation metric)", key)
