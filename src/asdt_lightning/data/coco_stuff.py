"""COCO-Stuff 10K (v1.1): class names and mappings, ``.mat`` reading, the PNG label cache, and the reader.

The official layout (``cocostuff-10k-v1.1.zip``): ``images/<name>.jpg``, ``annotations/<name>.mat`` (``S``: the
(H, W) label map, 0 = unlabeled, 1..182 = COCO-Stuff ids, of which 171 are used; ``names``: the class names) and
``imageLists/{train,test,all}.txt`` (9,000 / 1,000 / 10,000 names). ``annotations/<name>.png`` holding the same raw
ids (0..182) is accepted instead of a ``.mat``.

Reading thousands of ``.mat`` files each epoch is slow, so each is converted once into a PNG of its raw ids in a
cache folder (atomically: an interrupted conversion resumes where it stopped, and never leaves a half-written file
under a final name), together with an index of the ids present in each map (the image-level labels). The cache
holds raw ids, so both class mappings read the same cache:

- ``classes=171``: the 171 used ids -> 0..170 in id order (80 things, then 91 stuff classes);
- ``classes=182``: id -> id - 1 (0..181), as deeplab-pytorch does; the 11 unused thing ids are never present.

Unlabeled (0) becomes ignore (255). There is no background class: every labelled pixel is a thing or stuff class.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import IGNORE_INDEX
from ..errors import DatasetError
from ..io_utils import atomic_write_text, cache_dir
from .dataset import SegmentationDataset, SegmentationReader, list_file_path
from .voc import mask_mode_problem, read_mask, write_mask_png

COCO_STUFF_URL = "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/cocostuff-10k-v1.1.zip"
# fmt: off
COCO_STUFF_182: tuple[str, ...] = (  # COCO-Stuff id i + 1 is COCO_STUFF_182[i]
    # things (ids 1..91; 11 ids are unused)
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush",
    # stuff (ids 92..182)
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin",
    "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
# fmt: on
NUM_IDS = 182
UNUSED_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)  # thing ids without annotations
USED_IDS: tuple[int, ...] = tuple(i for i in range(1, NUM_IDS + 1) if i not in UNUSED_IDS)
CLASS_SETS = (171, 182)
_INDEX_VERSION = 1
_FLUSH_EVERY = 200  # index entries written between flushes of a running conversion


def check_classes(classes: int) -> int:
    """Validate ``dataset.classes``."""
    if classes not in CLASS_SETS:
        raise DatasetError(f"dataset.classes must be 171 (the used COCO-Stuff ids) or 182 (all ids), got {classes}")
    return classes


def class_ids(classes: int) -> tuple[int, ...]:
    """The COCO-Stuff ids of the contiguous classes 0..classes-1."""
    return USED_IDS if check_classes(classes) == 171 else tuple(range(1, NUM_IDS + 1))


def coco_stuff_class_names(classes: int = 171) -> list[str]:
    """Names of the contiguous classes of a mapping (171 used or all 182 ids)."""
    return [COCO_STUFF_182[i - 1] for i in class_ids(classes)]


def id_lookup(classes: int = 171) -> np.ndarray:
    """(256,) uint8 table: raw COCO-Stuff id -> contiguous class index; 0 (unlabeled) and unmapped ids -> 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for index, cid in enumerate(class_ids(classes)):
        table[cid] = index
    return table


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def mat_names(value: Any) -> list[str]:
    """The ``names`` field of a ``.mat`` file (cell array or char matrix, as scipy loads it) -> list of str."""
    if value is None:
        return []
    arr = np.asarray(value)
    if arr.dtype.kind in "US":  # a char matrix: one row per name
        return [str(x).strip() for x in arr.reshape(-1)]
    out = []
    for item in arr.reshape(-1):
        flat = np.asarray(item).reshape(-1)
        out.append(str(flat[0]).strip() if flat.size else "")
    return out


def check_mat_names(names: Sequence[str], path: Path) -> None:
    """Refuse a ``names`` list that does not follow the v1.1 ids (e.g. v1.0's 172 classes); a few spellings may
    differ from :data:`COCO_STUFF_182`, a different order may not."""
    if not names:
        return
    if len(names) == NUM_IDS + 1 and _normalise(names[0]) == "unlabeled":
        names = names[1:]
    if len(names) != NUM_IDS:
        version = " (COCO-Stuff 10K v1.0 has 172)" if len(names) in (171, 172) else ""
        raise DatasetError(f"{path} lists {len(names)} class names{version}, not the 182 of v1.1; get {COCO_STUFF_URL}")
    pairs = zip(names, COCO_STUFF_182, strict=True)
    wrong = [i + 1 for i, (a, b) in enumerate(pairs) if _normalise(a) != _normalise(b)]
    if len(wrong) > 10:
        i = wrong[0]
        raise DatasetError(
            f"the class names in {path} do not follow the COCO-Stuff v1.1 ids (id {i} is '{names[i - 1]}', "
            f"expected '{COCO_STUFF_182[i - 1]}'); get {COCO_STUFF_URL}"
        )


