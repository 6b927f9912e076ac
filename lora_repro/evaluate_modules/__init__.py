"""The project's metrics as local `evaluate` modules, for scoring outside the harness, offline:

    import evaluate
    from lora_repro.evaluate_modules import module_path
    glue = evaluate.load(module_path("glue"), "mrpc")       # accuracy + F1, as the harness records
    glue.compute(predictions=[1, 0, 1], references=[1, 1, 1])
    e2e = evaluate.load(module_path("e2e"))                  # BLEU, NIST, METEOR, ROUGE_L, CIDEr
    e2e.compute(predictions=["..."], references=[["...", "..."]])

Both call the harness's own code (lora_repro.metrics), so they give the same numbers as its records."""

from pathlib import Path

MODULES = {"glue": "lora_repro_glue", "e2e": "lora_repro_e2e"}


def module_path(name: str) -> str:
    """The folder `evaluate.load` reads for the project's `glue` or `e2e` metric."""
    if name not in MODULES:
        raise KeyError(f"no evaluate module {name!r}; available: {', '.join(MODULES)}")
    return str(Path(__file__).resolve().parent / MODULES[name])
