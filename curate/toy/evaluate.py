"""How well the toy model answers held-out toy samples, unmasked and under PISM block masks.

An answer counts when ``curate.grading.grade`` says it is correct: the same δ PISM and the GRPO reward
use (OCR accepts near misses, boxes need IoU >= 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from curate.grading import grade
from curate.scoring.masks import mask_image
from curate.toy.corpus import ToySample
from curate.toy.train import prompt_text

if TYPE_CHECKING:
    from PIL import Image
    from transformers import PreTrainedModel, ProcessorMixin


def generate(model: "PreTrainedModel", processor: "ProcessorMixin", questions: Sequence[str],
             images: Sequence["Image.Image"], max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """Greedy responses through transformers' ``generate`` (left-padded batches)."""
    import torch

    responses: list[str] = []
    for start in range(0, len(questions), batch_size):
        texts = [prompt_text(processor, q) for q in questions[start : start + batch_size]]
        inputs = processor(text=texts, images=list(images[start : start + batch_size]), return_tensors="pt",
                           padding=True, padding_side="left")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        responses.extend(processor.batch_decode(new, skip_special_tokens=True))
    return responses


@dataclass
class EvalResult:
    ratios: list[float]
    # task -> accuracy per ratio (mean over samples and mask realizations)
    accuracy: dict[str, list[float]] = field(default_factory=dict)
    # sample id -> correct answers per ratio (out of `realizations`)
    per_sample: dict[str, list[int]] = field(default_factory=dict)
    realizations: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "realizations": self.realizations, "accuracy": self.accuracy}

    def table(self) -> str:
        head = "task        " + " ".join(f"λ={r:<5g}" for r in self.ratios)
        rows = [f"{task:<11} " + " ".join(f"{a:7.3f}" for a in accs) for task, accs in self.accuracy.items()]
        return "\n".join([head, *rows])


def evaluate(model: "PreTrainedModel", processor: "ProcessorMixin", samples: Sequence[ToySample],
             ratios: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 0.9), realizations: int = 1, seed: int = 0,
             batch_size: int = 64) -> EvalResult:
    """Accuracy per task at each block-mask ratio; realization k of a sample is PISM's (id, λ, k, seed)."""
    from PIL import Image

    result = EvalResult(ratios=list(ratios), realizations=realizations)
    result.per_sample = {s.id: [0] * len(ratios) for s in samples}
    for j, ratio in enumerate(ratios):
        for k in range(realizations if ratio > 0 else 1):
            images = [mask_image(Image.fromarray(s.image), ratio, "block", sample_id=s.id, k=k, seed=seed)
                      for s in samples]
            responses = generate(model, processor, [s.question for s in samples], images, batch_size=batch_size)
            for s, response in zip(samples, responses):
                if grade(s.task, response, s.answer).correct:
                    result.per_sample[s.id][j] += 1 if ratio > 0 else realizations
    tasks = sorted({s.task for s in samples}, key=[s.task for s in samples].index)
    for task in tasks:
        ids = [s.id for s in samples if s.task == task]
        result.accuracy[task] = [
            round(sum(result.per_sample[i][j] for i in ids) / (len(ids) * realizations), 4)
            for j in range(len(ratios))
        ]
    return result
