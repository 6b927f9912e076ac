"""Run directories that never mix results: one folder per (config, seed), named by a hash of the
resolved config, so a re-run of the same config finds its own folder (skip if done, resume if not),
two different configs never share one, and a lock keeps two live jobs out of the same folder."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, FolderInUse
from .record import BEST_FILE, CHECKPOINT_FILE, RECORD_NAME, TRAINABLE_FILE, read_run_record

# The parts of the config that decide a run's result (the seed is named separately in the folder).
HASHED_KEYS = ("model", "method", "task", "train", "init_from")
# Keys inside those parts that change how a run is carried out or logged, never its result.
NOT_RECIPE = {("train", "num_workers"), ("train", "logging_steps"), ("train", "checkpoint_every"),
              ("train", "eval_batch_size"), ("train", "callbacks"),
              ("train", "pad_to_multiple_of"), ("train", "ddp_find_unused_parameters"), ("train", "keep_best"), ("train", "keep_predictions"), ("task", "generation", "batch_size"),
              ("task", "file_layouts"),
              # Facts that recipes read to set hashed values (task.data_dir, task.max_length,
              # train.lr): the values they set are hashed, the facts themselves are not.
              ("task", "shared_dir"), ("task", "fit_length"), ("method", "short_run_lr")}  # where a data_dir's files may be found: data_dir itself is hashed
# Bumped whenever the rules below change which folder a config maps to. Version 1 (before this
# constant) hashed every key, nulls included; folders it made are still read by the analysis, but
# a re-run of their config makes a new folder (README: "Run folders").
HASH_VERSION = 2
RUNS_DIR = "runs"
LOCK_NAME = ".lock"


def _canonical(value: Any, path: tuple[str, ...] = ()) -> Any:
    """The hashed form of a config part. Numbers as floats, so `ratio=16` on the command line and
    `16.0` in a yaml name one folder. Null values, empty mappings and empty lists are left out, so a
    new option added with a null or empty default leaves every existing folder name as it was; so
    are the keys of NOT_RECIPE."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if path + (key,) in NOT_RECIPE:
                continue
            item = _canonical(item, path + (key,))
            if item is None or item == {} or item == []:
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [_canonical(v, path) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def recipe_part(cfg: Any) -> dict[str, Any]:
    """The resolved model/method/task/train/init_from sections: what decides a run's result. Each
    section is resolved where it sits (its interpolations may read the root, e.g. ${seed}), never
    the whole config: Hydra's own node refers back to the hash of this part, and resolving only these
    sections is 4x faster than copying the config without it (planning resolves one per run)."""
    out = {}
    for key in HASHED_KEYS:
        value = cfg.get(key)
        out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value
    return out


def without_not_recipe(value: Any, path: tuple[str, ...] = ()) -> Any:
    """A recipe part without the NOT_RECIPE keys, values as they are (for labels people read)."""
    if isinstance(value, dict):
        return {k: without_not_recipe(v, path + (k,)) for k, v in value.items() if path + (k,) not in NOT_RECIPE}
    return value


def canonical_recipe(cfg: Any) -> dict[str, Any]:
    """What the folder hash covers, as hashed (a study's recipes.json keeps it, to name drift)."""
    return _canonical(recipe_part(cfg))


def recipe_hash(recipe: dict[str, Any]) -> str:
    """8 hex digits of sha256 over a canonical recipe (and HASH_VERSION)."""
    payload = json.dumps({"v": HASH_VERSION, **recipe}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:8]


def config_hash(cfg: Any) -> str:
    """8 hex digits of sha256 over the config's recipe part (and HASH_VERSION)."""
    return recipe_hash(canonical_recipe(cfg))


def run_subdir(cfg: Any, seed: int | None = None, digest: str | None = None) -> str:
    """THE run-folder formula, relative to output_root: one folder per (recipe, seed). A planner
    that places one recipe at many seeds passes its seed and its config_hash, computed once."""
    return (f"{RUNS_DIR}/{cfg.task.name}/{cfg.model.name}/{cfg.method.name}/{digest or config_hash(cfg)}"
            f"_seed{cfg.seed if seed is None else seed}")


def run_dir(cfg: Any) -> Path:
    return Path(str(cfg.output_root)) / run_subdir(cfg)


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (and any single-process run)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int | None:
    """How many processes train this run (torchrun / accelerate set WORLD_SIZE), None for one: the
    effective batch is per-device x processes x accumulation, so a run on 2 processes is another
    recipe than the same config on 1, while every single-process folder keeps its name."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return size if size > 1 else None


def shared_data_dir(*, _root_: Any) -> str | None:
    """`${shared_data:}`: the task's folder in the offline data root ($LORA_REPRO_SHARED_DATA, else
    ../shared/data), from the task's own `shared_dir`; None (the hub, or the task's packaged data)
    for a task that has none or whose folder is not there: the data source is part of the recipe.
    Recipes that run offline set task.data_dir to it, so no recipe keeps a table of task names."""
    sub = _root_.task.get("shared_dir")
    folder = f"{os.environ.get('LORA_REPRO_SHARED_DATA', '../shared/data')}/{sub}" if sub else None
    return folder if folder and Path(folder).expanduser().is_dir() else None


def register_resolvers() -> None:
    """`${run_subdir:}` in conf/hydra/default.yaml names each run's folder (Hydra's run and sweep
    dirs), from run_subdir above; `${world_size:}` is train.world_size; `${shared_data:}` the task's
    offline folder; `${paper:<key>}` a value of the recipe's paper row (lora_repro/paper_rows.py); `${heldout_metric:}`
    the task's main metric on the held-out slice."""
    from .paper_rows import paper_value

    if not OmegaConf.has_resolver("paper"):
        OmegaConf.register_new_resolver("paper", paper_value)
    if not OmegaConf.has_resolver("shared_data"):
        OmegaConf.register_new_resolver("shared_data", shared_data_dir)
    if not OmegaConf.has_resolver("run_subdir"):
        OmegaConf.register_new_resolver("run_subdir", lambda *, _root_: run_subdir(_root_))
    if not OmegaConf.has_resolver("world_size"):
        OmegaConf.register_new_resolver("world_size", world_size)
    if not OmegaConf.has_resolver("heldout_metric"):
        from .metrics import split_metric

        OmegaConf.register_new_resolver("heldout_metric", lambda *, _root_: split_metric(_root_.task, "heldout"))