def read_mat_labels(path: str | Path) -> np.ndarray:
    """A COCO-Stuff ``.mat`` annotation -> (H, W) uint8 raw ids (0 unlabeled, 1..182); bad files raise, named."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=["S", "names"])
    except NotImplementedError:
        raise DatasetError(
            f"{path} is a MATLAB v7.3 (HDF5) file; the v1.1 release has v5 files: {COCO_STUFF_URL}"
        ) from None
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, zlib errors... on damaged files
        raise DatasetError(f"cannot read annotation {path}: {err}; fix or re-extract that file") from None
    if "S" not in mat:
        raise DatasetError(f"annotation {path} has no label map 'S'; COCO-Stuff .mat files hold S and names")
    check_mat_names(mat_names(mat.get("names")), path)
    labels = np.asarray(mat["S"])
    if labels.ndim != 2 or labels.dtype.kind not in "uif":
        raise DatasetError(f"label map S of {path} is {labels.dtype} {labels.shape}, not an (H, W) map of ids")
    return check_raw_ids(labels, path)


def check_raw_ids(labels: np.ndarray, path: str | Path) -> np.ndarray:
    """(H, W) raw ids -> uint8, refusing values outside 0..182 (e.g. PNGs of already-mapped ids, 255 ignore)."""
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > NUM_IDS or (labels.dtype.kind == "f" and not np.all(labels == np.round(labels))):
        raise DatasetError(
            f"label map {path} holds values {low}..{high}; COCO-Stuff maps hold the raw ids 0 (unlabeled) .. 182 "
            "(PNGs of already-mapped train ids with 255 are not accepted: convert them back or use the .mat files)"
        )
    return labels.astype(np.uint8)


def id_counts(labels: np.ndarray) -> dict[str, int]:
    """Pixels per raw id present (unlabeled excluded), as a JSON-ready ``{"id": count}``."""
    counts = np.bincount(labels.reshape(-1), minlength=NUM_IDS + 1)
    return {str(i): int(counts[i]) for i in np.flatnonzero(counts) if i != 0}


def _file_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def convert_annotation(src: Path, dst: Path | None) -> dict[str, int] | str:
    """Index one annotation: a ``.mat`` is written to ``dst`` as a PNG of raw ids (atomically); a ``.png``
    (``dst`` None) is only read. Returns the id counts, or the problem line of a bad file."""
    try:
        if src.suffix == ".mat":
            labels = read_mat_labels(src)
            assert dst is not None
            write_mask_png(dst, labels)
        else:
            labels = check_raw_ids(read_mask(src), src)
    except DatasetError as err:
        return str(err)
    return id_counts(labels)


def _convert_task(task: tuple[Path, Path | None]) -> dict[str, int] | str:
    return convert_annotation(*task)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX), so concurrent converters (DDP ranks) take turns."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks here: atomic writes still keep every file whole
        yield
        return
    with open(lock_path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class LabelCache:
    """The converted label maps of one root (``labels/<name>.png``, raw ids) and ``index.json``
    (per name: the source file's (mtime_ns, size) and the pixels per raw id)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.labels = folder / "labels"
        self.index_path = folder / "index.json"

    def png(self, name: str) -> Path:
        return self.labels / f"{name}.png"

    def load_index(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.index_path.read_text())
            if isinstance(data, dict) and data.get("version") == _INDEX_VERSION:
                return dict(data["entries"])
        return {}

    def save_index(self, entries: dict[str, Any]) -> None:
        atomic_write_text(self.index_path, json.dumps({"version": _INDEX_VERSION, "entries": entries}))

    def fresh(self, entry: Any, src: Path, key: list[int] | None, name: str) -> bool:
        """An index entry still describes ``src`` (and its PNG exists, for a ``.mat``)."""
        return entry is not None and entry[0] == key and (src.suffix != ".mat" or self.png(name).is_file())

    def update(
        self,
        sources: dict[str, Path],
        workers: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """Convert/index every source not indexed yet; returns the id counts per name and the bad files.

        Resumable: the index is flushed every few hundred files and when interrupted (also by an exception),
        converted PNGs are written atomically, and temporary files of a killed run are removed first.
        """
        entries = self.load_index()
        keys = {n: _file_key(p) for n, p in sources.items()}
        todo = [n for n, p in sources.items() if not self.fresh(entries.get(n), p, keys[n], n)]
        problems: dict[str, str] = {}
        if todo:
            with _exclusive(self.folder / ".lock"):
                entries = self.load_index()  # another process may have converted them meanwhile
                todo = [n for n in todo if not self.fresh(entries.get(n), sources[n], keys[n], n)]
                if self.labels.is_dir():
                    for stale in self.labels.glob(".*.tmp"):  # left by a killed run; we hold the lock
                        stale.unlink(missing_ok=True)
                problems = self._convert(todo, sources, keys, entries, workers, progress)
        counts = {n: entries[n][1] for n in sources if n not in problems and n in entries}
        return counts, problems

    def _convert(
        self,
        todo: list[str],
        sources: dict[str, Path],
        keys: dict[str, list[int] | None],
        entries: dict[str, Any],
        workers: int,
        progress: Callable[[int, int], None] | None,
    ) -> dict[str, str]:
        tasks = [(sources[n], self.png(n) if sources[n].suffix == ".mat" else None) for n in todo]
        problems: dict[str, str] = {}
        pool = ProcessPoolExecutor(workers) if workers > 1 and len(todo) > 1 else None
        results = pool.map(_convert_task, tasks, chunksize=8) if pool else map(_convert_task, tasks)
        try:
            for done, (name, result) in enumerate(zip(todo, results, strict=True), 1):
                if isinstance(result, str):
                    problems[name] = result
                else:
                    entries[name] = [keys[name], result]
                if done % _FLUSH_EVERY == 0:
                    self.save_index(entries)
                if progress is not None:
                    progress(done, len(todo))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            self.save_index(entries)
        return problems


def resolve_coco_stuff_root(root: str | Path) -> Path:
    """Accept the folder holding ``images/`` and ``imageLists/`` (the unzipped release), or its ``dataset/``."""
    path = Path(root).expanduser()
    for candidate in (path, path / "dataset", path / "cocostuff-10k-v1.1"):
        if (candidate / "images").is_dir() and (candidate / "imageLists").is_dir():
            return candidate
    raise DatasetError(
        f"no COCO-Stuff 10K dataset at {path} (no images/ and imageLists/ there); download {COCO_STUFF_URL}, "
        "unzip it and set dataset.root (or COCO_STUFF_ROOT) to that folder"
    )


def default_label_cache(root: Path) -> Path:
    """``<cache>/coco_stuff/<hash of the resolved root>``."""
    return cache_dir() / "coco_stuff" / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


class CocoStuffReader(SegmentationReader):
    """The COCO-Stuff 10K v1.1 layout; label maps in the contiguous space of ``classes`` (171 or 182), no
    background class. Image labels: the classes with at least ``min_label_pixels`` pixels in the label map."""

    name = "coco_stuff"
    download_hint = f"re-extract the images ({COCO_STUFF_URL}) or fix the list"

    def __init__(
        self,
        root: str | Path,
        classes: int = 171,
        class_names: Sequence[str] | None = None,
        label_cache: str | Path | None = None,
        min_label_pixels: int = 1,
        workers: int = 0,
    ) -> None:
        names = coco_stuff_class_names(classes)
        if class_names is not None and len(class_names) != len(names):
            raise DatasetError(
                f"dataset.class_names has {len(class_names)} names but dataset.classes={classes}; give {len(names)}"
            )
        if min_label_pixels < 1:
            raise DatasetError(f"dataset.min_label_pixels must be >= 1, got {min_label_pixels}")
        super().__init__(root, class_names or names, has_background=False)
        self.classes = classes
        self.ids = class_ids(classes)
        self.lookup = id_lookup(classes)
        self.min_label_pixels = min_label_pixels
        self.workers = workers
        self._label_cache = Path(label_cache).expanduser() if label_cache else None

    def resolve_root(self) -> Path:
        return resolve_coco_stuff_root(self.given_root)

    @property
    def cache(self) -> LabelCache:
        return LabelCache(self._label_cache or default_label_cache(self.root))

    def list_path(self, split: str) -> Path:
        return list_file_path(self.root / "imageLists", split)

    def list_hint(self, split: str) -> str:
        return f" (imageLists/ of {COCO_STUFF_URL} has train, test and all; or set dataset.train_list to a path)"

    def image_path(self, name: str) -> Path:
        return self.root / "images" / f"{name}.jpg"

    def source(self, name: str) -> Path | None:
        """The official ``annotations/<name>.mat``, else ``annotations/<name>.png`` (raw ids), else None."""
        for suffix in (".mat", ".png"):
            path = self.root / "annotations" / f"{name}{suffix}"
            if path.is_file():
                return path
        return None

    def check_layout(self, splits: Sequence[str], masks_required: Sequence[str], targets: bool) -> None:
        if (targets or masks_required) and not (self.root / "annotations").is_dir():
            raise DatasetError(
                f"{self.root / 'annotations'} is missing: labels and image labels come from its .mat files "
                f"({COCO_STUFF_URL})"
            )

    def annotation_problem(self, name: str) -> str | None:
        if self.source(name) is None:
            return f"annotation {self.root / 'annotations' / name}.mat (or .png) is missing ({COCO_STUFF_URL})"
        return None

    def prepare(
        self, splits: Sequence[str], workers: int | None = None, progress: Callable[[int, int], None] | None = None
    ) -> None:
        names = dict.fromkeys(n for split in splits for n in self.read_list(split))
        sources = {n: p for n in names if (p := self.source(n)) is not None}
        self.cache.update(sources, self.workers if workers is None else workers, progress)

    def id_counts(self, names: Sequence[str]) -> tuple[dict[str, dict[str, int]], dict[str, str]]:
        """Pixels per raw id of each entry's label map (converting what is not cached yet), and bad files."""
        sources = {n: p for n in names if (p := self.source(n)) is not None}
        return self.cache.update(sources, self.workers)

    def load_labels(self, names: Sequence[str]) -> tuple[dict[str, list[int]], dict[str, str]]:
        counts, problems = self.id_counts(names)
        labels: dict[str, list[int]] = {}
        for name, ids in counts.items():
            present = [int(i) for i, c in ids.items() if c >= self.min_label_pixels]
            unmapped = [i for i in present if self.lookup[i] == IGNORE_INDEX]
            if unmapped:
                problems[name] = (
                    f"annotation {self.source(name)} uses COCO-Stuff id {unmapped[0]} "
                    f"('{COCO_STUFF_182[unmapped[0] - 1]}'), which dataset.classes={self.classes} does not map; "
                    "use dataset.classes=182"
                )
                continue
            labels[name] = sorted(int(self.lookup[i]) for i in present)
        return labels, problems

    def mask_file(self, name: str) -> Path | None:
        src = self.source(name)
        if src is None or src.suffix != ".mat":
            return src
        png = self.cache.png(name)
        if not png.is_file():  # not converted (yet): convert this one now
            self.cache.update({name: src})
        return png if png.is_file() else src

    def decode_mask(self, path: Path) -> np.ndarray:
        if path.suffix == ".mat":
            return self.lookup[read_mat_labels(path)]
        raw = read_mask(path)
        if path.parent != self.cache.labels:  # a user's PNG: check its ids (the cache's were checked once)
            check_raw_ids(raw, path)
        return self.lookup[raw]

    def mask_header_file(self, name: str) -> Path | None:
        """The converted PNG of a ``.mat`` (or the user's PNG): PIL cannot read a ``.mat`` header, and a ``.mat``
        left unconverted is one whose conversion failed, which :meth:`load_labels` reports already."""
        path = self.mask_file(name)
        return None if path is None or path.suffix == ".mat" else path

    def mask_header_problem(self, path: Path, mode: str) -> str | None:
        return mask_mode_problem(path, mode)

    def header_problem(self, name: str, targets: bool = True) -> str | None:
        """As for any reader; a problem of a converted PNG also names the ``.mat`` to fix."""
        problem = super().header_problem(name, targets)
        png = self.cache.png(name)
        if problem is not None and str(png) in problem and (src := self.source(name)) is not None:
            problem += f" (converted from {src})"
        return problem


class CocoStuffSegmentation(SegmentationDataset):
    """:class:`SegmentationDataset` of one list of a COCO-Stuff 10K root (see there for the sample contract)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        classes: int = 171,
        transform: Callable[..., Any] | None = None,
        targets: bool = True,
        on_bad_sample: str = "error",
        label_cache: str | Path | None = None,
    ) -> None:
        reader = CocoStuffReader(root, classes, label_cache=label_cache)
        super().__init__(reader, split, transform, targets, on_bad_sample)
