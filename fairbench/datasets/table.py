"""`TableDataset`: a dataset described by a dataset file (`fairbench.datasets.tablespec`), a metadata table and
image files Pillow reads (PNG, JPEG, TIFF, BMP, WebP...; no DICOM), grayscale or RGB.

Images go through the core preprocessing cache (`fairbench.datasets.cache.SplitCache`): keyed by the SHA-256 of
every image file's bytes, built once, checked against its digest on every read. An image Pillow cannot decode
fully (a truncated JPEG opens and even `verify()`s; only decoding the pixels fails, Pillow 13 `Image.verify`) is a
DatasetError naming the file, never a cached array. The data's fingerprint covers the dataset file's declarations,
the table's bytes and every image's bytes, so a run's config hash changes with any of them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fairbench.datasets.base import CheckReport, DataIdentity, Dataset, DatasetError, LoadedDataset, SplitReport
from fairbench.datasets.errors import short_error
from fairbench.datasets.tablerows import UNKNOWN, Sample, TableRows, read_rows
from fairbench.datasets.tablespec import SPLIT_NAMES, TableSpec

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("fairbench.data")  # numpy, Pillow and torch are imported in the functions that use them:
# `fairbench --help` and `data list` import every built-in dataset

SYNTHETIC_MARKER = "fairbench-synthetic.json"  # written by a synthetic generator: its data gets the synthetic tag
EVAL_SPLITS = ("val", "test")
IMAGE_ERRORS = (OSError, SyntaxError, ValueError)  # Pillow: UnidentifiedImageError is an OSError; a bad PNG CRC a
# SyntaxError (Pillow 13 PngImagePlugin)


def _image_error(exc: BaseException) -> str:
    return f"unreadable image, corrupt or truncated ({short_error(exc)}); re-copy the file"


def decode_image(path: Path, channels: int):
    """The image at `path` fully decoded as a PIL image in mode L (1 channel) or RGB (3), by an explicit rule per
    mode: 16-bit grayscale is scaled by 255/65535 (Pillow's own conversion would clip every value above 255 to white),
    alpha is dropped; 32-bit integer and float images are refused (no scale is implied). Raises DatasetError."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()  # decode every pixel: the only step that finds a truncated JPEG
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.rint(arr * (255.0 / 65535.0)).astype(np.uint8))
            elif im.mode in ("I", "F"):
                raise DatasetError(f"{path}: {im.mode}-mode image (32-bit integer or float pixels) has no implied "
                                   "0–255 scale; convert it to 8- or 16-bit")
            return im.convert("L" if channels == 1 else "RGB")
    except DatasetError:
        raise
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: {short_error(exc)}; resize the image") from None
    except IMAGE_ERRORS as exc:
        raise DatasetError(f"{path}: {_image_error(exc)}") from None


