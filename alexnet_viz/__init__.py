"""alexnet-viz: see what AlexNet computes - predictions, filters, feature maps and Captum attributions.

The library is the engine behind the app and the CLI::

    from alexnet_viz import Contrast, load_model, analyze, explain
    loaded = load_model("torchvision", weights="imagenet")   # or weights="none" / "file.safetensors"
    result = analyze(loaded, "photo.jpg")                    # one forward pass, every layer captured
    result.top_k                                             # (Prediction(index, label, probability), ...)
    attr = explain(loaded, result, "integrated_gradients")   # Captum, on the same input tensor
    why = explain(loaded, result, "gradcam", target=Contrast("tabby", "tiger cat"))  # why A and not B
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

# Lazy: `alexnet-viz summary` or `import alexnet_viz.render` should not pay for captum, PIL or gradio.
_EXPORTS = {
    "Analysis": "analysis", "Prediction": "analysis", "analyze": "analysis", "explain": "analysis",
    "ARCHITECTURES": "architectures", "build_model": "architectures",
    "METHODS": "attribution", "Contrast": "targets", "TargetError": "targets",
    "ImageNet": "weights", "Untrained": "weights", "WeightsFile": "weights",
    "ImageError": "images", "load_image": "images",
    "DeviceError": "model", "LoadedModel": "model", "load_model": "model",
    "WeightsError": "weights",
}

if TYPE_CHECKING:
    from .analysis import Analysis, Prediction, analyze, explain
    from .architectures import ARCHITECTURES, build_model
    from .attribution import METHODS
    from .images import ImageError, load_image
    from .model import DeviceError, LoadedModel, load_model
    from .targets import Contrast, TargetError
    from .weights import ImageNet, Untrained, WeightsError, WeightsFile


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "Analysis",
    "Contrast",
    "DeviceError",
    "ImageError",
    "ImageNet",
    "LoadedModel",
    "Prediction",
    "TargetError",
    "Untrained",
    "WeightsError",
    "WeightsFile",
    "__version__",
    "analyze",
    "build_model",
    "explain",
    "load_image",
    "load_model",
]
