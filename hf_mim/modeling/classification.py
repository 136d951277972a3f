"""Encoder plus a linear head for fine-tuning and probing, shared by every method."""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from .backbone import MIMConfig, pool
from .base import MIMPreTrainedModel, ViTEncoder


class MIMForImageClassification(MIMPreTrainedModel):
    """`AutoModelForImageClassification.from_pretrained(checkpoint, num_labels=K)` gives this: the pretrained
    encoder (no masking) and a new linear head on the pooled feature (`config.pooling`: CLS or mean of patches).

    The loss follows transformers' convention from `config.problem_type` (inferred when unset): cross-entropy for
    single-label, BCE-with-logits for multi-label, MSE for regression.
    """

    _keys_to_ignore_on_load_unexpected = [r"^(?!vit\.|classifier\.)"]

    def __init__(self, config: MIMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vit = ViTEncoder.part_of(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        if module is getattr(self, "classifier", None) and isinstance(module, nn.Linear):
            # MAE's fine-tuning head: tiny weights so the new head barely perturbs the pretrained features at first.
            init.trunc_normal_(module.weight, std=2e-5)
            init.zeros_(module.bias)
            return
        super()._init_weights(module)

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
    ) -> ImageClassifierOutput | tuple:
        output_hidden_states, return_dict = self._output_flags(output_hidden_states, return_dict)
        last_hidden_state, hidden_states, attentions = self.vit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            output_attentions=self._attention_flag(output_attentions),
        )
        logits = self.classifier(pool(last_hidden_state, self.config.pooling))
        loss = None if labels is None else self._loss(logits, labels)
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)
        return output if return_dict else output.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(logits.device)
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float().view(-1))
        if self.config.problem_type == "single_label_classification":
            return nn.functional.cross_entropy(logits.float().view(-1, self.num_labels), labels.view(-1))
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())


__all__ = ["MIMForImageClassification", "MIMConfig"]