def clip_transform_image(path: Path, size: int, channels: int) -> np.ndarray:
    """uint8 (C, S, S): open_clip's eval transform up to ToTensor on the 8-bit PIL image (shorter side to `size`,
    bicubic, then centre crop), as open_clip applies it to `Image.open(f).convert("RGB")`."""
    import numpy as np
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    im = decode_image(path, channels)
    im = CenterCrop(size)(Resize(size, interpolation=InterpolationMode.BICUBIC)(im))
    arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class TableDataset(Dataset):
    """Base of every dataset-file dataset; `fairbench.datasets.tablefile.dataset_class` makes one per file."""

    spec: ClassVar[TableSpec]

    def default_path(self, cache_dir: Path | None = None) -> Path | None:
        """The file's `data` folder, when it names one."""
        return self.spec.data

    # ------------------------------------------------------------------ identity
    def identify(self, root: Path, text_source: str) -> DataIdentity:
        rows = self._rows(Path(root), stop=True)
        return self._identity(Path(root), rows, self._caches(Path(root), rows, None, keys_only=True))

    def _identity(self, root: Path, rows: TableRows, keys: dict[str, str]) -> DataIdentity:
        from fairbench.digests import file_sha256

        parts = [self.spec.digest, *(f"{p.name}:{file_sha256(p)}" for p in rows.sources),
                 *(f"{s}:{keys[s]}" for s in SPLIT_NAMES)]
        synthetic = (root / SYNTHETIC_MARKER).is_file()
        return DataIdentity(root=root.resolve(), synthetic=synthetic,
                            tag=self.spec.synthetic_tag if synthetic else self.tag,
                            fingerprint=hashlib.sha256("|".join(parts).encode()).hexdigest()[:16],
                            n_train=len(rows.samples["train"]))

    def _rows(self, root: Path, stop: bool) -> TableRows:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found; pass the folder of a {self.name} dataset")
        rows = read_rows(self.spec, root)
        if stop and rows.problems:
            more = f" (and {len(rows.problems) - 1} more)" if len(rows.problems) > 1 else ""
            raise DatasetError(f"{rows.problems[0]}{more}; `fairbench data check {root} --dataset {self.name}` "
                               "lists every problem")
        return rows

    def _caches(self, root: Path, rows: TableRows, cache_dir: Path | None, keys_only: bool = False) -> dict[str, Any]:
        """split → its SplitCache, or (`keys_only`) split → the content key of its image files."""
        from fairbench.datasets.cache import SplitCache, cache_root

        store = cache_root(cache_dir)
        out: dict[str, Any] = {}
        for split in SPLIT_NAMES:
            files = [s.image for s in rows.samples[split]]
            cache = SplitCache(store, self.name, root.resolve(), split, [f.resolve() for f in files], identity=None,
                               index_key=f"{split}|{self.spec.path}")
            out[split] = cache.key if keys_only else cache
        return out

    # ------------------------------------------------------------------ tensors
    def load(self, root: Path, *, image_size: int, tokenize: Any, tokenizer_key: str, text_source: str,
             cache_dir: Path | None = None) -> LoadedDataset:
        import numpy as np
        import torch

        from fairbench.datasets.base import SplitTensors

        if image_size < 1:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        root = Path(root).expanduser().resolve()
        rows = self._rows(root, stop=True)
        caches = self._caches(root, rows, cache_dir)
        channels = self.spec.channels
        out = {}
        for split in SPLIT_NAMES:
            samples: list[Sample] = rows.samples[split]
            cache = caches[split]
            texts = [s.text for s in samples]
            images = cache.images(image_size, None, channels=channels,
                                  transform=lambda p, size: clip_transform_image(p, size, channels))
            tokens = cache.tokens(texts, tokenize, tokenizer_key, text_source)
            codes = {a: np.array([s.codes[a] for s in samples], dtype=np.int64) for a in self.attributes}
            keep = np.ones(len(samples), dtype=bool)
            if split in EVAL_SPLITS:
                for values in codes.values():
                    keep &= values != UNKNOWN
            idx = np.flatnonzero(keep)
            if len(idx) == 0:
                raise DatasetError(f"{root}: every {split} sample has an unknown attribute; nothing to evaluate")
            sel = torch.from_numpy(idx)
            img = torch.from_numpy(images)[sel] if not keep.all() else torch.from_numpy(images)
            if channels == 1:
                img = img.expand(-1, 3, -1, -1)
            out[split] = SplitTensors(
                images=img, tokens=torch.from_numpy(np.ascontiguousarray(tokens)).long()[sel],
                labels=torch.tensor([samples[i].label for i in idx], dtype=torch.long),
                attributes={a: torch.from_numpy(v[idx]) for a, v in codes.items()},
                sample_ids=[samples[i].id for i in idx], texts=[texts[i] for i in idx],
                n_dropped=int((~keep).sum()))
            if out[split].n_dropped:
                log.info("%s: dropped %d of %d samples with an unknown attribute", split, out[split].n_dropped,
                         len(samples))
        ident = self._identity(root, rows, {s: caches[s].key for s in SPLIT_NAMES})
        return LoadedDataset(name=self.name, root=ident.root, synthetic=ident.synthetic, tag=ident.tag,
                             fingerprint=ident.fingerprint, text_source=text_source, **out)

    # ------------------------------------------------------------------ data check
    def check(self, root: Path) -> CheckReport:
        root = Path(root)
        report = CheckReport(root=root, synthetic=(root / SYNTHETIC_MARKER).is_file())
        if not root.is_dir():
            report.problems.append(f"{root}: dataset folder not found")
            return report
        try:
            rows = read_rows(self.spec, root)
        except DatasetError as exc:
            report.problems.append(str(exc))
            return report
        report.problems += rows.problems
        every = [s for split in SPLIT_NAMES for s in rows.samples[split]]
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            results = list(pool.map(self._check_image, [s.image for s in every]))
        bad = {s.image for s, (_, problem) in zip(every, results, strict=True) if problem}
        report.problems += [problem for _, problem in results if problem]
        shapes = {s.image: shape for s, (shape, _) in zip(every, results, strict=True)}
        for split in SPLIT_NAMES:
            rep = report.splits[split] = SplitReport(folder=split, n_files=rows.n_rows[split])
            for s in rows.samples[split]:
                if shapes.get(s.image) is not None:
                    rep.image_shapes[shapes[s.image]] += 1
                if s.image in bad:
                    continue
                rep.n_valid += 1
                rep.n_positive += s.label
                rep.n_unknown += any(c == UNKNOWN for c in s.codes.values())
                for attr, code in s.codes.items():
                    rep.counts[(attr, code, s.label)] += 1
        return report

    def _check_image(self, path: Path) -> tuple[tuple[int, ...] | None, str]:
        try:
            im = decode_image(path, self.spec.channels)
        except DatasetError as exc:
            return None, str(exc)
        return (im.height, im.width, len(im.getbands())), ""
