"""Zero-shot: score a model as it is, with the dataset's two prompts, training nothing.

p(class 1) is the softmax over the image's cosine similarities to the two prompts (fairbench.training.zeroshot,
FairCLIP's `compute_vl_prob`), on the validation and test sets, under the same metric suite and result files as
every fine-tuned run. The weights are whatever `--arch` / `--pretrained` load (an open_clip tag, a `local-dir:` or
`hf-hub:` model, an OpenAI `.pt`, FairCLIP's `{'model_state_dict': ...}` `.pth`, safetensors). The scores do not
depend on the seed, so it runs once per arch (`seed_independent`) and tables show it as a single run.
"""

from __future__ import annotations

import time

from torch import nn

from fairbench.method import Method
from fairbench.registry import register_method


@register_method("zeroshot", description="zero-shot: score the model as loaded with the dataset's prompts "
                 "(trains nothing; one run per arch)")
class ZeroShot(Method):
    """No training: the scores of the loaded weights."""

    mode = "zero-shot"
    seed_independent = True

    def fit(self, model: nn.Module, context):
        from fairbench.training.trainer import TrainOutcome, precision_plan
        from fairbench.training.zeroshot import zero_shot_scores

        model.to(context.device)
        _, autocast = precision_plan(context.settings.precision, context.device)
        t0 = time.perf_counter()
        scores = {name: zero_shot_scores(model, data.images, context.tokenize, context.prompts, context.normalize,
                                         context.device, context.settings.eval_batch_size, autocast=autocast)
                  for name, data in (("val", context.val), ("test", context.test))}
        val_auc = context.auc(context.val.labels.numpy(), scores["val"])
        return TrainOutcome(best_epoch=-1, val_scores=scores["val"], test_scores=scores["test"],
                            history=[{"epoch": -1, "val_auc": val_auc}], eval_seconds=time.perf_counter() - t0,
                            trainable_parameters=0)
