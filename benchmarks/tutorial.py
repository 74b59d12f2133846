"""The tutorial way, for the speed-ups: what a notebook does with torchvision's alexnet(), matplotlib and Captum."""

from __future__ import annotations

import io
import math
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar


class Tutorial:
    """What a notebook tutorial does: torchvision's alexnet() as is (parameters trainable, in-place ReLUs),
    forward hooks on the convs, one matplotlib subplot per channel, Captum's visualize_image_attr."""

    CONVS: ClassVar[dict[str, int]] = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}

    def __init__(self, torch: Any, image: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import torchvision
        from torchvision import transforms

        self.torch, self.image = torch, image
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = torchvision.models.alexnet(weights=None).eval()
        self.transform = transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])
        self.categories = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]

    def warm(self) -> None:
        """Import and initialise matplotlib and Captum's visualisation with one tiny figure each."""
        import matplotlib.pyplot as plt
        import numpy as np
        from captum.attr import visualization as viz

        fig, axes = plt.subplots(2, 2, figsize=(2, 2))
        for ax in axes.flat:
            ax.imshow(np.zeros((4, 4)), cmap="viridis")
            ax.axis("off")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig, _ = viz.visualize_image_attr(np.random.rand(8, 8, 3), np.random.rand(8, 8, 3),
                                              method="blended_heat_map", sign="absolute_value")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)

    def _channels_figure(self, act: Any) -> None:
        import matplotlib.pyplot as plt

        n = act.shape[0]
        cols = math.ceil(math.sqrt(n))
        rows = math.ceil(n / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(cols, rows))
        for i, ax in enumerate(axes.flat):
            if i < n:
                ax.imshow(act[i].numpy(), cmap="viridis")
            ax.axis("off")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)

    def view(self, parts: dict[str, list[float]] | None = None) -> None:
        """The same view as ``full_view``: top-5, conv1 filters, the five conv grids, a saliency map."""
        import matplotlib.pyplot as plt
        import numpy as np
        from captum.attr import Saliency
        from captum.attr import visualization as viz
        from PIL import Image

        torch = self.torch
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        image = Image.open(self.image).convert("RGB")
        x = self.transform(image).unsqueeze(0)
        features: dict[str, Any] = {}
        hooks = [self.model.features[i].register_forward_hook(
            lambda _m, _i, out, name=name: features.__setitem__(name, out.detach().clone()))
            for name, i in self.CONVS.items()]
        with torch.no_grad():
            logits = self.model(x)
        for hook in hooks:
            hook.remove()
        probs = torch.softmax(logits[0], dim=0)
        top = probs.topk(5)
        t["forward"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh([self.categories[int(i)] for i in top.indices][::-1], top.values.numpy()[::-1])
        fig.savefig(io.BytesIO(), format="png", bbox_inches="tight")
        plt.close(fig)
        weight = self.model.features[0].weight.detach()
        fig, axes = plt.subplots(8, 8, figsize=(8, 8))
        for w, ax in zip(weight, axes.flat, strict=False):
            w = (w - w.min()) / (w.max() - w.min())
            ax.imshow(w.permute(1, 2, 0).numpy())
            ax.axis("off")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
        t["top5_and_filters"] = time.perf_counter() - t0

        for name in self.CONVS:
            t0 = time.perf_counter()
            self._channels_figure(features[name][0])
            t[f"grid_{name}"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        xr = x.clone().requires_grad_(True)
        grads = Saliency(self.model).attribute(xr, target=int(top.indices[0]))
        original = (x[0] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
                    + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)).clamp(0, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plt.show() on the Agg backend
            fig, _ = viz.visualize_image_attr(np.transpose(grads[0].detach().numpy(), (1, 2, 0)),
                                              np.transpose(original.numpy(), (1, 2, 0)),
                                              method="blended_heat_map", sign="absolute_value",
                                              show_colorbar=True, title="Saliency")
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
        t["saliency"] = time.perf_counter() - t0
        if parts is not None:
            for key, value in t.items():
                parts.setdefault(key, []).append(value)

    def integrated_gradients(self) -> None:
        """Captum's defaults: n_steps=50, one batch of 50, zero baseline, no convergence delta."""
        from captum.attr import IntegratedGradients

        IntegratedGradients(self.model).attribute(self.x.clone().requires_grad_(True), target=self.target)

    def prepare_ig(self) -> None:
        from PIL import Image

        self.x = self.transform(Image.open(self.image).convert("RGB")).unsqueeze(0)
        with self.torch.no_grad():
            self.target = int(self.model(self.x)[0].argmax())
