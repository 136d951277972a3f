"""What `transformers.Trainer` needs to train hf_mim's methods that carry more than a loss."""

from __future__ import annotations

import os

from transformers import TrainerCallback

TEACHER_FILE = "ema_teacher.safetensors"


class EMATeacherCallback(TrainerCallback):
    """Updates the EMA teacher of a model that has one (C-MAE) once per optimizer step, and keeps it in Trainer's
    checkpoints: `Trainer(model, args, ..., callbacks=[EMATeacherCallback()])`.

    `on_step_end` runs once per optimizer step, after gradient accumulation, with the unwrapped model; the teacher
    is saved beside each checkpoint's weights and loaded back when training resumes from it.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or not hasattr(model, "teacher"):
            return
        model.teacher.total_steps = state.max_steps
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}", TEACHER_FILE)
        if state.global_step > 0 and os.path.isfile(checkpoint):
            load_teacher(model.teacher, checkpoint)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # the model's own per-step work: the teacher's EMA step (C-MAE, ADIOS-BYOL), the tokenizer's temperature
        if model is not None and hasattr(model, "after_optimizer_step"):
            model.after_optimizer_step(state.global_step, state.max_steps)

    def on_save(self, args, state, control, model=None, **kwargs):
        if model is not None and hasattr(model, "teacher") and state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            os.makedirs(folder, exist_ok=True)
            save_teacher(model.teacher, os.path.join(folder, TEACHER_FILE))


def save_teacher(teacher, path: str) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in teacher.module.state_dict().items()}
    save_file(
        tensors, path, metadata={"num_updates": str(teacher.num_updates), "total_steps": str(teacher.total_steps)}
    )


def load_teacher(teacher, path: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, "pt") as f:
        metadata = f.metadata() or {}
    total = metadata.get("total_steps")
    teacher.load_state_dict(
        {
            "module": load_file(path),
            "num_updates": int(metadata.get("num_updates", 0)),
            "total_steps": int(total) if total not in (None, "None") else None,
        }
    )


__all__ = ["EMATeacherCallback", "save_teacher", "load_teacher", "TEACHER_FILE"]
