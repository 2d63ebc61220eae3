"""The `mlflow.pyfunc` wrapper around a saved HF vision-language model folder.

MLflow's transformers flavor does not support image-text-to-text, so the registry stores the
plain HF folder (safetensors) as an artifact and this class answers (image, question) rows.
The model is logged "from code" (this file's path, see ``set_model`` below), so loading it never
unpickles a Python object.
"""

from __future__ import annotations

import base64
from typing import Any

import mlflow.models
import mlflow.pyfunc


class VisionLanguagePyfunc(mlflow.pyfunc.PythonModel):
    """predict(DataFrame[question, image?]) -> list of greedy answers. ``image`` is PNG/JPEG bytes or base64."""

    def load_context(self, context: Any) -> None:
        from unlearn_core.config import ModelConfig
        from unlearn_core.models.loading import load_model_and_processor

        folder = context.artifacts["hf_model"]
        self.model, self.processor = load_model_and_processor(folder, ModelConfig(spec=folder))
        self.model.eval()
        size = getattr(self.processor.image_processor, "size", None) or {}
        self.image_size = int(size.get("height") or size.get("shortest_edge") or 64)

    # No type hints on predict's arguments: MLflow would try (and fail) to infer a schema from them.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        from unlearn_core.data.encode import prepare_image
        from unlearn_core.models.generate import generate

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        prompts = []
        for row in rows:
            image = row.get("image")
            if isinstance(image, str):
                image = base64.b64decode(image)
            arr = prepare_image(image, self.image_size) if image else None
            prompts.append({"question": row["question"], "image": arr})
        max_new = int((params or {}).get("max_new_tokens", 48))
        return generate(self.model, self.processor, prompts, max_new_tokens=max_new)


mlflow.models.set_model(VisionLanguagePyfunc())
