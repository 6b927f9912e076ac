"""The E2E NLG Challenge's five metrics as lora-repro records them (an `evaluate` module): BLEU and
NIST from the official scorer's Python mteval port, METEOR, ROUGE-L and CIDEr from the MS-COCO code
(lora_repro.metrics.e2e; METEOR needs Java)."""

import datasets
import evaluate

from lora_repro.metrics.e2e import e2e_scores

_DESCRIPTION = "E2E NLG Challenge metrics (measure_scores.py --python): BLEU, NIST, METEOR, ROUGE_L, CIDEr."
_KWARGS = """
Args:
    predictions: one output text per meaning representation
    references: the list of human references of that meaning representation
Returns: {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"} as the official scorer prints them (BLEU 0..1)
"""
_CITATION = "Dusek, Novikova and Rieser 2020, Evaluating the state-of-the-art of End-to-End Natural Language Generation."


class LoraReproE2e(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        return e2e_scores([list(r) for r in references], list(predictions))
