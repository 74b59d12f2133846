"""The plain way to serve AlexNet with Gradio, to compare ours against over HTTP in the same run.

    python -m benchmarks.baseline_app --host 127.0.0.1 --port 7861

What a tutorial builds: ``gr.Image(type="pil")`` (Gradio decodes the upload), torchvision's ``alexnet()`` as
is (seeded, untrained: speed does not depend on the weights), Captum's defaults (``IntegratedGradients`` at
50 steps in one batch, ``Saliency``, ``LayerGradCam`` on the last conv layer), a jet heatmap blended on the
picture, Gradio's default queue and image format. Its ``/predict`` and ``/explain`` take the arguments ours
take, so the same client call drives both.
"""

from __future__ import annotations

import argparse
from typing import Any

import gradio as gr
import matplotlib
import numpy as np
import torch
import torchvision
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency
from PIL import Image
from torchvision import transforms


def build() -> gr.Blocks:
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    categories = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    crop = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    normalise = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def predict(image: Image.Image) -> dict[str, float]:
        x = normalise(crop(image.convert("RGB"))).unsqueeze(0)
        with torch.no_grad():
            top = torch.softmax(model(x)[0], dim=0).topk(5)
        return {categories[int(i)]: float(p) for p, i in zip(top.values, top.indices, strict=True)}

    def explain(image: Image.Image, method: str, target: str) -> Image.Image:
        view = crop(image.convert("RGB"))
        x = normalise(view).unsqueeze(0).requires_grad_(True)
        with torch.no_grad():
            cls = int(target) if target else int(model(x).argmax())
        attr: Any
        if method == "integrated_gradients":
            attr = IntegratedGradients(model).attribute(x, target=cls)
        elif method == "gradcam":
            cam = LayerGradCam(model, model.features[10]).attribute(x, target=cls)
            attr = LayerAttribution.interpolate(cam, (224, 224))
        else:
            attr = Saliency(model).attribute(x, target=cls)
        heat = attr.detach().abs().sum(dim=1)[0]
        heat = (heat / heat.max().clamp_min(1e-12)).numpy()
        colour = matplotlib.colormaps["jet"](heat)[..., :3]
        blended = 0.4 * np.asarray(view, dtype=np.float32) / 255 + 0.6 * colour
        return Image.fromarray((blended * 255).astype(np.uint8))

    with gr.Blocks() as demo:
        image = gr.Image(type="pil")
        method, target = gr.Textbox(), gr.Textbox()
        label, overlay = gr.Label(num_top_classes=5), gr.Image()
        gr.Button("Predict").click(predict, [image], [label], api_name="predict")
        gr.Button("Explain").click(explain, [image, method, target], [overlay], api_name="explain")
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args(argv)
    build().launch(server_name=args.host, server_port=args.port, show_error=False)


if __name__ == "__main__":
    main()