def readable_safetensors(path: Path) -> bool:
    """Whether `path` has a complete safetensors header (cheap: reads the header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
        return True
    except Exception:
        return False


def resolve_init_from(cfg: Any) -> Path | None:
    """The trainable.safetensors a run starts from (see `init_from` in conf/config.yaml)."""
    value = cfg.get("init_from")
    if not value:
        return None
    path = _init_from_path(cfg, value)
    if not readable_safetensors(path):
        raise ConfigError(f"init_from={value}: {path} is not a readable safetensors file (truncated, or another "
                          f"format); name a run folder or its checkpoint/{TRAINABLE_FILE}")
    return path


def _init_from_path(cfg: Any, value: Any) -> Path:
    path = Path(str(value)).expanduser()
    if not path.exists() and not path.is_absolute() and str(value).startswith(f"{RUNS_DIR}/"):
        path = Path(str(cfg.output_root)) / path  # a run folder as a study names it: under output_root
    if path.is_file():
        return path
    if path.is_dir():
        # The paper starts from the best MNLI checkpoint: a run that kept it (train.keep_best) gives it.
        for candidate in (path / BEST_FILE, path / CHECKPOINT_FILE, path / TRAINABLE_FILE):
            if candidate.is_file():
                return candidate
        raise ConfigError(f"init_from={value}: no {CHECKPOINT_FILE} in that folder (did that run finish?)")
    if "/" in str(value):
        raise ConfigError(f"init_from={value} does not exist" + (
            " (the run it starts from has not finished: a study runs that phase first)"
            if str(value).startswith(f"{RUNS_DIR}/") else ""))
    runs = Path(str(cfg.output_root)) / RUNS_DIR / str(value) / cfg.model.name / cfg.method.name
    done = []
    for record_path in sorted(runs.glob(f"*_seed{cfg.seed}/{RECORD_NAME}")):
        weights = record_path.parent / CHECKPOINT_FILE
        if finished_record(record_path.parent) and weights.is_file():
            done.append(weights)
    if not done:
        raise ConfigError(f"init_from={value}: no finished {value} run of {cfg.model.name} + {cfg.method.name} "
                          f"seed {cfg.seed} under {runs} (run that task first)")
    if len(done) > 1:
        raise ConfigError(f"init_from={value}: {len(done)} finished runs match under {runs}; name one run folder instead")
    return done[0]


def finished_record(run_dir: Path) -> dict | None:
    """The folder's record when its run finished ok (a re-run skips it unless overwrite=true)."""
    record = existing_record(run_dir)
    return record if record and record.get("status") == "ok" else None


