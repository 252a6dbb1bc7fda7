"""An image captioner loaded from a LOCAL transformers folder (``save_pretrained`` layout).

The model class is configurable (``eval.captioner_class``): ``VisionEncoderDecoderModel`` (e.g. a
ViT+GPT2 captioner), ``BlipForConditionalGeneration``, ``AutoModelForImageTextToText`` or, on
transformers versions that still have it, ``AutoModelForVision2Seq``. The folder also holds the image
processor and the tokenizer (or one processor combining both). Nothing is downloaded
(``local_files_only=True``). Decoding is deterministic: greedy or beam search, no sampling.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evaluation.images import Images, ImageSet, progress

CAPTIONER_CLASSES = (
    "VisionEncoderDecoderModel",
    "BlipForConditionalGeneration",
    "AutoModelForImageTextToText",
    "AutoModelForVision2Seq",
)


def _model_class(name: str):
    import transformers

    if name not in CAPTIONER_CLASSES:
        raise ValueError(f"captioner class {name!r} is not supported; use one of {', '.join(CAPTIONER_CLASSES)}")
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(
            f"transformers {transformers.__version__} has no {name}; "
            f"use AutoModelForImageTextToText or the model's own class"
        )
    return cls


def _processors(path: Path):
    """(image processor, tokenizer) from a combined processor when there is one, else separately."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        proc = AutoProcessor.from_pretrained(path, local_files_only=True)
    except Exception:  # no combined processor in the folder: load the two parts below
        proc = None
    if proc is not None and hasattr(proc, "image_processor") and hasattr(proc, "tokenizer"):
        return proc.image_processor, proc.tokenizer
    return (
        AutoImageProcessor.from_pretrained(path, local_files_only=True),
        AutoTokenizer.from_pretrained(path, local_files_only=True),
    )


class Captioner:
    """``captioner(images) -> list[str]``, one caption per image, in order."""

    def __init__(
        self,
        path: str | Path | None,
        model_class: str = "VisionEncoderDecoderModel",
        device: str | None = None,
        max_new_tokens: int = 20,
        num_beams: int = 3,
        batch_size: int = 16,
    ):
        if path is None or not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"captioner not found: {path!r} must be a folder written by save_pretrained (config.json, "
                f"weights, image processor, tokenizer) of a transformers image-to-text model such as a "
                f"ViT-GPT2 VisionEncoderDecoderModel or BLIP; download it on a machine with internet and "
                f"set eval.captioner_path (and eval.captioner_class)"
            )
        self.path = Path(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = _model_class(model_class).from_pretrained(self.path, local_files_only=True).to(self.device)
        self.model.eval()
        self.image_processor, self.tokenizer = _processors(self.path)
        self.max_new_tokens, self.num_beams, self.batch_size = max_new_tokens, num_beams, batch_size
        self.protocol = {
            "captioner": str(self.path),
            "class": model_class,
            "decoding": f"{'beam search' if num_beams > 1 else 'greedy'}, num_beams={num_beams}, "
            f"max_new_tokens={max_new_tokens}",
        }

    @torch.no_grad()
    def __call__(self, images: Images | ImageSet) -> list[str]:
        imgs = images if isinstance(images, ImageSet) else ImageSet(images)
        captions: list[str] = []
        with progress(imgs.n, "captioning") as bar:
            for start in range(0, imgs.n, self.batch_size):
                batch = [imgs.pil(i) for i in range(start, min(start + self.batch_size, imgs.n))]
                pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                out = self.model.generate(
                    pixel_values=pixels, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=False
                )
                captions.extend(c.strip() for c in self.tokenizer.batch_decode(out, skip_special_tokens=True))
                bar.update(len(batch))
        return captions

    @classmethod
    def from_config(cls, cfg, device: str | None = None) -> Captioner:
        return cls(
            cfg.captioner_path,
            cfg.captioner_class,
            device,
            cfg.caption_max_new_tokens,
            cfg.caption_num_beams,
            cfg.caption_batch_size,
        )
