"""Prefix-embedding (PreEmbed) and prefix-layer (PreLayer) tuning as the LoRA paper defines them
(Section 5.1), written here because peft's prefix tuning is a different model: it learns per-layer
keys and values (2 x L x d per token) and has no infix tokens.

Both insert l_p prefix and l_i infix *virtual tokens* into every sequence, the backbone frozen:
  PreEmbed  the virtual tokens' word embeddings are trainable:            |Theta| = d (l_p + l_i)
  PreLayer  the virtual tokens' activations entering every transformer
            block are trainable (replaced, not added):                    |Theta| = L d (l_p + l_i)

Where the virtual tokens go:
  prefix  right after the first token for encoders, whose head reads position 0 ([CLS]/<s>), at
          the very start for decoders (model.decoder);
  infix   before the first supervised token of a causal-LM batch (the boundary between prompt and
          target, e.g. between an E2E meaning representation and its text), else after the last
          real token of each row. Batches must be right-padded.
Virtual tokens are attended to like real ones and get label -100.

The model is wrapped: inputs are turned into `inputs_embeds` with the virtual slots filled in, which
every family here accepts (BERT, RoBERTa, DeBERTa-v2, GPT-2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..arch import arch_of
from ..backbone import find_blocks, hidden_size
from ..errors import ConfigError
from ..kinds import kind_of
from .base import Method, freeze_all

IGNORE_INDEX = -100


def virtual_layout(attention_mask: torch.Tensor, labels: torch.Tensor | None, n_prefix: int, n_infix: int,
                   lead: int) -> torch.Tensor:
    """For each row, where every position of the extended sequence comes from: an index >= 0 into
    the original row, or -(k + 1) for virtual token k (prefix 0..l_p-1, then infix)."""
    batch, length = attention_mask.shape
    lengths = attention_mask.sum(dim=1)
    if not torch.equal(attention_mask, (torch.arange(length, device=attention_mask.device) < lengths[:, None]).to(attention_mask.dtype)):
        raise ValueError("prefix methods need right-padded batches (attention_mask of 1s then 0s)")
    rows = []
    for i in range(batch):
        n = int(lengths[i])
        split = n
        if labels is not None and labels.dim() == 2:
            supervised = (labels[i, :n] != IGNORE_INDEX).nonzero()
            if len(supervised):
                split = int(supervised[0])
        split = max(split, lead)
        prefix = [-(k + 1) for k in range(n_prefix)]
        infix = [-(n_prefix + k + 1) for k in range(n_infix)]
        rows.append(list(range(lead)) + prefix + list(range(lead, split)) + infix + list(range(split, length)))
    return torch.tensor(rows, device=attention_mask.device)


class VirtualTokenModel(nn.Module):
    """Wraps a transformers model; inserts virtual tokens and fills them with trainable vectors,
    at the word-embedding level (per_layer=False) or at the input of every block (per_layer=True)."""

    def __init__(self, model: nn.Module, n_prefix: int, n_infix: int, per_layer: bool, lead: int):
        super().__init__()
        self.model = model
        self.config = model.config
        self.n_prefix, self.n_infix = n_prefix, n_infix
        self.lead = lead  # real tokens kept in front of the prefix
        d = hidden_size(model)
        n_virtual = n_prefix + n_infix
        self.per_layer = per_layer
        blocks = list(find_blocks(model)) if per_layer else []  # a plain list: not registered twice
        shape = (len(blocks), n_virtual, d) if per_layer else (n_virtual, d)
        # Initialised from real word embeddings (as Li & Liang recommend for stability): a fixed
        # random choice of vocabulary rows, the same for every layer.
        vocab = model.get_input_embeddings().weight
        rows = torch.randperm(vocab.shape[0], generator=torch.Generator().manual_seed(0))[:n_virtual]
        init = vocab.detach()[rows.to(vocab.device)].clone()
        self.virtual = nn.Parameter(init.expand(shape).clone() if per_layer else init)
        self._slots: tuple[torch.Tensor, torch.Tensor] | None = None
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(self._layer_hook(index), with_kwargs=True)

    def _layer_hook(self, index: int):
        """Replace the virtual positions of the hidden states entering block `index`."""

        def hook(module, args, kwargs):
            if self._slots is None:
                return None
            is_virtual, which = self._slots
            hidden = args[0] if args else kwargs["hidden_states"]
            if hidden.shape[1] != is_virtual.shape[1]:
                return None  # a cached decoding step: only new, real tokens
            if hidden.shape[0] != is_virtual.shape[0]:  # beam search repeats each row num_beams times
                repeat = hidden.shape[0] // is_virtual.shape[0]
                is_virtual, which = is_virtual.repeat_interleave(repeat, 0), which.repeat_interleave(repeat, 0)
            hidden = torch.where(is_virtual[..., None], self.virtual[index][which].to(hidden.dtype), hidden)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def _extend(self, input_ids, attention_mask, labels):
        """The sequence with virtual tokens laid in: embeddings, mask, and where the virtual slots are."""
        source = virtual_layout(attention_mask, labels, self.n_prefix, self.n_infix, self.lead)
        is_virtual = source < 0
        real = source.clamp(min=0)
        which = (-source - 1).clamp(min=0)
        embeds = self.model.get_input_embeddings()(torch.gather(input_ids, 1, real))
        if not self.per_layer:
            embeds = torch.where(is_virtual[..., None], self.virtual[which].to(embeds.dtype), embeds)
        new_mask = torch.where(is_virtual, torch.ones_like(real), torch.gather(attention_mask, 1, real))
        return source, real, is_virtual, which, embeds, new_mask

    @torch.no_grad()
    def generate(self, input_ids, attention_mask=None, **kwargs):
        """transformers' generate on a left-padded prompt (its usual contract): the prefix, the
        prompt, then the infix (where the target begins), fed as inputs_embeds. Returns the prompt
        ids followed by the new tokens, as generate does for input_ids."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        lengths = attention_mask.sum(dim=1)
        width = input_ids.shape[1]
        # Left -> right padding (the layout's convention), lay in the virtual tokens, back to left.
        rows = range(input_ids.shape[0])
        right_ids = torch.stack([input_ids[i].roll(-(width - int(lengths[i]))) for i in rows])
        right_mask = torch.stack([attention_mask[i].roll(-(width - int(lengths[i]))) for i in rows])
        _, _, is_virtual, which, embeds, new_mask = self._extend(right_ids, right_mask, None)
        total = new_mask.shape[1]
        shifts = [total - int(n) for n in new_mask.sum(dim=1)]
        embeds = torch.stack([embeds[i].roll(shifts[i], 0) for i in rows])
        new_mask = torch.stack([new_mask[i].roll(shifts[i]) for i in rows])
        is_virtual = torch.stack([is_virtual[i].roll(shifts[i]) for i in rows])
        which = torch.stack([which[i].roll(shifts[i]) for i in rows])
        self._slots = (is_virtual, which) if self.per_layer else None
        try:
            new_tokens = self.model.generate(inputs_embeds=embeds, attention_mask=new_mask, **kwargs)
        finally:
            self._slots = None
        return torch.cat([input_ids, new_tokens], dim=1)

    def forward(self, input_ids, attention_mask=None, labels=None, token_type_ids=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        source, real, is_virtual, which, embeds, new_mask = self._extend(input_ids, attention_mask, labels)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.where(is_virtual, 0, torch.gather(token_type_ids, 1, real))
        if labels is not None and labels.dim() == 2:  # token-level labels (causal LM)
            labels = torch.where(is_virtual, IGNORE_INDEX, torch.gather(labels, 1, real))
        self._slots = (is_virtual, which) if self.per_layer else None
        try:
            return self.model(inputs_embeds=embeds, attention_mask=new_mask, labels=labels, **kwargs)
        finally:
            self._slots = None


@dataclass
class VirtualTokens(Method):
    """PreEmbed (per_layer=False) and PreLayer (per_layer=True)."""

    name: str = "prefix_embed"
    n_prefix: int = 8      # l_p
    n_infix: int = 0       # l_i
    per_layer: bool = False

    family: ClassVar[str] = "prefix"

    def __post_init__(self) -> None:
        for key in ("n_prefix", "n_infix"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"method.{key} must be an integer >= 0, got {value!r}")
        if self.n_prefix + self.n_infix == 0:
            raise ConfigError("method.n_prefix + method.n_infix must be > 0")

    def check(self, model_cfg: Any, task_cfg: Any) -> None:
        if model_cfg.get("decoder") and kind_of(task_cfg).classifier:
            # GPT2ForSequenceClassification finds the last real token from input_ids, which a
            # model fed inputs_embeds cannot give it.
            raise ConfigError(f"{self.name} on decoder {model_cfg.name} supports language-modelling tasks only, not {task_cfg.name}")
        max_positions = arch_of(model_cfg).positions
        total = int(task_cfg.max_length) + self.n_prefix + self.n_infix
        if max_positions and total > max_positions:
            raise ConfigError(
                f"{self.name}: task.max_length {task_cfg.max_length} + {self.n_prefix} prefix + {self.n_infix} infix "
                f"tokens = {total} exceeds {model_cfg.name}'s {max_positions} positions"
            )

    def apply(self, model: nn.Module, model_cfg: Any) -> nn.Module:
        freeze_all(model)
        # An encoder's head reads position 0 ([CLS], <s>): the prefix goes right after it.
        lead = 0 if model_cfg.get("decoder") else 1
        return VirtualTokenModel(model, self.n_prefix, self.n_infix, self.per_layer, lead)

    def formula_params(self, d_model: int, n_layers: int, model_cfg: Any = None) -> int:
        return (n_layers if self.per_layer else 1) * d_model * (self.n_prefix + self.n_infix)
