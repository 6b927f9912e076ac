"""What differs between kinds of task, behind one interface the trainer calls: how to build the
model, encode the data, and turn a trained model into the record's metrics.

  classification / regression   a sequence classifier with a fresh head; the Trainer's evaluation
                                of every non-train split gives the metrics (GLUE, Rotten Tomatoes)
  generation                    a causal LM; the Trainer evaluates the loss on the non-decoded
                                splits, and after training the decode splits are beam-searched and
                                scored with the E2E metrics (E2E NLG)"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

from .backbone import build_causal_lm, build_classifier
from .data import HELDOUT_SPLIT, TaskData, load_task
from .errors import ConfigError
from .kinds import kind_of
from .generation import (decode, general_text, group_references, lm_loss, smoothed_causal_lm_loss, tokenize_lm,
                         write_decoded)
from .metrics import constant_metrics, make_compute_metrics, predictions_from_logits

log = logging.getLogger(__name__)


def strip_eval_prefix(metrics: dict[str, float]) -> dict[str, float]:
    """Trainer names metrics `eval_<split>_<metric>` (several eval sets) or `eval_<metric>` (one);
    the record uses `<split>_<metric>` or `<metric>`, and drops the runtime counters."""
    out = {}
    for key, value in metrics.items():
        if not key.startswith("eval_") or key.endswith(("_runtime", "_per_second", "_loss")) or key == "eval_epoch":
            continue
        out[key[len("eval_"):]] = value
    return out


def evaluations(log_history: list[dict], key: str | None, reported: str | None = None) -> list[dict]:
    """One dict per evaluation in the Trainer's log, merging the per-split entries of that step;
    only those that have `key` (all when None). `reported`: the one reported split beside the
    held-out slice, whose metrics keep their usual names (`eval_accuracy`, not
    `eval_validation_accuracy`), so a run with a held-out slice is read like any other."""
    by_step: dict[int, dict] = {}
    prefix = f"eval_{reported}_"
    for entry in log_history:
        if any(k.startswith("eval_") for k in entry):
            merged = by_step.setdefault(entry["step"], {"step": entry["step"], "epoch": entry.get("epoch")})
            merged.update({("eval_" + k[len(prefix):] if reported and k.startswith(prefix) else k): v
                           for k, v in entry.items() if k.startswith("eval_")})
    return [e for _, e in sorted(by_step.items()) if key is None or key in e]


def pad_multiple(cfg: DictConfig) -> int | None:
    """Batches padded to a multiple of train.pad_to_multiple_of on CUDA (tensor cores); exact
    lengths on CPU, where it would only add work."""
    multiple = cfg.train.get("pad_to_multiple_of")
    return int(multiple) if multiple and torch.cuda.is_available() else None


def constant_scores(eval_dataset: Any, task_cfg: Any, reported: str | None) -> dict[str, float]:
    """The constant predictor's metrics on each evaluated split, named as the run's metrics are."""
    splits = eval_dataset if isinstance(eval_dataset, dict) else {None: eval_dataset}
    out = {}
    for split, ds in splits.items():
        prefix = "" if split is None or split == reported else f"{split}_"
        for name, value in constant_metrics(list(task_cfg.metrics), ds["labels"], task_cfg).items():
            out[prefix + name] = value
    return out


def by_length(ds):
    """An evaluation split ordered by token count, so each batch pads to similar lengths (metrics
    do not depend on the order; padding to the longest row of a random batch wastes most of it)."""
    lengths = [len(ids) for ids in ds["input_ids"]]
    return ds.select(sorted(range(len(lengths)), key=lengths.__getitem__))


class ClassificationTask:
    """GLUE-style classification and regression."""

    prediction_loss_only = False

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def head_modules(self) -> list[str]:
        return list(self.cfg.model.head_modules)

    def build_model(self) -> torch.nn.Module:
        return build_classifier(self.cfg.model, self.cfg.task)

    def encode(self, tokenizer: Any) -> TaskData:
        task_cfg = self.cfg.task
        data = load_task(task_cfg)
        fields = list(task_cfg.text_fields)

        def encode(batch: dict[str, list]) -> dict[str, list]:
            enc = tokenizer(*[batch[f] for f in fields], truncation=True, max_length=int(task_cfg.max_length))
            enc["labels"] = batch["label"]
            return enc

        def run(ds):
            return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=None)

        return TaskData(train=run(data.train), evals={k: by_length(run(v)) for k, v in data.evals.items()})

    def collator(self, tokenizer: Any):
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple(self.cfg))

    def before_training(self, model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
        """Record parts measured on the model before training (none for classifiers)."""
        return {}

    def compute_metrics(self):
        return make_compute_metrics(self.cfg.task)

    def results(self, trainer: Any, model: torch.nn.Module, tokenizer: Any, run_dir: Path,
                selected: dict | None, before: dict[str, Any]) -> dict[str, Any]:
        """The record's parts from the trained model: metrics at the reported step, the best
        evaluation, the curve, the constant predictor's scores, kept predictions. `selected`: the
        step early stopping restored (None without early stopping)."""
        key = f"eval_{self.cfg.task.main_metric}"
        splits = list(trainer.eval_dataset) if isinstance(trainer.eval_dataset, dict) else []
        dev = [s for s in splits if s != HELDOUT_SPLIT]
        reported = dev[0] if HELDOUT_SPLIT in splits and len(dev) == 1 else None
        history = evaluations(trainer.state.log_history, key, reported)
        if not selected and (not history or history[-1]["step"] != trainer.state.global_step):
            trainer.evaluate()
            history = evaluations(trainer.state.log_history, key, reported)
        # The curve keeps every evaluation, also those of only the watched splits (train.watch).
        curve = evaluations(trainer.state.log_history, None, reported)
        if selected:
            # Early stopping restored the selected step's weights: every split is evaluated once more,
            # there, and that is the run's result (the curve keeps what each evaluation saw).
            final = evaluations([{"step": selected["step"], **trainer.evaluate()}], key, reported)[0]
        else:
            final = history[-1]
        best = max(history, key=lambda e: e[key]) if history else final
        parts = {"eval_curve": [{"step": e["step"], "epoch": e["epoch"], **strip_eval_prefix(e)} for e in curve],
                 "metrics": strip_eval_prefix(final),
                 "best_metrics": {**strip_eval_prefix(best), "step": best["step"], "epoch": best["epoch"]},
                 "constant_metrics": constant_scores(trainer.eval_dataset, self.cfg.task, reported)}
        if self.cfg.train.get("keep_predictions"):
            parts["predictions"] = self.predictions(trainer, reported)
        return parts

    def predict(self, model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> list[dict[str, Any]]:
        """Classification: the class id, its name where the task has names, and the probabilities;
        regression (one output): the score. Pair tasks take "first [SEP] second"."""
        task = self.cfg.task
        pairs = [t.split(" [SEP] ", 1) if len(task.text_fields) == 2 else [t] for t in texts]
        if any(len(p) != len(task.text_fields) for p in pairs):
            raise ConfigError(f"task {task.name} takes {len(task.text_fields)} texts per example: write 'first [SEP] second'")
        batch = tokenizer(*list(zip(*pairs)), truncation=True, max_length=int(task.max_length), padding=True,
                          return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        names = list(((task.get("tsv") or {}).get("label_names")) or [])
        out = []
        for text, row in zip(texts, logits):
            if row.numel() == 1:  # a regression head
                out.append({"text": text, "score": float(row.reshape(-1)[0])})
                continue
            probs = torch.softmax(row, dim=-1)
            label = int(probs.argmax())
            out.append({"text": text, "label": label, "name": names[label] if label < len(names) else str(label),
                        "probabilities": [round(float(p), 4) for p in probs]})
        return out

    def predictions(self, trainer: Any, reported: str | None) -> dict[str, Any]:
        """The reported split's per-example predictions (class ids, or scores rounded to 1e-4) and
        labels, in the evaluation order (by length, the same for every run of the task and tokenizer),
        at the weights the metrics came from: what a bootstrap over dev examples resamples."""
        splits = trainer.eval_dataset
        name = reported or (next(iter(splits)) if isinstance(splits, dict) else "validation")
        if isinstance(splits, dict) and reported is None and len(splits) > 1:
            raise ConfigError(f"train.keep_predictions: this run reports {len(splits)} splits ({', '.join(splits)}); "
                              f"predictions are kept for a run with one reported split")
        ds = splits[name] if isinstance(splits, dict) else splits
        out = trainer.predict(ds)
        logits = out.predictions[0] if isinstance(out.predictions, tuple) else out.predictions
        predicted = predictions_from_logits(logits, self.cfg.task)
        as_value = (lambda v: round(float(v), 4)) if predicted.dtype.kind == "f" else int  # scores or class ids
        predicted, labels = [as_value(v) for v in predicted], [as_value(v) for v in out.label_ids]
        return {"split": name, "labels": labels, "predictions": predicted}


class GenerationTask:
    """Data-to-text with a causal LM (E2E NLG)."""

    prediction_loss_only = True  # evaluation is the loss; logits over the vocabulary are not kept

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.raw: TaskData | None = None

    def head_modules(self) -> list[str]:
        return []  # the LM head is the (tied) word embedding: frozen unless the method trains it

    def predict(self, model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> list[dict[str, Any]]:
        """Each text is a meaning representation (`name[The Eagle], food[French]`), decoded with the
        task's own generation settings (beam search, length penalty, no-repeat n-grams), as the run's
        test set was."""
        result = decode(model, tokenizer, list(texts), self.cfg.task, int(self.cfg.task.generation.batch_size))
        return [{"text": mr, "output": output} for mr, output in zip(texts, result.outputs)]

    def build_model(self) -> torch.nn.Module:
        model = build_causal_lm(self.cfg.model)
        model.loss_function = smoothed_causal_lm_loss(float(self.cfg.task.label_smoothing))
        return model

    def encode(self, tokenizer: Any) -> TaskData:
        self.raw = load_task(self.cfg.task)
        decode_splits = set(self.cfg.task.decode_splits)
        evals = {k: tokenize_lm(v, tokenizer, self.cfg.task, k) for k, v in self.raw.evals.items() if k not in decode_splits}
        return TaskData(train=tokenize_lm(self.raw.train, tokenizer, self.cfg.task, "train"), evals=evals)

    def before_training(self, model: torch.nn.Module, tokenizer: Any) -> dict[str, Any]:
        """Forgetting, part one: the LM loss on general text before this fine-tuning
        (`task.forgetting_rows`; "LoRA learns less and forgets less", Biderman et al. 2024)."""
        rows = self.cfg.task.get("forgetting_rows")
        if not rows:
            return {}
        text, sentences = general_text(int(rows))
        return {"forgetting": {"text": text, "lm_loss_before": lm_loss(model, tokenizer, sentences)}}

    def collator(self, tokenizer: Any):
        # Pads input_ids with the pad token and labels with -100, on the right (training batches).
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100,
                                      pad_to_multiple_of=pad_multiple(self.cfg))

    def compute_metrics(self):
        return None

    def results(self, trainer: Any, model: torch.nn.Module, tokenizer: Any, run_dir: Path,
                selected: dict | None, before: dict[str, Any]) -> dict[str, Any]:
        """The record's parts: the validation-loss curve, then (on the main process) the decoded
        splits' E2E metrics and files, and forgetting's part two."""
        from .metrics.e2e import SCORER_MODE, e2e_scores

        parts: dict[str, Any] = {"eval_loss_curve": [
            [e["step"], {k[len("eval_"):]: v for k, v in e.items() if k.endswith("loss")}]
            for e in evaluations(trainer.state.log_history, None)
        ] or None}
        if not trainer.is_world_process_zero():
            return {**parts, "metrics": {}}  # one process decodes and scores; under DDP the others are done
        task_cfg = self.cfg.task
        gen = task_cfg.generation
        metrics: dict[str, float] = {}
        decoding: dict[str, Any] = {}
        many = len(task_cfg.decode_splits) > 1
        for split in task_cfg.decode_splits:
            mrs, refs = group_references(self.raw.evals[split])
            if gen.max_mrs:
                mrs, refs = mrs[: int(gen.max_mrs)], refs[: int(gen.max_mrs)]
            log.info("decoding %d %s MRs (beam %s)", len(mrs), split, gen.num_beams)
            result = decode(model, tokenizer, mrs, task_cfg, int(gen.batch_size))
            files = write_decoded(run_dir, split, mrs, refs, result.outputs)
            scores = e2e_scores(refs, result.outputs)
            metrics.update({f"{split}_{k}" if many else k: v for k, v in scores.items()})
            decoding[split] = {**files, "mrs_decoded": len(mrs), "n_references": sum(len(r) for r in refs),
                               "decode_s": result.seconds, "new_tokens": result.new_tokens,
                               "mrs_per_s": len(mrs) / result.seconds if result.seconds else None}
        parts.update(metrics=metrics, decoding={"settings": dict(gen), "scorer": SCORER_MODE, **decoding})
        forgetting = before.get("forgetting")
        if forgetting:  # part two: the same text after training
            after = lm_loss(model, tokenizer, general_text(int(task_cfg.forgetting_rows))[1])
            parts["forgetting"] = {**forgetting, "lm_loss_after": after, "increase": after - forgetting["lm_loss_before"]}
        return parts


# lora_repro.kinds.TaskKind.runner -> the class that trains and scores that kind of task.
RUNNERS = {"sequence_classifier": ClassificationTask, "causal_lm": GenerationTask}


def task_runner(cfg: DictConfig) -> ClassificationTask | GenerationTask:
    return RUNNERS[kind_of(cfg.task).runner](cfg)