def lacks_weights(cfg: Any, run_dir: Path) -> bool:
    """A finished run whose config asks for saved weights (save_checkpoint=true) that its folder does
    not hold: save_checkpoint is no part of the recipe, so a run another study made without weights
    has the same folder, and is trained again to save them (`make weights` needs them)."""
    return bool(cfg.get("save_checkpoint")) and not (Path(run_dir) / CHECKPOINT_FILE).is_file()


def existing_record(run_dir: Path) -> dict | None:
    """The folder's record, {"status": "unreadable"} when it is not one (truncated, not JSON, not
    an object), None when there is none."""
    path = run_dir / RECORD_NAME
    if not path.is_file():
        return None
    record, _ = read_run_record(path)
    return record if record is not None else {"status": "unreadable"}


def check_writable(output_root: str) -> None:
    """Fail before Hydra makes folders, naming the path, when runs could not be written."""
    if not str(output_root or "").strip():
        raise ConfigError("output_root is empty (an unset shell variable?): runs would land at the filesystem "
                          "root; give a folder, e.g. output_root=outputs")
    path = Path(output_root).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output_root={output_root} is not writable ({probe} does not accept new files)")


def check_run_dir_writable(folder: Path) -> None:
    """A run folder that exists (a re-run with overwrite=true, a resume) but cannot be written is one
    line before Hydra opens train.log in it (probe 57: two tracebacks from the logging set-up)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    blocked = [p for p in (folder, *(folder / n for n in ("train.log", RECORD_NAME))) if p.exists()
               and not os.access(p, os.W_OK)]
    if blocked:
        raise ConfigError(f"run folder {folder} is not writable ({blocked[0]} is read-only): make it writable "
                          f"(chmod -R u+w), or run into another output_root=")


class RunDirLock:
    """An exclusive lock file in the run folder (O_EXCL create) holding "host pid". Its holder
    touches it every HEARTBEAT_S seconds; a lock is stale (taken over, with a message) when its
    heartbeat is older than STALE_S (any host: a pre-empted job requeued on another node continues),
    when its process is gone on this host, or when it names this very process (a restarted
    container reuses PIDs). A live one is one line naming the holder and the lock file."""

    HEARTBEAT_S = 60.0
    STALE_S = 600.0
    # A lock file is created empty and written a moment later; an empty one younger than this is
    # taken as a live holder between those two steps, not as a stale lock.
    FRESH_S = 10.0
    _held: set[Path] = set()  # the lock files this process holds now

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _holder_alive(self) -> tuple[bool, str]:
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return False, "?"
        if not text.strip() and age < self.FRESH_S:
            return True, "(starting)"
        try:
            host, pid = text.split()
        except ValueError:
            return False, "?"
        if age > self.STALE_S:
            return False, f"{pid} on {host}, silent for {age / 60:.0f} min"
        if host != socket.gethostname():
            return True, f"{pid} on {host}"
        if int(pid) == os.getpid():
            if self.path.resolve() in RunDirLock._held:
                return True, pid
            return False, f"{pid} (this process's PID, left before a restart)"
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False, pid
        except PermissionError:
            pass
        return True, pid

    def check_free(self) -> None:
        """One line when a live job holds the folder: asked before Hydra writes the job's .hydra/
        files into it, so a refused job never rewrites the running one's provenance (probe D7)."""
        if self.path.exists():
            alive, who = self._holder_alive()
            if alive:
                raise self._in_use(who)

    def _in_use(self, who: str) -> FolderInUse:
        return FolderInUse(f"run folder {self.path.parent} is in use by process {who} (lock file {self.path}; "
                           f"if no job is running there, delete it)")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                alive, who = self._holder_alive()
                if alive:
                    raise self._in_use(who) from None
                if who != "?":
                    print(f"taking over a stale lock of process {who}: {self.path}", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{socket.gethostname()} {os.getpid()}\n")
            RunDirLock._held.add(self.path.resolve())
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return self
        raise ConfigError(f"could not lock run folder {self.path.parent} (lock file {self.path})")

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        RunDirLock._held.discard(self.path.resolve())
        self.path.unlink(missing_ok=True)
