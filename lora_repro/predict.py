"""Use a finished run: `python -m lora_repro.predict RUN_DIR "a sentence" ["another" ...]` prints each
text's predicted class and probabilities (or score, for regression); `--export DIR` writes the
adapter in peft's format (adapter_config.json + adapter_model.safetensors, loadable with
PeftModel.from_pretrained) plus the trained task head (head.safetensors), for peft-based methods
and GPT-2's fused q,v LoRA (converted exactly to peft's LoRA on c_attn);
`--merge DIR` the merged model (the method's weights folded into the backbone, for LoRA, its peft
variants, full FT, BitFit) as a plain transformers model with its tokenizer; `--push REPO_ID`
uploads either folder to the Hugging Face Hub.

`load_run(run_dir)` rebuilds the run's model from its record's resolved config, through the same
assembly step as training, and loads its trained tensors: the weights the record reports
(checkpoint/trainable.safetensors; `best=True` takes checkpoint/best.safetensors, kept with
train.keep_best)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from transformers import set_seed

from .assembly import Built, build
from .backbone import head_parameter_names, load_tokenizer
from .config import validate
from .errors import ConfigError
from .record import BEST_FILE, CHECKPOINT_FILE, RECORD_NAME, read_run_record


@dataclass
class LoadedRun:
    cfg: DictConfig
    built: Built
    tokenizer: Any
    record: dict


def load_run(run_dir: str | Path, best: bool = False) -> LoadedRun:
    run_dir = Path(run_dir)
    record, why = read_run_record(run_dir / RECORD_NAME)
    if record is None:
        raise ConfigError(f"{run_dir} holds no readable run record ({why or 'no record.json'})")
    if record.get("status") != "ok":
        raise ConfigError(f"{run_dir}: the run did not finish ok ({record.get('error') or record.get('status')})")
    weights = run_dir / (BEST_FILE if best else CHECKPOINT_FILE)
    if not weights.is_file():
        raise ConfigError(f"{weights} does not exist (the run was made with save_checkpoint=false"
                          + (", or without train.keep_best" if best else "") + ")")
    cfg = OmegaConf.create(record["config"])
    cfg.task.data_dir = None  # the data is not needed to predict
    cfg.init_from = None      # what the run started from is inside its trained tensors already
    method = validate(cfg)
    set_seed(int(cfg.seed))   # as the trainer does before building: a random-init backbone is the run's own
    built = build(cfg, method)
    state = load_file(str(weights))
    own = {n for n, p in built.model.named_parameters() if p.requires_grad}
    if set(state) != own:
        raise ConfigError(f"{weights} does not fit the model its record describes ({len(set(state) ^ own)} tensors differ)")
    built.model.load_state_dict(state, strict=False)
    built.model.eval()
    return LoadedRun(cfg, built, load_tokenizer(cfg.model), record)


def predict(run: LoadedRun, texts: list[str]) -> list[dict[str, Any]]:
    """The run's task predicts (lora_repro.tasks): a class and its probabilities, a score, or, for
    E2E runs, the decoded text of each meaning representation."""
    return run.built.task.predict(run.built.model, run.tokenizer, texts)


def export_peft(run: LoadedRun, out: str | Path) -> list[Path]:
    """peft's own files (adapter_config.json, adapter_model.safetensors) for a peft-based method,
    and the trained task head beside them (peft's save keeps only what it injected)."""
    from peft import PeftModel

    from .methods.lora import FusedQKVLoRA, fused_to_peft

    model = run.built.model
    if any(isinstance(m, FusedQKVLoRA) for m in model.modules()):
        model = fused_to_peft(model)  # GPT-2's fused q,v LoRA in peft's own names, exactly
    if not isinstance(model, PeftModel):
        raise ConfigError(f"method {run.cfg.method.name} is not built with peft (its trained tensors are "
                          f"checkpoint/trainable.safetensors); export serves peft-based methods")
    out = Path(out)
    model.save_pretrained(str(out))
    head = head_parameter_names(model, run.built.head)
    head_state = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if n in head}
    save_file(head_state, str(out / "head.safetensors"))
    return sorted(out.iterdir())


def export_merged(run: LoadedRun, out: str | Path) -> list[Path]:
    """The trained model as a plain transformers model (the method's weights folded into the
    backbone: Method.merged) with its tokenizer: `AutoModelFor...from_pretrained(out)` loads it with no
    project code. LoRA's merge adds s B A to W, so the merged model computes what the run computes."""
    out = Path(out)
    merged = run.built.method.merged(run.built.model)
    merged.save_pretrained(str(out))
    run.tokenizer.save_pretrained(str(out))
    return sorted(out.iterdir())


def push(folder: Path, repo_id: str) -> str:
    """Upload an exported folder to the Hugging Face Hub (`huggingface-cli login` first)."""
    import os

    from huggingface_hub import HfApi

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ConfigError(f"--push {repo_id}: HF_HUB_OFFLINE=1 is set (no network); unset it on a machine with one, "
                          f"or upload {folder} later with `huggingface-cli upload {repo_id} {folder}`")
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("texts", nargs="*")
    parser.add_argument("--best", action="store_true", help="the best evaluation's weights (train.keep_best)")
    parser.add_argument("--export", default=None, metavar="DIR", help="write the adapter in peft's format")
    parser.add_argument("--merge", default=None, metavar="DIR",
                        help="write the merged model (method folded into the backbone) + tokenizer, plain transformers")
    parser.add_argument("--push", default=None, metavar="REPO_ID",
                        help="upload what --export or --merge wrote to the Hugging Face Hub")
    args = parser.parse_args(argv)
    try:
        run = load_run(args.run_dir, best=args.best)
        if args.push and not (args.export or args.merge):
            raise ConfigError("--push uploads what --export DIR or --merge DIR writes: give one of them")
        for folder, writer in ((args.export, export_peft), (args.merge, export_merged)):
            if folder:
                for path in writer(run, folder):
                    print(f"wrote {path}")
                if args.push:
                    print(f"pushed {folder} to {push(Path(folder), args.push)}")
        for row in predict(run, args.texts) if args.texts else []:
            print(row)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
